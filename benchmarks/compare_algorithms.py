"""P2PL against the decentralized baselines: rounds, bytes and time to a target accuracy.

    python -m benchmarks.compare_algorithms [--num_devices=100] [--rounds=30] [--target=0.95]
        [--lrs=0.02,0.05] [--seeds=0,1] [--data=iid,shards] [--algorithms=p2pl,dpsgd,...]
        [--grid_data=iid] [--eval_every=3] [--workdir=runs/compare_algorithms] [--quick]

Protocol (printed at the top of the output): N devices of real MNIST (600 samples each, IID, or
the 2-shard non-IID split: every device holds 2 label-sorted shards), MLP 784-200-200-10, a
random geometric graph (radius 0.2 in the unit square; the same graph for every algorithm of a
seed), one local epoch of SGD (batch 10, momentum 0.9) between two communications for every
algorithm, max norm sync at phase 0 (FedAvg: one shared init). Algorithms: p2pl (data_size
weights), dpsgd (metropolis), gradient_tracking (metropolis), push_sum (uniform
column-stochastic), choco with top_k 1% and with qsgd 4 bits (metropolis; consensus step 1
at every rate, and each of --gammas at the smallest rate), fedavg (server, all devices every
round).

rounds to target: the first round after whose communication every device's model reaches the
target test accuracy (all 10,000 MNIST test images), exact to the round (evaluated every
--eval_every rounds, the rounds in between evaluated once the target is met: eval_backfill);
a run stops there or at the round cap. bytes to target: every message sent by every device
(and FedAvg's server) through that round, at its real size (docs/ALGORITHMS.md);
per device: the busiest device's.

Stage 1, the grid: every algorithm x data of --grid_data (default: all; the other data then use
the best rate found on the first grid data) at each learning rate of --lrs, seed 0; the best rate
is the one with the fewest rounds to target (ties and runs that never reach it: the higher
final minimum accuracy). Stage 2: the other seeds at that rate. Every run is one
runner.run into WORKDIR/<data>/<algorithm>/lr<rate>/seed<k> (reused when finished, resumed
when interrupted). On CPU a sweep's replicas cost the same flops as separate runs, so the grid
runs as separate runs (identical results, see tests/test_sweep.py) that can be reused one by
one. Writes WORKDIR/compare_algorithms.{md,json} and WORKDIR/accuracy_vs_bytes.png.
--quick: 8 devices x 60 samples, MLP 784-16-10, 4 rounds, target 50%, one rate, for tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

from benchmarks import common
from benchmarks.compare_mixing import per_round
from configs import mnist
from experiments.reproduce import run_or_reuse

VARIANTS = {
    "p2pl": {"algorithm": "p2pl"},
    "dpsgd": {"algorithm": "dpsgd"},
    "gradient_tracking": {"algorithm": "gradient_tracking"},
    "push_sum": {"algorithm": "push_sum"},
    "choco_top_k_1pct": {"algorithm": "choco", "compressor": "top_k", "compress_ratio": 0.01},
    "choco_qsgd_4bit": {"algorithm": "choco", "compressor": "qsgd", "qsgd_bits": 4},
    "fedavg": {"algorithm": "fedavg"},
}
DATA = {"iid": {"partition": "iid"}, "shards": {"partition": "shards", "shards_per_device": 2}}


def make_config(args, data: str, variant: str, lr: float, seed: int, gamma: float = 1.0):
    c = mnist.get_config()
    c.num_devices = args.num_devices
    c.samples_per_device = args.samples
    c.hidden_sizes = tuple(args.hidden)
    c.rounds = args.rounds
    c.target_accuracy = args.target
    c.eval_every = args.eval_every
    c.topology = "random_geometric"
    c.graph_radius = args.radius
    c.learning_rate = lr
    c.seed = seed
    c.progress = False
    c.tensorboard = False
    c.consensus_step = gamma
    for k, v in {**DATA[data], **VARIANTS[variant]}.items():
        c[k] = v
    return c


def _key(record: dict, cap: int) -> tuple:
    rtt = record.get("rounds_to_target")
    ok = record["status"] == "ok"
    return (rtt if (ok and rtt is not None) else cap + 1, 0 if ok else 1,
            -(record.get("final_acc_min") or 0.0))


def _fmt_rounds(values: list, cap: int) -> str:
    reached = [v for v in values if v is not None]
    if not reached:
        return f"not in {cap}"
    text = f"{np.mean(reached):.1f}" + (f" ± {np.std(reached):.1f}" if len(reached) > 1 else "")
    return text + ("" if len(reached) == len(values) else f" ({len(reached)}/{len(values)})")


def _fmt_mb(values: list) -> str:
    got = [v for v in values if v is not None]
    return f"{np.mean(got) / 1e6:,.1f}" if got else "–"


def _curve(workdir: str) -> tuple[list, list, list]:
    path = os.path.join(workdir, "metrics.jsonl")
    bytes_cum, acc_mean, acc_min = [], [], []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if "bytes_cum" in r:
                    bytes_cum.append(r["bytes_cum"])
                    acc_mean.append(r["acc_mean"])
                    acc_min.append(r["acc_min"])
    return bytes_cum, acc_mean, acc_min


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num_devices", type=int, default=None, help="N (default 100; 8 quick)")
    ap.add_argument("--samples", type=int, default=None, help="per device (600; 60 quick)")
    ap.add_argument("--hidden", type=common.parse_hidden, default=None,
                    help="MLP widths (default 200,200; 16 quick)")
    ap.add_argument("--rounds", type=int, default=None, help="round cap (default 30; 4 quick)")
    ap.add_argument("--target", type=float, default=None, help="default 0.95; 0.5 quick")
    ap.add_argument("--lrs", default=None, help="learning-rate grid (default 0.02,0.05)")
    ap.add_argument("--seeds", default=None, help="seeds (default 0,1; 0 quick)")
    ap.add_argument("--extra_lrs", default="gradient_tracking=0.005",
                    help="rates added to one algorithm's grid, 'ALGO=v,v;ALGO=v' (default: "
                         "gradient_tracking=0.005, which diverges at 0.02 and 0.05)")
    ap.add_argument("--data", default="iid,shards", help="comma list of " + ", ".join(DATA))
    ap.add_argument("--grid_data", default=None,
                    help="data on which the learning-rate grid runs (default: every --data); "
                         "the others use the best rate of the first of these")
    ap.add_argument("--algorithms", default=",".join(VARIANTS),
                    help="comma list of " + ", ".join(VARIANTS))
    ap.add_argument("--radius", type=float, default=None, help="RGG radius (0.2; 0.7 quick)")
    ap.add_argument("--gammas", default="0.05,0.3",
                    help="choco's consensus steps added to its grid, each at the smallest "
                         "learning rate (gamma 1 runs at every rate)")
    ap.add_argument("--eval_every", type=int, default=3)
    ap.add_argument("--workdir", default="runs/compare_algorithms")
    ap.add_argument("--quick", action="store_true", help="tiny scale: checks the script only")
    args = ap.parse_args(argv)
    defaults = {"num_devices": (100, 8), "samples": (600, 60), "hidden": ((200, 200), (16,)),
                "rounds": (30, 4), "target": (0.95, 0.5), "lrs": ("0.02,0.05", "0.05"),
                "seeds": ("0,1", "0"), "radius": (0.2, 0.7)}
    for field, (full, small) in defaults.items():
        if getattr(args, field) is None:
            setattr(args, field, small if args.quick else full)
    args.lrs = [float(v) for v in args.lrs.split(",") if v]
    args.gammas = [float(v) for v in (args.gammas or "").split(",") if v]
    args.extra = {}
    for item in (args.extra_lrs or "").split(";"):
        if item.strip():
            algo, _, values = item.partition("=")
            args.extra[algo.strip()] = [float(v) for v in values.split(",") if v]
    args.seeds = [int(v) for v in args.seeds.split(",") if v]
    args.data = [d for d in args.data.split(",") if d]
    args.grid_data = ([d for d in args.grid_data.split(",") if d] if args.grid_data
                      else list(args.data))
    args.data = args.grid_data + [d for d in args.data if d not in args.grid_data]
    args.algorithms = [a for a in args.algorithms.split(",") if a]
    bad = [d for d in args.data if d not in DATA] + [a for a in args.algorithms
                                                     if a not in VARIANTS]
    if bad:
        ap.error(f"unknown data / algorithm: {', '.join(bad)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    info = common.machine_info()
    common.header("compare_algorithms: P2PL against the decentralized baselines", info, args)
    protocol = (
        f"Protocol: {args.num_devices} devices x {args.samples} MNIST samples ("
        f"{' / '.join(args.data)}), MLP {common.mlp_name(tuple(args.hidden))}, random geometric "
        f"graph radius {args.radius}, 1 local epoch (batch 10, momentum 0.9) per round, target "
        f"{args.target:.0%} on every device, round cap {args.rounds}, evaluated every "
        f"{args.eval_every} rounds with exact backfill; learning-rate grid {args.lrs} "
        f"(extra: {args.extra or 'none'}; choco also consensus steps {args.gammas} at the "
        f"smallest rate) on seed "
        f"{args.seeds[0]} ({' / '.join(args.grid_data)}; other data at the best rate of "
        f"{args.grid_data[0]}), then seeds {args.seeds} at the best rate.")
    print(protocol, flush=True)
    results: dict = {"protocol": protocol, "machine": info, "cases": {}}

    def run_case(data, variant, lr, seed, gamma=1.0):
        c = make_config(args, data, variant, lr, seed, gamma)
        tag = f"lr{lr:g}" + ("" if gamma == 1.0 else f"_gamma{gamma:g}")
        workdir = os.path.join(args.workdir, data, variant, tag, f"seed{seed}")
        rec = run_or_reuse(c, workdir, name=f"{data}/{variant} {tag} seed {seed}")
        return {k: rec.get(k) for k in (
            "status", "rounds_to_target", "final_acc_min", "final_acc_mean", "rounds_run",
            "bytes_to_target", "bytes_per_device_to_target", "bytes_total", "message_bytes",
            "train_wall_s", "eval_time_s", "compile_time_s", "wall_time_s")} | {
            "workdir": workdir, "s_per_round": per_round(rec) if rec["status"] == "ok"
            else None, "lr": lr, "gamma": gamma, "seed": seed}

    for data in args.data:
        for variant in args.algorithms:
            if data in args.grid_data:
                lrs = sorted(set(args.lrs) | set(args.extra.get(variant, [])))
                grid = [run_case(data, variant, lr, args.seeds[0]) for lr in lrs]
                if VARIANTS[variant]["algorithm"] == "choco":
                    grid += [run_case(data, variant, min(lrs), args.seeds[0], g)
                             for g in args.gammas if g != 1.0]
            else:   # the best rate of the grid on the first grid data
                first = results["cases"][f"{args.grid_data[0]}/{variant}"]
                grid = [run_case(data, variant, first["best_lr"], args.seeds[0],
                                 first["best_gamma"])]
            best = min(grid, key=lambda r: _key(r, args.rounds))
            seeds = [best] + [run_case(data, variant, best["lr"], s, best["gamma"])
                              for s in args.seeds[1:]]
            results["cases"][f"{data}/{variant}"] = {"grid": grid, "best_lr": best["lr"],
                                                     "best_gamma": best["gamma"],
                                                     "seeds": seeds}
    table = report(args, results)
    print(table)
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "compare_algorithms.md"), "w") as f:
        f.write(table + "\n")
    _write_json(args.workdir, results)
    figure(args, results)
    print(f"\nwrote {args.workdir}/compare_algorithms.md, .json and accuracy_vs_bytes.png")
    return results


def _write_json(workdir: str, results: dict) -> None:
    from p2pl_jax import writers

    writers.write_json(os.path.join(workdir, "compare_algorithms.json"), results)


def report(args, results: dict) -> str:
    info = results["machine"]
    lines = [f"Machine: {info['host']} | {info['cpu']} ({info['cpu_count']} cores) | backend "
             f"{info['backend']} ({info['device']}) | jax {info['jax']}", "",
             results["protocol"], ""]
    for data in args.data:
        lines += [f"### {data}", "",
                  "| algorithm | grid: rounds to target per lr | best lr | rounds to target "
                  "(seeds) | MB to target | MB per device to target | MB per message | "
                  "final acc min / mean | train s / round |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for variant in args.algorithms:
            case = results["cases"][f"{data}/{variant}"]
            grid = ", ".join(f"{g['lr']:g}" + ("" if g["gamma"] == 1.0 else f" γ {g['gamma']:g}")
                             + f": {g['rounds_to_target'] or '–'}"
                             + ("" if g["status"] == "ok" else " (failed)")
                             for g in case["grid"])
            seeds = case["seeds"]
            ok = [s for s in seeds if s["status"] == "ok"]
            acc = (f"{np.mean([s['final_acc_min'] for s in ok]):.4f} / "
                   f"{np.mean([s['final_acc_mean'] for s in ok]):.4f}") if ok else "–"
            spr = [s["s_per_round"] for s in ok if s["s_per_round"] is not None
                   and math.isfinite(s["s_per_round"])]
            msg = seeds[0].get("message_bytes")
            speed = f"{np.median(spr):.2f}" if spr else "–"
            lines.append(
                f"| {variant} | {grid} | {case['best_lr']:g}"
                + ("" if case["best_gamma"] == 1.0 else f" (γ {case['best_gamma']:g})") + " | "
                f"{_fmt_rounds([s['rounds_to_target'] for s in seeds], args.rounds)} | "
                f"{_fmt_mb([s['bytes_to_target'] for s in seeds])} | "
                f"{_fmt_mb([s['bytes_per_device_to_target'] for s in seeds])} | "
                f"{msg / 1e6 if msg else 0:.3f} | {acc} | {speed} |")
        lines.append("")
    lines.append("MB = 10^6 bytes of messages sent (a message over a link that then fails "
                 "still counts); rounds and MB are means over the seeds that reached the "
                 "target ((k/n): k of n seeds did).")
    return "\n".join(lines)


def figure(args, results: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure")
        return
    fig, axes = plt.subplots(1, len(args.data), figsize=(6 * len(args.data), 4.5),
                             squeeze=False)
    for ax, data in zip(axes[0], args.data):
        for variant in args.algorithms:
            run = results["cases"][f"{data}/{variant}"]["seeds"][0]
            b, mean, low = _curve(run["workdir"])
            if b:
                gamma = "" if run["gamma"] == 1.0 else f", γ {run['gamma']:g}"
                line, = ax.plot(np.maximum(b, 1), mean,
                                label=f"{variant} (lr {run['lr']:g}{gamma})")
                ax.plot(np.maximum(b, 1), low, ls=":", color=line.get_color())
        ax.axhline(args.target, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("cumulative bytes sent (all devices)")
        ax.set_ylabel("test accuracy (solid: mean, dotted: min over devices)")
        ax.set_title(f"{data}, seed {args.seeds[0]}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.workdir, "accuracy_vs_bytes.png"), dpi=120)


if __name__ == "__main__":
    main()
