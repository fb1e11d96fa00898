"""Faults never pass silently: corrupt checkpoints, blown-up runs, a full disk, files in the way,
truncated metrics. Each test plants the fault and checks the exact outcome the README promises."""

import json
import math
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import ml_collections
import pytest

from configs import smoke
from p2pl_jax import runner, writers
from p2pl_jax.errors import ConfigError
from p2pl_jax.recorder import DivergenceError, check_finite, loss_limit

REPO = Path(__file__).resolve().parents[1]


def _config(**overrides) -> ml_collections.ConfigDict:
    c = smoke.get_config()
    c.tensorboard, c.progress = False, False
    for k, v in overrides.items():
        c[k] = v
    return c


def _records(workdir) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_s"}
            for r in writers.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def _flip_middle(folder: Path, nbytes: int = 64) -> Path:
    """Inverts `nbytes` bytes in the middle of the largest file under `folder`."""
    path = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, min(mid + nbytes, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A run of 3 rounds checkpointed every round (orbax keeps rounds 2 and 3), and a copy of
    its workdir to corrupt."""
    work = tmp_path_factory.mktemp("ck") / "run"
    runner.run(_config(rounds=3, checkpoint_every=1), str(work))
    return work


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def _resume_error(work: Path) -> str:
    with pytest.raises(ConfigError) as e:
        runner.run(_config(rounds=4, checkpoint_every=1), str(work))
    return str(e.value)


def test_flipped_bytes_in_the_arrays_name_the_corrupt_and_the_newest_good(checkpointed,
                                                                          tmp_path):
    work = _copy(checkpointed, tmp_path)
    _flip_middle(work / "checkpoints" / "3" / "state")
    msg = _resume_error(work)
    assert f"the checkpoint {work / 'checkpoints' / '3'} is corrupt" in msg
    assert f"the newest good checkpoint is round 2 ({work / 'checkpoints' / '2'})" in msg
    assert "rerun the same command to resume from round 2" in msg
    # the way out it names works, and gives the uninterrupted result
    shutil.move(work / "checkpoints" / "3", tmp_path / "corrupt")
    runner.run(_config(rounds=4, checkpoint_every=1), str(work))
    reference = tmp_path / "reference"
    runner.run(_config(rounds=4, checkpoint_every=1), str(reference))
    assert _records(work) == _records(reference)


def test_edited_metadata_is_corrupt_even_when_still_valid_json(checkpointed, tmp_path):
    work = _copy(checkpointed, tmp_path)
    meta = work / "checkpoints" / "3" / "meta" / "metadata"
    data = json.loads(meta.read_text())
    data["records"][0]["acc_min"] = 0.99           # a plausible, valid edit
    meta.write_text(json.dumps(data))
    msg = _resume_error(work)
    assert "checkpoints/3 is corrupt (its meta (checkpoint metadata) does not match" in msg
    assert "newest good checkpoint is round 2" in msg


def test_no_good_checkpoint_says_start_over(checkpointed, tmp_path):
    work = _copy(checkpointed, tmp_path)
    for step in ("2", "3"):
        _flip_middle(work / "checkpoints" / step / "state")
    msg = _resume_error(work)
    assert "checkpoints/3 is corrupt" in msg
    assert "no earlier checkpoint" in msg and "to start over" in msg


def test_a_blown_up_run_diverges_with_exit_3_and_strict_json(tmp_path):
    """The issue's example: learning_rate=1e6 used to say "completed" (exit 0) at chance
    accuracy and write `"consensus_distance": Infinity`."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("P2PL_TEST_SIGNAL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=configs/smoke.py",
         f"--workdir={tmp_path}", "--config.rounds=3", "--config.learning_rate=1e6",
         "--config.progress=False", "--config.tensorboard=False"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "training diverged at round 1" in proc.stderr
    assert "above the divergence limit" in proc.stderr and "learning_rate=1000000.0" in \
        proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())   # strict: raises on NaN
    assert summary["status"] == "diverged"
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON: {c}"))


def test_divergence_loss_factor_zero_keeps_only_the_non_finite_rule(tmp_path):
    # 1e3 is large enough to blow the smoke run's losses up but keeps them finite for 2 rounds
    c = _config(rounds=2, learning_rate=1e3, divergence_loss_factor=0.0)
    try:
        summary = runner.run(c, str(tmp_path / "off"))
        assert summary["status"] == "completed"
    except DivergenceError as e:   # non-finite values still stop the run
        assert "is not finite" in str(e)
    with pytest.raises(DivergenceError, match="above the divergence limit"):
        runner.run(_config(rounds=2, learning_rate=1e3), str(tmp_path / "on"))


def test_strict_json_writes_null_with_a_flag():
    text = writers.dumps({"a": 1.0, "b": math.inf, "c": [math.nan, 2], "d": {"e": -math.inf}})
    assert json.loads(text) == {"a": 1.0, "b": None, "c": [None, 2], "d": {"e": None},
                                "nonfinite": ["b", "c[0]", "d.e"]}


# --- the rule raises no false alarm on committed runs ---------------------------------------

def _committed_runs():
    for metrics in sorted((REPO / "docs").rglob("metrics.jsonl")):
        config = json.loads((metrics.parent / "config.json").read_text())
        yield metrics.parent, config, writers.read_jsonl(str(metrics))


def _alarm(config: dict, records: list[dict]) -> str | None:
    limit = loss_limit(100.0, 10)   # the default factor on 10-class MNIST
    for r in records:
        try:
            check_finite(r, r["round"], config["learning_rate"], limit=limit)
        except DivergenceError as e:
            return str(e)
    return None


def test_default_rule_raises_no_false_alarm_on_the_committed_runs():
    """Every committed run (docs/**/metrics.jsonl: the algorithm comparison and the divergence
    check of the reproduction's settings) is judged by the default rule. Only gradient
    tracking runs may alarm: its committed runs blew up (test loss 1e5 to 5e16, see
    docs/algorithms_results.md)."""
    judged, alarms = 0, {}
    for folder, config, records in _committed_runs():
        judged += 1
        alarm = _alarm(config, records)
        if alarm:
            alarms[str(folder.relative_to(REPO))] = (config["algorithm"], alarm)
    assert judged >= 40, judged
    assert {a for a, _ in alarms.values()} <= {"gradient_tracking"}, alarms


# --- files and folders in the way -----------------------------------------------------------

def test_checkpoints_folder_that_is_a_file_fails_before_training(tmp_path):
    (tmp_path / "checkpoints").write_text("not a folder")
    with pytest.raises(ConfigError, match="checkpoints is a file"):
        runner.run(_config(rounds=2), str(tmp_path))
    assert not (tmp_path / "metrics.jsonl").exists()   # nothing trained


def test_dangling_symlink_workdir_is_named(tmp_path):
    link = tmp_path / "w"
    link.symlink_to(tmp_path / "missing")
    with pytest.raises(ConfigError, match="symbolic link to .*missing.*which does not exist"):
        runner.run(_config(rounds=1), str(link))


def test_workdir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        runner.run(_config(rounds=1), str(tmp_path / "f"))


def test_user_error_leaves_no_stray_files_in_a_new_workdir(tmp_path):
    work, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="mnist"):   # no data: found only after set-up began
        runner.run(_config(data_dir=str(empty)), str(work))
    assert not work.exists()


def test_graph_facts_only_for_algorithms_that_use_the_graph(tmp_path):
    for algorithm in ("fedavg", "local"):
        s = runner.run(_config(rounds=1, algorithm=algorithm, mixing="auto"),
                       str(tmp_path / algorithm))
        assert s["diameter"] is None and s["num_edges"] is None, algorithm
    assert runner.run(_config(rounds=1), str(tmp_path / "p2pl"))["diameter"] is not None


# --- metrics.jsonl truncated by a kill ------------------------------------------------------

def test_truncated_last_metrics_line_is_rewritten_on_resume(checkpointed, tmp_path):
    work = _copy(checkpointed, tmp_path)
    path = work / "metrics.jsonl"
    text = path.read_text()
    path.write_text(text + text.splitlines()[-1][:17])   # a kill in the middle of a line
    runner.run(_config(rounds=4, checkpoint_every=1), str(work))
    reference = tmp_path / "reference"
    runner.run(_config(rounds=4, checkpoint_every=1), str(reference))
    assert _records(work) == _records(reference)


# --- the disk fills up during a checkpoint save ---------------------------------------------

def _mount_tmpfs(path: Path, size_kb: int) -> None:
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs",
                           str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")


def test_disk_full_during_a_save_keeps_the_previous_checkpoint_and_the_metrics(
        checkpointed, tmp_path):
    """A real full disk: the workdir of a checkpointed run is copied onto a tmpfs with room
    for less than one more checkpoint, and the run continues there."""
    used_kb = sum(p.stat().st_size for p in checkpointed.rglob("*") if p.is_file()) // 1024
    ckpt_kb = sum(p.stat().st_size for p in (checkpointed / "checkpoints" / "3").rglob("*")
                  if p.is_file()) // 1024
    disk = tmp_path / f"disk_{uuid.uuid4().hex[:6]}"
    _mount_tmpfs(disk, used_kb + ckpt_kb // 2 + 64)
    try:
        work = disk / "run"
        shutil.copytree(checkpointed, work)
        before = _records(work)
        with pytest.raises(ConfigError) as e:
            runner.run(_config(rounds=5, checkpoint_every=1), str(work))
        msg = str(e.value)
        assert "could not save the checkpoint of round 4" in msg
        assert "no space left on device" in msg
        assert "The checkpoint of round 3 is kept" in msg and "rerun the same command" in msg
        assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["2", "3"]
        assert _records(work)[:len(before)] == before            # the metrics survive
        # with space again, the run resumes from round 3 and equals an uninterrupted one
        moved = tmp_path / "run_moved"
        shutil.copytree(work, moved)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    runner.run(_config(rounds=5, checkpoint_every=1), str(moved))
    reference = tmp_path / "reference"
    runner.run(_config(rounds=5, checkpoint_every=1), str(reference))
    assert _records(moved) == _records(reference)


def test_disk_full_through_the_cli_is_one_message(checkpointed, tmp_path):
    """The same fault through experiments.train: exit 2, one line, none of orbax's tracebacks
    (its writer threads report a closed event loop several times when a write fails)."""
    used_kb = sum(p.stat().st_size for p in checkpointed.rglob("*") if p.is_file()) // 1024
    ckpt_kb = sum(p.stat().st_size for p in (checkpointed / "checkpoints" / "3").rglob("*")
                  if p.is_file()) // 1024
    disk = tmp_path / f"disk_{uuid.uuid4().hex[:6]}"
    _mount_tmpfs(disk, used_kb + ckpt_kb // 2 + 64)
    try:
        shutil.copytree(checkpointed, disk / "run")
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        env.pop("P2PL_TEST_SIGNAL", None)
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.train", "--config=configs/smoke.py",
             f"--workdir={disk / 'run'}", "--config.rounds=5", "--config.checkpoint_every=1",
             "--config.progress=False", "--config.tensorboard=False"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert "no space left on device" in line and "round 3 is kept" in line
