"""What the wireless channel costs per round: the P2PL round with channel=wireless against
the same round with the ideal channel (no faults), in the same run, at each N.

  python -m benchmarks.wireless [--ns=100,1000] [--samples=100] [--repeats=5] [--topology=random]
      [--degree=8] [--backend=gather] [--hidden=200,200] [--json=FILE] [--quick]

The wireless round draws Rayleigh fading per link, decides arrivals, recomputes the weights
over what arrived and computes the bill (docs/wireless.md); the ideal round mixes with the
static weights. Both: MLP 784-200-200-10, B = 10, one local epoch, data_size weights, a random
graph of degree <= --degree, --backend consensus (gather by default; with dense the wireless
round builds its W from the lists). The median of
--repeats rounds after one warm-up round; the ratio is wireless / ideal.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from benchmarks import common


def time_round(s: common.Setup, repeats: int, seed: int) -> float:
    state = s.sim.init(seed)
    hp = common.hparams()
    state, m = s.sim.step(state, hp)   # compile and warm up
    jax.block_until_ready(m)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, m = s.sim.step(state, hp)
        jax.block_until_ready((state.params, m))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", default="100,1000")
    ap.add_argument("--samples", type=int, default=100, help="samples per device")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--topology", default="random")
    ap.add_argument("--degree", type=int, default=8)
    ap.add_argument("--backend", default="gather", choices=("gather", "dense"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", default="200,200", help="MLP hidden widths")
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: N = 4, 20 samples, 1 repeat, MLP 784-16-10")
    args = ap.parse_args(argv)
    if args.quick:
        args.ns, args.samples, args.repeats, args.hidden, args.degree = "4", 20, 1, "16", 2
    info = common.machine_info()
    common.header("wireless: the P2PL round with channel=wireless vs the ideal channel", info,
                  args)
    xy = common.load_data("auto", args.seed)
    rows = []
    for n in sorted(int(v) for v in args.ns.split(",")):
        row = {"n": n}
        for channel in ("ideal", "wireless"):
            s = common.build(n, samples=args.samples, topology=args.topology,
                             degree=args.degree, seed=args.seed, xy=xy, channel=channel,
                             backend=args.backend,
                             hidden_sizes=common.parse_hidden(args.hidden))
            row[f"{channel}_s"] = time_round(s, args.repeats, args.seed)
            row["k"] = s.max_neighbours
            del s
            common.free()
        row["ratio"] = row["wireless_s"] / row["ideal_s"]
        rows.append(row)
        print(f"# N={n}: ideal {row['ideal_s']:.4g} s, wireless {row['wireless_s']:.4g} s "
              f"({row['ratio']:.3f}x)", flush=True)
    common.print_table(["N", "K", "ideal s", "wireless s", "wireless / ideal"],
                       [[str(r["n"]), str(r["k"]), f"{r['ideal_s']:.4g}",
                         f"{r['wireless_s']:.4g}", f"{r['ratio']:.3f}"] for r in rows])
    common.write_json(args.json, {"benchmark": "wireless", "machine": info, "args": vars(args),
                                  "rows": rows})
    return rows


if __name__ == "__main__":
    main()
