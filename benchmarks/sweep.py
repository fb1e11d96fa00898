"""S replicas in one compiled program vs S separate runs of the same round.

    python -m benchmarks.sweep [--replicas=16] [--n=100] [--rounds=3] [--samples=600]
        [--topology=complete] [--device-block=-1] [--json=FILE]

Replicas differ in seed (initialisation, shuffling) and learning rate and share the data and
graph, as in a hyperparameter sweep. "Separate" = one replica's compiled round run S times one
after another (compile counted once, so the ratio is the pure execution speed-up; S separate
processes would also pay S compiles). "Sweep" = jax.vmap of the library's round over a leading
replica axis (p2pl_jax.sweep does the same), one compiled program. The memory-traffic floor of
a sweep round is S times that of one round (see round_time.py) over the copy bandwidth measured
in the same run.
"""

from __future__ import annotations

import argparse
from functools import partial

import jax
import jax.numpy as jnp

from benchmarks import common
from benchmarks.round_time import floor_bytes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=16)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--samples", type=int, default=600)
    p.add_argument("--topology", default="complete")
    p.add_argument("--backend", default="dense")
    p.add_argument("--device-block", type=int, default=-1)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    info = common.machine_info()
    common.header("sweep: S replicas in one program vs S separate runs", info, args)
    block = common.resolve_device_block(args.device_block)
    s = common.build(args.n, samples=args.samples, topology=args.topology,
                     backend=args.backend, device_block=block)
    sim = s.sim
    lrs = jnp.linspace(0.01, 0.1, args.replicas)
    hps = [common.hparams().replace(learning_rate=lr) for lr in lrs]

    # Separate: one replica's compiled round, S times in sequence.
    state = sim.init(0)
    compile_single = sim.compile(state, hps[0])
    state, _ = sim.step(state, hps[0])
    jax.block_until_ready(state)
    times = []
    states = [sim.init(i) for i in range(args.replicas)]
    def all_replicas(states):
        return [sim.step(st, hp)[0] for st, hp in zip(states, hps)]

    for _ in range(args.rounds):
        states, t = common.timed(partial(all_replicas, states))
        times.append(t)
    t_separate = common.median(times)

    # Sweep: vmap over a leading replica axis, one compiled program.
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
    sweep_state = stack([sim.init(i) for i in range(args.replicas)])
    sweep_hp = stack(hps)
    step = jax.jit(jax.vmap(sim.round_fn, in_axes=(0, None, 0)), donate_argnums=0)
    compiled, compile_sweep = common.timed(
        lambda: step.lower(sweep_state, sim.arrays, sweep_hp).compile())
    sweep_state, _ = compiled(sweep_state, sim.arrays, sweep_hp)
    jax.block_until_ready(sweep_state)
    times = []
    for _ in range(args.rounds):
        (sweep_state, _), t = common.timed(partial(compiled, sweep_state, sim.arrays, sweep_hp))
        times.append(t)
    t_sweep = common.median(times)

    bw = common.copy_bandwidth(common.default_copy_bytes())
    local, cons = floor_bytes(s, "dense" if sim.backend in ("dense", "global") else "gather")
    floor_s = args.replicas * (local + cons) / bw["bytes_per_s"]
    peak, what = common.peak_memory()
    result = {"replicas": args.replicas, "n": args.n, "backend": sim.backend,
              "device_block": block, "separate_s": t_separate, "sweep_s": t_sweep,
              "speedup": t_separate / t_sweep, "compile_single_s": compile_single,
              "compile_sweep_s": compile_sweep, "floor_s": floor_s,
              "sweep_over_floor": t_sweep / floor_s, "copy_GBps": bw["bytes_per_s"] / 1e9,
              "peak_GiB": peak / common.GiB, "peak_what": what, **info}
    common.print_table(
        ["S", "N", "backend", "S separate rounds (s)", "sweep round (s)", "speed-up",
         "floor (s)", "sweep/floor", "compile 1 / sweep (s)", f"peak ({what}) GiB"],
        [[str(args.replicas), str(args.n), sim.backend, f"{t_separate:.4g}", f"{t_sweep:.4g}",
          f"{t_separate / t_sweep:.2f}x", f"{floor_s:.4g}", f"{t_sweep / floor_s:.2f}",
          f"{compile_single:.1f} / {compile_sweep:.1f}", f"{peak / common.GiB:.2f}"]])
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
