"""Rounds-to-target and time of every mixing-weight scheme on several graphs, equal vs skewed
dataset sizes.

    python -m benchmarks.compare_mixing [--num_devices=100] [--rounds=100] [--seeds=3]
        [--graphs=random_geometric,erdos_renyi,torus] [--schemes=data_size,metropolis,
        uniform,max_degree,data_size_mh] [--sizes=equal,skewed] [--skew_sigma=1.0] [--eval_every=2]
        [--workdir=runs/compare_mixing] [--quick]

Each case (graph × sizes × scheme × seed) is one p2pl_jax.runner.run of configs/mnist.py
(P2PL, real MNIST, 600 samples per device on average) into WORKDIR/<graph>/<sizes>/<scheme>/
seed<k>; a finished case is reused, an interrupted one resumes. Prints the machine header, then
a markdown table (one row per graph × sizes × scheme: rounds-to-target mean ± std over the
seeds that reached it, seeds reached, final min / mean accuracy, training seconds per round
(median over seeds; local phase + consensus, evaluation and compilation excluded), compile
seconds, spectral gap of W) and writes WORKDIR/compare_mixing.csv (one row per run) and
WORKDIR/compare_mixing.md.

Skewed sizes: log-normal exp(σ z) shares of N × 600 samples (`partition=skew`). The local phase
scans ceil(max_n / B) steps for every device, so its time grows with the largest device.
Graphs: random geometric (radius 0.25; 0.6 with --quick), Erdős–Rényi (p 0.06; 0.5), torus.
--quick: 8 devices × 60 samples, MLP 784-16-10, 3 rounds, 1 seed, target 60%, one graph.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics

import numpy as np

from benchmarks import common
from configs import mnist
from experiments.reproduce import run_or_reuse

GRAPHS = {"random_geometric": {"graph_radius": (0.25, 0.6)},
          "erdos_renyi": {"graph_p": (0.06, 0.5)}, "torus": {}, "cycle": {}}
SCHEMES = ("data_size", "metropolis", "uniform", "max_degree", "data_size_mh")
CSV_FIELDS = ("graph", "sizes", "scheme", "seed", "status", "rounds_to_target", "final_acc_min",
              "final_acc_mean", "rounds_run", "train_s_per_round", "compile_time_s",
              "wall_time_s", "diameter", "spectral_gap", "max_samples", "workdir")


def make_config(args, graph: str, sizes: str, scheme: str, seed: int):
    c = mnist.get_config()
    c.num_devices = args.num_devices
    c.samples_per_device = args.samples
    c.hidden_sizes = tuple(args.hidden)
    c.rounds = args.rounds
    c.target_accuracy = args.target
    c.eval_every = args.eval_every
    c.topology = graph
    for field, (full, quick) in GRAPHS[graph].items():
        setattr(c, field, quick if args.quick else full)
    c.mixing = scheme
    if sizes == "skewed":
        c.partition = "skew"
        c.skew_sigma = args.skew_sigma
    c.seed = seed
    c.tensorboard = False
    c.progress = not args.quick
    if args.quick:
        c.eval_example_chunk = 1000
    return c


def per_round(record: dict) -> float:
    """Seconds per round of training: (train wall − evaluation) / rounds run."""
    rounds = record.get("rounds_run") or 0
    train = record.get("train_wall_s", record.get("wall_time_s", 0.0) -
                       record.get("compile_time_s", 0.0))
    return (train - record.get("eval_time_s", 0.0)) / rounds if rounds else float("nan")


def summarize(records: list[dict], cap: int) -> dict:
    ok = [r for r in records if r["status"] == "ok"]
    reached = [r["rounds_to_target"] for r in ok if r["rounds_to_target"] is not None]
    gaps = [r["spectral_gap"] for r in ok if r.get("spectral_gap") is not None]
    if reached:
        rounds = f"{np.mean(reached):.1f} ± {np.std(reached):.1f}"
    else:
        rounds = f"not reached in {cap}" if ok else "failed"
    return {
        "rounds": rounds, "reached": f"{len(reached)}/{len(records)}",
        "acc": (f"{np.mean([r['final_acc_min'] for r in ok]):.4f} / "
                f"{np.mean([r['final_acc_mean'] for r in ok]):.4f}") if ok else "–",
        "s_per_round": (f"{statistics.median(per_round(r) for r in ok):.2f}" if ok else "–"),
        "compile_s": (f"{statistics.median(r['compile_time_s'] for r in ok):.1f}"
                      if ok else "–"),
        "gap": f"{np.mean(gaps):.3g}" if gaps else "–",
    }


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num_devices", type=int, default=None, help="N (default 100; 8 quick)")
    ap.add_argument("--samples", type=int, default=None,
                    help="mean samples per device (default 600; 60 quick)")
    ap.add_argument("--hidden", type=common.parse_hidden, default=None,
                    help="MLP widths, e.g. 200,200 (default; 16 quick)")
    ap.add_argument("--rounds", type=int, default=None, help="round cap (default 100; 3 quick)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0..S-1 (default 3; 1 quick)")
    ap.add_argument("--target", type=float, default=None,
                    help="target accuracy (default 0.97; 0.6 quick)")
    ap.add_argument("--graphs", default=None,
                    help="comma list of " + ", ".join(GRAPHS) + " (default: the first three; "
                    "random_geometric quick)")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--sizes", default="equal,skewed")
    ap.add_argument("--skew_sigma", type=float, default=1.0)
    ap.add_argument("--eval_every", type=int, default=None, help="default 2; 1 quick")
    ap.add_argument("--workdir", default="runs/compare_mixing")
    ap.add_argument("--quick", action="store_true", help="tiny scale: checks the script only")
    args = ap.parse_args(argv)
    quick = args.quick
    defaults = {"num_devices": (100, 8), "samples": (600, 60), "hidden": ((200, 200), (16,)),
                "rounds": (100, 3), "seeds": (3, 1), "target": (0.97, 0.6),
                "graphs": ("random_geometric,erdos_renyi,torus", "random_geometric"),
                "eval_every": (2, 1)}
    for field, (full, small) in defaults.items():
        if getattr(args, field) is None:
            setattr(args, field, small if quick else full)
    args.graphs = [g for g in args.graphs.split(",") if g]
    args.schemes = [s for s in args.schemes.split(",") if s]
    args.sizes = [s for s in args.sizes.split(",") if s]
    bad = ([g for g in args.graphs if g not in GRAPHS] + [s for s in args.schemes
                                                          if s not in SCHEMES]
           + [s for s in args.sizes if s not in ("equal", "skewed")])
    if bad:
        ap.error(f"unknown graph / scheme / sizes: {', '.join(bad)}")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    info = common.machine_info()
    common.header("compare_mixing: rounds-to-target and time per mixing scheme", info, args)
    records = []
    for graph in args.graphs:
        for sizes in args.sizes:
            for scheme in args.schemes:
                for seed in range(args.seeds):
                    c = make_config(args, graph, sizes, scheme, seed)
                    workdir = os.path.join(args.workdir, graph, sizes, scheme, f"seed{seed}")
                    rec = run_or_reuse(c, workdir, name=f"{graph}/{sizes}/{scheme} seed {seed}")
                    rec.update(graph=graph, sizes=sizes, scheme=scheme, seed=seed)
                    records.append(rec)
    lines = [
        f"Machine: {info['host']} | {info['cpu']} ({info['cpu_count']} cores) | backend "
        f"{info['backend']} ({info['device']}) | jax {info['jax']}",
        "",
        f"{args.num_devices} devices, {args.samples} samples per device on average, MLP "
        f"{common.mlp_name(tuple(args.hidden))}, target {args.target:.0%} for every device, "
        f"round cap {args.rounds}, seeds 0..{args.seeds - 1}, evaluated every "
        f"{args.eval_every} rounds; skewed = log-normal sizes, σ = {args.skew_sigma:g}.",
        "",
        "| graph | sizes | scheme | rounds to target | seeds reached | final acc min / mean | "
        "train s / round | compile s | spectral gap |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for graph in args.graphs:
        for sizes in args.sizes:
            for scheme in args.schemes:
                group = [r for r in records if (r["graph"], r["sizes"], r["scheme"])
                         == (graph, sizes, scheme)]
                s = summarize(group, args.rounds)
                lines.append(f"| {graph} | {sizes} | {scheme} | {s['rounds']} | {s['reached']} "
                             f"| {s['acc']} | {s['s_per_round']} | {s['compile_s']} | "
                             f"{s['gap']} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "compare_mixing.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.workdir, "compare_mixing.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in records:
            row = {k: r.get(k) for k in CSV_FIELDS}
            row["status"] = r["status"].splitlines()[0]
            row["train_s_per_round"] = per_round(r) if r["status"] == "ok" else None
            sizes_json = os.path.join(r["workdir"], "partition.json")
            if os.path.exists(sizes_json):
                with open(sizes_json) as pf:
                    row["max_samples"] = max(json.load(pf)["sizes"])
            w.writerow(row)
    print(f"\nwrote {args.workdir}/compare_mixing.md and compare_mixing.csv")
    return records


if __name__ == "__main__":
    main()
