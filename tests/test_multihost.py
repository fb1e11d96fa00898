"""Multi-process runs for real: several `experiments.train` processes on 127.0.0.1, joined by
jax.distributed (CPU collectives over gloo), each with 4 forced CPU devices.

  - 2 processes x 4 devices (through scripts/multihost_local.sh) equal 1 process x 8 devices
    (the same 8-way mesh: bit for bit in every parameter; the round metrics' cross-process sums
    to float32 rounding) and the unsharded run (to float32 rounding: the local phase is laid out
    differently);
  - a process killed with SIGKILL at a save (the other fails at its next exchange), then the
    rerun resumes and a SIGTERM to one process stops both after the same round, checkpointed:
    metrics and state equal the uninterrupted run's at that round exactly;
  - an unreachable coordinator, too few processes and processes with different configs are one
    clear message and status 2 within the timeout, never a hang or a C++ abort.

Process start-up and compilation dominate, so the config is tiny (configs/smoke.py, 8 devices).
"""

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from p2pl_jax import distributed, writers

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 4
ARGS = ["--config=configs/smoke.py", "--config.num_devices=8", f"--config.rounds={ROUNDS}",
        "--config.checkpoint_every=1", "--config.progress=False", "--config.tensorboard=False",
        "--config.distributed_timeout_s=60"]
TIMEOUT = 240


def _env(devices: int, **extra: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.pop("P2PL_TEST_SIGNAL", None)
    env.update(extra)
    return env


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single(workdir: Path, *extra: str, devices: int = 8) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.train", *ARGS,
                           f"--workdir={workdir}", *extra], cwd=REPO, env=_env(devices),
                          capture_output=True, text=True, timeout=TIMEOUT)


def _launch(workdir: Path, per_process: list[dict], *, num_processes: int | None = None,
            extra: tuple = ()) -> list[subprocess.CompletedProcess]:
    """One process per entry of `per_process` ({"env": {...}, "args": [...]}) on a fresh
    port; returns them once all have ended."""
    port, n = _port(), num_processes or len(per_process)
    procs = []
    for i, p in enumerate(per_process):
        cmd = [sys.executable, "-m", "experiments.train", *ARGS, f"--workdir={workdir}",
               "--config.shard=True", "--config.distributed=True",
               f"--config.coordinator_address=127.0.0.1:{port}",
               f"--config.num_processes={n}", f"--config.process_id={i}", *extra,
               *p.get("args", ())]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(4, **p.get("env", {})),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        out.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return out


def _records(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "wall_s"} for line in lines]


def _state(workdir: Path, step: int = ROUNDS) -> dict[str, np.ndarray]:
    """The arrays of the checkpoint of round `step` (verified against its checksums)."""
    from p2pl_jax import checkpoint

    return checkpoint.Checkpointer(str(workdir / "checkpoints"))._read(step).arrays


def _launcher(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/multihost_local.sh", "2", *ARGS,
                           f"--workdir={workdir}"], cwd=REPO,
                          env=_env(1, DEVICES_PER_PROCESS="4", PYTHON=sys.executable),
                          capture_output=True,
                          text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same config four ways: 2 x 4 through the launcher script, 1 x 8, unsharded (these
    three side by side), and 2 x 4 killed, resumed and stopped by a signal (`faulted`)."""
    root = tmp_path_factory.mktemp("multihost")
    dirs = {k: root / k for k in ("two", "one", "plain", "faulted")}
    with ThreadPoolExecutor(3) as pool:
        script = pool.submit(_launcher, dirs["two"])
        one = pool.submit(_single, dirs["one"], "--config.shard=True")
        plain = pool.submit(_single, dirs["plain"], devices=1)
        script, singles = script.result(), {"one": one.result(), "plain": plain.result()}
    faulted = [
        # process 1 dies at its second save (round 2's): round 1's checkpoint is the newest
        _launch(dirs["faulted"], [{}, {"env": {"P2PL_TEST_SIGNAL": "save@2:SIGKILL"}}]),
        # resumed; SIGTERM to process 1 during its second round (round 3): both stop after it
        # and checkpoint it, which is compared with the uninterrupted run's round-3 checkpoint
        _launch(dirs["faulted"], [{}, {"env": {"P2PL_TEST_SIGNAL": "round@2:SIGTERM"}}]),
    ]
    return dirs, script, singles, faulted


def test_launcher_runs_two_processes(runs):
    dirs, script, _, _ = runs
    assert script.returncode == 0, script.stderr[-3000:]
    assert "[p0] " in script.stdout and "[p1] " in script.stdout
    summary = json.loads((dirs["two"] / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_run"] == ROUNDS


def test_two_processes_equal_one_process_and_unsharded(runs):
    dirs, script, singles, _ = runs
    for name, proc in singles.items():
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
    two, one, plain = (_records(dirs[k]) for k in ("two", "one", "plain"))
    assert [r["round"] for r in two] == list(range(1, ROUNDS + 1))
    for ref, rel in ((one, 1e-6), (plain, 1e-5)):
        assert len(ref) == len(two)
        for a, b in zip(two, ref):
            assert a.keys() == b.keys()
            for k in a:
                assert a[k] == pytest.approx(b[k], rel=rel, abs=1e-7), (k, a["round"])
    s_two, s_one, s_plain = (_state(dirs[k]) for k in ("two", "one", "plain"))
    assert s_two.keys() == s_one.keys() == s_plain.keys()
    for k in s_two:   # the same 8-way program: every parameter bit for bit
        np.testing.assert_array_equal(s_two[k], s_one[k], err_msg=k)
        np.testing.assert_allclose(s_two[k], s_plain[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_only_process_0_writes_the_workdir(runs):
    dirs, _, _, _ = runs
    names = sorted(p.name for p in dirs["two"].iterdir())
    assert names == ["checkpoints", "config.json", "metrics.csv", "metrics.jsonl",
                     "partition.json", "summary.json"]
    step = dirs["two"] / "checkpoints" / str(ROUNDS) / "state"
    assert sorted(p.name for p in step.glob("ocdbt.process_*")) == ["ocdbt.process_0"]


def test_killed_then_signalled_run_resumes_to_the_uninterrupted_result(runs):
    dirs, _, _, (killed, signalled) = runs
    assert killed[1].returncode == -9
    assert killed[0].returncode == 1, killed[0].stderr[-2000:]
    assert "this process of the distributed run failed" in killed[0].stderr
    for proc in signalled:   # both processes stop after the same round, checkpointed
        assert proc.returncode == 130, proc.stderr[-2000:]
        assert "resuming from the checkpoint of round 1" in proc.stderr
        assert "interrupted (SIGTERM after round 3)" in proc.stderr
    assert "another process of this run was sent SIGTERM" in signalled[0].stderr
    assert _records(dirs["faulted"]) == _records(dirs["two"])[:3]
    a, b = _state(dirs["faulted"], 3), _state(dirs["two"], 3)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    summary = json.loads((dirs["faulted"] / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["resumed_from_round"] == 1


def test_processes_that_see_different_checkpoints_stop_with_one_message(runs, tmp_path):
    """A workdir that is not shared: process 0 finds round 4's checkpoint, process 1 none."""
    dirs = runs[0]
    procs = _launch(dirs["two"], [{}, {"args": [f"--workdir={tmp_path / 'elsewhere'}"]}])
    for proc in procs:
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert ("the checkpoints folder differs from process 0's in process(es) [1]. Every "
                "process must see the same workdir") in proc.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_cluster_errors_are_one_message_and_status_2(tmp_path):
    fast = ("--config.distributed_timeout_s=3",)
    with ThreadPoolExecutor(3) as pool:
        # process 1 alone, its coordinator never started
        lone = pool.submit(_launch, tmp_path / "lone", [{"args": ["--config.process_id=1"]}],
                           num_processes=2, extra=fast)
        # 2 processes started for num_processes=3
        short = pool.submit(_launch, tmp_path / "short", [{}, {}], num_processes=3,
                            extra=fast)
        # the processes build different simulations
        differ = pool.submit(_launch, tmp_path / "differ",
                             [{}, {"args": ["--config.seed=5"]}])
        lone, short, differ = lone.result(), short.result(), differ.result()
    (proc,) = lone
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "after distributed_timeout_s=3 s, the coordinator 127.0.0.1:" in proc.stderr
    assert "was never reachable" in proc.stderr
    for i, proc in enumerate(short):
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "not every process joined (coordinator 127.0.0.1:" in proc.stderr
        assert f"this process {i} of 3)" in proc.stderr
    for proc in differ:
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert ("do not build the same simulation: config differs from process 0's in "
                "process(es) [1]; partition differs") in proc.stderr
    for name in ("lone", "short", "differ"):   # a set-up error leaves no files
        assert not (tmp_path / name).exists()
    for proc in (*lone, *short, *differ):
        assert "Traceback" not in proc.stderr and "Fatal" not in proc.stderr


def _config(**fields):
    from configs import smoke

    c = smoke.get_config()
    c.update(fields)
    return c


@pytest.mark.parametrize("fields, message", [
    (dict(num_processes=2), "num_processes name the processes of a multi-process run"),
    (dict(distributed=True), "allowed: shard=True with it"),
    (dict(distributed=True, shard=True, num_processes=2),
     "coordinator_address, process_id unset while the other cluster fields are set"),
    (dict(distributed=True, shard=True, coordinator_address="10.0.0.1", num_processes=2,
          process_id=0), "coordinator_address='10.0.0.1': allowed host:port"),
    (dict(distributed=True, shard=True, coordinator_address="h:1", num_processes=2,
          process_id=2), "process_id=2: allowed 0 .. 1"),
    (dict(distributed=True, shard=True, coordinator_address="h:1", num_processes=0,
          process_id=0), "num_processes unset while the other cluster fields are set"),
    (dict(distributed=True, shard=True, distributed_timeout_s=0),
     "distributed_timeout_s=0: allowed an integer >= 1"),
])
def test_cluster_fields_are_checked(fields, message):
    from p2pl_jax.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        distributed.validate(_config(**fields))
    assert message in str(err.value)


def test_cluster_fields_unset_or_complete_are_accepted():
    distributed.validate(_config())
    distributed.validate(_config(distributed=True, shard=True))   # JAX detects the cluster
    distributed.validate(_config(distributed=True, shard=True, coordinator_address="h:1",
                                 num_processes=2, process_id=1))


def test_a_process_other_than_0_writes_no_files(tmp_path):
    writers.set_primary(False)
    try:
        writers.write_json(str(tmp_path / "a.json"), {"x": 1})
        w = writers.MetricsWriter(str(tmp_path), [{"round": 1, "acc_min": 0.5}],
                                  tensorboard=True)
        w.write({"round": 2, "acc_min": 0.6})
        w.close()
        assert len(w.records) == 2
    finally:
        writers.set_primary(True)
    assert list(tmp_path.iterdir()) == []


def test_benchmark_counts_the_bytes_that_cross_processes():
    """benchmarks/multihost.py's figures against hand counts: 8 devices, 4 per process."""
    from benchmarks.multihost import hlo_cross_bytes, needed_cross_bytes

    hlo = "\n".join([
        # the [16, 10] float32 stack gathered over the 8-device mesh: each process receives
        # the other's half, 320 bytes; 2 processes
        "%all-gather.2 = f32[16,10]{1,0} all-gather(%x), channel_id=36, "
        "replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}, dimensions={0}",
        "%get-tuple-element.1 = s32[16]{0} get-tuple-element(%all-reduce.10), index=0",
        "%fusion.1 = f32[2,8]{1,0} fusion(%all-gather, %p), kind=kLoop",
        # two int32 scalars all-reduced: 2 x (8 bytes x 1/2) x 2 processes
        "%all-reduce.11 = (s32[], s32[]) all-reduce(%a, %b), channel_id=75, "
        "replica_groups=mesh['axis_0'=8] {'axis_0'}, use_global_device_ids=true",
        # 16 bytes along 3 pairs, one of which (0 -> 4) crosses
        "%collective-permute.1 = f32[4]{0} collective-permute(%c), "
        "source_target_pairs={{0,4},{1,2},{5,6}}",
        # an explicit group inside process 0 moves nothing between processes
        "%all-gather.3 = f32[8]{0} all-gather(%d), replica_groups={{0,1,2,3},{4,5,6,7}}",
    ])
    cross, kinds = hlo_cross_bytes(hlo, [0] * 4 + [1] * 4)
    assert cross == 16 * 10 * 4 + 2 * 8 * 0.5 * 2 + 16
    assert kinds == {"all-gather": 640 + 32, "all-reduce": 8, "collective-permute": 16}
    # a cycle of 8 (self + 2 neighbours): each process needs 2 rows of the other
    n = 8
    idx = np.stack([np.arange(n), (np.arange(n) - 1) % n, (np.arange(n) + 1) % n], 1)
    assert needed_cross_bytes(idx, 2, 100) == 4 * 100
    assert needed_cross_bytes(idx, 4, 100) == 8 * 100
    assert needed_cross_bytes(idx, 1, 100) == 0
