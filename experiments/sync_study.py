"""Max norm synchronization against the graph's diameter (issue #16, study 2; P2PL.md next
check 1): how many rounds does a common initialisation save, and does the saving grow with the
diameter?

  python -m experiments.sync_study [--workdir=runs/sync_study] [--out=docs/sync_2026-12-02]
      [--diameters=3,4,5,6,8,10] [--seeds=3] [--rounds=100] [--target=0.97] [--jobs=1]
      [--report_only]

100 devices with 600 IID MNIST images each (configs/mnist.py: MLP 784-200-200-10, B = 10, one
local epoch, SGD lr 0.05 momentum 0.9, data_size weights) on
  a star (diameter 2); random geometric graphs whose radius gives each diameter of
  --diameters (per seed: graph_resample's rule, the first connected graph of the graph seeds
  seed + 1000 k, and, of the radii 0.15, 0.16, ..., 0.90 whose graph has that diameter, the
  median one; `radius_for`, the diameters computed once per seed); a 10 x 10 torus
  (diameter 10); a cycle (diameter 50);
each with sync = max_norm (every device starts from the init of largest norm, found by a
max-consensus: P2PL's step 1), none (independent inits) and shared_seed (one common init, no
communication: what max norm sync reaches in diameter rounds). Each (graph, sync, seed) run
stops at the target: the first round at which every device's model is at or above --target on
the 10,000 test images (target_hold_rounds = 1; evaluated every 3 rounds and, once an
evaluation meets the target, the rounds since the previous one: exact to the round), or at
--rounds. Rounds saved by a sync mode = rounds(none) - rounds(mode) per seed; a run that did
not reach the target counts as --rounds + 1, so a saving involving one is a bound (marked).

The report (OUT/README.md, OUT/results.json, OUT/rounds_saved_vs_diameter.png) is built from the
copied run files (OUT/runs/NAME/) alone; --report_only rebuilds it.

Exit status: 0 done; 2 a user error; 3 a run failed (its log is WORKDIR/NAME.log), the report is
still written from what exists.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from experiments import cli, studies
from p2pl_jax import graphs, plotting
from p2pl_jax.errors import ConfigError

DOCS = "docs/sync_2026-12-02"
FIGURE = "rounds_saved_vs_diameter.png"
SYNCS = ("max_norm", "none", "shared_seed")
RADII = tuple(round(0.15 + 0.01 * i, 2) for i in range(76))   # 0.15 .. 0.90
COMMON = {"eval_every": 3, "eval_backfill": True, "target_hold_rounds": 1,
          "stop_at_target": True, "checkpoint_every": 10, "tensorboard": False,
          "progress": False}


def define_flags() -> None:
    """The command's flags (defined only when run as a program)."""
    global _WORKDIR, _OUT, _DIAMETERS, _SEEDS, _ROUNDS, _TARGET, _JOBS, _REPORT_ONLY
    _WORKDIR = flags.DEFINE_string("workdir", "runs/sync_study", "Where the runs go.")
    _OUT = flags.DEFINE_string("out", DOCS, "Report directory.")
    _DIAMETERS = flags.DEFINE_list("diameters", ["3", "4", "5", "6", "8", "10"],
                                   "Diameters of the random geometric graphs.")
    _SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds 0 .. seeds - 1 of every setting.")
    _ROUNDS = flags.DEFINE_integer("rounds", 100, "Round cap of every run.")
    _TARGET = flags.DEFINE_float("target", 0.97, "Target accuracy of every device.")
    _JOBS = flags.DEFINE_integer("jobs", 1, "Runs at the same time (one process each).")
    _REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Rebuild the report from OUT only.")


USAGE = ("python -m experiments.sync_study [--workdir=DIR] [--out=DIR] [--diameters=3,4,5,6,8,10] "
         "[--seeds=3] [--rounds=100] [--target=0.97] [--jobs=1] [--report_only]")
parse_flags = cli.flags_parser(USAGE)


def diameters_by_radius(num_devices: int, seed: int) -> dict[float, int]:
    """{radius: diameter} of the resampled random geometric graph (graph_resample's rule from
    `seed`) at each radius of RADII that gives a connected graph."""
    out = {}
    for r in RADII:
        try:
            g, _ = graphs.resampled_graph("random_geometric", num_devices, seed=seed, radius=r)
        except ConfigError:
            continue
        out[r] = graphs.diameter(g)
    return out


def radius_for(diameter: int, table: dict[float, int], num_devices: int, seed: int) -> float:
    """The median of the radii whose graph in `table` (`diameters_by_radius`) has `diameter`;
    ConfigError naming --diameters when none has."""
    hits = [r for r, d in table.items() if d == diameter]
    if not hits:
        raise ConfigError(f"--diameters: no random geometric graph of {num_devices} devices "
                          f"(seed {seed}, radius {RADII[0]}..{RADII[-1]}) has diameter "
                          f"{diameter}; allowed: about 2 to 12")
    return hits[len(hits) // 2]


def graph_settings(diameters, num_devices: int, seed: int) -> dict[str, dict]:
    """{graph name: topology overrides} for one seed."""
    out = {"star": {"topology": "star"}}
    table = diameters_by_radius(num_devices, seed) if diameters else {}
    for d in diameters:
        out[f"rgg_d{d}"] = {"topology": "random_geometric", "graph_resample": True,
                            "graph_radius": radius_for(d, table, num_devices, seed)}
    out["torus"] = {"topology": "torus"}
    out["cycle"] = {"topology": "cycle"}
    return out


def runs(diameters, seeds: int, rounds: int, target: float) -> dict[str, dict]:
    """{name: config overrides} of the study (name GRAPH-SYNC-sSEED)."""
    n = studies.requested_config({})["num_devices"]
    out = {}
    for seed in range(seeds):
        for gname, over in graph_settings(diameters, n, seed).items():
            for sync in SYNCS:
                out[f"{gname}-{sync}-s{seed}"] = {**COMMON, **over, "sync": sync, "seed": seed,
                                                  "rounds": rounds, "target_accuracy": target}
    return out


def graph_name(config: dict) -> str:
    topo = config.get("topology")
    return "random geometric" if topo == "random_geometric" else str(topo)


def analyse(loaded: dict[str, plotting.Run]) -> dict:
    """Rows per run and the per-graph comparison (rounds saved against none, per seed)."""
    rows = {}
    for name, run in loaded.items():
        cfg, summ = run.config, run.summary
        rows[name] = {"group": name.split("-")[0], "graph": graph_name(cfg),
                      "radius": (cfg.get("graph_radius")
                                 if cfg.get("topology") == "random_geometric" else None),
                      "sync": cfg.get("sync"), "seed": cfg.get("seed"),
                      "cap": cfg.get("rounds"), "diameter": summ.get("diameter"),
                      "spectral_gap": summ.get("spectral_gap"),
                      "rounds_to_target": summ.get("rounds_to_target"),
                      "rounds_run": summ.get("rounds_run"),
                      "final_acc_min": summ.get("final_acc_min"),
                      "final_acc_mean": summ.get("final_acc_mean"),
                      "wall_time_s": summ.get("wall_time_s"),
                      "jax_version": summ.get("jax_version"), "backend": summ.get("backend")}
    # one group per (graph, seed): the three sync modes share the graph
    groups: dict[tuple, dict] = {}
    for r in rows.values():
        key = r["group"], r["seed"]
        groups.setdefault(key, {})[r["sync"]] = r
    compare = []
    for (gname, seed), by_sync in sorted(groups.items()):
        base = by_sync.get("none")
        if base is None:
            continue
        entry = {"graph": gname, "seed": seed, "diameter": base["diameter"],
                 "rounds": {s: by_sync[s]["rounds_to_target"] for s in SYNCS if s in by_sync}}
        for s in ("max_norm", "shared_seed"):
            if s in by_sync:
                a, b = _censored(base), _censored(by_sync[s])
                entry[f"saved_{s}"] = a[0] - b[0]
                # a bound when either side did not reach: none unreached -> at least; mode
                # unreached -> at most; both -> unknown
                entry[f"saved_{s}_bound"] = {(True, False): "at least", (False, True): "at most",
                                             (True, True): "unknown"}.get((a[1], b[1]), "exact")
        compare.append(entry)
    return {"rows": rows, "compare": compare}


def _censored(row: dict) -> tuple[int, bool]:
    """(rounds to target, or cap + 1; whether it was censored)."""
    r = row["rounds_to_target"]
    return (int(r), False) if r is not None else (int(row["cap"]) + 1, True)


def _spearman(x, y) -> float | None:
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    return float(np.corrcoef(rx, ry)[0, 1])


def _mean_std(values) -> tuple[float, float] | None:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return float(np.mean(vals)), float(np.std(vals))


def summarise(res: dict) -> list[dict]:
    """Per graph: diameter, mean ± std rounds per sync mode, mean saved (with bound kinds)."""
    by_graph: dict[str, list] = {}
    for e in res["compare"]:
        by_graph.setdefault(e["graph"], []).append(e)
    out = []
    for gname, es in by_graph.items():
        rows = [r for r in res["rows"].values()
                if r["seed"] in {e["seed"] for e in es} and r["group"] == gname]
        item = {"graph": gname, "diameter": _mean_std(e["diameter"] for e in es),
                "seeds": len(es), "rounds": {}, "reached": {}}
        for s in SYNCS:
            rs = [r for r in rows if r["sync"] == s]
            item["rounds"][s] = _mean_std(r["rounds_to_target"] for r in rs)
            item["reached"][s] = (sum(r["rounds_to_target"] is not None for r in rs), len(rs))
        for s in ("max_norm", "shared_seed"):
            item[f"saved_{s}"] = _mean_std(e.get(f"saved_{s}") for e in es)
            item[f"saved_{s}_bounds"] = sorted({e.get(f"saved_{s}_bound") for e in es} - {None})
        out.append(item)
    return sorted(out, key=lambda i: (i["diameter"] or (0, 0))[0])


def _fmt_ms(ms, spec: str = ".1f") -> str:
    if ms is None:
        return "–"
    return f"{ms[0]:{spec}} ± {ms[1]:{spec}}"


def finding(summary: list[dict], cap: int, target: float) -> tuple[list[str], dict]:
    """The finding in words and the verdict numbers, computed from the summary."""
    pts = [(i["diameter"][0], i["saved_max_norm"][0]) for i in summary
           if i["diameter"] and i["saved_max_norm"]]
    rho = _spearman([p[0] for p in pts], [p[1] for p in pts])
    verdict = {"spearman_diameter_vs_saved_max_norm": rho, "points": len(pts)}
    lines = []
    helped = [i for i in summary if i["saved_max_norm"] and i["saved_max_norm"][0] > 0]
    hurt = [i for i in summary if i["saved_max_norm"] and i["saved_max_norm"][0] < 0]
    lines.append(f"- Max norm sync saved rounds on {len(helped)} of {len(summary)} graphs and cost "
                 f"rounds on {len(hurt)} (rounds to {target:.0%} on every device; a run that did "
                 f"not reach it in {cap} rounds counts as {cap + 1}, so a saving that involves "
                 "one is a bound).")
    for i in summary:
        if not i["saved_max_norm"]:
            continue
        bounds = [b for b in i["saved_max_norm_bounds"] if b != "exact"]
        lines.append(
            f"- {i['graph']} (diameter {i['diameter'][0]:g}): max_norm "
            f"{_fmt_ms(i['rounds']['max_norm'])} ({i['reached']['max_norm'][0]}/"
            f"{i['reached']['max_norm'][1]} reached), none {_fmt_ms(i['rounds']['none'])} "
            f"({i['reached']['none'][0]}/{i['reached']['none'][1]}), shared_seed "
            f"{_fmt_ms(i['rounds']['shared_seed'])} ({i['reached']['shared_seed'][0]}/"
            f"{i['reached']['shared_seed'][1]}): saved {_fmt_ms(i['saved_max_norm'])} rounds"
            + (f" ({', '.join(bounds)}: censored at the cap)" if bounds else "") + ".")
    if rho is None:
        lines.append("- Too few graphs with a saving to rank it against the diameter.")
    else:
        trend = ("grows with" if rho >= 0.5 else "shrinks with" if rho <= -0.5
                 else "does not follow")
        lines.append(f"- The saving {trend} the diameter: Spearman rank correlation "
                     f"{rho:+.2f} over {len(pts)} graphs (the paper expects it to grow).")
    gap = [(i["graph"], i["saved_max_norm"][0] - i["saved_shared_seed"][0]) for i in summary
           if i["saved_max_norm"] and i["saved_shared_seed"]]
    if gap:
        worst = max(gap, key=lambda g: abs(g[1]))
        lines.append(f"- max_norm against shared_seed (one common init without communication): "
                     f"the largest difference in rounds saved is {worst[1]:+.1f} ({worst[0]}); "
                     "max norm sync spends its first diameter rounds on the max-consensus, "
                     "which shared_seed does not need.")
    verdict["helped"], verdict["hurt"] = len(helped), len(hurt)
    return lines, verdict


def plot(summary: list[dict], out_png: str, cap: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for s, marker in (("max_norm", "o"), ("shared_seed", "s")):
        pts = [(i["diameter"][0], i[f"saved_{s}"], i["graph"],
                any(b != "exact" for b in i[f"saved_{s}_bounds"]))
               for i in summary if i["diameter"] and i[f"saved_{s}"]]
        if not pts:
            continue
        xs, ms, names, bound = zip(*pts)
        ax.errorbar(xs, [m[0] for m in ms], yerr=[m[1] for m in ms], marker=marker, ls="-",
                    capsize=3, label=f"{s} vs none")
        for x, m, name, b in zip(xs, ms, names, bound):
            ax.annotate(name + (" (bound)" if b else ""), (x, m[0]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("graph diameter (log scale)")
    ax.set_ylabel(f"rounds saved to target (unreached = {cap + 1})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def _table(summary: list[dict]) -> list[str]:
    cols = ("graph", "diameter", "seeds", "max_norm rounds", "none rounds", "shared_seed rounds",
            "saved by max_norm", "saved by shared_seed")
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for i in summary:
        cells = [i["graph"], _fmt_ms(i["diameter"], ".0f"), str(i["seeds"])]
        for s in SYNCS:
            k, n = i["reached"][s]
            cells.append(f"{_fmt_ms(i['rounds'][s])} ({k}/{n})")
        for s in ("max_norm", "shared_seed"):
            b = [x for x in i[f"saved_{s}_bounds"] if x != "exact"]
            cells.append(_fmt_ms(i[f"saved_{s}"]) + (f" ({', '.join(b)})" if b else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _run_table(res: dict) -> list[str]:
    cols = ("run", "radius", "diameter", "spectral gap", "rounds to target", "final acc min / "
            "mean", "wall s")
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for name, r in sorted(res["rows"].items()):
        rt = r["rounds_to_target"]
        cells = (name, "–" if r["radius"] is None else f"{r['radius']:g}",
                 str(r["diameter"]), "–" if r["spectral_gap"] is None
                 else f"{r['spectral_gap']:.3g}",
                 str(rt) if rt is not None else f"not in {r['rounds_run']}",
                 f"{r['final_acc_min']:.4f} / {r['final_acc_mean']:.4f}",
                 "–" if r["wall_time_s"] is None else f"{r['wall_time_s']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(out: str) -> dict:
    loaded = studies.load_runs(out)
    if not loaded:
        raise ConfigError(f"{out}/runs/ holds no run (metrics.jsonl); run the study first")
    study = studies.read_json(os.path.join(out, "study.json")) or {}
    res = analyse(loaded)
    any_cfg = next(iter(loaded.values())).config
    target, cap = any_cfg["target_accuracy"], max(r.config["rounds"] for r in loaded.values())
    summary = summarise(res)
    res["summary"] = summary
    res["finding"], res["verdict"] = finding(summary, cap, target)
    with open(os.path.join(out, "results.json"), "w") as f:
        f.write(studies.strict(res))
    plot(summary, os.path.join(out, FIGURE), cap)
    seeds = sorted({r["seed"] for r in res["rows"].values()})
    full = target >= 0.97 and len(seeds) >= 3
    lines = [
        "# Max norm sync against the diameter (issue #16, study 2)",
        "",
        "Written by `experiments/sync_study.py` from the run files in `runs/`; rebuild with "
        f"`python -m experiments.sync_study --report_only --out={out}`.",
        "",
        *studies.provenance(study, res["rows"].values()),
        "",
        "## Protocol" + ("" if full else " (reduced, CPU)"),
        "",
        f"- {any_cfg['num_devices']} devices × {any_cfg['samples_per_device']} IID MNIST "
        f"images, MLP 784-200-200-10, B {any_cfg['batch_size']}, one local epoch, SGD lr "
        f"{any_cfg['learning_rate']} momentum {any_cfg['momentum']}, data_size weights.",
        "- Graphs: a star; random geometric graphs whose radius gives each diameter (per seed: "
        "graph_resample's rule, then the median of the radii 0.15..0.90 whose graph has that "
        "diameter); a 10 × 10 torus; a cycle.",
        "- sync: max_norm (P2PL's step 1), none (independent inits), shared_seed (one common "
        "init, no communication).",
        f"- **Rounds to target**: the first round at which every device is at ≥ {target:.0%} "
        "on the 10,000 test images (evaluated every 3 rounds; once an evaluation meets the "
        "target, the rounds since the previous one are evaluated: exact to the round). Round "
        f"cap {cap}; an unreached run counts as {cap + 1} in the savings (marked as a bound).",
        f"- Seeds {', '.join(map(str, seeds))}; mean ± std over seeds.",
        *([] if full else [
            "- **Reduced** from the issue's protocol (target 97%, 3 seeds, every diameter "
            "3..10): what these 2 CPU cores allowed in one session. Rerun "
            "`python -m experiments.sync_study` (its defaults are the full protocol) on a GPU; "
            "finished runs are reused."]),
        "",
        "## Results",
        "",
        *_table(summary),
        "",
        f"![rounds saved against the diameter]({FIGURE})",
        "",
        "## Finding",
        "",
        *res["finding"],
        "",
        "## Every run",
        "",
        *_run_table(res),
        "",
    ]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))
    return res


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {argv[1:]}\nUsage: {USAGE}", cli.EXIT_USER_ERROR)
    out, failed = _OUT.value, []
    if not _REPORT_ONLY.value:
        try:
            diameters = [int(d) for d in _DIAMETERS.value]
        except ValueError:
            cli.fail(f"--diameters={','.join(_DIAMETERS.value)} must be integers (about 2 to 12)",
                     cli.EXIT_USER_ERROR)
        if min([_ROUNDS.value, _JOBS.value, _SEEDS.value]) < 1 or not 0 < _TARGET.value <= 1:
            cli.fail("--rounds, --seeds and --jobs must be >= 1 and --target in (0, 1]",
                     cli.EXIT_USER_ERROR)
        try:
            plan = runs(diameters, _SEEDS.value, _ROUNDS.value, _TARGET.value)
        except ConfigError as e:
            cli.fail(str(e), cli.EXIT_USER_ERROR)
        commands, plans, failed = studies.run_all(_WORKDIR.value, plan, _JOBS.value)
        os.makedirs(out, exist_ok=True)
        studies.copy_runs(_WORKDIR.value, out, plan)
        studies.write_study(out, "experiments.sync_study", commands, plans)
    studies.report_and_exit(out, write_report, failed, _WORKDIR.value)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
