"""How each mixing scheme weighs the devices, and how fast it mixes, under size skew (claim 7).

  python -m experiments.mixing_analysis [--num_devices=100] [--seeds=3] [--radius=0.25]
      [--skews=equal,lognormal:0.5,lognormal:1,top:0.3,top:0.5] [--out=FILE.md]

No training: for each seed the random geometric graph and the device sizes are built exactly as a
reproduction run with that seed builds them (graphs.make_graph, partition.partition on 60000
MNIST-sized indices), and for each weight scheme the dense W gives
  spectral gap   1 − SLEM(W): how fast consensus contracts disagreement;
  TV(π, p)       total variation between π, the stationary distribution of W (how much each
                 device's model counts in the consensus limit), and p = |D_n| / Σ|D|, the data
                 share FedAvg and centralized training give it;
  π/p largest    π / p of the device with the most data (< 1: the consensus under-weights it).
Mean over seeds. The markdown table goes to stdout and to --out if given.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import app, flags

from p2pl_jax import graphs, mixing, partition

_N = flags.DEFINE_integer("num_devices", 100, "Devices.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds 0 .. seeds-1 (graph and sizes per seed).")
_RADIUS = flags.DEFINE_float("radius", 0.25, "Random geometric graph radius.")
_SAMPLES = flags.DEFINE_integer("samples", 60000, "Total training samples split across devices.")
_SKEWS = flags.DEFINE_list("skews", ["equal", "lognormal:0.5", "lognormal:1", "top:0.3",
                                     "top:0.5"],
                           "Size distributions: equal, lognormal:SIGMA, top:FRACTION (one "
                           "device holds FRACTION of the data, the rest equal).")
_SCHEMES = flags.DEFINE_list("schemes", ["data_size", "uniform", "metropolis", "max_degree"],
                             "Weight schemes.")
_OUT = flags.DEFINE_string("out", None, "Also write the markdown table here.")


def device_sizes(skew: str, num_devices: int, total: int, seed: int) -> np.ndarray:
    """Per-device sample counts as the runner's partition draws them for this seed."""
    labels = np.arange(total) % 10
    rng = np.random.default_rng(seed)
    per = total // num_devices
    if skew == "equal":
        parts = partition.partition(labels, num_devices, "iid", rng, samples_per_device=per)
    elif skew.startswith("lognormal:"):
        parts = partition.partition(labels, num_devices, "skew", rng, samples_per_device=per,
                                    skew_sigma=float(skew.split(":")[1]))
    elif skew.startswith("top:"):
        fractions = partition.one_device_fraction(num_devices, float(skew.split(":")[1]))
        parts = partition.partition(labels, num_devices, "skew", rng, samples_per_device=per,
                                    skew_fractions=fractions)
    else:
        raise app.UsageError(f"--skews: {skew!r} is not equal, lognormal:SIGMA or top:FRACTION")
    return np.array([len(p) for p in parts])


def analyse(adj: np.ndarray, sizes: np.ndarray, scheme: str) -> dict:
    W = mixing.mixing_matrix(adj, sizes, scheme)
    pi = mixing.stationary_distribution(W)
    p = sizes / sizes.sum()
    top = int(np.argmax(sizes))
    return {"gap": mixing.spectral_info(W)["spectral_gap"],
            "tv": 0.5 * float(np.abs(pi - p).sum()),
            "ratio_top": float(pi[top] / p[top])}


def table(num_devices: int, seeds: int, radius: float, samples: int, skews, schemes) -> list[str]:
    lines = [f"Random geometric graph, {num_devices} devices, radius {radius}, seeds "
             f"0..{seeds - 1} (mean over seeds); {samples} samples in total.", "",
             "| sizes | largest device share | scheme | spectral gap | TV(π, p) | π/p largest |",
             "| --- | --- | --- | --- | --- | --- |"]
    for skew in skews:
        rows = {s: [] for s in schemes}
        shares = []
        for seed in range(seeds):
            g = graphs.make_graph("random_geometric", num_devices, seed=seed, radius=radius)
            adj = graphs.adjacency(g)
            sizes = device_sizes(skew, num_devices, samples, seed)
            shares.append(sizes.max() / sizes.sum())
            for s in schemes:
                rows[s].append(analyse(adj, sizes, s))
        for s in schemes:
            mean = {k: np.mean([r[k] for r in rows[s]]) for k in rows[s][0]}
            lines.append(f"| {skew} | {np.mean(shares):.3f} | {s} | {mean['gap']:.4f} | "
                         f"{mean['tv']:.3f} | {mean['ratio_top']:.2f} |")
    return lines


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    lines = table(_N.value, _SEEDS.value, _RADIUS.value, _SAMPLES.value, _SKEWS.value,
                  _SCHEMES.value)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            f.write(text)


if __name__ == "__main__":
    app.run(main)
