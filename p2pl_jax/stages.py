"""The named stages of a run, for messages ("during start-up (compile)") and for tests that
must make a signal arrive at an exact moment.

  import   the tool's module has started importing JAX and the rest (experiments.early_signals)
  start    the command line has parsed its flags
  data     loading the data and building the partition, the graph and the simulator
  compile  compiling the round and the evaluator
  round    round 1 is running (the first round of this process)
  save     a checkpoint is being written (the first save of this process)

Test hook: with the environment variable P2PL_TEST_SIGNAL=STAGE:SIGNAL (e.g. "compile:SIGTERM")
the process sends itself SIGNAL when it first reaches STAGE, so every stage can be tested with
SIGINT and SIGTERM deterministically (tests/test_signals.py); STAGE@K:SIGNAL fires when it
reaches STAGE the K-th time (e.g. "save@2:SIGKILL", the second save: tests/test_multihost.py).
Unset, `reached` only records the stage.
"""

from __future__ import annotations

import os
import signal

ENV = "P2PL_TEST_SIGNAL"
STAGES = ("import", "start", "data", "compile", "round", "save")
_LOOP = ("round", "save")
_current = ["import"]
_fired: set[str] = set()
_count: dict[str, int] = {}


def reached(stage: str) -> None:
    """Records that the process is at `stage` (and fires the test signal, if asked for it)."""
    assert stage in STAGES, stage
    if stage not in _LOOP:
        _current[0] = stage
    _count[stage] = _count.get(stage, 0) + 1
    spec = os.environ.get(ENV, "")
    name, _, sig = spec.partition(":")
    name, _, nth = name.partition("@")
    if name == stage and stage not in _fired and _count[stage] == int(nth or 1):
        _fired.add(stage)
        os.kill(os.getpid(), getattr(signal, sig or "SIGINT"))


def describe() -> str:
    """The start-up stage last reached, in words."""
    return {"import": "start-up (importing)", "start": "start-up (before the data)",
            "data": "start-up (data, graph, simulator)",
            "compile": "start-up (compile)"}.get(_current[0], _current[0])


def after_loop() -> None:
    """The round loop has ended (signals now interrupt the summary writing)."""
    _current[0] = ("the end of a round loop (writing summaries, or setting up the next sweep "
                   "group)")
