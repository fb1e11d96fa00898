"""Round time under skewed dataset sizes: one padded scan against the bucketed local phase.

    python -m benchmarks.skew [--n=100] [--cases=equal,lognormal:1,...] [--repeats=2]
        [--padded-repeats=1] [--json=FILE] [--quick]

N devices share all 60,000 MNIST training images (MLP 784-200-200-10, B = 10, E = 1, complete
graph with data-size weights, as the headline run) with the sizes of each case:

  equal          600 each (the IID headline: one scan, buckets or not)
  lognormal:S    sizes proportional to exp(S z), z ~ N(0, 1) (partition=skew, skew_sigma=S)
  top:F          device 0 holds F of the data, the others share the rest equally
  groups:A/B     half the devices share A of the data, the other half B (skew_fractions)

For each case: the round time with one padded scan for everybody (local_buckets=1, what every
version before #12 ran) and with the bucketed local phase (local_buckets=-1, buckets.py), the
scans the plan chose, the device-steps per round (needed by the data, padded, run), and the
case's *sequential floor*: one epoch of the largest device alone (a 1-device simulation of
algorithm=local on that device's data), which no layout can beat since its steps are
sequential. The target (issue #12): bucketed <= 2 x max(IID round, floor). Round times are
medians over `--repeats` rounds after one warm-up round (`--padded-repeats` for the padded
layout, whose skewed rounds are slow), compile times apart.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from benchmarks import common
from p2pl_jax import analysis, buckets, graphs, partition, simulation
from p2pl_jax.models import MLP

CASES = ("equal", "lognormal:1", "lognormal:1.5", "top:0.5", "top:0.9", "groups:0.01/0.99")


def case_sizes(case: str, n: int, total: int, seed: int) -> np.ndarray:
    """Per-device sample counts of a case, drawn by p2pl_jax.partition as the runner does."""
    kind, _, arg = case.partition(":")
    if kind in ("equal", "lognormal", "top"):
        return analysis.device_sizes(case, n, total, seed)   # the same forms
    if kind != "groups":
        raise SystemExit(f"--cases: {case!r} is not a case; allowed: equal, lognormal:S, "
                         "top:F, groups:A/B")
    parts = partition.partition(np.arange(total) % 10, n, "skew", np.random.default_rng(seed),
                                samples_per_device=total // n,
                                skew_groups=tuple(float(a) for a in arg.split("/")))
    return np.array([len(p) for p in parts])


def time_rounds(sim: simulation.Simulator, repeats: int, seed: int = 0) -> dict:
    """Compile time, warm-up round and the median of `repeats` rounds of `sim`."""
    hp = common.hparams()
    state = jax.block_until_ready(sim.init(seed))
    compile_s = sim.compile(state, hp)
    state, _ = jax.block_until_ready(sim.step(state, hp))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = jax.block_until_ready(sim.step(state, hp))
        times.append(time.perf_counter() - t0)
    return {"round_s": common.median(times), "spread": common.spread(times),
            "compile_s": compile_s, "train_loss": float(metrics["train_loss"])}


def run_case(case: str, args, x: np.ndarray, y: np.ndarray, iid_round: float | None) -> dict:
    sizes = case_sizes(case, args.n, len(y), args.seed)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    order = np.random.default_rng(args.seed).permutation(len(y))
    parts = [order[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    adj = graphs.adjacency(graphs.make_graph("complete", args.n))
    model = MLP(hidden_sizes=(200, 200), num_classes=10)
    block = common.resolve_device_block(args.device_block)
    out = {"case": case, "n": args.n, "max_size": int(sizes.max()),
           "min_size": int(sizes.min())}
    results = {}
    for layout, nb, reps in (("bucketed", -1, args.repeats),
                             ("padded", 1, args.padded_repeats)):
        sim = simulation.Simulator(model=model, x=x, y=y, parts=parts, adj=adj, batch_size=10,
                                   device_block=block, local_buckets=nb, diameter=1)
        results[layout] = time_rounds(sim, reps)
        if layout == "bucketed":
            out["scans"] = [[b.count, b.max_size] for b in sim.buckets] or [
                [args.n, int(sizes.max())]]
            out["needed"], out["padded_steps"], out["run_steps"] = buckets.device_steps(
                sizes, sim.buckets, batch_size=10)
        del sim
        common.free()
    big = parts[int(np.argmax(sizes))]
    alone = simulation.Simulator(model=model, x=x, y=y, parts=[big], adj=np.zeros((1, 1), bool),
                                 algorithm="local", batch_size=10, device_block=block)
    floor = time_rounds(alone, args.repeats)["round_s"]
    iid = results["bucketed"]["round_s"] if iid_round is None else iid_round
    out.update({f"{k}_{layout}": v for layout, r in results.items() for k, v in r.items()})
    out.update({"floor_s": floor, "iid_round_s": iid,
                "speedup": results["padded"]["round_s"] / results["bucketed"]["round_s"],
                "x_target_base": results["bucketed"]["round_s"] / max(iid, floor)})
    return out


COLUMNS = ("case", "max |D_n|", "scans (count x max size)", "device-steps need/pad/run",
           "padded s", "bucketed s", "speed-up", "floor s", "bucketed / max(IID, floor)",
           "compile s pad/buck")


def row_text(r: dict) -> list[str]:
    f = lambda v: f"{v:.3g}"
    scans = " ".join(f"{c}x{m}" for c, m in r["scans"])
    return [r["case"], str(r["max_size"]), scans,
            f"{r['needed']}/{r['padded_steps']}/{r['run_steps']}", f(r["round_s_padded"]),
            f(r["round_s_bucketed"]), f(r["speedup"]), f(r["floor_s"]),
            f(r["x_target_base"]), f"{r['compile_s_padded']:.2g}/{r['compile_s_bucketed']:.2g}"]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--samples", type=int, default=60000, help="training images shared")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--padded-repeats", type=int, default=1)
    ap.add_argument("--device-block", type=int, default=-1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default="auto", help="auto | mnist | random")
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 4 devices, 400 random images, equal and top:0.5")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.samples, args.repeats, args.padded_repeats = 4, 400, 1, 1
        args.data, args.cases = "random", "equal,top:0.5"
    info = common.machine_info()
    common.header("skew: padded scan vs bucketed local phase under skewed sizes", info, args)
    x, y, source = common.load_data(args.data, args.seed)
    x, y = x[:args.samples], y[:args.samples]
    print(f"data: {source}, {len(y)} images")
    rows, iid = [], None
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        r = run_case(case, args, x, y, iid)
        if case == "equal":
            iid = r["round_s_bucketed"]
        rows.append(r)
        common.print_table(list(COLUMNS), [row_text(r)])
    print()
    common.print_table(list(COLUMNS), [row_text(r) for r in rows])
    common.write_json(args.json, {"machine": info, "args": vars(args), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
