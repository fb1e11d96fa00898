"""Weights and mixing speed of each scheme under size skew, without training (claim 7).

For a graph and device sizes, the dense W of a scheme gives its spectral gap (how fast consensus
contracts disagreement) and its stationary distribution π (how much each device's model counts in
the consensus limit), compared with p = |D_n| / Σ|D| (the share FedAvg and centralized training
give each device). `experiments/mixing_analysis.py` prints `table`.
"""

from __future__ import annotations

import numpy as np

from p2pl_jax import graphs, mixing, partition
from p2pl_jax.errors import ConfigError


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
        raise ConfigError(f"skews: {skew!r} is not equal, lognormal:SIGMA or top:FRACTION")
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
    adjs = [graphs.adjacency(graphs.make_graph("random_geometric", num_devices, seed=seed,
                                               radius=radius)) for seed in range(seeds)]
    for skew in skews:
        rows = {s: [] for s in schemes}
        shares = []
        for seed, adj in enumerate(adjs):
            sizes = device_sizes(skew, num_devices, samples, seed)
            shares.append(sizes.max() / sizes.sum())
            for s in schemes:
                rows[s].append(analyse(adj, sizes, s))
        for s in schemes:
            mean = {k: np.mean([r[k] for r in rows[s]]) for k in rows[s][0]}
            lines.append(f"| {skew} | {np.mean(shares):.3f} | {s} | {mean['gap']:.4f} | "
                         f"{mean['tv']:.3f} | {mean['ratio_top']:.2f} |")
    return lines
