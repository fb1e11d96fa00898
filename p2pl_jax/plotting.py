"""Figures from run directories (matplotlib, Agg backend; host-side only).

A run directory is what `runner.run` writes: metrics.jsonl (one JSON object per evaluated round),
config.json, summary.json, partition.json. Figures:
  plot_runs         accuracy vs round (mean over devices, band = min..max over devices) and
                    consensus distance (log scale) in a second panel; several runs overlaid.
                    A curve can pool several seeds of one setting: the line is the mean over
                    seeds of the device-mean accuracy, the band the min over seeds of acc_min to
                    the max over seeds of acc_max.
  plot_rounds_to_target  bars of rounds-to-target, mean ± std over seeds; a hatched bar up to
                    the round cap for a setting that never reached the target.
  plot_partition    devices × classes heat map of partition.json label histograms, with the
                    per-device sample counts above it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from p2pl_jax import algorithms  # noqa: E402
from p2pl_jax.errors import ConfigError  # noqa: E402

# Config fields that name a setting, with the default that is left out of a label.
_LABEL_FIELDS = (("topology", "complete"), ("mixing", "data_size"), ("partition", "iid"),
                 ("sync", "max_norm"), ("link_failure_prob", 0.0))


@dataclasses.dataclass
class Run:
    """One run directory's contents: metrics as arrays keyed by field (each [num_evals])."""

    path: str
    metrics: dict[str, np.ndarray]
    config: dict
    summary: dict


def load_run(path: str) -> Run:
    """Reads path/metrics.jsonl (required) and config.json, summary.json (optional)."""
    metrics_path = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(metrics_path):
        raise FileNotFoundError(f"{metrics_path} not found: is {path!r} a run directory "
                                "written by experiments.train?")
    rows = []
    with open(metrics_path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    keys = sorted({k for r in rows for k in r})
    metrics = {k: np.array([r.get(k, np.nan) for r in rows], dtype=float) for k in keys}

    def read(name):
        p = os.path.join(path, name)
        if not os.path.exists(p):
            return {}
        with open(p) as f:
            return json.load(f)

    return Run(path=path, metrics=metrics, config=read("config.json"),
               summary=read("summary.json"))


def _uses_graph(algorithm: str) -> bool:
    try:
        return algorithms.get(algorithm).uses_graph
    except ConfigError:   # a run of an unknown algorithm: label it by name
        return False


def default_label(config: dict, fallback: str = "run") -> str:
    """A short label from a run's config: the algorithm, then the fields that differ from the
    headline setting (e.g. 'p2pl random_geometric metropolis p=0.5')."""
    if not config:
        return fallback
    algo = config.get("algorithm", "p2pl")
    if not _uses_graph(algo):
        return f"{algo} {config.get('partition', 'iid')}" if config.get(
            "partition", "iid") != "iid" else algo
    parts = [algo]
    for field, default in _LABEL_FIELDS:
        value = config.get(field, default)
        if field == "topology":
            parts.append(str(value))
        elif value != default:
            parts.append(f"p={value:g}" if field == "link_failure_prob" else
                         f"sync={value}" if field == "sync" else str(value))
    return " ".join(parts)


def _pool(runs: Sequence[Run]) -> dict[str, np.ndarray]:
    """Pools seeds on the union of their evaluated rounds: mean of acc_mean and consensus
    distance over the seeds that have the round, min of acc_min, max of acc_max."""
    rounds = np.unique(np.concatenate([r.metrics["round"] for r in runs]))
    out = {"round": rounds}
    for key, reduce in (("acc_mean", np.nanmean), ("acc_min", np.nanmin),
                        ("acc_max", np.nanmax), ("consensus_distance", np.nanmean)):
        table = np.full((len(runs), len(rounds)), np.nan)
        for i, r in enumerate(runs):
            if key in r.metrics:
                table[i, np.searchsorted(rounds, r.metrics["round"])] = r.metrics[key]
        with np.errstate(all="ignore"):
            valid = ~np.all(np.isnan(table), axis=0)
            col = np.full(len(rounds), np.nan)
            if valid.any():
                col[valid] = reduce(table[:, valid], axis=0)
        out[key] = col
    return out


def _accuracy_floor(curves: Sequence[dict]) -> float:
    """A lower y limit that keeps the region near the target readable: the 10th percentile of
    the device-min accuracy over all curves, minus a margin (between 0 and 0.9)."""
    mins = np.concatenate([c["acc_min"][~np.isnan(c["acc_min"])] for c in curves] or [[0.0]])
    if mins.size == 0:
        return 0.0
    lo = float(np.percentile(mins, 10)) - 0.02
    return float(np.clip(math.floor(lo * 20) / 20, 0.0, 0.9))


def plot_runs(groups: Sequence[tuple[str, Sequence[Run]]], out_png: str, *,
              title: str | None = None, target: float | None = None,
              ylim: tuple[float, float] | None = None) -> str:
    """Accuracy vs round (band = device min..max) and consensus distance (log), one curve per
    (label, runs) group; a group's runs are seeds of one setting, pooled as in `_pool`.

    Consensus distance is exactly 0 when all models are identical (complete graph, FedAvg);
    such points cannot be drawn on a log axis and are marked at the bottom edge instead.
    Returns out_png.
    """
    if not groups:
        raise ValueError("plot_runs needs at least one group of runs")
    curves = [(label, _pool(runs)) for label, runs in groups]
    fig, (ax_acc, ax_cd) = plt.subplots(1, 2, figsize=(13, 4.8),
                                        gridspec_kw={"width_ratios": [1.35, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    zero_labels = []
    for i, (label, c) in enumerate(curves):
        color = colors[i % len(colors)]
        r = c["round"]
        seeds = len(groups[i][1])
        text = label if seeds == 1 else f"{label} ({seeds} seeds)"
        ok = ~np.isnan(c["acc_mean"])
        marker = "o" if ok.sum() <= 25 else None
        ax_acc.plot(r[ok], c["acc_mean"][ok], color=color, lw=1.8, label=text, marker=marker,
                    ms=3)
        band = ok & ~np.isnan(c["acc_min"]) & ~np.isnan(c["acc_max"])
        ax_acc.fill_between(r[band], c["acc_min"][band], c["acc_max"][band], color=color,
                            alpha=0.18, lw=0)
        cd = c["consensus_distance"]
        pos = ~np.isnan(cd) & (cd > 0)
        if pos.any():
            ax_cd.plot(r[pos], cd[pos], color=color, lw=1.8, label=label, marker=marker, ms=3)
        zero = ~np.isnan(cd) & (cd <= 0)
        if zero.any():
            zero_labels.append((label, color, r[zero]))
    if target is not None:
        ax_acc.axhline(target, color="k", ls="--", lw=1, label=f"target {target:.0%}")
    lo = ylim[0] if ylim else _accuracy_floor([c for _, c in curves])
    hi = ylim[1] if ylim else 1.0
    ax_acc.set_ylim(lo, hi)
    for ax in (ax_acc, ax_cd):
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax_acc.set_xlabel("round")
    ax_acc.set_ylabel("test accuracy (line: device mean; band: min–max)")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=8, loc="lower right")
    ax_cd.set_yscale("log")
    ax_cd.set_xlabel("round")
    ax_cd.set_ylabel("consensus distance  sqrt(mean ||θ_n − θ̄||²)")
    ax_cd.grid(alpha=0.3, which="both")
    if zero_labels:
        # Identical models: draw markers on the lower edge (axes coordinates for y).
        trans = ax_cd.get_xaxis_transform()
        for label, color, rounds in zero_labels:
            ax_cd.plot(rounds, np.full(len(rounds), 0.02), color=color, ls="none", marker="|",
                       ms=8, transform=trans, label=f"{label}: 0 (identical models)")
    low, high = ax_cd.get_ylim()
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax_cd.yaxis.set_major_formatter(plain)
    if high / max(low, 1e-30) < 10:   # less than a decade: label the minor ticks too
        ax_cd.yaxis.set_minor_formatter(plain)
    if ax_cd.get_legend_handles_labels()[0]:
        ax_cd.legend(fontsize=8, loc="best")
    else:
        ax_cd.text(0.5, 0.5, "no consensus distance recorded", ha="center",
                   transform=ax_cd.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out_png)
    return out_png


def plot_rounds_to_target(entries: Sequence[dict], out_png: str, *, cap: int,
                          title: str | None = None, target: float | None = None) -> str:
    """Bar chart of rounds-to-target.

    entries: dicts with 'label' and 'rounds' (one value per seed: an int, or None when that
    seed did not reach the target within `cap` rounds). A bar is the mean over the seeds that
    reached, error bar = their std; 'k/n' is written over a bar when only k of n seeds reached.
    A setting no seed finished is drawn as a hatched, empty bar up to `cap`, marked
    'not reached'. Returns out_png.
    """
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(entries) + 2), 4.4))
    x = np.arange(len(entries))
    ymax = cap
    for i, e in enumerate(entries):
        vals = [v for v in e["rounds"] if v is not None]
        n = len(e["rounds"])
        if vals:
            mean = float(np.mean(vals))
            std = float(np.std(vals)) if len(vals) > 1 else 0.0
            ax.bar(i, mean, color="C0", alpha=0.85, yerr=std if len(vals) > 1 else None,
                   capsize=4)
            note = f"{mean:.3g}" + (f"\n{len(vals)}/{n} seeds" if len(vals) < n else "")
            ax.text(i, mean + std + 0.01 * cap, note, ha="center", va="bottom", fontsize=8)
            ymax = max(ymax, mean + std)
        else:
            ax.bar(i, cap, facecolor="none", edgecolor="C3", hatch="//", lw=1.2)
            ax.text(i, cap * 0.5, f"not reached\nin {cap}", ha="center", va="center",
                    fontsize=8, color="C3", rotation=90 if len(entries) > 6 else 0,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})
    ax.set_xticks(x)
    ax.set_xticklabels([e["label"] for e in entries], rotation=25 if len(entries) > 3 else 0,
                       ha="right" if len(entries) > 3 else "center", fontsize=8)
    goal = f"{target:.0%} " if target is not None else ""
    ax.set_ylabel(f"rounds until every device ≥ {goal}target")
    ax.set_ylim(0, ymax * 1.18)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, out_png)
    return out_png


def plot_partition(partition_json: str, out_png: str, *, title: str | None = None) -> str:
    """Heat map of a partition: classes (rows) × devices (columns), the colour the share of the
    device's samples in that class; above it, each device's sample count. Returns out_png."""
    with open(partition_json) as f:
        part = json.load(f)
    hist = np.asarray(part["label_histograms"], dtype=float)   # [N, C]
    sizes = np.asarray(part.get("sizes", hist.sum(axis=1)), dtype=float)
    n, num_classes = hist.shape
    share = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    fig, (ax_size, ax_map) = plt.subplots(
        2, 1, figsize=(min(max(6.0, 0.12 * n + 3), 16), 5.2), sharex=True,
        gridspec_kw={"height_ratios": [1, 2.2]}, layout="constrained")
    ax_size.bar(np.arange(n), sizes, width=1.0, color="C0", lw=0)
    if sizes.max() > 20 * max(sizes.min(), 1):
        ax_size.set_yscale("log")
    ax_size.set_ylabel("samples")
    ax_size.grid(axis="y", alpha=0.3)
    im = ax_map.imshow(share.T, aspect="auto", cmap="viridis", vmin=0, vmax=1,
                       interpolation="nearest", extent=(-0.5, n - 0.5, num_classes - 0.5, -0.5))
    ax_map.set_yticks(np.arange(num_classes))
    ax_map.set_ylabel("class")
    ax_map.set_xlabel("device")
    cbar = fig.colorbar(im, ax=ax_map, fraction=0.03, pad=0.01)
    cbar.set_label("share of the device's samples")
    fig.suptitle(title or f"partition: {n} devices, {int(sizes.sum())} samples "
                 f"(min {int(sizes.min())}, max {int(sizes.max())} per device)")
    _save(fig, out_png)
    return out_png


def _save(fig, out_png: str) -> None:
    folder = os.path.dirname(os.path.abspath(out_png))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
