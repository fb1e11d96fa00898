"""Host-side partitions of a dataset across devices, and padding to one masked array.

Schemes (all seeded by an explicit np.random.Generator):
  iid        shuffle, equal sizes;
  shards     sort by label, cut into num_devices * shards_per_device equal shards, deal each
             device shards_per_device random shards (McMahan et al.'s pathological non-IID);
  dirichlet  label skew: class c is split across devices by p_c ~ Dir(alpha * 1_N);
  skew       quantity skew with IID labels: sizes from given per-device or per-group fractions
             (equal shares within a group), or log-normal weights.
Every device gets at least `min_size` samples; for dirichlet and skew this is enforced afterwards,
deterministically, by moving samples from the largest devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from p2pl_jax.errors import ConfigError, check_choice, check_range

SCHEMES = ("iid", "shards", "dirichlet", "skew")


@dataclasses.dataclass(frozen=True)
class PaddedData:
    """Per-device data padded to the largest device.

    x: [N, max_n, ...] (dtype of the input), y: int32 [N, max_n], mask: bool [N, max_n]
    (True for real samples, which come first in each row), sizes: int32 [N]. Padding is zero.
    """

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    sizes: np.ndarray


def one_device_fraction(num_devices: int, fraction: float) -> list[float]:
    """Fractions [N] with device 0 holding `fraction` of the data and the rest sharing equally."""
    check_range("num_devices", num_devices, 1, integer=True)
    check_range("skew_fraction", fraction, 0.0, 1.0)
    if num_devices == 1:
        if fraction != 1.0:
            raise ConfigError(f"skew_fraction={fraction!r} needs num_devices >= 2; "
                              "allowed with num_devices=1: 1.0")
        return [1.0]
    rest = (1.0 - fraction) / (num_devices - 1)
    return [float(fraction)] + [rest] * (num_devices - 1)


GROUP_FRACTIONS_FORM = ("a tuple of G positive numbers summing to 1 within 1e-6, with "
                        "1 <= G <= num_devices, e.g. (0.01, 0.99)")


def check_group_fractions(fractions, num_devices: int,
                          field: str = "skew_fractions") -> tuple[float, ...]:
    """The group shares as floats; ConfigError naming `field` unless they are 1..num_devices
    positive finite numbers (not booleans) summing to 1 within 1e-6."""
    shown = tuple(fractions) if isinstance(fractions, (list, tuple)) else fractions
    if not isinstance(fractions, (list, tuple)) or not fractions or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) for f in fractions):
        raise ConfigError(f"{field}={shown!r} must be {GROUP_FRACTIONS_FORM}")
    f = np.asarray(fractions, dtype=np.float64)
    if not np.all(np.isfinite(f)) or np.any(f <= 0) or abs(f.sum() - 1.0) > 1e-6:
        raise ConfigError(f"{field}={shown!r} (sum {f.sum():.9g}) must be "
                          f"{GROUP_FRACTIONS_FORM}")
    if len(f) > num_devices:
        raise ConfigError(f"{field}={shown!r} has {len(f)} groups but num_devices="
                          f"{num_devices}; allowed: at most num_devices groups "
                          f"({GROUP_FRACTIONS_FORM})")
    return tuple(float(x) for x in f)


def group_members(num_devices: int, num_groups: int) -> np.ndarray:
    """int64 [N]: the group of each device. Groups are contiguous and as equal as possible:
    every group has floor(N / G) devices and the first N mod G groups one more (device 0 is in
    group 0)."""
    counts = np.full(num_groups, num_devices // num_groups)
    counts[: num_devices % num_groups] += 1
    return np.repeat(np.arange(num_groups), counts)


def group_sizes(total: int, num_devices: int, fractions: Sequence[float]) -> np.ndarray:
    """int64 [N] sizes for `skew_fractions`: group g (see group_members) gets a share
    fractions[g] of `total`, apportioned to integers by largest remainder (the groups' counts
    sum exactly to total), and splits it equally over its devices (the first count mod n_g
    devices of the group get one more sample)."""
    f = np.asarray(check_group_fractions(fractions, num_devices), dtype=np.float64)
    per_group = _apportion(f / f.sum(), int(total))
    members = group_members(num_devices, len(f))
    n_g = np.bincount(members, minlength=len(f))
    rank = np.arange(num_devices) - np.searchsorted(members, members)   # position in group
    return per_group[members] // n_g[members] + (rank < per_group[members] % n_g[members])


def _apportion(fractions: np.ndarray, total: np.ndarray | int) -> np.ndarray:
    """Integer sizes [..., N] summing exactly to `total` along the last axis (largest remainder)."""
    total = np.asarray(total, dtype=np.int64)
    exact = fractions * total[..., None]
    sizes = np.floor(exact).astype(np.int64)
    short = total - sizes.sum(-1)  # in [0, N)
    order = np.argsort(-(exact - sizes), axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[-1]), axis=-1)
    return sizes + (ranks < short[..., None])


def _enforce_min_sizes(sizes: np.ndarray, min_size: int) -> np.ndarray:
    """Raises devices below min_size to it, lowering the largest devices to a common level.

    sizes: int [N] with sum >= N * min_size. Deterministic: no randomness is used.
    """
    deficit = np.maximum(min_size - sizes, 0)
    need = int(deficit.sum())
    if need == 0:
        return sizes
    # Largest level L >= min_size such that cutting every device down to L frees >= need samples.
    lo, hi = min_size, int(sizes.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.maximum(sizes - mid, 0).sum() >= need:
            lo = mid
        else:
            hi = mid - 1
    new = np.minimum(sizes, lo)
    over = int(np.maximum(sizes - lo, 0).sum()) - need  # < number of donors; give those back
    donors = np.flatnonzero(sizes > lo)
    new[donors[:over]] += 1
    return new + deficit


def _split(indices: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    return [p.astype(np.int64) for p in np.split(indices, np.cumsum(sizes)[:-1])]


def _rebalance(parts: list[np.ndarray], min_size: int) -> list[np.ndarray]:
    """Moves samples (from the tails of the largest parts) so every part has >= min_size."""
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    target = _enforce_min_sizes(sizes, min_size)
    if np.array_equal(target, sizes):
        return parts
    pool = np.concatenate([p[t:] for p, t in zip(parts, target, strict=True) if len(p) > t])
    gains = np.maximum(target - sizes, 0)
    gifts = _split(pool, gains)
    return [np.concatenate([p[:t], g]) for p, t, g in zip(parts, target, gifts, strict=True)]


def _iid(n: int, num_devices: int, per: int, rng: np.random.Generator) -> list[np.ndarray]:
    return _split(rng.permutation(n)[: num_devices * per], np.full(num_devices, per))


def _shards(labels: np.ndarray, num_devices: int, total: int, shards_per_device: int,
            rng: np.random.Generator) -> list[np.ndarray]:
    num_shards = num_devices * shards_per_device
    if num_shards > total:
        raise ConfigError(f"shards_per_device={shards_per_device} * num_devices={num_devices} = "
                          f"{num_shards} shards exceeds the {total} samples; allowed: at most "
                          f"{total // num_devices} shards per device")
    chosen = rng.permutation(len(labels))[:total]  # random order breaks label ties randomly
    by_label = chosen[np.argsort(labels[chosen], kind="stable")]
    shard_size = total // num_shards
    shards = by_label[: num_shards * shard_size].reshape(num_shards, shard_size)
    deal = rng.permutation(num_shards).reshape(num_devices, shards_per_device)
    return [shards[d].reshape(-1).astype(np.int64) for d in deal]


def _dirichlet_matrix(alpha: float, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """[rows, cols] Dirichlet(alpha * 1) samples, drawn in log space so tiny alpha cannot underflow.

    Uses Gamma(a) = Gamma(a + 1) * U^(1/a), U ~ Uniform(0, 1].
    """
    log_g = np.log(rng.gamma(alpha + 1.0, size=(rows, cols)))
    log_g += np.log1p(-rng.random((rows, cols))) / alpha
    log_g -= log_g.max(axis=1, keepdims=True)
    p = np.exp(log_g)
    return p / p.sum(axis=1, keepdims=True)


def _dirichlet(labels: np.ndarray, num_devices: int, total: int, alpha: float,
               rng: np.random.Generator) -> list[np.ndarray]:
    chosen = rng.permutation(len(labels))[:total]
    classes, class_of = np.unique(labels[chosen], return_inverse=True)
    order = np.argsort(class_of, kind="stable")  # chosen is shuffled, so each class is too
    counts = np.bincount(class_of, minlength=len(classes))
    per_device = _apportion(_dirichlet_matrix(alpha, len(classes), num_devices, rng), counts)
    device_of = np.concatenate([np.repeat(np.arange(num_devices), row) for row in per_device])
    samples = chosen[order]
    mix = rng.permutation(total)  # random order within each device, so tails are random subsets
    samples, device_of = samples[mix], device_of[mix]
    by_device = np.argsort(device_of, kind="stable")
    sizes = np.bincount(device_of, minlength=num_devices)
    return _split(samples[by_device], sizes)


def _skew_fractions(num_devices: int, sigma: float, fractions: Sequence[float] | None,
                    rng: np.random.Generator) -> np.ndarray:
    if fractions is None:
        check_range("skew_sigma", sigma, 0.0)
        w = np.exp(sigma * rng.standard_normal(num_devices))
        return w / w.sum()
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (num_devices,) or not np.all(np.isfinite(f)) or np.any(f < 0) \
            or abs(f.sum() - 1.0) > 1e-6:
        raise ConfigError(f"skew_fractions must be {num_devices} (num_devices) nonnegative numbers "
                          f"summing to 1 within 1e-6; got shape {list(f.shape)}"
                          + (f", sum {f.sum():.9g}" if f.size else ""))
    return f / f.sum()


def partition(labels: np.ndarray, num_devices: int, scheme: str, rng: np.random.Generator, *,
              samples_per_device: int | None = None, shards_per_device: int = 2,
              dirichlet_alpha: float = 0.5, skew_sigma: float = 1.0,
              skew_fractions: Sequence[float] | None = None,
              skew_groups: Sequence[float] | None = None,
              min_size: int = 1) -> list[np.ndarray]:
    """Splits sample indices [n] of `labels` across devices.

    Returns num_devices disjoint int64 index arrays into labels, each of length >= min_size.
    With samples_per_device, num_devices * samples_per_device samples are used in total (a random
    subset); otherwise all n (iid: floor(n / num_devices) per device; shards: a multiple of the
    shard count).
    skew: sizes from skew_fractions (one share per device), else from skew_groups (one share
    per group of devices, see group_sizes), else log-normal weights exp(skew_sigma z); then
    min_size is enforced (samples move from the largest devices, _enforce_min_sizes).
    """
    labels = np.asarray(labels)
    n = len(labels)
    check_choice("scheme", scheme, SCHEMES)
    check_range("num_devices", num_devices, 1, integer=True)
    check_range("min_size", min_size, 0, integer=True)
    if num_devices * min_size > n:
        raise ConfigError(f"num_devices={num_devices} with min_size={min_size} needs "
                          f"{num_devices * min_size} samples but there are only {n}; allowed: "
                          f"num_devices <= {n // max(min_size, 1)}")
    if samples_per_device is None:
        per = n // num_devices
        total = n
    else:
        check_range("samples_per_device", samples_per_device, max(min_size, 1), n // num_devices,
                    integer=True)
        per = int(samples_per_device)
        total = per * num_devices
    if scheme == "iid":
        return _iid(n, num_devices, per, rng)
    if scheme == "shards":
        check_range("shards_per_device", shards_per_device, 1, integer=True)
        parts = _shards(labels, num_devices, total, int(shards_per_device), rng)
        if len(parts[0]) < min_size:
            raise ConfigError(f"shards give {len(parts[0])} samples per device, below "
                              f"min_size={min_size}; allowed: min_size <= {len(parts[0])}")
        return parts
    if scheme == "dirichlet":
        check_range("dirichlet_alpha", dirichlet_alpha, 0.0, lo_open=True)
        parts = _dirichlet(labels, num_devices, total, float(dirichlet_alpha), rng)
        return _rebalance(parts, min_size)
    if skew_groups is not None:
        if skew_fractions is not None:
            raise ConfigError("skew_fractions (one share per device) and skew_groups (one share "
                              "per group) are two ways to give the sizes; allowed: one of them")
        sizes = _enforce_min_sizes(group_sizes(total, num_devices, skew_groups), min_size)
        return _split(rng.permutation(n)[:total], sizes)
    fractions = _skew_fractions(num_devices, skew_sigma, skew_fractions, rng)
    sizes = _enforce_min_sizes(_apportion(fractions, total), min_size)
    return _split(rng.permutation(n)[:total], sizes)


def pad_partition(x: np.ndarray, y: np.ndarray, parts: list[np.ndarray]) -> PaddedData:
    """Gathers x [n, ...] and y [n] per device into arrays padded to the largest part."""
    sizes = np.array([len(p) for p in parts], dtype=np.int32)
    max_n = int(sizes.max()) if len(parts) else 0
    idx = np.concatenate(parts).astype(np.int64) if len(parts) else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(len(parts)), sizes)
    cols = np.arange(len(idx)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    xp = np.zeros((len(parts), max_n, *x.shape[1:]), dtype=x.dtype)
    yp = np.zeros((len(parts), max_n), dtype=np.int32)
    mask = np.zeros((len(parts), max_n), dtype=bool)
    xp[rows, cols] = x[idx]
    yp[rows, cols] = y[idx]
    mask[rows, cols] = True
    return PaddedData(x=xp, y=yp, mask=mask, sizes=sizes)


def partition_stats(y: np.ndarray, parts: list[np.ndarray], num_classes: int) -> dict:
    """JSON-serialisable summary: {"sizes": [N] ints, "label_histograms": [N][C] ints}."""
    y = np.asarray(y)
    hists = [np.bincount(y[p], minlength=num_classes)[:num_classes].tolist() for p in parts]
    return {"sizes": [int(len(p)) for p in parts], "label_histograms": hists}
