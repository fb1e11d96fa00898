"""Round time of the vectorized simulator against N and the consensus backend, with its floor.

    python -m benchmarks.round_time [--ns=10,100,1000] [--backends=dense,gather] [--repeats=5]
        [--samples=600] [--topology=random --degree=4] [--device-block=-1] [--json=FILE]

For each N (smallest first) and backend, on one Simulator (MLP 784-200-200-10, B = 10,
`--samples` per device, E = 1, data-size weights, no link failures): the compile time of the
round, the median time of the whole round (local epoch of every device + consensus, the
library's `round_step` jitted with the state donated, as `Simulator.step` runs it) and of the
consensus alone, device-steps per second (N x local steps / round time), the peak memory, and
the memory-traffic floor of the round.

Memory-traffic floor (float32; a lower bound if nothing stays in cache and compute is free):
  local phase  each local step of each device reads theta, g, m and writes theta, m: 5 P x 4 B,
               plus its batch B x (784 + 1) x 4 B; N x E x ceil(samples / B) steps per round;
  consensus    theta only (momentum is kept). dense: read W and X, write X: (N^2 + 2 N P) x 4 B;
               gather: read K rows per device, idx and w, write X: (K N P + 2 N K + N P) x 4 B.
  floor = bytes / copy bandwidth, measured in the same run (10 passes of x <- x + 1 on a 1 GiB
  float32 array on an accelerator, 256 MiB on CPU, in one jitted call; bytes read + written /
  time).
On CPU a block of devices (device_block) keeps its theta, m, g in cache for the whole epoch, so
the measured time can beat this floor (ratio < 1).

The default graph, "random", is the union of two random Hamiltonian cycles (max degree 4,
K = 5), sparse enough for `gather` and cheap to build at N = 10000; `--topology=complete` is the
paper's headline graph (gather is then O(N^2 P)). Ns whose rough memory estimate exceeds what
is free are skipped; an out-of-memory error is reported and the next case runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import traceback
from functools import partial

import jax

from benchmarks import common
from benchmarks.common import GiB, MiB
from p2pl_jax import consensus, simulation

PIXELS = 28 * 28


def floor_bytes(s: common.Setup, backend: str) -> tuple[float, float]:
    """(local phase bytes, consensus bytes) of one round under the model in the docstring."""
    n, p, k = s.n, s.num_params, s.max_neighbours
    local = n * s.steps * (5 * p * 4 + s.batch_size * (PIXELS + 1) * 4)
    if backend == "dense":
        cons = (n * n + 2 * n * p) * 4
    else:
        cons = (k * n * p + 2 * n * k + n * p) * 4
    return float(local), float(cons)


def estimate_bytes(n: int, samples: int, num_params: int, with_dense: bool) -> float:
    """Rough peak memory of one case: data, W, state and the round's temporaries."""
    on_cpu = jax.default_backend() == "cpu"
    data = n * samples * (PIXELS + 1) * 4 * (2 if on_cpu else 1)   # CPU: host copy as well
    state = 5 * n * num_params * 4    # theta, m; grads; new theta (or m); consensus output
    w = n * n * 4 if with_dense else 0
    host = 5 * n * n * 8 if on_cpu else 0   # float64 mixing matrix and its temporaries
    return float(data + state + w + host)


def run_case(s: common.Setup, backend: str, hp, repeats: int, seed: int,
             bandwidth: float) -> dict:
    sim = s.sim
    spec = dataclasses.replace(sim.spec, backend=backend)
    round_fn = jax.jit(partial(simulation.round_step, spec=spec, local_update=sim.local_update),
                       donate_argnums=0)
    state = jax.block_until_ready(sim.init(seed))
    t0 = time.perf_counter()
    compiled = round_fn.lower(state, sim.arrays, hp).compile()
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    state, metrics = jax.block_until_ready(compiled(state, sim.arrays, hp))   # warm-up
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = jax.block_until_ready(compiled(state, sim.arrays, hp))
        times.append(time.perf_counter() - t0)
    loss = float(metrics["train_loss"])

    if backend == "dense":
        mix_args = (sim.arrays.w_dense, state.params)
        mix = jax.jit(consensus.mix_dense)
    else:
        mix_args = (sim.arrays.idx, sim.arrays.weights, state.params)
        mix = jax.jit(consensus.mix_gather)
    t0 = time.perf_counter()
    mix_compiled = mix.lower(*mix_args).compile()
    mix_compile_s = time.perf_counter() - t0
    jax.block_until_ready(mix_compiled(*mix_args))
    mix_times = []
    for _ in range(repeats):
        _, t = common.timed(partial(mix_compiled, *mix_args))
        mix_times.append(t)
    del state, metrics, mix_args
    common.free()

    local_b, cons_b = floor_bytes(s, backend)
    round_s, cons_s = common.median(times), common.median(mix_times)
    floor_s = (local_b + cons_b) / bandwidth
    cons_floor_s = cons_b / bandwidth
    peak, peak_what = common.peak_memory()
    return {"n": s.n, "backend": backend, "k": s.max_neighbours, "steps": s.steps,
            "round_s": round_s, "round_spread": common.spread(times), "first_round_s": first_s,
            "consensus_s": cons_s, "consensus_spread": common.spread(mix_times),
            "compile_s": compile_s, "consensus_compile_s": mix_compile_s,
            "device_steps_per_s": s.n * s.steps / round_s,
            "floor_local_bytes": local_b, "floor_consensus_bytes": cons_b,
            "floor_s": floor_s, "ratio_to_floor": round_s / floor_s,
            "consensus_floor_s": cons_floor_s, "consensus_ratio_to_floor": cons_s / cons_floor_s,
            "peak_bytes": peak, "peak_what": peak_what, "train_loss": loss,
            "device_block": sim.spec.device_block, "setup_s": s.setup_s}


COLUMNS = ("N", "backend", "K", "round s", "(min-max)", "consensus s", "compile s",
           "dev-steps/s", "floor s", "x floor", "cons floor s", "cons x floor", "peak GiB")


def row_text(r: dict) -> list[str]:
    if "error" in r:
        return [str(r["n"]), r["backend"], "-", r["error"]] + [""] * (len(COLUMNS) - 4)
    f = lambda v: f"{v:.4g}"
    return [str(r["n"]), r["backend"], str(r["k"]), f(r["round_s"]), r["round_spread"],
            f(r["consensus_s"]), f"{r['compile_s']:.3g}+{r['consensus_compile_s']:.2g}",
            f(r["device_steps_per_s"]), f(r["floor_s"]), f"{r['ratio_to_floor']:.3g}",
            f(r["consensus_floor_s"]), f"{r['consensus_ratio_to_floor']:.3g}",
            f"{r['peak_bytes'] / GiB:.3g}"]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", default="10,100,1000", help="device counts, comma separated")
    ap.add_argument("--backends", default="dense,gather", help="consensus backends")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    ap.add_argument("--samples", type=int, default=600, help="samples per device")
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--topology", default="random",
                    help="random (degree <= --degree), complete, or a p2pl_jax.graphs name")
    ap.add_argument("--degree", type=int, default=4)
    ap.add_argument("--device-block", type=int, default=-1,
                    help="-1: the runner's auto rule (2 on CPU, 0 on GPU/TPU)")
    ap.add_argument("--hidden", default="200,200", help="MLP hidden widths")
    ap.add_argument("--data", choices=("auto", "mnist", "random"), default="auto")
    ap.add_argument("--copy-mib", type=int, default=0,
                    help="bandwidth probe size; 0: 1024 on an accelerator, 256 on CPU")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: N=4 on a cycle, MLP 784-16-10, 20 samples, 1 repeat, "
                         "16 MiB probe")
    args = ap.parse_args(argv)
    if args.quick:
        args.ns, args.samples, args.repeats, args.copy_mib = "4", 20, 1, 16
        args.hidden, args.degree = "16", 2   # as vs_loop --quick: compiles are shared
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    ns = sorted(int(v) for v in args.ns.split(","))
    hidden = common.parse_hidden(args.hidden)
    backends = [b.strip() for b in args.backends.split(",")]
    for b in backends:
        if b not in ("dense", "gather"):
            raise SystemExit(f"--backends: {b!r} is not dense or gather")
    info = common.machine_info()
    common.header("round_time: vectorized P2PL round vs N and consensus backend", info, args)
    nbytes = args.copy_mib * MiB if args.copy_mib else common.default_copy_bytes()
    bw = common.copy_bandwidth(nbytes)
    print(f"# copy bandwidth: {bw['bytes_per_s'] / 1e9:.3g} GB/s ({bw['passes']} passes of "
          f"x <- x + 1 on {nbytes / MiB:.0f} MiB float32 in one call, median of 5: "
          f"{bw['seconds'] * 1e3:.3g} ms, spread {bw['spread']} s)")
    xy = common.load_data(args.data, args.seed)
    print(f"# data: {xy[2]}; {args.samples} samples/device, B={args.batch_size}, "
          f"E={args.local_epochs}; MLP {common.mlp_name(hidden)}; repeats={args.repeats}")
    print("# floor model: per local step per device 5 x P x 4 B (read theta, g, m; write "
          "theta, m) + batch B x 785 x 4 B; consensus of theta: dense (N^2 + 2NP) x 4 B, "
          "gather (KNP + 2NK + NP) x 4 B; floor = bytes / copy bandwidth")
    hp = common.hparams()
    rows: list[dict] = []
    for n in ns:
        num_params = common.mlp_params(hidden)
        need = estimate_bytes(n, args.samples, num_params, "dense" in backends)
        avail, where = common.available_memory()
        if need > 0.9 * avail:
            msg = f"skipped: needs ~{need / GiB:.1f} GiB, {avail / GiB:.1f} GiB free ({where})"
            print(f"# N={n}: {msg}")
            rows += [{"n": n, "backend": b, "error": msg} for b in backends]
            continue
        try:
            s = common.build(n, samples=args.samples, batch_size=args.batch_size,
                             local_epochs=args.local_epochs,
                             backend="dense" if "dense" in backends else "gather",
                             topology=args.topology, degree=args.degree,
                             device_block=args.device_block, seed=args.seed, xy=xy,
                             hidden_sizes=hidden)
        except Exception as e:  # noqa: BLE001 - report and go on with the next N
            msg = f"set-up failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}"
            print(f"# N={n}: {msg}")
            rows += [{"n": n, "backend": b, "error": msg} for b in backends]
            common.free()
            continue
        print(f"# N={n}: P={s.num_params}, K={s.max_neighbours}, {s.steps} steps/device, "
              f"topology {s.topology}, device_block={s.sim.spec.device_block}, "
              f"set-up {s.setup_s:.1f} s (host, not timed)")
        for b in backends:
            try:
                r = run_case(s, b, hp, args.repeats, args.seed, bw["bytes_per_s"])
            except Exception as e:  # noqa: BLE001 - e.g. RESOURCE_EXHAUSTED: report, go on
                first = str(e).splitlines()[0][:120] if str(e) else ""
                r = {"n": n, "backend": b, "error": f"{type(e).__name__}: {first}"}
                traceback.print_exc(limit=2)
            rows.append(r)
            print("  " + " | ".join(f"{k}={v}" for k, v in zip(COLUMNS, row_text(r))))
            common.free()
        del s
        common.free()
    print()
    common.print_table(list(COLUMNS), [row_text(r) for r in rows])
    peak_what = next((r["peak_what"] for r in rows if "peak_what" in r), "")
    print(f"# round s: median whole round; consensus s: mixing of theta alone; compile s: "
          f"round + consensus; peak: {peak_what} of the process so far")
    common.write_json(args.json, {"benchmark": "round_time", "machine": info,
                                  "copy_bandwidth": bw, "args": vars(args), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
