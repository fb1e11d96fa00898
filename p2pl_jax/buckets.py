"""Work-proportional local phase: devices grouped by their number of local steps (host side).

The local phase scans a fixed number of steps for every device it vmaps over. With one scan for
all N devices that number is the largest device's, ceil(max_n |D_n| / B) per epoch, and every
smaller device sits idle (masked) for the rest: under one-device skew (one device holding half
of MNIST) a round costs N x 3000 device-steps instead of about 6000. A *bucket* is a set of
devices scanned together with their own length; the round runs one scan per bucket and puts
the results back in device order, so a round costs about the device-steps the data asks for.

The plan is static (computed once from the sizes) and chosen by dynamic programming over the
devices sorted by size: buckets are contiguous runs of that order, and the plan minimises

    cost = sum over buckets b of  (count_b + overhead) * steps_b            (epochs mode)

where steps_b is the bucket's scan length (E * ceil(max_b / B)) and `overhead` is the fixed
cost of one scan step in device-steps (a step of a width-1 scan is not free: loop control,
kernel launches on an accelerator). Without the overhead term every distinct size would get its
own bucket; with it, devices of nearly equal size stay together (an IID split with sizes 599 to
601 keeps one bucket, and so today's program exactly). At most `max_buckets` buckets are used,
since each is one more scan to compile (about 0.3 s each for the MLP on CPU).

With `local_steps` = T every device runs T steps, so the scans are equally long; the sizes
still matter because each device shuffles (argsorts) ceil(T / s_min) epochs of max_n samples.
The cost is then sum_b (count_b + overhead) * T + count_b * epochs_b * ceil(max_b / B) * SHUFFLE,
with SHUFFLE the cost of shuffling B samples relative to one step (small).

Equal sizes (or a plan with one bucket) give `()`: the round then runs exactly the single
padded scan it always ran, bit for bit. With buckets the maths is the same (a device's batches
do not depend on its bucket, see `local_update.batch_order`), but a vmap of another width may
reduce in another order, so results agree to float32 rounding, as with `device_block`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Fixed cost of one scan step, in device-steps, by backend. CPU: a width-1 step of the MLP costs
# about 1-2 device-steps of a wide one. GPU: from the H200 round times of docs/performance.md
# (MLP, 60 steps a round: 13 ms at N = 100, 0.1 s at 1000, 0.9 s at 10^4), a step costs about
# a + b N with a / b = 37 (N 100-1000) to 128 (N 1000-10^4); 64 sits between. Not measured
# with buckets on a GPU yet (benchmarks/skew.py in benchmarks/gpu_check.sh does).
OVERHEAD = {"cpu": 1.0, "gpu": 64.0, "tpu": 64.0}
SHUFFLE = 1.0 / 16.0   # shuffling B samples, in steps (local_steps mode only)
DEFAULT_MAX_BUCKETS = 8
MAX_CANDIDATES = 512   # DP over at most this many size groups (quantiles above)


@dataclasses.dataclass(frozen=True)
class Bucket:
    """Devices order[start : start + count] (order from `plan`), sizes min_size..max_size."""

    start: int
    count: int
    min_size: int
    max_size: int


def _steps(size: np.ndarray, batch_size: int) -> np.ndarray:
    return -(-np.maximum(size, 1) // batch_size)


def _costs(lo: np.ndarray, hi: np.ndarray, counts: np.ndarray, *, batch_size: int,
           local_epochs: int, local_steps: int, overhead: float) -> np.ndarray:
    """Cost of buckets spanning groups i..j: lo[i] smallest size, hi[j] largest, counts[i, j]."""
    steps_hi = _steps(hi, batch_size)[None, :]
    if not local_steps:
        return (counts + overhead) * local_epochs * steps_hi
    epochs = -(-local_steps // _steps(lo, batch_size))[:, None]
    return ((counts + overhead) * local_steps
            + counts * epochs * steps_hi * SHUFFLE)


def plan(sizes, *, batch_size: int, local_epochs: int = 1, local_steps: int = 0,
         max_buckets: int = DEFAULT_MAX_BUCKETS,
         overhead: float = OVERHEAD["cpu"]) -> tuple[tuple[Bucket, ...], np.ndarray]:
    """(buckets, order): the cheapest grouping of devices (module docstring) in at most
    `max_buckets` buckets. order int32 [N]: device ids, smallest size first (stable), bucket b
    holding order[b.start : b.start + b.count]. One bucket gives buckets == () (the padded
    scan of today)."""
    sizes = np.asarray(sizes, np.int64)
    n = len(sizes)
    order = np.argsort(sizes, kind="stable").astype(np.int32)
    if max_buckets <= 1 or n <= 1 or sizes.min() == sizes.max():
        return (), order
    sorted_sizes = sizes[order]
    # Candidate cut points: between groups of devices with equal keys (step counts, or sizes
    # with local_steps); above MAX_CANDIDATES groups, at quantiles of the device order.
    key = sorted_sizes if local_steps else _steps(sorted_sizes, batch_size)
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    if len(starts) > MAX_CANDIDATES:
        pick = np.unique(np.linspace(0, len(starts) - 1, MAX_CANDIDATES).astype(int))
        starts = starts[pick]
    ends = np.r_[starts[1:], n]              # group g = devices starts[g] .. ends[g] - 1
    g = len(starts)
    lo, hi = sorted_sizes[starts], sorted_sizes[ends - 1]
    counts = (ends[None, :] - starts[:, None]).astype(float)   # devices of groups i..j
    cost = _costs(lo, hi, counts, batch_size=batch_size, local_epochs=local_epochs,
                  local_steps=local_steps, overhead=overhead)
    cost = np.where(np.arange(g)[:, None] <= np.arange(g)[None, :], cost, np.inf)
    # best[k, j]: cheapest cover of groups 0..j with k + 1 buckets; cut[k, j]: its last start.
    k_max = min(max_buckets, g)
    best = np.full((k_max, g), np.inf)
    cut = np.zeros((k_max, g), int)
    best[0] = cost[0]
    for k in range(1, k_max):
        for j in range(k, g):
            # last bucket = groups i..j, i >= k (k buckets before it)
            total = best[k - 1, k - 1:j] + cost[k:j + 1, j]
            i = int(np.argmin(total))
            best[k, j], cut[k, j] = total[i], i + k
    k = int(np.argmin(best[:, g - 1]))
    if k == 0:
        return (), order
    bounds, j = [], g - 1
    for level in range(k, -1, -1):
        i = cut[level, j] if level else 0
        bounds.append((i, j))
        j = i - 1
    buckets = tuple(Bucket(start=int(starts[i]), count=int(ends[j] - starts[i]),
                           min_size=int(lo[i]), max_size=int(hi[j]))
                    for i, j in reversed(bounds))
    return buckets, order


def device_steps(sizes, buckets: tuple[Bucket, ...], *, batch_size: int,
                 local_epochs: int = 1) -> tuple[int, int, int]:
    """(needed, padded, bucketed) device-steps of one round in epochs mode: what the data asks
    for (sum of E ceil(|D_n| / B)), the single padded scan, and the plan's scans."""
    sizes = np.asarray(sizes, np.int64)
    needed = int(local_epochs * _steps(sizes, batch_size).sum())
    padded = int(local_epochs * len(sizes) * _steps(sizes.max(), batch_size))
    if not buckets:
        return needed, padded, padded
    bucketed = int(sum(local_epochs * b.count * _steps(b.max_size, batch_size)
                       for b in buckets))
    return needed, padded, bucketed
