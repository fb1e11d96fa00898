"""Sweeps as a batch axis equal separate runs with the same settings."""

import json
import os

import pytest

from configs import smoke
from p2pl_jax import runner, sweep
from p2pl_jax.errors import ConfigError


def _records(path):
    with open(os.path.join(path, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "wall_s"} for line in f]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    base = smoke.get_config()
    out = str(tmp_path_factory.mktemp("sweep"))
    values = {"seed": [0, 1], "learning_rate": [0.05, 0.1]}
    summaries = sweep.run_sweep(base, values, out)
    return base, out, summaries


def test_sweep_runs_all_replicas_in_one_program(swept):
    _, out, summaries = swept
    assert len(summaries) == 4
    assert all(s["replicas_in_program"] == 4 for s in summaries)
    names = sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d)))
    assert names == sorted(f"seed={s},learning_rate={lr}" for s in (0, 1) for lr in (0.05, 0.1))


@pytest.mark.parametrize("seed,lr", [(0, 0.05), (1, 0.1)])
def test_replica_equals_separate_run(swept, tmp_path, seed, lr):
    base, out, _ = swept
    c = smoke.get_config()
    c.seed, c.learning_rate = seed, lr
    runner.run(c, str(tmp_path))
    separate = _records(str(tmp_path))
    replica = _records(os.path.join(out, f"seed={seed},learning_rate={lr}"))
    assert len(separate) == len(replica) == base.rounds
    for a, b in zip(separate, replica):
        assert a["round"] == b["round"]
        for k in ("acc_min", "acc_mean", "acc_max"):
            assert a[k] == pytest.approx(b[k], abs=2e-4)   # at most 2 of 10k test images
        for k in ("test_loss", "train_loss", "consensus_distance"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6)


def test_sweep_rejects_bad_fields():
    base = smoke.get_config()
    with pytest.raises(ConfigError, match="allowed"):
        sweep.parse_values("hidden_sizes", "1,2", base.hidden_sizes)
    with pytest.raises(ConfigError, match="learning_rate"):
        sweep.parse_values("learning_rate", "0.1,abc", base.learning_rate)
    assert sweep.parse_values("mixing", "data_size, metropolis", base.mixing) == [
        "data_size", "metropolis"]


def test_diverging_replica_stops_alone(tmp_path):
    base = smoke.get_config()
    base.rounds, base.tensorboard = 3, False
    summaries = sweep.run_sweep(base, {"learning_rate": [0.05, 1e30]}, str(tmp_path))
    by_lr = {json.loads(open(os.path.join(tmp_path, d, "config.json")).read())["learning_rate"]:
             json.loads(open(os.path.join(tmp_path, d, "summary.json")).read())
             for d in os.listdir(tmp_path) if os.path.isdir(os.path.join(tmp_path, d))}
    assert len(summaries) == 2
    assert by_lr[0.05]["status"] == "completed" and by_lr[0.05]["rounds_run"] == 3
    assert by_lr[1e30]["status"] == "diverged" and by_lr[1e30]["rounds_run"] == 1
    assert len(_records(os.path.join(tmp_path, "learning_rate=0.05"))) == 3
