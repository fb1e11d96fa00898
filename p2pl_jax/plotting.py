"""Figures from run directories (matplotlib, Agg backend; host-side only).

A run directory is what `runner.run` writes: metrics.jsonl (one JSON object per evaluated round),
config.json, summary.json, partition.json; `load_run` reads one (a malformed file raises
RunDataError naming it, a truncated last metrics line is skipped with a warning). Labels for
runs plotted together: `default_labels` (the config fields that differ between them). Figures:
  plot_runs         accuracy vs round per setting: the worst device's accuracy (acc_min, what
                    rounds-to-target is about) solid, the device mean dashed, a light
                    min..max band (up to MAX_BANDS settings), every point inside the y axis;
                    consensus distance (log scale) in a second panel; the legend below both.
                    A curve can pool several seeds of one setting: the lines are means over
                    seeds, the band the min over seeds of acc_min to the max of acc_max.
                    `figure_runs` returns the same figure unsaved.
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
import matplotlib.figure
import matplotlib.lines
import matplotlib.patches

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from p2pl_jax import algorithms  # noqa: E402
from p2pl_jax.errors import ConfigError  # noqa: E402
from p2pl_jax.writers import NONFINITE  # noqa: E402

# Config fields that name a setting, with the default that is left out of a label.
_LABEL_FIELDS = (("topology", "complete"), ("mixing", "data_size"), ("partition", "iid"),
                 ("sync", "max_norm"), ("link_failure_prob", 0.0))


class RunDataError(ConfigError):
    """A run directory's file is malformed (names the file, and the line for metrics.jsonl)."""


@dataclasses.dataclass
class Run:
    """One run directory's contents: metrics as arrays keyed by field (each [num_evals]).

    warnings: what was skipped while reading (a truncated last line of metrics.jsonl)."""

    path: str
    metrics: dict[str, np.ndarray]
    config: dict
    summary: dict
    warnings: list[str] = dataclasses.field(default_factory=list)


def _number(value) -> float:
    """A record value as a float; NaN for null (strict JSON's non-finite) or a non-number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _read_metrics(metrics_path: str) -> tuple[list[dict], list[str]]:
    """The records of a metrics.jsonl and warnings. A last line that is not a whole record (the
    run was stopped while writing it) is skipped with a warning; any other malformed line, or no
    record at all, raises RunDataError naming the file and line."""
    try:
        with open(metrics_path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError as e:
        raise RunDataError(f"cannot read {metrics_path}: {e.strerror or e}") from e
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    rows, warnings = [], []
    for k, (number, line) in enumerate(numbered):
        try:
            row = json.loads(line)
            problem = (None if isinstance(row, dict) and math.isfinite(_number(row.get("round")))
                       else "not a record with a numeric 'round'")
        except json.JSONDecodeError as e:
            row, problem = None, f"not valid JSON ({e.msg}, column {e.colno})"
        if problem is None:
            rows.append(row)
        elif k == len(numbered) - 1 and rows:
            warnings.append(f"{metrics_path} line {number} is incomplete ({problem}): the run "
                            f"was probably stopped while writing it; plotting the {len(rows)} "
                            "records before it")
        else:
            raise RunDataError(f"{metrics_path} line {number} is malformed: {problem}")
    if not rows:
        raise RunDataError(f"{metrics_path} has no records (an empty file: did the run stop "
                           "before its first evaluation?)")
    return rows, warnings


def _read_json(path: str) -> dict:
    """A run directory's JSON object file ({} when absent); RunDataError when malformed."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except OSError as e:
        raise RunDataError(f"cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:   # JSONDecodeError, UnicodeDecodeError
        raise RunDataError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise RunDataError(f"{path} must hold a JSON object, not {type(obj).__name__}")
    return obj


def load_run(path: str) -> Run:
    """Reads path/metrics.jsonl (required) and config.json, summary.json (optional).

    Raises FileNotFoundError when path or its metrics.jsonl does not exist, RunDataError when a
    file is malformed or metrics.jsonl holds no record. A truncated last line of metrics.jsonl
    is skipped and named in Run.warnings."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"run directory {path!r} does not exist")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is not a directory: give a run directory written by "
                                "experiments.train")
    metrics_path = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(metrics_path):
        raise FileNotFoundError(f"{metrics_path} not found: is {path!r} a run directory "
                                "written by experiments.train?")
    rows, warnings = _read_metrics(metrics_path)
    keys = sorted({k for r in rows for k in r} - {NONFINITE})
    metrics = {k: np.array([_number(r.get(k)) for r in rows], dtype=float) for k in keys}
    return Run(path=path, metrics=metrics, config=_read_json(os.path.join(path, "config.json")),
               summary=_read_json(os.path.join(path, "summary.json")), warnings=warnings)


def _uses_graph(algorithm: str) -> bool:
    try:
        return algorithms.get(algorithm).uses_graph
    except ConfigError:   # a run of an unknown algorithm: label it by name
        return False


def _describe(config: dict, *, present_only: bool = False) -> str:
    """The algorithm, then the setting fields that differ from the headline setting. Absent
    fields count as their defaults, or with present_only are left out (topology included)."""
    algo = config.get("algorithm", "p2pl")
    fields = [(f, d) for f, d in _LABEL_FIELDS if not present_only or f in config]
    if not _uses_graph(algo):
        fields = [(f, d) for f, d in fields if f == "partition"]
    parts = [str(algo)]
    for field, default in fields:
        value = config.get(field, default)
        if field == "topology":
            parts.append(str(value))
        elif value != default:
            parts.append(f"p={value:g}" if field == "link_failure_prob" else
                         f"sync={value}" if field == "sync" else str(value))
    return " ".join(parts)


def default_label(config: dict, fallback: str = "run") -> str:
    """A short label from one run's config: the algorithm, then the fields that differ from the
    headline setting (e.g. 'p2pl random_geometric metropolis p=0.5'); `fallback` without a
    config. It does not tell apart runs that differ elsewhere (learning rate, seed): label runs
    plotted together with `default_labels`."""
    if not config:
        return fallback
    return _describe(config)


# Config fields that do not change what a run computes (where it runs, what it logs): left out
# of the labels built from the fields that differ between runs.
_NOT_SETTINGS = frozenset({"checkpoint_every", "consensus_backend", "data_dir", "device_block",
                           "distributed", "eval_device_chunk", "eval_example_chunk", "progress",
                           "shard", "tensorboard", "workdir"})
_FIRST_FIELDS = ("algorithm",) + tuple(f for f, _ in _LABEL_FIELDS)
_MISSING = object()


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _text(value) -> str:
    if value is _MISSING:
        return "unset"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "x".join(_text(v) for v in value) or "[]"
    return str(value)


def _short_names(paths: Sequence[str]) -> list[str]:
    """The shortest trailing parts of the paths that tell them apart ('lr0.05/seed0')."""
    parts = [os.path.normpath(os.path.abspath(p)).split(os.sep) for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return ["/".join(p[-1:]) for p in parts]


def _unique(labels: list[str]) -> list[str]:
    """Labels made unique by numbering repeats ('a', 'a (2)')."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def differing_fields(configs: Sequence[dict]) -> list[str]:
    """The config fields (nested ones dotted) whose values are not the same in all `configs`,
    leaving out fields that do not change what a run computes; algorithm and the setting fields
    of `default_label` first, seed last, the rest alphabetical."""
    flat = [_flat(c) for c in configs]
    keys = sorted({k for c in flat for k in c} - _NOT_SETTINGS)
    differ = [k for k in keys if len({json.dumps(c[k], sort_keys=True, default=str)
                                      if k in c else None for c in flat}) > 1]
    rank = {k: i for i, k in enumerate(_FIRST_FIELDS)}
    return sorted(differ, key=lambda k: (rank.get(k, len(rank)), k == "seed", k))


def default_labels(configs: Sequence[dict], paths: Sequence[str]) -> list[str]:
    """Unique labels for runs plotted together: the config fields that differ between them
    ('learning_rate=0.05, seed=1'). Runs whose configs are all equal (or absent) are named by
    the shortest distinguishing end of their directory paths; one run gets `default_label`."""
    if len(configs) != len(paths):
        raise ValueError(f"{len(configs)} configs for {len(paths)} paths")
    names = _short_names(paths) if paths else []
    if len(configs) == 1:
        return [default_label(configs[0], names[0])]
    fields = differing_fields(configs)
    if not fields:
        return _unique(names)
    flat = [_flat(c) for c in configs]
    labels = [", ".join(f"{k}={_text(c.get(k, _MISSING))}" for k in fields) for c in flat]
    # Configs equal in every field shown (e.g. two copies of one run): add the directory.
    counts = {label: labels.count(label) for label in labels}
    labels = [f"{label} ({name})" if counts[label] > 1 else label
              for label, name in zip(labels, names)]
    return _unique(labels)


def common_label(configs: Sequence[dict]) -> str | None:
    """What all runs share, in `default_label`'s words ('p2pl cycle'), from its fields that are
    equal in every config (a title for runs labelled by `default_labels`); None when they do
    not share an algorithm."""
    if not configs or not all(configs):
        return None
    shared = {k: configs[0][k] for k in _FIRST_FIELDS
              if k in configs[0] and all(k in c and c[k] == configs[0][k] for c in configs)}
    if "algorithm" not in shared:
        return None
    return _describe(shared, present_only=True)


# --x of experiments.plot: the metric on the accuracy panel's x axis, and its label.
X_AXES = {"round": ("round", "round"),
          "bytes": ("bytes_cum", "bytes sent by all devices (cumulative)"),
          "energy": ("energy_cum_j", "energy of all devices (J, cumulative; channel=wireless)"),
          "sim_time": ("sim_time_cum_s", "simulated time (s, cumulative; channel=wireless)")}


def _pool(runs: Sequence[Run], x: str = "round") -> dict[str, np.ndarray]:
    """Pools seeds on the union of their evaluated rounds: mean of acc_mean and consensus
    distance over the seeds that have the round, min of acc_min, max of acc_max, and
    acc_min_mean, the mean over seeds of the worst device's accuracy; with `x` another
    X_AXES metric, "x" is its mean over the seeds at each round."""
    rounds = np.unique(np.concatenate([r.metrics["round"] for r in runs]))
    out = {"round": rounds}
    x_source = X_AXES[x][0]
    extra = (("x", x_source, np.nanmean),) if x_source != "round" else ()
    for key, source, reduce in (("acc_mean", "acc_mean", np.nanmean),
                                ("acc_min", "acc_min", np.nanmin),
                                ("acc_max", "acc_max", np.nanmax),
                                ("acc_min_mean", "acc_min", np.nanmean),
                                ("consensus_distance", "consensus_distance", np.nanmean)
                                ) + extra:
        table = np.full((len(runs), len(rounds)), np.nan)
        for i, r in enumerate(runs):
            if source in r.metrics:
                table[i, np.searchsorted(rounds, r.metrics["round"])] = r.metrics[source]
        with np.errstate(all="ignore"):
            valid = ~np.all(np.isnan(table), axis=0)
            col = np.full(len(rounds), np.nan)
            if valid.any():
                col[valid] = reduce(table[:, valid], axis=0)
        out[key] = col
    if not extra:
        out["x"] = rounds.astype(np.float64)
    return out


def _accuracy_limits(values: np.ndarray, target: float | None) -> tuple[float, float]:
    """y limits that show every plotted accuracy (and the target): the smallest value less a
    margin, rounded down to 0.05, to the largest (or the target) plus a margin, at most 1."""
    values = values[np.isfinite(values)]
    lo_data = float(values.min()) if values.size else 0.0
    hi_data = float(values.max()) if values.size else 1.0
    if target is not None:
        lo_data, hi_data = min(lo_data, target), max(hi_data, target)
    lo = min(max(math.floor((lo_data - 0.02) * 20) / 20, 0.0), lo_data)
    hi = max(min(math.ceil((hi_data + 0.01) * 20) / 20, 1.0), hi_data)
    if hi - lo < 0.05:
        lo = max(hi - 0.05, min(0.0, lo))
    return lo, hi


class _PlainLogFormatter(ticker.LogFormatter):
    """A log axis's tick labels as plain numbers ('0.4', not '4 x 10^-1')."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:g}"


def _rows_first(blocks: Sequence[Sequence], ncol: int) -> list:
    """Legend handles ordered so that a legend of `ncol` columns (filled column by column)
    shows each block row by row, every block starting on a new row (blank entries pad)."""
    grid = []
    for block in blocks:
        block = list(block)
        rows = math.ceil(len(block) / ncol)
        grid += [block[r * ncol:(r + 1) * ncol] for r in range(rows)]
    blank = matplotlib.lines.Line2D([], [], alpha=0.0, label=" ")
    grid = [row + [blank] * (ncol - len(row)) for row in grid]
    return [grid[r][c] for c in range(ncol) for r in range(len(grid))]


# More settings than this in one figure: no min-max bands (they overlap into one blur).
MAX_BANDS = 3


def figure_runs(groups: Sequence[tuple[str, Sequence[Run]]], *, title: str | None = None,
                target: float | None = None, ylim: tuple[float, float] | None = None,
                bands: bool | None = None, x: str = "round") -> matplotlib.figure.Figure:
    """The figure of `plot_runs` (not saved): axes[0] accuracy against `x` (X_AXES),
    axes[1] consensus distance against the round."""
    if not groups:
        raise ValueError("plot_runs needs at least one group of runs")
    x_source, x_label = X_AXES[x]
    for _, runs in groups:
        for run in runs:
            if x_source not in run.metrics:
                raise ConfigError(f"--x={x} plots {x_source}, which {run.path}/metrics.jsonl "
                                  "does not record" + (" (a run with channel=wireless does)"
                                                       if x in ("energy", "sim_time") else ""))
    curves = [(label, _pool(runs, x), len(runs)) for label, runs in groups]
    bands = len(curves) <= MAX_BANDS if bands is None else bands
    pooled = any(n > 1 for _, _, n in curves)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rows = math.ceil(len(curves) / 3) + 2
    fig, (ax_acc, ax_cd) = plt.subplots(1, 2, figsize=(13, 4.4 + 0.2 * rows),
                                        layout="constrained",
                                        gridspec_kw={"width_ratios": [1.35, 1]})
    handles, keys, plotted, zero_any = [], [], [], False
    for i, (label, c, seeds) in enumerate(curves):
        color = colors[i % len(colors)]
        r, xs = c["round"], c["x"]
        worst, mean = c["acc_min_mean"], c["acc_mean"]
        ok_w, ok_m = ~np.isnan(worst) & ~np.isnan(xs), ~np.isnan(mean) & ~np.isnan(xs)
        marker = "o" if ok_w.sum() <= 25 else None
        ax_acc.plot(xs[ok_w], worst[ok_w], color=color, lw=2.0, marker=marker, ms=3.5,
                    zorder=3)
        ax_acc.plot(xs[ok_m], mean[ok_m], color=color, lw=1.1, ls="--", alpha=0.9, zorder=2)
        plotted += [worst[ok_w], mean[ok_m]]
        if bands:
            band = ~np.isnan(c["acc_min"]) & ~np.isnan(c["acc_max"]) & ~np.isnan(xs)
            ax_acc.fill_between(xs[band], c["acc_min"][band], c["acc_max"][band], color=color,
                                alpha=0.10, lw=0, zorder=1)
            plotted += [c["acc_min"][band], c["acc_max"][band]]
        handles.append(matplotlib.lines.Line2D(
            [], [], color=color, lw=2.0, marker=marker, ms=3.5,
            label=label if seeds == 1 else f"{label} ({seeds} seeds)"))
        cd = c["consensus_distance"]
        pos = ~np.isnan(cd) & (cd > 0)
        if pos.any():
            ax_cd.plot(r[pos], cd[pos], color=color, lw=1.8, marker=marker, ms=3)
        zero = ~np.isnan(cd) & (cd <= 0)
        if zero.any():
            # Identical models (log axis): markers on the lower edge (axes coordinates for y).
            zero_any = True
            ax_cd.plot(r[zero], np.full(zero.sum(), 0.02), color=color, ls="none", marker="|",
                       ms=8, transform=ax_cd.get_xaxis_transform())
    worst_text = ("worst device (mean over seeds)" if pooled else "worst device") + " — solid"
    keys.append(matplotlib.lines.Line2D([], [], color="0.25", lw=2.0, label=worst_text))
    keys.append(matplotlib.lines.Line2D([], [], color="0.25", lw=1.1, ls="--",
                                        label="device mean — dashed"))
    if bands:
        keys.append(matplotlib.patches.Patch(
            color="0.25", alpha=0.18, lw=0,
            label="band: device min–max" + (" over seeds" if pooled else "")))
    if target is not None:
        ax_acc.axhline(target, color="k", ls=":", lw=1.2, zorder=2)
        keys.append(matplotlib.lines.Line2D([], [], color="k", ls=":", lw=1.2,
                                            label=f"target {target:.0%}"))
    if zero_any:
        keys.append(matplotlib.lines.Line2D(
            [], [], color="0.25", ls="none", marker="|", ms=8,
            label="right panel, bottom edge: consensus distance 0 (identical models)"))
    values = np.concatenate(plotted) if plotted else np.zeros(0)
    if ylim is None:
        ax_acc.set_ylim(*_accuracy_limits(values, target))
    else:
        ax_acc.set_ylim(*ylim)
        below, above = int((values < ylim[0]).sum()), int((values > ylim[1]).sum())
        cut = ([f"{below} points below {ylim[0]:g}"] if below else []) + (
            [f"{above} points above {ylim[1]:g}"] if above else [])
        if cut:
            ax_acc.text(0.01, 0.01, " and ".join(cut) + " not shown", fontsize=8,
                        transform=ax_acc.transAxes, va="bottom", color="C3")
    for ax in (ax_acc, ax_cd) if x == "round" else (ax_cd,):
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_xlabel("round")
    if x != "round":
        ax_acc.set_xlabel(x_label)
    ax_acc.set_ylabel("test accuracy")
    ax_acc.grid(alpha=0.3)
    ax_cd.set_yscale("log")
    ax_cd.set_ylabel("consensus distance  sqrt(mean ||θ_n − θ̄||²)")
    ax_cd.grid(alpha=0.3, which="both")
    low, high = ax_cd.get_ylim()
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax_cd.yaxis.set_major_formatter(plain)
    if high / max(low, 1e-30) < 10:   # less than a decade: label the minor ticks too
        ax_cd.yaxis.set_minor_formatter(plain)
    else:   # the minor ticks matplotlib labels (a few decades), in plain numbers
        ax_cd.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))
    if not ax_cd.lines:
        ax_cd.text(0.5, 0.5, "no consensus distance recorded", ha="center",
                   transform=ax_cd.transAxes)
    # Outside the axes, below both panels, so it never covers a curve.
    ncol = 3
    fig.legend(handles=_rows_first([handles, keys], ncol), loc="outside lower center",
               ncol=ncol, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def plot_runs(groups: Sequence[tuple[str, Sequence[Run]]], out_png: str, *,
              title: str | None = None, target: float | None = None,
              ylim: tuple[float, float] | None = None, bands: bool | None = None,
              x: str = "round") -> str:
    """Accuracy vs round and consensus distance (log), one colour per (label, runs) group; a
    group's runs are seeds of one setting, pooled as in `_pool`.

    Accuracy: the worst device's (acc_min, what rounds-to-target is about; with seeds, the mean
    over seeds) as a solid line, the device mean dashed, and a light band from the device min
    to max (over seeds), drawn when `bands` (default: at most MAX_BANDS groups). The y axis
    shows every point unless `ylim` is given; points it leaves out are counted on the figure.
    Consensus distance is exactly 0 when all models are identical (complete graph, FedAvg);
    such points cannot be drawn on a log axis and are marked at the bottom edge instead.
    The legend lies below the panels. `x`: the accuracy panel's x axis (X_AXES: round, bytes,
    energy, sim_time; the last two need channel=wireless runs). Returns out_png.
    """
    fig = figure_runs(groups, title=title, target=target, ylim=ylim, bands=bands, x=x)
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
    if not os.path.exists(partition_json):
        raise FileNotFoundError(f"{partition_json} not found (written by experiments.train "
                                "next to metrics.jsonl)")
    part = _read_json(partition_json)
    try:
        hist = np.asarray(part["label_histograms"], dtype=float)   # [N, C]
        sizes = np.asarray(part.get("sizes", hist.sum(axis=-1)), dtype=float)
        if hist.ndim != 2 or 0 in hist.shape or sizes.shape != hist.shape[:1]:
            raise ValueError(f"label_histograms of shape {hist.shape}, sizes of shape "
                             f"{sizes.shape}")
    except (KeyError, TypeError, ValueError) as e:
        raise RunDataError(f"{partition_json} is not a partition (label_histograms: devices x "
                           f"classes counts, sizes: one per device): {e}") from e
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


def output_problem(path: str) -> str | None:
    """Why a figure cannot be written to `path` (None when it can, as far as can be told before
    writing): an empty name, an unknown image format, a directory, a parent that is a file, or a
    folder without write permission."""
    if not path:
        return "is empty"
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    formats = FigureCanvasAgg.get_supported_filetypes()
    if ext and ext not in formats:
        return f"has the unknown image format {ext!r}; allowed: {', '.join(sorted(formats))}"
    full = os.path.abspath(path)
    if os.path.isdir(full):
        return "is a directory; give a file name such as fig.png"
    parent = os.path.dirname(full)
    while not os.path.exists(parent):   # missing folders are created: check the first that is
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"lies under {parent}, which is a file, not a directory"
    if not os.access(parent, os.W_OK | os.X_OK) or (
            os.path.exists(full) and not os.access(full, os.W_OK)):
        return f"is not writable (no write permission in {parent})"
    return None


def _save(fig, out_png: str) -> None:
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
        fig.savefig(out_png, dpi=110)
    finally:
        plt.close(fig)
