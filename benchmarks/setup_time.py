"""Host set-up time of a simulation by stage, against N (issue #12: a set-up that scales).

    python -m benchmarks.setup_time [--ns=100,1000,10000,100000] [--radius-factor=1.2]
        [--baseline-max-n=1000] [--json=FILE] [--quick]

What runner.build + the initialisation do, stage by stage, on a random geometric graph with
radius r = f * sqrt(2 ln N / (pi N)) (f = --radius-factor; f > 1 is connected w.h.p.; the row
says whether it was), MNIST (P2PL_DATA_DIR; random data of MNIST shape if missing), IID
partition with min(600, 60000 // N) samples per device (N > 60000: 1 sample each, rows reused
modulo 60000), logistic regression (MLP 784-10: the state is N x 7850 floats, 3.1 GB at 10^5),
P2PL with data-size weights and max norm sync:

  data        load_dataset (cached after the first N)
  partition   partition.partition (iid)
  graph       graphs.make_graph (networkx; its KD-tree for random_geometric)
  adjacency   graphs.sparse_adjacency (CSR from the edge list)
  diameter    simulation.graph_diameter (bounding-diameters BFS on csgraph)
  lists       simulation.graph_lists      } inside `simulator`; timed again alone after it
  weights     simulation.static_weights   } (warm: its jit compile cached) to show where its
                                            time goes
  simulator   Simulator(...) with that diameter (lists, weights, backend, device arrays)
  spectrum    mixing.spectral_info as runner.build calls it (dense eigenvalues of the dense W
              up to mixing.SPECTRUM_DENSE_MAX_N, ARPACK on the sparse W above)
  init        sim.init, first call: jit compile + run (max norm sync over `diameter` steps)
  init_run    sim.init again (compiled): run only; init - init_run ~ its compile
  total       data + partition + graph + adjacency + diameter + simulator + spectrum + init

Baseline in the same run, N <= --baseline-max-n: the old diameter (networkx all-pairs BFS on
the graph, as graph_diameter did before) and the old dense adjacency + dense W.
"""

from __future__ import annotations

import argparse
import math
import time
import traceback

import jax
import networkx as nx
import numpy as np

from benchmarks import common
from benchmarks.common import GiB
from p2pl_jax import data as data_lib
from p2pl_jax import graphs, mixing, partition, simulation
from p2pl_jax.models import MLP

STAGES = ("data", "partition", "graph", "adjacency", "diameter", "lists", "weights", "simulator",
          "spectrum", "init", "init_run")
TOTAL = ("data", "partition", "graph", "adjacency", "diameter", "simulator", "spectrum", "init")


def radius(n: int, factor: float) -> float:
    return factor * math.sqrt(2 * math.log(n) / (math.pi * n))


def _timed(times: dict, name: str, fn):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    times[name] = time.perf_counter() - t
    return out


def _load(kind: str):
    if kind == "random":
        x, y, _ = common.load_data("random")
        return x, y, "random (MNIST shape)"
    try:
        ds = data_lib.load_dataset("mnist")
        return ds.x_train, ds.y_train, f"MNIST ({ds.source})"
    except Exception:  # noqa: BLE001 - not found: random data of the same shape
        x, y, _ = common.load_data("random")
        return x, y, "random (MNIST shape)"


def run_case(n: int, args) -> dict:
    t: dict[str, float] = {}
    x, y, source = _timed(t, "data", lambda: _load(args.data))
    per = max(1, min(600, len(y) // n))
    labels = y if n * per <= len(y) else np.resize(y, n * per)   # rows reused modulo T

    def split():
        parts = partition.partition(labels, n, "iid", np.random.default_rng(args.seed),
                                    samples_per_device=per)
        return [p % len(y) for p in parts]

    parts = _timed(t, "partition", split)
    r = radius(n, args.radius_factor)
    g = _timed(t, "graph", lambda: graphs.make_graph("random_geometric", n, seed=args.seed,
                                                     radius=r, allow_disconnected=True))
    adj = _timed(t, "adjacency", lambda: graphs.sparse_adjacency(g))
    diameter = _timed(t, "diameter", lambda: simulation.graph_diameter(adj))
    sim = _timed(t, "simulator", lambda: simulation.Simulator(
        model=MLP(hidden_sizes=()), x=x, y=y, parts=parts, adj=adj, algorithm="p2pl",
        mixing_scheme="data_size", sync_mode="max_norm", backend="auto",
        device_block=common.resolve_device_block(-1), diameter=diameter))
    # Inside `simulator` (timed first, cold, as a run pays them); again alone after it, to
    # show where its time goes (the weights' jit compile is then cached).
    lists = _timed(t, "lists", lambda: simulation.graph_lists(adj))
    sizes = np.array([len(p) for p in parts])
    _timed(t, "weights", lambda: simulation.static_weights("row", adj, lists, sizes,
                                                           "data_size"))

    def spectrum():
        w = (sim.mixing_matrix if n <= mixing.SPECTRUM_DENSE_MAX_N else sim.mixing_weights)
        return mixing.spectral_info(w)

    spec = _timed(t, "spectrum", spectrum)
    _timed(t, "init", lambda: sim.init(args.seed))
    _timed(t, "init_run", lambda: sim.init(args.seed + 1))
    row = {"n": n, "radius": r, "samples_per_device": per, "data_source": source,
           "edges": graphs.num_edges(adj), "max_neighbours": int(lists.idx.shape[1]),
           "connected": nx.is_connected(g), "diameter": diameter, "backend": sim.backend,
           "slem": spec["slem"], **{f"{k}_s": v for k, v in t.items()},
           "total_s": sum(t[k] for k in TOTAL), "peak_rss_bytes": common.peak_memory()[0]}
    if n <= args.baseline_max_n:
        old: dict[str, float] = {}
        d_old = _timed(old, "nx_diameter", lambda: max(
            (nx.diameter(g.subgraph(c)) for c in nx.connected_components(g)), default=0))
        dense = _timed(old, "dense_adjacency", lambda: graphs.adjacency(g))
        _timed(old, "dense_w", lambda: mixing.mixing_matrix(dense, sizes, "data_size"))
        row.update({f"baseline_{k}_s": v for k, v in old.items()})
        row["baseline_diameter_equal"] = d_old == diameter
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ns", default="100,1000,10000,100000")
    ap.add_argument("--radius-factor", type=float, default=1.2)
    ap.add_argument("--baseline-max-n", type=int, default=1000)
    ap.add_argument("--data", default="auto", choices=("auto", "random"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="N = 30, 200 (smoke test)")
    args = ap.parse_args(argv)
    ns = [30, 200] if args.quick else [int(v) for v in args.ns.split(",")]
    info = common.machine_info()
    common.header("host set-up time by stage", info, args)
    print(f"# graph: random_geometric, r = {args.radius_factor} * sqrt(2 ln N / (pi N)); "
          f"P2PL, data_size weights, max norm sync; MLP 784-10; IID, min(600, 60000 // N) "
          f"samples/device (1 each, rows reused, above 60000)")
    rows = []
    for n in ns:
        try:
            row = run_case(n, args)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: report, go on
            traceback.print_exc(limit=2)
            row = {"n": n, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
        rows.append(row)
        common.free()
        print("  " + " | ".join(f"{k}={common._fmt(v)}" for k, v in row.items()), flush=True)
    print()
    head = ["N", "edges", "K", "diam", *[s for s in STAGES], "total", "peak GiB"]
    table = []
    for r in rows:
        if "error" in r:
            table.append([str(r["n"]), r["error"]])
            continue
        table.append([str(r["n"]), str(r["edges"]), str(r["max_neighbours"]), str(r["diameter"]),
                      *[f"{r[f'{s}_s']:.3g}" for s in STAGES], f"{r['total_s']:.3g}",
                      f"{r['peak_rss_bytes'] / GiB:.2g}"])
    common.print_table(head, table)
    for r in rows:
        if "baseline_nx_diameter_s" in r:
            print(f"# baseline N={r['n']}: networkx diameter {r['baseline_nx_diameter_s']:.3g} s "
                  f"(new {r['diameter_s']:.3g} s, equal: {r['baseline_diameter_equal']}); dense "
                  f"adjacency {r['baseline_dense_adjacency_s']:.3g} s + dense W "
                  f"{r['baseline_dense_w_s']:.3g} s (new {r['adjacency_s']:.3g} + "
                  f"{r['weights_s']:.3g} s)")
    print("# seconds; total = data + partition + graph + adjacency + diameter + simulator + "
          "spectrum + init (lists, weights: inside simulator); peak: host max RSS so far")
    common.write_json(args.json, {"benchmark": "setup_time", "machine": info, "args": vars(args),
                                  "rows": rows})
    return rows


if __name__ == "__main__":
    main()
