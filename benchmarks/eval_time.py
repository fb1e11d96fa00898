"""Cost of one evaluation (every device's model on the full test set) against one round.

    python -m benchmarks.eval_time [--n=100] [--topology=random_geometric] [--repeats=3]
        [--device-chunks=10,25] [--example-chunks=2000] [--json=FILE]

configs/mnist.py's setting (MLP 784-200-200-10, 600 IID MNIST samples per device, B = 10, E = 1)
on a graph whose devices hold distinct models (random geometric, radius 0.25, as the
reproduction's sparse settings): the median time of one round (`Simulator.step`) and of one
evaluation (`metrics.make_evaluator` on the 10k test images, N distinct models) for each
evaluator layout (eval_device_chunk x eval_example_chunk; the numbers do not depend on it),
compile times apart. The ratio evaluation / round is what evaluating every round adds to a run
(eval_every = 1, and every round of a target hold).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks import common
from configs import mnist
from p2pl_jax import runner
from p2pl_jax.metrics import make_evaluator


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--topology", default="random_geometric")
    ap.add_argument("--radius", type=float, default=0.25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device-chunks", default="10,25")
    ap.add_argument("--example-chunks", default="2000")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    info = common.machine_info()
    common.header("eval_time: one evaluation of N distinct models against one round", info, args)
    c = mnist.get_config()
    c.num_devices, c.topology, c.graph_radius = args.n, args.topology, args.radius
    sim, ds, _ = runner.build(c)
    hp = runner.hparams(c)
    state = sim.init(c.seed)
    t0 = time.perf_counter()
    state, _ = sim.step(state, hp)          # compiles the round
    jax.block_until_ready(state)
    round_compile = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, _ = sim.step(state, hp)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    round_s = statistics.median(times)
    params = sim.eval_params(state)
    x, y = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test, jnp.int32)
    out = {"n": args.n, "topology": args.topology, "test_examples": int(x.shape[0]),
           **info, "round_s": round_s,
           "round_compile_s": round_compile, "evaluations": []}
    print(f"round: {round_s:.3f} s (median of {args.repeats}; compile {round_compile:.1f} s)")
    for dc in (int(v) for v in args.device_chunks.split(",")):
        for ec in (int(v) for v in args.example_chunks.split(",")):
            ev = make_evaluator(sim.model.apply, x, y, device_chunk=dc, example_chunk=ec)
            compile_s = ev.compile(params)
            metrics = ev(params)
            assert not bool(metrics["identical"]), "the models are identical: use a sparse graph"
            eval_s = _median_time(lambda: ev(params), args.repeats)   # noqa: B023
            row = {"device_chunk": dc, "example_chunk": ec, "eval_s": eval_s,
                   "compile_s": compile_s, "eval_over_round": eval_s / round_s}
            out["evaluations"].append(row)
            print(f"evaluation, device_chunk={dc} example_chunk={ec}: {eval_s:.3f} s "
                  f"(compile {compile_s:.1f} s) = {eval_s / round_s:.2f} x a round")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
