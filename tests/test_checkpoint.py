"""Checkpoints: orbax round trip, config fingerprints, and exact resume after a real SIGKILL.

The end-to-end tests run the real CLI (configs/smoke.py) in subprocesses that share a persistent
JAX compilation cache, so only the first one compiles.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from p2pl_jax import checkpoint
from p2pl_jax.errors import ConfigError
from p2pl_jax.writers import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def cli_env(tmp_path_factory) -> dict:
    """Environment for CLI subprocesses: CPU, no TFDS, one compilation cache per test session."""
    cache = tmp_path_factory.getbasetemp() / "jax_compilation_cache"
    return dict(os.environ, JAX_PLATFORMS="cpu", P2PL_NO_TFDS="1",
                JAX_COMPILATION_CACHE_DIR=str(cache),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


def train_cmd(workdir, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "experiments.train", "--config=configs/smoke.py",
            f"--workdir={workdir}", "--config.progress=False", *overrides]


def _steps(workdir) -> list[int]:
    folder = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() \
        else []


def _without_wall(records):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


def _csv_without_wall(path):
    rows = [line.split(",") for line in Path(path).read_text().splitlines()]
    drop = rows[0].index("wall_s")
    return [[v for i, v in enumerate(row) if i != drop] for row in rows]


# --- fingerprints ---------------------------------------------------------------------------

def test_fingerprint_ignores_resumable_fields_and_names_the_others():
    base = {"learning_rate": 0.05, "rounds": 10, "progress": True, "hidden_sizes": (16,)}
    same = checkpoint.fingerprint({**base, "rounds": 99, "progress": False})
    assert same == checkpoint.fingerprint(base) == {"learning_rate": 0.05, "hidden_sizes": [16]}
    checkpoint.check_fingerprint(checkpoint.fingerprint(base), same, "ck")
    other = checkpoint.fingerprint({**base, "learning_rate": 0.1, "hidden_sizes": (32,),
                                    "new_field": 1})
    with pytest.raises(ConfigError) as e:
        checkpoint.check_fingerprint(checkpoint.fingerprint(base), other, "ck")
    msg = str(e.value)
    assert "learning_rate: 0.05 in the checkpoint, now 0.1" in msg
    assert "hidden_sizes: [16] in the checkpoint, now [32]" in msg
    assert "new_field: not in the checkpoint" in msg
    assert "rounds" in msg   # the fields that may change are listed


# --- orbax round trip ------------------------------------------------------------------------

def _fake_state(x: float):
    return {"params": {"w": jnp.full((3, 2), x, jnp.float32)},
            "opt": (jnp.arange(3, dtype=jnp.int32), None),
            "round": jnp.asarray(7, jnp.int32), "rng": jax.random.PRNGKey(3),
            "key": jax.random.key(5)}


def test_save_restore_round_trip_keeps_two_and_ignores_partial_saves(tmp_path):
    ck = checkpoint.Checkpointer(str(tmp_path / "ck"))
    assert ck.restore() is None
    for r in (2, 4, 6):
        ck.save(r, _fake_state(float(r)), {"fingerprint": {"a": 1}, "records": [{"round": r}],
                                           "rounds_to_target": None, "wall_s": 1.5})
    ck.save(6, _fake_state(-1.0), {"fingerprint": {}, "records": []})   # same round: no-op
    ck.close()
    assert _steps_in(tmp_path / "ck") == [4, 6]
    # a save killed half-way leaves an orbax temporary folder: never mistaken for a checkpoint
    (tmp_path / "ck" / "8.orbax-checkpoint-tmp-123" / "state").mkdir(parents=True)
    ck = checkpoint.Checkpointer(str(tmp_path / "ck"))
    got = ck.restore()
    assert got.round == 6 and got.meta["records"] == [{"round": 6}]
    state = checkpoint.into_state(_fake_state(0.0), got.arrays, got.meta["leaves"], "ck")
    want = _fake_state(6.0)
    assert jax.tree.structure(state) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(want)):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    # a template of another shape (another code version) is a clear error
    other = {**_fake_state(0.0), "params": {"w": jnp.zeros((4, 2))}}
    with pytest.raises(ConfigError, match=r"\['params'\]\['w'\].*\(3, 2\).*\(4, 2\)"):
        checkpoint.into_state(other, got.arrays, got.meta["leaves"], "ck")
    ck.close()
    assert not (tmp_path / "ck" / "8.orbax-checkpoint-tmp-123").exists()


def _steps_in(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


# --- the real CLI: SIGKILL, resume, SIGTERM, resume -----------------------------------------

def test_a_checkpoint_of_the_old_format_is_refused_plainly(tmp_path, monkeypatch):
    """Format 1 (before the algorithm state and message counters) cannot be resumed: the error
    says so and names the folder, it is not reported as corrupt."""
    monkeypatch.setattr(checkpoint, "FORMAT", 1)
    ck = checkpoint.Checkpointer(str(tmp_path / "ck"))
    ck.save(3, _fake_state(1.0), {"fingerprint": {}, "records": [], "rounds_to_target": None,
                                  "wall_s": 0.0})
    ck.close()
    monkeypatch.undo()
    ck = checkpoint.Checkpointer(str(tmp_path / "ck"))
    with pytest.raises(ConfigError, match="older p2pl-jax.*format 1") as e:
        ck.restore()
    assert "corrupt" not in str(e.value) and str(tmp_path / "ck" / "3") in str(e.value)
    ck.close()


def test_sigkill_sigterm_then_resume_equals_uninterrupted_run(tmp_path, tmp_path_factory,
                                                              mnist_dir):
    env = cli_env(tmp_path_factory)
    rounds = ["--config.rounds=30", "--config.checkpoint_every=2"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    ref = subprocess.run(train_cmd(full, *rounds), cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)   # first: fills the compilation cache
    assert ref.returncode == 0, ref.stderr[-3000:]
    victim = subprocess.Popen(train_cmd(killed, *rounds), cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not any(s >= 4 for s in _steps(killed)) and victim.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint of round >= 4 appeared"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    at_kill = max(_steps(killed))
    assert 4 <= at_kill < 30

    # resume, stop that run with SIGTERM (it checkpoints the round in progress), resume again
    stopped = subprocess.Popen(train_cmd(killed, *rounds), cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while max(_steps(killed)) < at_kill + 4 and stopped.poll() is None:
        assert time.monotonic() < deadline, "the resumed run made no progress"
        time.sleep(0.01)
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=240)
    assert stopped.returncode == 130, err[-3000:]
    assert f"resuming from the checkpoint of round {at_kill}" in err
    assert "Traceback" not in err and "rerun the same command to resume" in err
    at_term = max(_steps(killed))
    assert at_kill + 4 <= at_term < 30 and f"interrupted after round {at_term}" in err

    resumed = subprocess.run(train_cmd(killed, *rounds), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from the checkpoint of round {at_term}" in resumed.stderr

    a, b = read_jsonl(full / "metrics.jsonl"), read_jsonl(killed / "metrics.jsonl")
    assert [r["round"] for r in a] == list(range(1, 31))
    assert _without_wall(b) == _without_wall(a)
    assert _csv_without_wall(killed / "metrics.csv") == _csv_without_wall(full / "metrics.csv")
    sa = json.loads((full / "summary.json").read_text())
    sb = json.loads((killed / "summary.json").read_text())
    assert sb["resumed_from_round"] == at_term and sa["resumed_from_round"] is None
    for key in ("status", "rounds_run", "final_acc_min", "final_acc_mean", "rounds_to_target"):
        assert sb[key] == sa[key], key
    # the final states are bit-identical too
    ca = checkpoint.Checkpointer(str(full / "checkpoints")).restore()
    cb = checkpoint.Checkpointer(str(killed / "checkpoints")).restore()
    assert ca.round == cb.round == 30
    for k in ca.arrays:
        np.testing.assert_array_equal(ca.arrays[k], cb.arrays[k])
    # TensorBoard event files were written (the resumed run purges the killed run's tail)
    assert list((killed / "tensorboard").glob("events.out.tfevents.*"))



# --- divergence ------------------------------------------------------------------------------

_INJECT_NAN = """
import sys
import jax, jax.numpy as jnp
from absl import app
from p2pl_jax import simulation
from experiments import train

_step = simulation.Simulator.step

def step(self, state, hp, **kw):   # parameters become NaN in round 5
    new, metrics, *rest = _step(self, state, hp, **kw)
    if int(new.round) == 5:
        new = new.replace(params=jax.tree.map(lambda p: p * jnp.nan, new.params))
        metrics = dict(metrics, params_finite=jnp.asarray(False))
    return (new, metrics, *rest)

simulation.Simulator.step = step
app.run(train.main, flags_parser=train.parse_flags)
"""


def test_divergence_stops_with_round_and_cause_keeping_last_good_checkpoint(
        tmp_path, tmp_path_factory, mnist_dir):
    cmd = train_cmd(tmp_path, "--config.rounds=8", "--config.eval_every=3",
                    "--config.checkpoint_every=4")
    proc = subprocess.run([sys.executable, "-c", _INJECT_NAN, *cmd[3:]], cwd=REPO,
                          env=cli_env(tmp_path_factory), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "diverged between round 5 and round 6" in proc.stderr
    assert "a parameter is not finite" in proc.stderr and "learning_rate=0.05" in proc.stderr
    assert [r["round"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [3]
    assert _steps(tmp_path) == [4]
    good = checkpoint.Checkpointer(str(tmp_path / "checkpoints")).restore()
    assert all(np.isfinite(a).all() for a in good.arrays.values() if a.dtype.kind == "f")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["checkpoint_round"] == 4
