"""Ctrl-C and SIGTERM at every stage of a run end it with status 130 and a true message.

Each case is a real `experiments.train` process that sends itself the signal when it reaches
a named stage (p2pl_jax.stages: P2PL_TEST_SIGNAL=STAGE:SIGNAL), so the moments are
deterministic. The message must say what is on disk: no checkpoint before the first save, else
the round of the newest checkpoint, which must be the one the folder holds. The cases run two at
a time (each is mostly process start-up and compilation).
"""

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/smoke.py", "--config.rounds=4", "--config.checkpoint_every=2",
        "--config.progress=False", "--config.tensorboard=False"]
SIGNALS = ("SIGINT", "SIGTERM")
# stage -> the newest checkpoint the message and the folder must show (None: none exists)
STAGES = {"import": None, "start": None, "data": None, "compile": None,
          "round": 1,    # the round in progress (1) is finished and checkpointed
          "save": 3}     # arrives during the save of round 2: round 3 is finished and saved


def _train(workdir: Path, signal_at: str = "", *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("P2PL_TEST_SIGNAL", None)
    if signal_at:
        env["P2PL_TEST_SIGNAL"] = signal_at
    return subprocess.run([sys.executable, "-m", "experiments.train", *ARGS,
                           f"--workdir={workdir}", *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _steps(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) \
        if folder.is_dir() else []


def _records(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "wall_s"} for line in lines]


def _check_exit(proc: subprocess.CompletedProcess, sig: str, newest: int | None,
                workdir: Path) -> str:
    err = proc.stderr
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert sig in line
    if newest is None:
        assert "no checkpoint exists" in line and "start again" in line, line
        assert _steps(workdir) == []
    else:
        assert f"the checkpoint of round {newest} in {workdir / 'checkpoints'} is kept" in line
        assert "rerun the same command to resume" in line
        assert max(_steps(workdir)) == newest
    return line


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every (stage, signal) case, plus an uninterrupted run; run two at a time."""
    root = tmp_path_factory.mktemp("signals")
    cases = {(stage, sig): root / f"{stage}_{sig}" for stage in STAGES for sig in SIGNALS}
    with ThreadPoolExecutor(2) as pool:
        futures = {key: pool.submit(_train, work, f"{key[0]}:{key[1]}")
                   for key, work in cases.items()}
        reference = pool.submit(_train, root / "reference")
        out = {key: (f.result(), cases[key]) for key, f in futures.items()}
    assert reference.result().returncode == 0, reference.result().stderr[-3000:]
    return out, root / "reference"


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("stage", STAGES)
def test_signal_at_stage_exits_130_with_a_true_message(runs, stage, sig):
    cases, _ = runs
    proc, workdir = cases[(stage, sig)]
    line = _check_exit(proc, sig, STAGES[stage], workdir)
    if stage in ("start", "data", "compile"):
        assert re.search(r"during start-up", line), line


def test_interrupted_run_resumes_to_the_uninterrupted_result(runs):
    cases, reference = runs
    _, workdir = cases[("save", "SIGTERM")]
    again = _train(workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from the checkpoint of round 3" in again.stderr
    assert _records(workdir) == _records(reference)


def test_signal_during_start_up_of_a_resumed_run_names_its_checkpoint(runs):
    cases, _ = runs
    _, workdir = cases[("round", "SIGINT")]   # holds the checkpoint of round 1
    proc = _train(workdir, "compile:SIGINT")
    _check_exit(proc, "SIGINT", 1, workdir)


def test_second_signal_stops_at_once_keeping_the_newest_checkpoint(tmp_path):
    """A second signal during the round loop ends the process at once (exit 130); the newest
    complete checkpoint stays, and the message names it."""
    script = (
        "import os, signal\n"
        "from absl import app\n"
        "from p2pl_jax import loop\n"
        "from experiments import train\n"
        "_step = loop.RunProgram.step\n"
        "def step(self, state, *, return_local):\n"
        "    before = int(state.round)\n"   # (the step donates the state)
        "    out = _step(self, state, return_local=return_local)\n"
        "    if before == 2:\n"   # round 3 runs: ask twice
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        import time; time.sleep(30)\n"   # the watcher exits while this sleeps
        "    return out\n"
        "loop.RunProgram.step = step\n"
        "app.run(train.main, flags_parser=train.parse_flags)\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("P2PL_TEST_SIGNAL", None)
    proc = subprocess.run([sys.executable, "-c", script, *ARGS, f"--workdir={tmp_path}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    line = _check_exit(proc, "SIGINT", 2, tmp_path)
    assert "a second time during round 3: stopped at once" in line


# --- the sweep: one start-up stage and the round loop -----------------------------------------

@pytest.mark.parametrize("stage,sig,newest", [("compile", "SIGINT", None),
                                              ("round", "SIGTERM", 1)])
def test_sweep_signal_exits_130_with_a_true_message(tmp_path, stage, sig, newest):
    env = dict(os.environ, JAX_PLATFORMS="cpu", P2PL_TEST_SIGNAL=f"{stage}:{sig}")
    proc = subprocess.run([sys.executable, "-m", "experiments.sweep", *ARGS,
                           "--sweep.seed=0,1", f"--workdir={tmp_path}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    err = proc.stderr
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    folder = tmp_path / "seed=0" / "sweep_checkpoints"   # the group's first replica holds it
    if newest is None:
        assert "during start-up" in line and "no checkpoint exists" in line, line
        assert not folder.exists() or not any(p.name.isdigit() for p in folder.iterdir())
    else:
        assert f"the checkpoint of round {newest} in {folder} is kept" in line, line
        assert max(int(p.name) for p in folder.iterdir() if p.name.isdigit()) == newest


def test_signal_after_the_work_is_written_keeps_status_0(tmp_path):
    """Once the summaries are written a signal is ignored (it used to kill the process in
    interpreter teardown: status -2 in the stress run), so a finished run exits 0."""
    script = (
        "import os, signal, time\n"
        "from absl import app\n"
        "from p2pl_jax import interrupts\n"
        "from experiments import train\n"
        "_finished = interrupts.finished\n"
        "def finished():\n"
        "    _finished()\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.5)\n"
        "interrupts.finished = finished\n"
        "app.run(train.main, flags_parser=train.parse_flags)\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("P2PL_TEST_SIGNAL", None)
    proc = subprocess.run([sys.executable, "-c", script, *ARGS, f"--workdir={tmp_path}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rounds_to_target=" in proc.stdout
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
