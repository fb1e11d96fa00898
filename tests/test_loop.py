"""The one host loop (p2pl_jax/loop.py): sweeps checkpoint, stop and resume exactly like runs.

The sweep: configs/smoke.py, 12 rounds, seeds 0 and 1 x dropout_prob 0.0 and 0.3 = 4 replicas in
2 compiled groups (a dropout probability of 0 compiles no sampling), evaluated every 3rd round,
checkpointed every 2nd, target 70% held for 2 rounds with stop_at_target and eval_backfill: the
replicas reach the target at different rounds, some between evaluations, so a group stops when
its last replica's hold completes and resumes carry rounds_to_target and hold bookkeeping and
settled backfill records. The reference is
an uninterrupted sweep; an interrupted one (SIGKILL, SIGTERM) rerun with the same command must
write the same metrics.jsonl (up to wall_s) and summaries in every replica folder.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from configs import smoke
from p2pl_jax import sweep
from p2pl_jax.errors import ConfigError
from p2pl_jax.writers import read_jsonl

REPO = Path(__file__).resolve().parents[1]
VALUES = {"dropout_prob": [0.0, 0.3], "seed": [0, 1]}   # the CLI's (sorted) order
NAMES = [f"dropout_prob={d},seed={s}" for d in VALUES["dropout_prob"] for s in VALUES["seed"]]
FIELDS = {"rounds": 12, "eval_every": 3, "checkpoint_every": 2, "target_accuracy": 0.7,
          "target_hold_rounds": 2, "stop_at_target": True, "tensorboard": False}
ARGS = ["--config=configs/smoke.py", *(f"--config.{k}={v}" for k, v in FIELDS.items()),
        "--sweep.seed=0,1", "--sweep.dropout_prob=0.0,0.3"]
SUMMARY_KEYS = ("status", "rounds_run", "rounds_to_target", "rounds_to_stable_target",
                "final_acc_min", "final_acc_mean")


def _config():
    c = smoke.get_config()
    for k, v in FIELDS.items():
        c[k] = v
    return c


def _env(tmp_path_factory) -> dict:
    """CPU, no TFDS, one compilation cache shared by this module's subprocesses."""
    cache = tmp_path_factory.getbasetemp() / "loop_compilation_cache"
    env = dict(os.environ, JAX_PLATFORMS="cpu", P2PL_NO_TFDS="1",
               JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    env.setdefault("P2PL_DATA_DIR", str(REPO.parent / "shared" / "data"))
    return env


def _sweep(workdir, env, *extra, script: str | None = None, timeout=300):
    """experiments.sweep on `workdir` (or `script`, which patches something first, then runs
    the sweep CLI with the same arguments)."""
    head = ([sys.executable, "-c", script] if script
            else [sys.executable, "-m", "experiments.sweep"])
    return subprocess.run([*head, *ARGS, f"--workdir={workdir}", *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _records(workdir, name):
    return [{k: v for k, v in r.items() if k != "wall_s"}
            for r in read_jsonl(os.path.join(workdir, name, "metrics.jsonl"))]


def _summary(workdir, name) -> dict:
    return json.loads((Path(workdir) / name / "summary.json").read_text())


def _steps(workdir, name) -> list[int]:
    folder = Path(workdir) / name / sweep.CHECKPOINT_DIR
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) \
        if folder.is_dir() else []


def _assert_same_as(reference, workdir):
    for name in NAMES:
        assert _records(workdir, name) == _records(reference, name), name
        got, want = _summary(workdir, name), _summary(reference, name)
        assert {k: got[k] for k in SUMMARY_KEYS} == {k: want[k] for k in SUMMARY_KEYS}, name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted sweep (in this process: the same numbers as the CLI's)."""
    if not (Path(_env(tmp_path_factory)["P2PL_DATA_DIR"]) / "mnist").is_dir():
        pytest.skip("real MNIST not found; set P2PL_DATA_DIR to the shared data dir")
    out = tmp_path_factory.mktemp("reference")
    summaries = sweep.run_sweep(_config(), VALUES, str(out))
    by_name = {n: s for n, s in zip(NAMES, summaries)}
    # The sweep is not trivial: every replica reaches the target, at different rounds, some
    # between evaluations (backfilled), and some stop before the last round.
    rtt = [by_name[n]["rounds_to_target"] for n in NAMES]
    assert None not in rtt and len(set(rtt)) > 2, rtt
    assert any(r % FIELDS["eval_every"] for r in rtt), rtt
    assert any(s["rounds_run"] < FIELDS["rounds"] for s in summaries)
    assert all(s["status"] == "completed" and s["replicas_in_program"] == 2 for s in summaries)
    return out


# SIGKILL (no chance to save) as the second replica of the second group writes round 6: the
# first group has finished, the second has a checkpoint of round 4, and its first replica has
# already written its record of round 6 (which the rerun must drop and recompute).
_KILL = """
import os, signal
from absl import app
from p2pl_jax import writers
from experiments import sweep

_write = writers.MetricsWriter.write

def write(self, record):
    _write(self, record)
    if record["round"] == 6 and self.workdir.endswith("dropout_prob=0.3,seed=1"):
        os.kill(os.getpid(), signal.SIGKILL)

writers.MetricsWriter.write = write
app.run(sweep.main, flags_parser=sweep.parse_flags)
"""

# SIGTERM after round 5 of the first group: between evaluations (3, 6) and checkpoints (4, 6).
_TERM = """
import os, signal
from absl import app
from p2pl_jax import progress
from experiments import sweep

_update = progress.Progress.update
sent = []

def update(self, round_index, record=None):
    _update(self, round_index, record)
    if round_index == 5 and not sent:
        sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM)

progress.Progress.update = update
app.run(sweep.main, flags_parser=sweep.parse_flags)
"""


def test_sweep_killed_then_rerun_equals_uninterrupted(reference, tmp_path, tmp_path_factory):
    env, work = _env(tmp_path_factory), tmp_path / "killed"
    killed = _sweep(work, env, "--config.progress=False", script=_KILL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    first, second = NAMES[0], NAMES[2]   # the groups' first replicas hold their checkpoints
    assert _steps(work, first) and max(_steps(work, first)) == _summary(reference, first)[
        "checkpoint_round"]   # the first group finished
    assert max(_steps(work, second)) == 4
    assert [r["round"] for r in read_jsonl(work / second / "metrics.jsonl")][-1] == 6

    rerun = _sweep(work, env, "--config.progress=False")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (f"resuming from the checkpoint of round {max(_steps(reference, first))}"
            in rerun.stderr)
    assert "resuming from the checkpoint of round 4" in rerun.stderr
    _assert_same_as(reference, work)
    assert _summary(work, second)["resumed_from_round"] == 4


def test_sweep_sigterm_exits_130_with_checkpoint_then_resumes(reference, tmp_path,
                                                              tmp_path_factory):
    env, work = _env(tmp_path_factory), tmp_path / "stopped"
    stopped = _sweep(work, env, script=_TERM)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    err = stopped.stderr
    assert "Traceback" not in err
    assert "SIGTERM: stopping after the current round" in err
    assert "interrupted after round 5" in err and "rerun the same command to resume" in err
    assert "round 3/12  acc min" in err   # the progress line, as in runs
    assert _steps(work, NAMES[0]) == [4, 5] and _steps(work, NAMES[2]) == []
    assert _summary(work, NAMES[0])["status"] == "interrupted"
    assert _summary(work, NAMES[0])["checkpoint_round"] == 5

    resumed = _sweep(work, env, "--config.progress=False")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the checkpoint of round 5" in resumed.stderr
    _assert_same_as(reference, work)


def test_changed_sweep_value_on_rerun_is_exit_2_naming_the_field(reference, tmp_path_factory):
    before = {n: _records(reference, n) for n in NAMES}
    proc = _sweep(reference, _env(tmp_path_factory), "--sweep.seed=0,2", timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "sweep.seed: [0, 1] in the checkpoint, now [0, 2]" in proc.stderr
    assert {n: _records(reference, n) for n in NAMES} == before   # nothing was touched


def test_changed_base_field_on_rerun_names_it(reference):
    c = _config()
    c.learning_rate = 0.1
    with pytest.raises(ConfigError, match="learning_rate: 0.05 in the checkpoint, now 0.1"):
        sweep.run_sweep(c, VALUES, str(reference))
    c = _config()
    c.rounds = 4   # below the rounds the checkpoints hold
    with pytest.raises(ConfigError, match="rounds=4 is below the round of the checkpoint"):
        sweep.run_sweep(c, VALUES, str(reference))


def test_diverged_replica_stays_diverged_on_resume(tmp_path):
    base = smoke.get_config()
    base.rounds, base.tensorboard, base.progress, base.checkpoint_every = 3, False, False, 1
    values = {"learning_rate": [0.05, 1e30]}
    first = sweep.run_sweep(base, values, str(tmp_path))
    base.rounds = 5   # extend: the good replica goes on, the diverged one stays as it was
    again = sweep.run_sweep(base, values, str(tmp_path))
    assert [s["status"] for s in first] == [s["status"] for s in again] == [
        "completed", "diverged"]
    assert [s["rounds_run"] for s in first] == [3, 1]
    assert [s["rounds_run"] for s in again] == [5, 1]
    assert again[0]["resumed_from_round"] == 3
    assert [r["round"] for r in read_jsonl(tmp_path / "learning_rate=0.05" / "metrics.jsonl")] \
        == [1, 2, 3, 4, 5]
    assert read_jsonl(tmp_path / "learning_rate=1e+30" / "metrics.jsonl") == []
