"""Round time of 1, 2 and 4 processes for a fixed population, and the bytes that cross process
boundaries per round, dense and gather consensus: the figures to plan a cluster run.

  python -m benchmarks.multihost [--n 64] [--processes 1,2,4] [--total-devices 8] [--json F]

Every configuration runs the same 8-way sharded program (the mesh of --total-devices CPU
devices, split over P processes with total / P devices each; P = 1 is one process, no
jax.distributed), so only the transport differs: between processes the rows consensus needs move
through gloo over TCP (here the loopback interface), inside a process through memory. Each
case is P fresh processes (python -m benchmarks.multihost --worker ...) that build the same
Simulator (benchmarks.common.build: MLP 784-200-200-10 on real MNIST when present), shard it,
compile the round, run a warm-up round and then time --repeats rounds (median, min-max).

Bytes across process boundaries, three ways:
  loopback   measured: the bytes sent on the loopback interface (/proc/net/dev, `lo` tx) during
             the timed rounds, per round. Every inter-process byte of a run on one machine goes
             there (plus the coordination service's heartbeats, a few hundred bytes a second,
             and anything else on this machine using loopback: a quiet machine is assumed).
  hlo        what the compiled round's collectives must bring to a process from the others: for
             each all-gather, all-reduce and collective-permute of the SPMD program (XLA's HLO),
             the result bytes times the fraction of its group on other processes (a ring
             all-reduce counted as reduce-scatter + all-gather: 2x), summed over processes.
  needed     the minimum a neighbour-aware exchange would move: every process receives each
             model row its devices' neighbours hold on other processes once.
XLA shards the gather's row index by all-gathering the whole [N, ...] parameter stack, and the
dense product too, so hlo and loopback are about (P - 1) x the stack per round while needed
depends on the graph: the gap is what a graph-aware partition + exchange would save.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loopback_tx_bytes() -> int:
    """Bytes sent on the loopback interface so far (Linux /proc/net/dev)."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[8])
    raise RuntimeError("no loopback interface in /proc/net/dev")


_DTYPE_BYTES = {"f32": 4, "f64": 8, "s32": 4, "u32": 4, "f16": 2, "bf16": 2, "s64": 8,
                "u64": 8, "pred": 1, "s8": 1, "u8": 1}
_COLLECTIVE = re.compile(
    r"=\s*(\(?[a-z0-9\[\]{},:\s/#_]*?\)?)\s*(all-gather|all-reduce|collective-permute)"
    r"(?:-start)?\(")


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in re.findall(r"([a-z]+[0-9]*)\[([0-9,]*)\]", text):
        if dtype in _DTYPE_BYTES:
            total += _DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
    return total


def hlo_cross_bytes(hlo: str, device_process: list[int]) -> tuple[float, dict]:
    """Bytes the collectives of `hlo` bring to each process from the others, summed over the
    processes (see the module docstring), and per kind the result bytes per device."""
    procs = sorted(set(device_process))
    kinds: dict[str, int] = {}
    cross = 0.0
    for line in hlo.splitlines():
        m = _COLLECTIVE.search(line)
        if not m or "-done" in line:
            continue
        size, kind = _shape_bytes(m.group(1)), m.group(2)
        kinds[kind] = kinds.get(kind, 0) + size
        if kind == "collective-permute":
            pairs = re.findall(r"\{(\d+),(\d+)\}", line.split("source_target_pairs=")[-1])
            cross += size * sum(device_process[int(a)] != device_process[int(b)]
                                for a, b in pairs)
            continue
        groups = re.search(r"replica_groups=\{(\{[0-9,{}]*\})\}", line)
        if groups:
            members = [[int(d) for d in g.split(",")]
                       for g in re.findall(r"\{([0-9,]+)\}", groups.group(1))]
        else:   # iota form [groups,size]<=[n] or none: one group of every device
            members = [list(range(len(device_process)))]
        factor = 2 if kind == "all-reduce" else 1
        for g in members:
            for p in procs:
                here = sum(device_process[d] == p for d in g)
                if here:   # this process receives the other processes' shares of the result
                    cross += factor * size * (len(g) - here) / len(g)
    return cross, kinds


def needed_cross_bytes(idx: np.ndarray, num_processes: int, model_bytes: int) -> int:
    """Each process receives once every neighbour row held on another process."""
    n = idx.shape[0]
    per = n // num_processes
    owner = np.arange(n) // per
    total = 0
    for p in range(num_processes):
        rows = np.unique(idx[owner == p].reshape(-1))
        total += int(np.sum(owner[rows] != p))
    return total * model_bytes


# ----------------------------------------------------------------------------- worker


def worker(args: argparse.Namespace) -> None:
    import jax
    import ml_collections

    from p2pl_jax import distributed

    if args.num_processes > 1:   # the run path's own join (gloo, the watchdog)
        distributed.initialize(ml_collections.ConfigDict(dict(
            distributed=True, coordinator_address=f"127.0.0.1:{args.port}",
            num_processes=args.num_processes, process_id=args.process_id,
            distributed_timeout_s=120)))
    from jax.experimental import multihost_utils

    from benchmarks import common
    from p2pl_jax import sharding

    setup = common.build(args.n, samples=args.samples, backend=args.backend,
                         topology="random", degree=args.degree,
                         hidden_sizes=common.parse_hidden(args.hidden), device_block=0)
    sim = setup.sim
    idx = np.asarray(sim.arrays.idx)
    sim.shard(sharding.make_mesh())
    hp = common.hparams()
    state = jax.block_until_ready(sim.init(0))
    compile_s = sim.compile(state, hp)
    hlo = sim.compiled_rounds[0].as_text()
    state, metrics = jax.block_until_ready(sim.step(state, hp))   # warm-up
    sync = (lambda name: multihost_utils.sync_global_devices(name)) \
        if args.num_processes > 1 else (lambda name: None)
    sync("start")
    lo0 = loopback_tx_bytes()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, metrics = jax.block_until_ready(sim.step(state, hp))
        times.append(time.perf_counter() - t0)
    lo1 = loopback_tx_bytes()
    sync("end")
    if jax.process_index() != 0:
        return
    mesh_devices = list(sharding.make_mesh().devices.reshape(-1))
    order = {d.id: i for i, d in enumerate(mesh_devices)}
    device_process = [0] * len(mesh_devices)
    for d in mesh_devices:
        device_process[order[d.id]] = d.process_index
    cross, kinds = hlo_cross_bytes(hlo, device_process)
    model_bytes = setup.num_params * 4
    out = {"processes": args.num_processes, "devices_per_process": len(jax.local_devices()),
           "mesh": len(mesh_devices), "n": args.n, "backend": args.backend,
           "round_s": statistics.median(times), "round_min_s": min(times),
           "round_max_s": max(times), "compile_s": compile_s,
           "loopback_bytes_per_round": (lo1 - lo0) / args.repeats,
           "hlo_cross_bytes_per_round": cross,
           "needed_cross_bytes_per_round": needed_cross_bytes(idx, args.num_processes,
                                                              model_bytes),
           "hlo_collective_result_bytes": kinds, "stack_bytes": args.n * model_bytes,
           "train_loss": float(metrics["train_loss"]), "data": setup.data_source,
           "machine": common.machine_info()}
    print("RESULT " + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------- driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(args: argparse.Namespace, processes: int, backend: str) -> dict:
    port, devices = _free_port(), args.total_devices // processes
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "benchmarks.multihost", "--worker", f"--port={port}",
         f"--num-processes={processes}", f"--process-id={i}", f"--backend={backend}",
         f"--n={args.n}", f"--samples={args.samples}", f"--hidden={args.hidden}",
         f"--degree={args.degree}", f"--repeats={args.repeats}"],
        cwd=_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(processes)]
    outs = [p.communicate(timeout=args.timeout) for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"a worker of P={processes} {backend} failed "
                               f"(status {p.returncode}):\n{err[-3000:]}")
    line = next(x for x in outs[0][0].splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="simulated devices (fixed total)")
    ap.add_argument("--samples", type=int, default=100, help="samples per device")
    ap.add_argument("--hidden", default="200,200", help="MLP hidden sizes")
    ap.add_argument("--degree", type=int, default=4, help="random graph, degree at most")
    ap.add_argument("--processes", default="1,2,4", help="process counts")
    ap.add_argument("--total-devices", type=int, default=8,
                    help="CPU devices of the mesh, split over the processes")
    ap.add_argument("--backends", default="gather,dense")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per case")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--num-processes", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="gather", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    counts = [int(p) for p in args.processes.split(",")]
    bad = [p for p in counts if p < 1 or args.total_devices % p or args.n % args.total_devices]
    if bad:
        ap.error(f"--processes {bad}: each must divide --total-devices={args.total_devices}, "
                 f"and --n={args.n} must be a multiple of --total-devices")
    args.process_counts = counts
    return args


def _mb(x: float) -> str:
    return f"{x / 2**20:.2f}"


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return []
    from benchmarks import common

    info = common.machine_info()
    common.header("multi-process round time and cross-process bytes", info, args)
    rows, results = [], []
    for backend in args.backends.split(","):
        base = None
        for p in args.process_counts:
            r = run_case(args, p, backend)
            base = r["round_s"] if p == 1 else base
            r["vs_one_process"] = r["round_s"] / base if base else None
            results.append(r)
            rows.append([str(p), str(r["devices_per_process"]), backend,
                         f"{r['round_s']:.3f}", f"{r['round_min_s']:.3f}-{r['round_max_s']:.3f}",
                         f"{r['vs_one_process']:.2f}" if base else "-",
                         _mb(r["loopback_bytes_per_round"]), _mb(r["hlo_cross_bytes_per_round"]),
                         _mb(r["needed_cross_bytes_per_round"]), _mb(r["stack_bytes"])])
            print(f"# done: P={p} {backend}: {r['round_s']:.3f} s/round", flush=True)
    print(f"# N={args.n}, {args.samples} samples/device, MLP {args.hidden}, random graph degree "
          f"<= {args.degree}, mesh of {args.total_devices} CPU devices; data: "
          f"{results[0]['data'] if results else '?'}")
    common.print_table(["P", "dev/proc", "backend", "round s", "(min-max)", "x P=1",
                        "loopback MiB/round", "hlo MiB/round", "needed MiB/round",
                        "stack MiB"], rows)
    common.write_json(args.json, {"machine": info, "args": vars(args), "results": results})
    return results


if __name__ == "__main__":
    main()
