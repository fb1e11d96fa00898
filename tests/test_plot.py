"""Figures from run directories: files are written, pooling over seeds is right, CLI works."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from p2pl_jax import plotting

ROOT = Path(__file__).resolve().parents[1]


def write_run(path: Path, rounds, acc_mean, *, spread=0.01, consensus=0.5, config=None,
              hist=None):
    """A fake run directory (metrics.jsonl, config.json, partition.json)."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "metrics.jsonl", "w") as f:
        for r, a in zip(rounds, acc_mean):
            f.write(json.dumps({"round": int(r), "acc_min": a - spread, "acc_mean": a,
                                "acc_max": a + spread, "test_loss": 1 - a,
                                "consensus_distance": consensus / r if consensus else 0.0,
                                "train_loss": 1 - a, "links_up": 1.0, "wall_s": float(r)})
                    + "\n")
    (path / "config.json").write_text(json.dumps(config or {"algorithm": "p2pl",
                                                           "topology": "cycle",
                                                           "target_accuracy": 0.97}))
    hist = hist if hist is not None else [[5] * 10 for _ in range(6)]
    (path / "partition.json").write_text(json.dumps(
        {"sizes": [sum(h) for h in hist], "label_histograms": hist}))
    return path


def test_load_run_and_default_label(tmp_path):
    d = write_run(tmp_path / "a", [1, 2, 3], [0.8, 0.9, 0.95],
                  config={"algorithm": "p2pl", "topology": "random_geometric",
                          "mixing": "metropolis", "link_failure_prob": 0.5})
    run = plotting.load_run(str(d))
    np.testing.assert_array_equal(run.metrics["round"], [1, 2, 3])
    assert plotting.default_label(run.config) == "p2pl random_geometric metropolis p=0.5"
    assert plotting.default_label({"algorithm": "fedavg"}) == "fedavg"
    assert plotting.default_label({}, "dir") == "dir"
    with pytest.raises(FileNotFoundError, match="run directory"):
        plotting.load_run(str(tmp_path / "missing"))


def test_pool_over_seeds_of_unequal_length(tmp_path):
    a = plotting.load_run(str(write_run(tmp_path / "a", [1, 2, 3], [0.8, 0.9, 0.95])))
    b = plotting.load_run(str(write_run(tmp_path / "b", [1, 2], [0.7, 0.8], spread=0.05)))
    pooled = plotting._pool([a, b])
    np.testing.assert_array_equal(pooled["round"], [1, 2, 3])
    np.testing.assert_allclose(pooled["acc_mean"], [0.75, 0.85, 0.95])
    np.testing.assert_allclose(pooled["acc_min"], [0.65, 0.75, 0.94])   # min over seeds
    np.testing.assert_allclose(pooled["acc_max"], [0.81, 0.91, 0.96])   # max over seeds


def test_plot_runs_overlays_and_handles_zero_consensus(tmp_path):
    r = np.arange(1, 31)
    sparse = [plotting.load_run(str(write_run(tmp_path / f"s{k}", r, 0.97 - 0.2 / r)))
              for k in range(2)]
    complete = plotting.load_run(str(write_run(tmp_path / "c", r[:20], 0.98 - 0.2 / r[:20],
                                               consensus=0.0)))
    out = plotting.plot_runs([("sparse", sparse), ("complete", [complete])],
                             str(tmp_path / "fig" / "acc.png"), title="t", target=0.97)
    assert os.path.getsize(out) > 10_000


def test_rounds_to_target_bars_and_partition(tmp_path):
    out = plotting.plot_rounds_to_target(
        [{"label": "all", "rounds": [10, 12, 14]}, {"label": "some", "rounds": [20, None, 30]},
         {"label": "none", "rounds": [None, None]}], str(tmp_path / "bars.png"), cap=50,
        target=0.97, title="bars")
    assert os.path.getsize(out) > 5_000
    hist = [[30, 30, 0, 0], [0, 0, 5, 55], [1, 1, 1, 1]]
    d = write_run(tmp_path / "p", [1], [0.5], hist=hist)
    out = plotting.plot_partition(str(d / "partition.json"), str(tmp_path / "part.png"))
    assert os.path.getsize(out) > 5_000


def test_cli(tmp_path):
    a = write_run(tmp_path / "a", [1, 2, 3], [0.8, 0.9, 0.95])
    b = write_run(tmp_path / "b", [1, 2, 3], [0.85, 0.92, 0.97], consensus=0.0)
    out = tmp_path / "fig.png"
    res = subprocess.run(
        [sys.executable, "-m", "experiments.plot", str(a), str(b), f"--out={out}",
         "--labels=first,second", "--title=two runs", f"--partition_out={tmp_path / 'p.png'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert out.exists() and (tmp_path / "p.png").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "experiments.plot", str(a), f"--out={out}", "--labels=x,y"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--labels" in bad.stderr
