"""Fashion-MNIST, 100 devices, LeNet-5 (GroupNorm): P2PL vs FedAvg vs centralized (issue #13).

  python -m experiments.fashion_study [--workdir=runs/fashion_study_lr0.01]
      [--out=docs/fashion_mnist_2026-12-01] [--rounds=20] [--seed=0] [--jobs=1]
      [--learning_rate=0.01] [--report_only]

Runs three simulations through the training CLI (`python -m experiments.train`, one subprocess
each, `--jobs` at a time) into WORKDIR/<name>/ (p2pl, fedavg, centralized), all with the paper's
MNIST setting (configs/mnist.py: 100 devices, 600 IID images each, B = 10, one local epoch,
momentum 0.9, complete graph) except the learning rate (--learning_rate, 0.01 for all three; the
paper's 0.05 is --learning_rate=0.05) on Fashion-MNIST with model lenet_gn, evaluated on the
full test set every round. A run whose summary.json exists, whose config.json equals the
requested config (the fields that change neither the trajectory nor the bookkeeping,
checkpoint.RESUMABLE_FIELDS, excepted; a field added to the config since then counts as its
default) and that ran all the requested rounds is reused; one with the same config but
unfinished resumes from its checkpoint (the CLI does that); a directory holding another config
is cleared and run afresh.

Then each run's config.json, summary.json and metrics.jsonl are copied to OUT/runs/<name>/,
the machine, date, JAX version and commands to OUT/study.json, and the report is written
from those copies: OUT/README.md (tables, the finding in words computed from the numbers),
OUT/results.json (the tables' numbers, strict JSON) and OUT/accuracy_vs_round.png.
--report_only rebuilds the three from OUT alone (nothing is run or copied). Another
--learning_rate changes the step size of all three runs alike (give them their own --workdir
and --out).

"Within 1 point": a device statistic s (the device mean or the worst device's accuracy) is
within 1 point of the centralized model at round r when s(r) >= c - 0.01, c the centralized
model's test accuracy at its final round (being above c counts); the first such evaluated round
is reported, and the first round from which it holds at every later evaluated round ("held").

Exit status: 0 done; 2 a user error (bad flag, missing run files with --report_only); 3 a run
failed (its log is WORKDIR/<name>.log), the report is still written from what exists.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Sequence

from absl import app, flags

from configs import mnist
from experiments import cli, studies
from p2pl_jax import plotting, writers
from p2pl_jax.errors import ConfigError

DEFAULT_LR = 0.01


def define_flags() -> None:
    """Defines the command's flags (when run as a program only: importing the module, as the
    tests do beside experiments.reproduce, defines none, so no flag is defined twice)."""
    global _WORKDIR, _OUT, _ROUNDS, _SEED, _LR, _JOBS, _REPORT_ONLY
    _WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs are written (default "
                                   "runs/fashion_study_lr<learning_rate>).")
    _OUT = flags.DEFINE_string("out", None, "Report directory (README.md, results.json, figure, "
                               "runs/); default docs/fashion_mnist_2026-12-01, or its subfolder "
                               "lr<learning_rate> for a learning rate other than the default.")
    _ROUNDS = flags.DEFINE_integer("rounds", 20, "Rounds of every run (centralized: epochs).")
    _SEED = flags.DEFINE_integer("seed", 0, "The runs' seed.")
    _LR = flags.DEFINE_float("learning_rate", DEFAULT_LR, "SGD learning rate of all three runs. "
                             "The paper's 0.05 (configs/mnist.py) made the centralized lenet_gn "
                             "collapse to chance within 20 epochs (docs/fashion_mnist_2026-12-01/"
                             "lr0.05); 0.01 is one value 5x lower, no sweep.")
    _JOBS = flags.DEFINE_integer("jobs", 1, "Runs at the same time (one process each).")
    _REPORT_ONLY = flags.DEFINE_bool("report_only", False,
                                     "Rebuild the report from OUT's copied run files only.")


USAGE = ("python -m experiments.fashion_study [--workdir=DIR] [--out=DIR] [--rounds=20] "
         "[--seed=0] [--jobs=1] [--learning_rate=LR] [--report_only]")
parse_flags = cli.flags_parser(USAGE)

# The runs: name -> (label, config overrides). Everything else is configs/mnist.py.
RUNS = {
    "p2pl": ("P2PL", {"algorithm": "p2pl"}),
    "fedavg": ("FedAvg", {"algorithm": "fedavg"}),
    "centralized": ("centralized", {"algorithm": "centralized"}),
}
REFERENCE = "centralized"
COMMON = {"dataset": "fashion_mnist", "model": "lenet_gn", "eval_every": 1,
          "stop_at_target": False, "checkpoint_every": 5, "tensorboard": False}
COPIED = ("config.json", "summary.json", "metrics.jsonl")
WITHIN = 0.01          # "within 1 point": 1 percentage point of accuracy
TOLERANCE = 1e-6       # float32 accuracies: 1e-6 is far below one test image (1e-4)
FIGURE = "accuracy_vs_round.png"
PAPER_ROUNDS = mnist.get_config().rounds   # the round cap of the full protocol
PAPER_LR = mnist.get_config().learning_rate
DOCS = "docs/fashion_mnist_2026-12-01"


# ----------------------------------------------------------------------------- definitions


def within(acc: float | None, reference: float) -> bool:
    """acc is within WITHIN (1 point) of `reference` or above it."""
    return acc is not None and acc >= reference - WITHIN - TOLERANCE


def first_within(rounds: Sequence[int], accs: Sequence[float | None],
                 reference: float) -> int | None:
    """The first evaluated round whose accuracy is within 1 point of `reference` (or above)."""
    for r, a in zip(rounds, accs):
        if within(a, reference):
            return int(r)
    return None


def held_within(rounds: Sequence[int], accs: Sequence[float | None],
                reference: float) -> int | None:
    """The first evaluated round from which every evaluated round, to the last, is within 1
    point of `reference`; None if the last one is not."""
    start = None
    for r, a in zip(rounds, accs):
        if within(a, reference):
            start = int(r) if start is None else start
        else:
            start = None
    return start


# ----------------------------------------------------------------------------- configs


def run_overrides(name: str, rounds: int, seed: int, extra: dict | None = None) -> dict:
    return {**COMMON, **RUNS[name][1], "rounds": rounds, "seed": seed, **(extra or {})}


def requested_config(name: str, rounds: int, seed: int, extra: dict | None = None) -> dict:
    """The full config (plain JSON) the CLI builds from configs/mnist.py and the overrides."""
    return studies.requested_config(run_overrides(name, rounds, seed, extra))


def cli_command(name: str, run_dir: str, rounds: int, seed: int,
                extra: dict | None = None) -> list[str]:
    return studies.cli_command(run_dir, run_overrides(name, rounds, seed, extra))


_read_json = writers.read_json_or_none
plan = studies.plan
machine = studies.machine


def run_all(workdir: str, rounds: int, seed: int, jobs: int,
            extra: dict | None = None) -> tuple[dict, dict, list[str]]:
    """Runs (or reuses) every run; returns ({name: the CLI command}, {name: its plan},
    [failed names])."""
    return studies.run_all(workdir, {n: run_overrides(n, rounds, seed, extra) for n in RUNS},
                           jobs)


def copy_runs(workdir: str, out: str) -> None:
    studies.copy_runs(workdir, out, RUNS, COPIED)


# ----------------------------------------------------------------------------- analysis


def _finite(x) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def series(run: plotting.Run) -> dict:
    m = run.metrics
    return {"round": [int(r) for r in m["round"]],
            "mean": [_finite(a) for a in m["acc_mean"]],
            "worst": [_finite(a) for a in m["acc_min"]],
            "best": [_finite(a) for a in m["acc_max"]],
            "consensus": [_finite(a) for a in m.get("consensus_distance", [])],
            "train_loss": [_finite(a) for a in m.get("train_loss", [])]}


def largest_drop(rounds: Sequence[int], accs: Sequence[float | None]) -> tuple[float, int]:
    """The largest fall of `accs` from one evaluated round to the next, and the later round
    ((0.0, first round) if it never falls)."""
    drop, at = 0.0, int(rounds[0])
    for a0, r1, a1 in zip(accs, rounds[1:], accs[1:]):
        if a0 is not None and a1 is not None and a0 - a1 > drop:
            drop, at = a0 - a1, int(r1)
    return drop, at


def _at(s: dict, key: str, rnd: int) -> float | None:
    return s[key][s["round"].index(rnd)] if rnd in s["round"] else None


def _resolution(config: dict, s: dict) -> int:
    gaps = {b - a for a, b in zip(s["round"], s["round"][1:])}
    return max(gaps) if gaps else int(config.get("eval_every", 1))


def analyse(runs: dict[str, plotting.Run]) -> dict:
    """The report's numbers from the loaded runs (the reference must be among them)."""
    ref = series(runs[REFERENCE])
    c_round = ref["round"][-1]
    c_final = ref["mean"][-1]
    c_best, c_best_round = max(((a, r) for a, r in zip(ref["mean"], ref["round"])
                                if a is not None), key=lambda t: t[0])   # the first best
    rows = {}
    for name, run in runs.items():
        s = series(run)
        last = s["round"][-1]
        valid = [(a, r) for a, r in zip(s["mean"], s["round"]) if a is not None]
        best, best_round = max(valid, key=lambda t: t[0]) if valid else (None, None)
        spreads = [b - w for b, w in zip(s["best"], s["worst"])
                   if b is not None and w is not None]
        rows[name] = {
            "label": RUNS.get(name, (name,))[0],
            "rounds_run": last,
            "eval_resolution": _resolution(run.config, s),
            "final_mean": s["mean"][-1],
            "best_mean": best,
            "best_mean_round": best_round,
            "final_worst": s["worst"][-1],
            "centralized_same_round": _at(ref, "mean", last),
            "first_mean_within": first_within(s["round"], s["mean"], c_final),
            "first_worst_within": first_within(s["round"], s["worst"], c_final),
            "held_mean_within": held_within(s["round"], s["mean"], c_final),
            "held_worst_within": held_within(s["round"], s["worst"], c_final),
            "first_mean_within_best": first_within(s["round"], s["mean"], c_best),
            "first_worst_within_best": first_within(s["round"], s["worst"], c_best),
            "largest_drop": largest_drop(s["round"], s["mean"])[0],
            "largest_drop_round": largest_drop(s["round"], s["mean"])[1],
            "final_train_loss": s["train_loss"][-1] if s["train_loss"] else None,
            "max_device_spread": max(spreads) if spreads else None,
            "max_consensus_distance": max((x for x in s["consensus"] if x is not None),
                                          default=None),
            "wall_time_s": _finite(run.summary.get("wall_time_s")),
            "jax_version": run.summary.get("jax_version"),
        }
    res = {"reference": REFERENCE, "centralized_final": c_final,
           "centralized_final_round": c_round, "centralized_best": c_best,
           "centralized_best_round": c_best_round, "within_points": 100 * WITHIN,
           "rows": rows}
    cfg = runs[REFERENCE].config
    if cfg.get("num_devices") and cfg.get("samples_per_device", -1) > 0:
        res["train_images"] = cfg["num_devices"] * cfg["samples_per_device"]
    if "p2pl" in runs and "fedavg" in runs:
        pc, ps = runs["p2pl"].config, runs["p2pl"].summary
        res["p2pl_same_as_fedavg_but_init"] = (
            pc.get("topology") == "complete" and ps.get("mixing") == "data_size"
            and ps.get("consensus_backend") == "global" and pc.get("sync") == "max_norm"
            and not pc.get("link_failure_prob") and not pc.get("dropout_prob")
            and not pc.get("delay_rounds"))
        p, f = series(runs["p2pl"]), series(runs["fedavg"])
        both = [(abs(_at(p, "mean", r) - _at(f, "mean", r)), r,
                 _at(p, "mean", r) > _at(f, "mean", r)) for r in p["round"]
                if r in f["round"] and None not in (_at(p, "mean", r), _at(f, "mean", r))]
        if both:
            worst_gap = max(both)
            res["p2pl_minus_fedavg"] = {"max_points": 100 * worst_gap[0],
                                        "round": worst_gap[1],
                                        "p2pl_ahead": sum(ahead for _, _, ahead in both),
                                        "rounds": len(both)}
    return res


# ----------------------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _rnd(r: int | None, cap: int) -> str:
    return f"not within {cap} rounds" if r is None else str(r)


def _points(a: float, b: float) -> str:
    d = 100 * (a - b)
    return f"{abs(d):.2f} points {'below' if d < 0 else 'above'}" if abs(d) >= 0.005 \
        else "equal to"


def finding(res: dict) -> list[str]:
    """The finding in words, every number from `res`."""
    c, cr = res["centralized_final"], res["centralized_final_round"]
    rows = res["rows"]
    images = res.get("train_images")
    out = [f"The centralized model reaches {_pct(c)} after {cr} rounds (epochs over all "
           + (f"{images} " if images else "") + "training images); the threshold for "
           f"\"within 1 point\" is {_pct(c - WITHIN)}."]
    for name, r in rows.items():
        if name == REFERENCE:
            continue
        cap = r["rounds_run"]
        same = r["centralized_same_round"]
        text = (f"{r['label']}: after {cap} rounds the mean device is at {_pct(r['final_mean'])}"
                + (f", {_points(r['final_mean'], same)} the centralized model at the same "
                   f"round ({_pct(same)})" if same is not None else "")
                + f"; the worst device is at {_pct(r['final_worst'])}. ")
        fm, fw = r["first_mean_within"], r["first_worst_within"]
        if fm is None:
            text += (f"The mean device never came within 1 point of the centralized model's "
                     f"final accuracy in {cap} rounds (best {_pct(r['best_mean'])} at round "
                     f"{r['best_mean_round']}).")
        else:
            held = r["held_mean_within"]
            text += (f"The mean device first came within 1 point at round {fm}"
                     + (f" and stayed within from round {held} on" if held is not None
                        else ", but was not within at the last round"))
            text += (", the worst device at the same round." if fw == fm else
                     f"; the worst device first at round {_rnd(fw, cap)}.")
        spread = r["max_device_spread"]
        if spread is not None and spread == 0 and not r["max_consensus_distance"]:
            text += (" Every device held the same model at every evaluated round (consensus "
                     "distance 0), so the worst device equals the mean device.")
        elif spread is not None:
            text += (f" The largest gap between the best and the worst device over the "
                     f"evaluated rounds was {100 * spread:.2f} points.")
        out.append(text)
    ref = rows[REFERENCE]
    text = (f"The centralized model itself first came within 1 point of its own final "
            f"accuracy at round {_rnd(ref['first_mean_within'], ref['rounds_run'])}")
    if ref["largest_drop"] > 0:
        text += (f"; its accuracy is not monotone: the largest fall from one round to the "
                 f"next was {100 * ref['largest_drop']:.2f} points (into round "
                 f"{ref['largest_drop_round']})")
    if ref["final_train_loss"] is not None:
        text += f", and its training loss in the last round was {ref['final_train_loss']:.3f}"
    text += "."
    cb, cbr = res["centralized_best"], res["centralized_best_round"]
    if cb - c > WITHIN + TOLERANCE:
        text += (f" Its final accuracy is {100 * (cb - c):.2f} points below its best, so "
                 f"\"within 1 point of the final\" is a weak bar here.")
    if cb > c + TOLERANCE:
        parts = [f"{r['label']} mean {_rnd(r['first_mean_within_best'], r['rounds_run'])}, "
                 f"worst {_rnd(r['first_worst_within_best'], r['rounds_run'])}"
                 for n, r in rows.items() if n != REFERENCE]
        text += (f" Measured against the centralized model's best accuracy instead "
                 f"({_pct(cb)}, round {cbr}), the first rounds within 1 point would be: "
                 + "; ".join(parts) + ".")
    out.append(text)
    if "p2pl" in rows and "fedavg" in rows:
        p, f = rows["p2pl"], rows["fedavg"]
        gap = 100 * (p["final_mean"] - f["final_mean"])
        rp, rf = p["first_mean_within"], f["first_mean_within"]
        text = (f"P2PL against FedAvg: final mean accuracy {gap:+.2f} points; rounds to within "
                f"1 point {_rnd(rp, p['rounds_run'])} (P2PL) vs {_rnd(rf, f['rounds_run'])} "
                f"(FedAvg)")
        if rp is not None and rf is not None:
            text += (", the same round" if rp == rf else
                     f", P2PL {abs(rp - rf)} round{'s' if abs(rp - rf) != 1 else ''} "
                     f"{'later' if rp > rf else 'earlier'}")
        if res.get("p2pl_same_as_fedavg_but_init"):
            text += ("; on the complete graph P2PL's consensus with data-size weights is "
                     "FedAvg's data-weighted average, so the two runs differ only in the starting "
                     "model (P2PL: the largest-norm of the devices' initialisations, max-norm "
                     "sync; FedAvg: one shared initialisation)")
        diff = res.get("p2pl_minus_fedavg")
        if diff:
            text += (f"; over the rounds both evaluated, P2PL's mean device was at most "
                     f"{diff['max_points']:.2f} points from FedAvg's (round {diff['round']}), "
                     f"{diff['p2pl_ahead']} of {diff['rounds']} rounds ahead of it")
        out.append(text + ".")
    return out


def _table(res: dict) -> list[str]:
    lines = ["| run | rounds | final mean-device acc | best mean-device acc (round) | "
             "final worst-device acc | centralized at the same round | first round: mean "
             "within 1 pt | first round: worst within 1 pt | held from (mean / worst) | "
             "wall time (each run's) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["rows"].values():
        cap = r["rounds_run"]
        wall = "—" if r["wall_time_s"] is None else f"{r['wall_time_s'] / 60:.1f} min"
        lines.append(
            f"| {r['label']} | {cap} | {_pct(r['final_mean'])} | {_pct(r['best_mean'])} "
            f"({r['best_mean_round']}) | {_pct(r['final_worst'])} | "
            f"{_pct(r['centralized_same_round'])} | {_rnd(r['first_mean_within'], cap)} | "
            f"{_rnd(r['first_worst_within'], cap)} | {_rnd(r['held_mean_within'], cap)} / "
            f"{_rnd(r['held_worst_within'], cap)} | {wall} |")
    return lines


def _curve_table(runs: dict[str, plotting.Run]) -> list[str]:
    names = list(runs)
    ss = {n: series(runs[n]) for n in names}
    rounds = sorted({r for s in ss.values() for r in s["round"]})
    head = " | ".join(f"{RUNS.get(n, (n,))[0]} mean / worst" for n in names)
    lines = [f"| round | {head} |", "| ---: |" + " ---: |" * len(names)]
    for rnd in rounds:
        cells = []
        for n in names:
            m, w = _at(ss[n], "mean", rnd), _at(ss[n], "worst", rnd)
            cells.append("—" if m is None else f"{_pct(m)} / {_pct(w)}")
        lines.append(f"| {rnd} | " + " | ".join(cells) + " |")
    return lines


def plot(runs: dict[str, plotting.Run], res: dict, out_png: str) -> None:
    groups = [(RUNS.get(n, (n,))[0], [run]) for n, run in runs.items()]
    c = res["centralized_final"]
    lr = runs[REFERENCE].config.get("learning_rate")
    fig = plotting.figure_runs(groups, title=f"Fashion-MNIST, 100 devices, lenet_gn, lr {lr}")
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, c - WITHIN - 0.01), max(high, c + 0.01))
    ax.axhline(c, color="k", ls=":", lw=1.2)
    ax.axhline(c - WITHIN, color="C3", ls=":", lw=1.2)
    ax.text(ax.get_xlim()[1], c, f"centralized final {100 * c:.2f}%  ", color="k",
            fontsize=8, va="bottom", ha="right")
    ax.text(ax.get_xlim()[1], c - WITHIN, "centralized final − 1 point  ", color="C3",
            fontsize=8, va="top", ha="right")
    try:
        fig.savefig(out_png, dpi=110)
    finally:
        plotting.plt.close(fig)


_PLAN_WORDS = {"reuse": "reused by this command: a finished run of the same config was already "
                        "in the workdir",
               "run": "run (or resumed from its checkpoint) by this command",
               "fresh": "run afresh by this command (the workdir held another config)"}


_strict = studies.strict


def load_probes(out: str) -> list[dict]:
    """The cost probes copied to out/probes/<name>/ (config.json, summary.json, metrics.jsonl)."""
    root, probes = os.path.join(out, "probes"), []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        cfg = _read_json(os.path.join(root, name, "config.json"))
        summ = _read_json(os.path.join(root, name, "summary.json"))
        if not cfg or not summ or not summ.get("rounds_run"):
            continue
        first = None
        try:
            first = _finite(plotting.load_run(os.path.join(root, name)).metrics["test_loss"][0])
        except (FileNotFoundError, ConfigError, KeyError):
            pass
        probes.append({"name": name, "model": cfg.get("model"),
                       "algorithm": cfg.get("algorithm"),
                       "learning_rate": cfg.get("learning_rate"),
                       "parameters": int(summ["message_bytes"]) // 4,
                       "rounds": summ["rounds_run"],
                       "s_per_round": summ["train_wall_s"] / summ["rounds_run"],
                       "first_test_loss": first})
    return probes


def other_studies(out: str) -> list[str]:
    """One line per subfolder of `out` holding a report of this module (its results.json)."""
    lines = []
    for name in sorted(os.listdir(out)):
        res = _read_json(os.path.join(out, name, "results.json"))
        cfg = _read_json(os.path.join(out, name, "runs", REFERENCE, "config.json")) or {}
        if not res or "rows" not in res:
            continue
        rows = res["rows"]
        ref = rows.get(REFERENCE, {})
        lr = cfg.get("learning_rate")
        text = (f"- [{name}/]({name}/README.md): learning rate {lr}"
                + (" (the paper's)" if lr == PAPER_LR else "")
                + f": the centralized model ends at {_pct(res.get('centralized_final'))} after "
                f"{res.get('centralized_final_round')} rounds (best "
                f"{_pct(res.get('centralized_best'))} at round "
                f"{res.get('centralized_best_round')}")
        if ref.get("largest_drop"):
            text += (f"; largest fall from one round to the next "
                     f"{100 * ref['largest_drop']:.2f} points, into round "
                     f"{ref['largest_drop_round']}")
        text += ")"
        finals = [f"{r['label']} {_pct(r['final_mean'])}" for n, r in rows.items()
                  if n != REFERENCE]
        if finals:
            text += "; final mean-device accuracy " + ", ".join(finals)
        lines.append(text + ".")
    return lines


def load_runs(out: str) -> dict[str, plotting.Run]:
    runs = {}
    for name in RUNS:
        path = os.path.join(out, "runs", name)
        if os.path.exists(os.path.join(path, "metrics.jsonl")):
            runs[name] = plotting.load_run(path)
    return runs


def write_report(out: str) -> dict:
    """README.md, results.json and the figure in `out`, from out/runs/* and out/study.json."""
    runs = load_runs(out)
    if REFERENCE not in runs:
        raise ConfigError(f"{out}/runs/{REFERENCE}/metrics.jsonl is missing: the report "
                          "compares every run with the centralized one")
    study = _read_json(os.path.join(out, "study.json")) or {}
    res = analyse(runs)
    res["missing"] = [n for n in RUNS if n not in runs]
    with open(os.path.join(out, "results.json"), "w") as f:
        f.write(_strict(res))
    plot(runs, res, os.path.join(out, FIGURE))
    cfg = runs[REFERENCE].config
    p2pl = runs.get("p2pl", runs[REFERENCE])
    cap = res["centralized_final_round"]
    mach = study.get("machine", {})
    jax_versions = sorted({str(r["jax_version"]) for r in res["rows"].values()
                           if r["jax_version"]})
    resolution = sorted({r["eval_resolution"] for r in res["rows"].values()})
    lines = [
        "# Fashion-MNIST, 100 devices, lenet_gn: P2PL vs FedAvg vs centralized",
        "",
        "Issue #13: the accuracy of the worst and the mean device against the centralized "
        "model's, and the rounds to get within 1 point of it. Written by "
        "`experiments/fashion_study.py`; rebuild it from the files here with "
        f"`python -m experiments.fashion_study --report_only --out={out}`.",
        "",
        "## Setting",
        "",
        f"- Data: {cfg.get('dataset')}, {cfg.get('num_devices')} devices × "
        f"{cfg.get('samples_per_device')} images ({cfg.get('partition')}); test set 10000 "
        "images, every device's model evaluated on all of it.",
        f"- Model: {cfg.get('model')} (LeNet-5 with GroupNorm, docs/models.md).",
        f"- Training: batch {cfg.get('batch_size')}, {cfg.get('local_epochs')} local epoch per "
        f"round, SGD lr {cfg.get('learning_rate')}, momentum {cfg.get('momentum')} "
        + ("(the paper's values from configs/mnist.py, not tuned)"
           if cfg.get("learning_rate") == PAPER_LR else
           f"(the learning rate changed from the paper's {PAPER_LR}, the same for all three "
           "runs)")
        + "; P2PL on the "
        f"{p2pl.config.get('topology')} graph with {p2pl.summary.get('mixing', 'data_size')} "
        f"weights and {p2pl.config.get('sync', 'max_norm')} sync; FedAvg: all devices every "
        "round; centralized: one model on "
        "the union of the data, one round = one epoch over all 60000 images with the same "
        "batch size and optimizer.",
        f"- Seed {cfg.get('seed')}, one seed per algorithm; {cap} rounds each.",
        f"- Evaluation resolution: every {', '.join(map(str, resolution))} round(s) "
        "(eval_every = 1: every round is evaluated, so the round counts below are exact).",
        "",
        "**Definition.** c = the centralized model's test accuracy at its final round "
        f"({cap}). A run's mean device (the mean over devices of each device's test accuracy) "
        "or worst device (the minimum over devices) is *within 1 point* at round r when its "
        "accuracy at r is ≥ c − 0.01 (being above c counts; a 1e-6 tolerance absorbs float32 "
        "rounding). *First round* = the first evaluated round that is within; *held from* = "
        "the first evaluated round from which every later evaluated round is within too. "
        "\"Centralized at the same round\" is the centralized model's accuracy at the run's "
        "final round.",
        "",
        "## Results",
        "",
        *_table(res),
        "",
        f"![accuracy vs round]({FIGURE})",
        "",
        "Worst device solid, device mean dashed; black dotted: the centralized model's final "
        "accuracy c; red dotted: c − 1 point.",
        "",
        "## Finding",
        "",
        *[f"- {s}" for s in finding(res)],
    ]
    if res["missing"]:
        lines += ["", f"Not run (no files): {', '.join(res['missing'])}."]
    lines += [
        "",
        "## Accuracy per round",
        "",
        *_curve_table(runs),
        "",
        "## Reduced against the full protocol",
        "",
        *([f"- Learning rate {cfg.get('learning_rate')} instead of the paper's {PAPER_LR}, the "
           "same for all three runs (one value, no sweep; momentum kept at "
           f"{cfg.get('momentum')})."] if cfg.get("learning_rate") != PAPER_LR else []),
        f"- {cap} rounds per run instead of the config's cap of {PAPER_ROUNDS}, and one seed "
        "instead of three: the CPU budget of this study (about an hour on a shared 2-core "
        "machine; one round of 100 devices × 600 images at batch 10 is 6000 SGD steps).",
        "- Only the complete graph (the paper's headline setting). There every P2PL device "
        "holds the same model after consensus, so P2PL's worst device equals its mean device; "
        "sparse graphs, where they differ, were not run here.",
        "- lenet_gn rather than cnn: see the cost probe below.",
        "- Nothing else was reduced: full training and test sets, every round evaluated on all "
        "10000 test images.",
    ]
    probes = load_probes(out)
    if probes:
        lines += ["", "## Cost probe (before the study)", "",
                  "Short runs of the same setting (100 devices × 600 images, batch 10, one "
                  "epoch per round), read from `probes/<name>/summary.json`; the machine's load "
                  "was not controlled (other work ran beside them), so the times are rough.",
                  "",
                  "| probe | model | algorithm | lr | parameters | rounds | training wall time "
                  "per round | test loss after round 1 |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for p in probes:
            loss = "—" if p["first_test_loss"] is None else f"{p['first_test_loss']:.2f}"
            lines.append(f"| {p['name']} | {p['model']} | {p['algorithm']} | "
                         f"{p['learning_rate']} | {p['parameters']:,} | {p['rounds']} | "
                         f"{p['s_per_round']:.0f} s | {loss} |")
        by_model = {p["model"]: p for p in probes}
        if "cnn" in by_model and "lenet_gn" in by_model:
            cnn, lenet = by_model["cnn"], by_model["lenet_gn"]
            lines += ["", f"cnn costs {cnn['s_per_round'] / lenet['s_per_round']:.0f}× "
                      f"lenet_gn's time per round here: it has "
                      f"{cnn['parameters'] / lenet['parameters']:.0f}× the parameters and its "
                      "convolutions keep the full resolution with 32 and 64 channels ('SAME' "
                      "padding, 3×3 kernels): ≈4.5M multiply-adds per 28×28 image, 3.6M of "
                      "them in the 32→64 convolution on 14×14 maps, against lenet_gn's ≈0.28M "
                      "(6 and 16 channels on shrinking 'VALID' maps), about 16× less. At "
                      "cnn's cost the three runs would not fit the hour, so the study uses "
                      "lenet_gn (the wall-time ratio above is also inflated by the uneven "
                      "load)."]
    others = other_studies(out)
    if others:
        lines += ["", "## Other runs of this study (subfolders, same generator)", "", *others]
    lines += [
        "",
        "## Provenance",
        "",
        f"- Command: `{study.get('command', 'python -m experiments.fashion_study')}`",
        "- The runs it makes (one each, through the training CLI):",
        *[f"  - `{shlex.join(c)}`" + (
            f" ({_PLAN_WORDS.get(study.get('plans', {}).get(n), '')})"
            if study.get("plans", {}).get(n) else "")
          for n, c in study.get("run_commands", {}).items()],
        f"- Machine: {mach.get('cpu', 'unknown CPU')}, {mach.get('cores', '?')} cores, "
        f"{mach.get('system', '')}, Python {mach.get('python', '?')}; shared with other work "
        "while the runs ran, and the three runs ran at the same time (one process each), so "
        "the wall times are not clean benchmarks.",
        f"- Date: {study.get('date', 'unknown')} (when the command finished)",
        f"- JAX version: {', '.join(jax_versions) or 'unknown'} (from the runs' summary.json)",
        "- Files: `runs/<name>/` holds each run's config.json, summary.json and metrics.jsonl; "
        "`results.json` the numbers above.",
    ]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return res


# ----------------------------------------------------------------------------- main


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {argv[1:]}\nUsage: {USAGE}", cli.EXIT_USER_ERROR)
    lr = _LR.value
    out = _OUT.value or (DOCS if lr == DEFAULT_LR else os.path.join(DOCS, f"lr{lr:g}"))
    workdir = _WORKDIR.value or f"runs/fashion_study_lr{lr:g}"
    failed: list[str] = []
    if not _REPORT_ONLY.value:
        if _ROUNDS.value < 1 or _JOBS.value < 1:
            cli.fail("--rounds and --jobs must be >= 1", cli.EXIT_USER_ERROR)
        if not _LR.value > 0:
            cli.fail("--learning_rate must be > 0", cli.EXIT_USER_ERROR)
        extra = {"learning_rate": _LR.value}
        commands, plans, failed = run_all(workdir, _ROUNDS.value, _SEED.value,
                                          _JOBS.value, extra)
        os.makedirs(out, exist_ok=True)
        copy_runs(workdir, out)
        studies.write_study(out, "experiments.fashion_study", commands, plans)
    studies.report_and_exit(out, write_report, failed, workdir)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
