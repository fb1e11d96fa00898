"""Figures from run directories: files are written, pooling over seeds is right, CLI works."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import same_color

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
    np.testing.assert_allclose(pooled["acc_min_mean"], [0.72, 0.82, 0.94])   # the solid line


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
    assert_user_error(plot_cli(a, f"--out={out}", "--x=energy"), "--x=energy", "energy_cum_j",
                      "channel=wireless")


def test_accuracy_against_energy(tmp_path):
    """--x=energy: the accuracy panel's x values are the records' energy_cum_j (pooled over
    seeds as the mean at each round), labelled as energy; the consensus panel keeps rounds."""
    runs = []
    for seed, scale in ((0, 1.0), (1, 3.0)):
        d = write_run(tmp_path / f"s{seed}", [1, 2, 3], [0.8, 0.9, 0.95])
        recs = [json.loads(line) for line in open(d / "metrics.jsonl")]
        with open(d / "metrics.jsonl", "w") as f:
            for r in recs:
                f.write(json.dumps({**r, "energy_cum_j": scale * 10.0 * r["round"]}) + "\n")
        runs.append(plotting.load_run(str(d)))
    fig = plotting.figure_runs([("wireless", runs)], x="energy")
    ax_acc, ax_cd = fig.axes[:2]
    np.testing.assert_allclose(ax_acc.lines[0].get_xdata(), [20.0, 40.0, 60.0])
    assert "energy" in ax_acc.get_xlabel() and ax_cd.get_xlabel() == "round"
    np.testing.assert_allclose(ax_cd.lines[0].get_xdata(), [1, 2, 3])


# ----------------------------------------------------------------- issue #11: the CLI contract


def plot_cli(*args):
    """Runs `python -m experiments.plot ARGS` as a user would."""
    return subprocess.run([sys.executable, "-m", "experiments.plot", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))


def assert_user_error(res, *names):
    """Exit status 2, one `error:` message naming each of `names`, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.stderr.count("error: ") == 1, res.stderr
    for name in names:
        assert str(name) in res.stderr, (name, res.stderr)


def test_load_run_bad_metrics(tmp_path):
    """Empty file, malformed middle line: RunDataError naming the file (and line); a truncated
    last line: the records before it and a warning naming file and line."""
    d = write_run(tmp_path / "a", [1, 2, 3], [0.8, 0.9, 0.95])
    good = (d / "metrics.jsonl").read_text()
    (d / "metrics.jsonl").write_text(good + '{"round": 4, "acc_mi')
    run = plotting.load_run(str(d))
    np.testing.assert_array_equal(run.metrics["round"], [1, 2, 3])
    assert len(run.warnings) == 1 and "metrics.jsonl line 4" in run.warnings[0]
    lines = good.splitlines(keepends=True)
    (d / "metrics.jsonl").write_text(lines[0] + "{not json\n" + "".join(lines[1:]))
    with pytest.raises(plotting.RunDataError, match=r"metrics.jsonl line 2 is malformed"):
        plotting.load_run(str(d))
    (d / "metrics.jsonl").write_text("")
    with pytest.raises(plotting.RunDataError, match="metrics.jsonl has no records"):
        plotting.load_run(str(d))
    # Strict JSON's non-finite values: null, listed under "nonfinite".
    (d / "metrics.jsonl").write_text(
        '{"round": 1, "acc_min": 0.1, "acc_mean": 0.2, "acc_max": 0.3, "test_loss": null, '
        '"nonfinite": ["test_loss"]}\n')
    run = plotting.load_run(str(d))
    assert np.isnan(run.metrics["test_loss"][0]) and "nonfinite" not in run.metrics


def test_cli_bad_run_directories(tmp_path):
    """Item 1: empty metrics.jsonl, malformed line, missing directory / metrics.jsonl,
    malformed config.json: exit 2 naming the file; a truncated last line: a figure and a
    warning naming file and line."""
    out = tmp_path / "fig.png"
    empty = write_run(tmp_path / "empty", [], [])
    assert_user_error(plot_cli(empty, f"--out={out}"), empty / "metrics.jsonl", "no records")
    bad = write_run(tmp_path / "bad", [1, 2, 3], [0.8, 0.9, 0.95])
    lines = (bad / "metrics.jsonl").read_text().splitlines(keepends=True)
    (bad / "metrics.jsonl").write_text(lines[0] + '{"round": 2, "acc_m\n' + "".join(lines[1:]))
    assert_user_error(plot_cli(bad, f"--out={out}"), bad / "metrics.jsonl", "line 2")
    (bad / "metrics.jsonl").write_text("".join(lines) + '{"round": 4, "acc_m')
    res = plot_cli(bad, f"--out={out}")
    assert res.returncode == 0 and out.exists(), res.stderr
    assert "warning" in res.stderr and f"{bad / 'metrics.jsonl'} line 4" in res.stderr
    assert_user_error(plot_cli(tmp_path / "nowhere", f"--out={out}"), tmp_path / "nowhere")
    (tmp_path / "nometrics").mkdir()   # the CLI reports load_run's FileNotFoundError as above
    with pytest.raises(FileNotFoundError, match="nometrics/metrics.jsonl not found"):
        plotting.load_run(str(tmp_path / "nometrics"))
    conf = write_run(tmp_path / "conf", [1, 2], [0.8, 0.9])
    (conf / "config.json").write_text('{"algorithm": "p2pl",')
    assert_user_error(plot_cli(conf, f"--out={out}"), conf / "config.json")


def test_cli_unwritable_outputs_and_bad_flags(tmp_path):
    """Items 2 and 3: --out / --partition_out under a file; unknown flag, bad float, no DIR."""
    d = write_run(tmp_path / "a", [1, 2, 3], [0.8, 0.9, 0.95])
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert_user_error(plot_cli(d, f"--out={blocker / 'fig.png'}"), "--out", blocker)
    assert_user_error(plot_cli(d, f"--out={tmp_path / 'ok.png'}",
                               f"--partition_out={blocker / 'sub' / 'p.png'}"),
                      "--partition_out", blocker)
    assert_user_error(plot_cli(d, f"--out={tmp_path / 'ok.png'}", "--bogus=1"), "bogus")
    assert_user_error(plot_cli(d, f"--out={tmp_path / 'ok.png'}", "--target=high"), "target")
    assert_user_error(plot_cli(f"--out={tmp_path / 'ok.png'}"), "run directory")
    assert not (tmp_path / "ok.png").exists()


def test_output_problem(tmp_path):
    """Item 2 in-process: what makes an output path unusable, found before anything is drawn."""
    (tmp_path / "file").write_text("x")
    assert plotting.output_problem(str(tmp_path / "new" / "deeper" / "fig.png")) is None
    assert "which is a file" in plotting.output_problem(str(tmp_path / "file" / "a" / "fig.png"))
    assert "is a directory" in plotting.output_problem(str(tmp_path))
    assert "unknown image format 'xyz'" in plotting.output_problem(str(tmp_path / "fig.xyz"))
    assert plotting.output_problem("") == "is empty"


def test_default_labels_tell_runs_apart():
    """Item 4: labels from the fields that differ; directory names when the configs are equal;
    always unique; the shared algorithm / topology as a title."""
    base = {"algorithm": "p2pl", "topology": "cycle", "learning_rate": 0.05, "seed": 0,
            "data_dir": "/a", "target_accuracy": 0.97}
    configs = [base, dict(base, learning_rate=0.1), dict(base, seed=1, data_dir="/b")]
    assert len({plotting.default_label(c) for c in configs}) == 1   # the old CLI's labels
    labels = plotting.default_labels(configs, ["runs/x", "runs/y", "runs/z"])
    assert labels == ["learning_rate=0.05, seed=0", "learning_rate=0.1, seed=0",
                      "learning_rate=0.05, seed=1"]
    assert plotting.common_label(configs) == "p2pl cycle"
    assert plotting.default_labels([base, base], ["runs/a/seed0", "runs/b/seed0"]) == [
        "a/seed0", "b/seed0"]
    assert plotting.default_labels([base, base], ["runs/a", "runs/a"]) == ["a", "a (2)"]
    assert plotting.default_labels([{}, {}], ["x", "y"]) == ["x", "y"]
    assert plotting.default_labels([base], ["runs/x"]) == ["p2pl cycle"]
    mixed = [dict(base, topology="complete"), base]
    assert plotting.default_labels(mixed, ["a", "b"]) == ["topology=complete", "topology=cycle"]
    assert plotting.common_label(mixed) == "p2pl"


def _curves_figure(tmp_path, n, *, ylim=None):
    r = np.arange(1, 21)
    groups = []
    for k in range(n):
        acc = 0.97 - (0.6 + 0.05 * k) / r   # round 1: 0.37 - 0.05 k, far below the old floor
        groups.append((f"s{k}", [plotting.load_run(str(write_run(tmp_path / f"s{k}", r, acc,
                                                                 spread=0.05)))]))
    return plotting.figure_runs(groups, target=0.97, ylim=ylim), groups


def test_accuracy_axis_shows_every_point(tmp_path):
    """Item 6: the lower y limit is at most the smallest plotted accuracy (acc_min included);
    an explicit ylim that cuts points says so on the figure."""
    fig, groups = _curves_figure(tmp_path, 2)
    ax = fig.axes[0]
    smallest = min(float(np.nanmin(g[0].metrics["acc_min"])) for _, g in groups)
    lo, hi = ax.get_ylim()
    assert lo <= smallest and hi >= 0.97
    for line in ax.lines:
        y = np.asarray(line.get_ydata(), dtype=float)
        assert y.size == 0 or lo <= y.min() <= y.max() <= hi
    plotting.plt.close(fig)
    fig, _ = _curves_figure(tmp_path, 2, ylim=(0.8, 1.0))
    assert any("below 0.8 not shown" in t.get_text() for t in fig.axes[0].texts)
    plotting.plt.close(fig)


def test_legend_outside_the_axes(tmp_path):
    """Item 5: no legend inside either panel; the figure's legend (settings, line styles)
    lies below them."""
    fig, _ = _curves_figure(tmp_path, 2)
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert len(fig.legends) == 1
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            axes = ax.get_window_extent(renderer)
            assert box.y1 <= axes.y0 + 1   # below the axes
    plotting.plt.close(fig)


def test_worst_device_solid_mean_dashed_bands_dropped(tmp_path):
    """Item 7: per setting a solid acc_min line and a dashed, thinner mean line; light bands
    for up to 3 settings, none for more."""
    fig, groups = _curves_figure(tmp_path, 2)
    ax = fig.axes[0]
    for i, (_, (run,)) in enumerate(groups):
        mine = [ln for ln in ax.lines if same_color(ln.get_color(), f"C{i}")]
        solid = [ln for ln in mine if ln.get_linestyle() == "-"]
        dashed = [ln for ln in mine if ln.get_linestyle() == "--"]
        assert len(solid) == 1 and len(dashed) == 1
        np.testing.assert_allclose(solid[0].get_ydata(), run.metrics["acc_min"])
        np.testing.assert_allclose(dashed[0].get_ydata(), run.metrics["acc_mean"])
        assert dashed[0].get_linewidth() < solid[0].get_linewidth()
    assert len(ax.collections) == 2 and all(c.get_alpha() <= 0.12 for c in ax.collections)
    plotting.plt.close(fig)
    fig, _ = _curves_figure(tmp_path, 4)
    assert len(fig.axes[0].collections) == 0
    plotting.plt.close(fig)
