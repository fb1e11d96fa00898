"""Tests for the command line (experiments/train.py) and the runner's handling of bad inputs."""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import networkx as nx
import pytest

from configs import smoke
from p2pl_jax import graphs, runner
from p2pl_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# See test_simulation.py: compiled executables are shared through a per-session disk cache; the
# subprocess below fills it with the smoke config's computations and test_simulation reuses them.
_JIT_CACHE = os.path.join(tempfile.gettempdir(), f"p2pl_jax_test_jit_cache_{os.getpid()}")
jax.config.update("jax_compilation_cache_dir", _JIT_CACHE)
atexit.register(shutil.rmtree, _JIT_CACHE, True)

RECORD_KEYS = {"round", "acc_min", "acc_mean", "acc_max", "test_loss", "consensus_distance",
               "wall_s"}
SUMMARY_KEYS = {"rounds_to_target", "final_acc_min", "final_acc_mean", "final_acc_max",
                "rounds_run", "wall_time_s", "compile_time_s", "backend", "jax_version"}


def _train(workdir, *overrides, timeout=300):
    env = dict(os.environ, P2PL_NO_TFDS="1", JAX_COMPILATION_CACHE_DIR=_JIT_CACHE)
    env.setdefault("P2PL_DATA_DIR", str(REPO.parent / "shared" / "data"))
    cmd = [sys.executable, "-m", "experiments.train", "--config=configs/smoke.py",
           f"--workdir={workdir}", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_smoke_run_writes_outputs(tmp_path, mnist_dir):
    workdir = tmp_path / "run"
    proc = _train(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((workdir / "config.json").read_text())
    assert config["num_devices"] == 4 and config["rounds"] == 2
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    for rec in records:
        assert RECORD_KEYS <= set(rec)
        assert 0.0 <= rec["acc_min"] <= rec["acc_mean"] <= rec["acc_max"] <= 1.0
    summary = json.loads((workdir / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["rounds_run"] == 2
    assert summary["final_acc_min"] == records[-1]["acc_min"]


def test_cli_bad_input_exits_2_without_traceback(tmp_path):
    proc = _train(tmp_path / "run", "--config.link_failure_prob=1.5", timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "link_failure_prob" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_data_exits_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _train(tmp_path / "run", f"--config.data_dir={empty}", timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "data_dir" in proc.stderr and "Traceback" not in proc.stderr


BAD = [
    ({"topology": "bogus"}, "topology='bogus'"),
    ({"mixing": "bogus"}, "mixing='bogus'"),
    ({"topology": "random_geometric", "graph_radius": 0.01}, "disconnected"),
    ({"link_failure_prob": 1.5}, "link_failure_prob=1.5"),
    ({"link_failure_prob": -0.1}, "link_failure_prob=-0.1"),
    ({"num_devices": 100_000}, "num_devices"),
    ({"algorithm": "bogus"}, "algorithm='bogus'"),
    ({"momentum": 1.0}, "momentum=1.0"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"eval_every": 0}, "eval_every=0"),
]


@pytest.mark.parametrize("overrides,match", BAD, ids=[m for _, m in BAD])
def test_runner_rejects_bad_config(tmp_path, mnist_dir, overrides, match):
    c = smoke.get_config()
    for k, v in overrides.items():
        setattr(c, k, v)
    with pytest.raises(ConfigError, match=match):
        runner.run(c, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_runner_missing_data(tmp_path):
    (tmp_path / "empty").mkdir()
    c = smoke.get_config()
    c.data_dir = str(tmp_path / "empty")
    with pytest.raises(ConfigError, match="data_dir"):
        runner.run(c, str(tmp_path / "run"))


def test_runner_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="workdir"):
        runner.run(smoke.get_config(), str(blocker / "run"))


def test_cli_group_skew_resampled_graph_and_data_size_mh(tmp_path, mnist_dir):
    """One real run with the three options of issue #12 part 3: the tuple field parses from the
    command line, the group sizes reach partition.json, the resampled graph's seed (seed 0 is
    disconnected at this radius, seed 2000 the first connected one: tests/test_graphs.py)
    reaches summary.json."""
    seeds = [k for k in range(100) if nx.is_connected(graphs.make_graph(
        "random_geometric", 4, seed=1000 * k, radius=0.4, allow_disconnected=True))]
    workdir = tmp_path / "run"
    proc = _train(workdir, "--config.rounds=1", "--config.partition=skew",
                  "--config.skew_fractions=(0.1, 0.9)", "--config.topology=random_geometric",
                  "--config.graph_radius=0.4", "--config.graph_resample=True",
                  "--config.mixing=data_size_mh", "--config.progress=False",
                  "--config.tensorboard=False")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((workdir / "config.json").read_text())["skew_fractions"] == [0.1, 0.9]
    assert json.loads((workdir / "partition.json").read_text())["sizes"] == [10, 10, 90, 90]
    summary = json.loads((workdir / "summary.json").read_text())
    assert seeds[0] > 0 and summary["graph_seed"] == 1000 * seeds[0]
    assert summary["mixing"] == "data_size_mh"


def test_graph_seed_is_none_without_a_graph(mnist_dir):
    c = smoke.get_config()
    c.seed = 3
    assert runner.build(c)[2]["graph_seed"] == 3          # cycle: the seed given, unused
    c.algorithm = "fedavg"
    assert runner.build(c)[2]["graph_seed"] is None
