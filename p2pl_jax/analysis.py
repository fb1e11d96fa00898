"""Weights and mixing speed of each scheme under size skew, without training (claim 7).

For a graph and device sizes, the dense W of a scheme gives its spectral gap (how fast consensus
contracts disagreement) and its stationary distribution π (how much each device's model counts in
the consensus limit), compared with p = |D_n| / Σ|D| (the share FedAvg and centralized training
give each device). `experiments/mixing_analysis.py` prints `table`.

A size distribution (`skew`) is "equal", "lognormal:SIGMA" (log-normal weights, 0 < SIGMA <= 10)
or "top:FRACTION" (one device holds FRACTION of the data, 0 < FRACTION < 1, the rest equal);
`parse_skew` checks one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import networkx as nx
import numpy as np

from p2pl_jax import graphs, mixing, partition
from p2pl_jax.errors import ConfigError, check_choice, check_range

SKEW_FORMS = ("equal, lognormal:SIGMA (0 < SIGMA <= 10) or top:FRACTION (0 < FRACTION < 1, "
              "the share of the one big device)")
MAX_SIGMA = 10.0   # beyond it one device holds all the data (and exp() overflows)


def parse_skew(skew: str, field: str = "skew") -> tuple[str, float | None]:
    """("equal", None), ("lognormal", SIGMA) or ("top", FRACTION); raises ConfigError naming
    `field` and the allowed forms."""
    kind, sep, arg = str(skew).strip().partition(":")
    if kind == "equal" and not sep:
        return "equal", None
    if kind not in ("lognormal", "top") or not sep:
        raise ConfigError(f"{field}={skew!r} is not a size distribution; allowed: {SKEW_FORMS}")
    try:
        value = float(arg)
    except ValueError:
        raise ConfigError(f"{field}={skew!r}: {arg!r} is not a number; allowed: "
                          f"{SKEW_FORMS}") from None
    ok = (0.0 < value <= MAX_SIGMA) if kind == "lognormal" else (0.0 < value < 1.0)
    if not (math.isfinite(value) and ok):
        raise ConfigError(f"{field}={skew!r} is out of range; allowed: {SKEW_FORMS}")
    return kind, value


def device_sizes(skew: str, num_devices: int, total: int, seed: int) -> np.ndarray:
    """Per-device sample counts as the runner's partition draws them for this seed."""
    kind, value = parse_skew(skew)
    labels = np.arange(total) % 10
    rng = np.random.default_rng(seed)
    per = total // num_devices
    if kind == "equal":
        parts = partition.partition(labels, num_devices, "iid", rng, samples_per_device=per)
    elif kind == "lognormal":
        parts = partition.partition(labels, num_devices, "skew", rng, samples_per_device=per,
                                    skew_sigma=value)
    else:
        fractions = partition.one_device_fraction(num_devices, value)
        parts = partition.partition(labels, num_devices, "skew", rng, samples_per_device=per,
                                    skew_fractions=fractions)
    return np.array([len(p) for p in parts])


def rgg_adjacency(num_devices: int, radius: float, seed: int) -> np.ndarray:
    """The random geometric graph of a reproduction run with this seed; raises ConfigError
    (naming the radius) when it is disconnected: π is then not unique."""
    g = graphs.make_graph("random_geometric", num_devices, seed=seed, radius=radius,
                          allow_disconnected=True)
    comps = nx.number_connected_components(g)
    if comps > 1:
        raise ConfigError(f"radius={radius} with {num_devices} devices gives a disconnected "
                          f"random geometric graph for seed {seed} ({comps} components), whose "
                          f"stationary distribution is not unique; use a larger radius "
                          f"(--radius) or more devices")
    return graphs.adjacency(g)


def analyse(adj: np.ndarray, sizes: np.ndarray, scheme: str) -> dict:
    W = mixing.mixing_matrix(adj, sizes, scheme)
    pi = mixing.stationary_distribution(W)
    p = sizes / sizes.sum()
    top = int(np.argmax(sizes))
    return {"gap": mixing.spectral_info(W)["spectral_gap"],
            "tv": 0.5 * float(np.abs(pi - p).sum()),
            "ratio_top": float(pi[top] / p[top])}


MAX_RADIUS = 1.5   # > sqrt(2), the unit square's diagonal: the complete graph


def check_args(num_devices: int, seeds: int, radius: float, samples: int, skews: Sequence[str],
               schemes: Sequence[str], prefix: str = "") -> None:
    """Raises ConfigError naming the argument (as `prefix` + its name, e.g. "--seeds") and what
    is allowed: num_devices >= 2, seeds >= 1, 0 < radius <= 1.5, samples >= num_devices (one
    per device at least), skews as `parse_skew` takes them, schemes among mixing.SCHEMES."""
    check_range(f"{prefix}num_devices", num_devices, 2, integer=True)
    check_range(f"{prefix}seeds", seeds, 1, integer=True)
    check_range(f"{prefix}radius", radius, 0.0, MAX_RADIUS, lo_open=True)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < num_devices:
        raise ConfigError(f"{prefix}samples={samples!r} is out of range; allowed: integers >= "
                          f"{prefix}num_devices={num_devices} (at least one sample per device)")
    if not skews:
        raise ConfigError(f"{prefix}skews is empty; allowed: a comma-separated list of "
                          f"{SKEW_FORMS}")
    for skew in skews:
        parse_skew(skew, f"{prefix}skews")
    if not schemes:
        raise ConfigError(f"{prefix}schemes is empty; allowed: a comma-separated list of "
                          f"{', '.join(mixing.SCHEMES)}")
    for scheme in schemes:
        check_choice(f"{prefix}schemes", scheme, mixing.SCHEMES)


def table(num_devices: int, seeds: int, radius: float, samples: int, skews: Sequence[str],
          schemes: Sequence[str]) -> list[str]:
    lines = [f"Random geometric graph, {num_devices} devices, radius {radius}, seeds "
             f"0..{seeds - 1} (mean over seeds); {samples} samples in total.", "",
             "| sizes | largest device share | scheme | spectral gap | TV(π, p) | π/p largest |",
             "| --- | --- | --- | --- | --- | --- |"]
    check_args(num_devices, seeds, radius, samples, skews, schemes)
    adjs = [rgg_adjacency(num_devices, radius, seed) for seed in range(seeds)]
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
