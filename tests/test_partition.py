import json
import time

import numpy as np
import pytest

from p2pl_jax.errors import ConfigError
from p2pl_jax.partition import (
    SCHEMES,
    one_device_fraction,
    pad_partition,
    partition,
    partition_stats,
)


def mnist_like(n=6000, seed=0):
    """n labels, 10 balanced classes, in random order."""
    return np.random.default_rng(seed).permutation(np.arange(n) % 10)


def parts_for(scheme, seed=0, labels=None, **kw):
    labels = mnist_like() if labels is None else labels
    return partition(labels, kw.pop("num_devices", 20), scheme, np.random.default_rng(seed), **kw)


def check_valid(parts, n, num_devices, min_size=1):
    assert len(parts) == num_devices
    flat = np.concatenate(parts)
    assert all(p.dtype == np.int64 for p in parts)
    assert len(np.unique(flat)) == len(flat)  # disjoint
    assert flat.min() >= 0 and flat.max() < n
    assert min(len(p) for p in parts) >= min_size
    return flat


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("spd", [None, 50])
def test_common_properties(scheme, spd):
    parts = parts_for(scheme, samples_per_device=spd, min_size=5)
    flat = check_valid(parts, 6000, 20, min_size=5)
    if spd is not None:
        assert len(flat) == 20 * 50
    same = parts_for(scheme, samples_per_device=spd, min_size=5)
    other = parts_for(scheme, seed=1, samples_per_device=spd, min_size=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, same, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid():
    parts = parts_for("iid")
    assert [len(p) for p in parts] == [300] * 20
    assert len(check_valid(parts, 6000, 20)) == 6000
    assert [len(p) for p in parts_for("iid", num_devices=7)] == [857] * 7
    assert [len(p) for p in parts_for("iid", samples_per_device=10)] == [10] * 20


def test_shards_few_labels_per_device():
    labels = mnist_like()
    parts = parts_for("shards", labels=labels, num_devices=100, shards_per_device=2)
    check_valid(parts, 6000, 100)
    assert [len(p) for p in parts] == [60] * 100
    n_labels = np.array([len(np.unique(labels[p])) for p in parts])
    assert n_labels.max() <= 4
    assert np.median(n_labels) <= 2 and n_labels.mean() < 2.5
    assert np.bincount(labels[np.concatenate(parts)]).tolist() == [600] * 10


def label_fractions(labels, parts):
    stats = partition_stats(labels, parts, 10)
    hist = np.array(stats["label_histograms"], dtype=float)
    return hist / hist.sum(1, keepdims=True)


def test_dirichlet_alpha_controls_skew():
    labels = mnist_like()
    exact = check_valid(parts_for("dirichlet", labels=labels, dirichlet_alpha=100.0), 6000, 20)
    assert len(exact) == 6000
    near_uniform = label_fractions(labels, parts_for("dirichlet", labels=labels,
                                                     dirichlet_alpha=100.0))
    assert np.abs(near_uniform - 0.1).max() < 0.08
    # p_c ~ Dir(alpha) is drawn per class over devices, so the skew seen by one device depends
    # on num_devices / num_classes: at 100 devices the statistic lies in [0.76, 0.85] over seeds.
    skewed = label_fractions(labels, parts_for("dirichlet", labels=labels, num_devices=100,
                                               dirichlet_alpha=0.05))
    assert skewed.max(1).mean() > 0.75
    assert near_uniform.max(1).mean() < 0.2


def test_dirichlet_tiny_alpha_many_devices_fast_and_exact():
    labels = mnist_like(60000)
    t0 = time.perf_counter()
    parts = partition(labels, 1000, "dirichlet", np.random.default_rng(0), dirichlet_alpha=0.01)
    assert time.perf_counter() - t0 < 2.0
    assert len(check_valid(parts, 60000, 1000)) == 60000
    parts = partition(labels, 1000, "dirichlet", np.random.default_rng(0), dirichlet_alpha=1e-4,
                      min_size=20)
    assert len(check_valid(parts, 60000, 1000, min_size=20)) == 60000


def test_skew_one_device():
    fr = one_device_fraction(100, 0.99)
    assert fr[0] == 0.99 and abs(sum(fr) - 1) < 1e-12
    parts = parts_for("skew", labels=mnist_like(60000), num_devices=100, skew_fractions=fr)
    sizes = [len(p) for p in parts]
    assert sum(sizes) == 60000 and sizes[0] == 59400 and min(sizes) >= 6
    check_valid(parts, 60000, 100)


def test_skew_min_size_taken_from_largest():
    fr = one_device_fraction(10, 1.0)
    parts = parts_for("skew", num_devices=10, skew_fractions=fr, min_size=100)
    assert [len(p) for p in parts] == [5100] + [100] * 9


def test_skew_lognormal_spread_grows_with_sigma():
    def cv(sigma):
        sizes = np.array([len(p) for p in parts_for("skew", labels=mnist_like(60000),
                                                    num_devices=200, skew_sigma=sigma)])
        assert sizes.sum() == 60000
        return sizes.std() / sizes.mean()

    cvs = [cv(s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert cvs[0] < 0.01
    assert cvs == sorted(cvs) and cvs[3] > 2 * cvs[1]


def test_pad_partition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3, 2)).astype(np.float32)
    y = rng.integers(0, 10, 100)
    parts = [np.array([5, 1, 7]), np.array([], dtype=np.int64), np.array([9, 0, 2, 3, 4])]
    pd = pad_partition(x, y, parts)
    assert pd.x.shape == (3, 5, 3, 2) and pd.x.dtype == np.float32
    assert pd.y.shape == (3, 5) and pd.y.dtype == np.int32
    assert pd.sizes.tolist() == [3, 0, 5] and pd.sizes.dtype == np.int32
    assert pd.mask.tolist() == [[True] * 3 + [False] * 2, [False] * 5, [True] * 5]
    for i, p in enumerate(parts):
        np.testing.assert_array_equal(pd.x[i, : len(p)], x[p])
        np.testing.assert_array_equal(pd.y[i, : len(p)], y[p])
    assert not pd.x[~pd.mask].any() and not pd.y[~pd.mask].any()


def test_partition_stats_json():
    labels = mnist_like()
    parts = parts_for("dirichlet", labels=labels)
    stats = json.loads(json.dumps(partition_stats(labels, parts, 10)))
    assert stats["sizes"] == [len(p) for p in parts]
    assert [sum(h) for h in stats["label_histograms"]] == stats["sizes"]


@pytest.mark.parametrize("kw, match", [
    (dict(scheme="random"), "scheme='random'.*'iid', 'shards', 'dirichlet', 'skew'"),
    (dict(num_devices=0), "num_devices=0"),
    (dict(num_devices=7000), "num_devices=7000.*only 6000"),
    (dict(num_devices=100, min_size=61), "num_devices=100.*min_size=61.*only 6000"),
    (dict(samples_per_device=400), "samples_per_device=400.*300"),
    (dict(scheme="shards", num_devices=100, shards_per_device=61), "shards_per_device=61"),
    (dict(scheme="dirichlet", dirichlet_alpha=0.0), "dirichlet_alpha=0.0"),
    (dict(scheme="dirichlet", dirichlet_alpha=-1.0), "dirichlet_alpha"),
    (dict(scheme="skew", skew_sigma=-0.5), "skew_sigma=-0.5"),
    (dict(scheme="skew", skew_fractions=[0.5, 0.5]), "skew_fractions.*20 .num_devices"),
    (dict(scheme="skew", skew_fractions=[0.1] * 20), r"skew_fractions.*sum 2"),
    (dict(scheme="skew", skew_fractions=[-0.05, 0.1] + [0.95 / 18] * 18), "skew_fractions"),
])
def test_config_errors(kw, match):
    kw = dict(scheme="iid", num_devices=20) | kw
    with pytest.raises(ConfigError, match=match):
        partition(mnist_like(), kw.pop("num_devices"), kw.pop("scheme"),
                  np.random.default_rng(0), **kw)


def test_one_device_fraction_errors():
    with pytest.raises(ConfigError, match="num_devices"):
        one_device_fraction(0, 0.5)
    with pytest.raises(ConfigError, match="fraction"):
        one_device_fraction(10, 1.5)
    assert one_device_fraction(1, 1.0) == [1.0]


def test_min_sizes_take_samples_only_from_devices_above_the_level():
    """[3, 4, 9, 0, 0, 0] with min 2: 6 samples are needed, the level is 3 (frees 7), and the
    one sample too many goes back to the first device cut (size 4), never to device 0, which
    already sat at the level and gives nothing."""
    from p2pl_jax.partition import _enforce_min_sizes

    got = _enforce_min_sizes(np.array([3, 4, 9, 0, 0, 0]), 2)
    np.testing.assert_array_equal(got, [3, 4, 3, 2, 2, 2])
    np.testing.assert_array_equal(_enforce_min_sizes(np.array([5, 1]), 2), [4, 2])


def test_dirichlet_matrix_moments_and_tiny_alpha():
    """Rows are Dirichlet(alpha): mean 1/K and variance (1/K)(1 - 1/K)/(K alpha + 1) per entry
    (checked within 5 standard errors); alpha = 1e-5 neither underflows nor gives NaN."""
    from p2pl_jax.partition import _dirichlet_matrix

    rows, k = 40000, 4
    for alpha in (0.3, 2.0):
        p = _dirichlet_matrix(alpha, rows, k, np.random.default_rng(0))
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
        var = (1 / k) * (1 - 1 / k) / (k * alpha + 1)
        assert abs(p.mean() - 1 / k) < 5 * np.sqrt(var / (rows * k))
        sample_var = p[:, 0].var()
        se = np.sqrt((np.mean((p[:, 0] - 1 / k) ** 4) - var ** 2) / rows)
        assert abs(sample_var - var) < 5 * se, (alpha, sample_var, var)
    tiny = _dirichlet_matrix(1e-5, 200, 10, np.random.default_rng(1))
    assert np.all(np.isfinite(tiny)) and np.allclose(tiny.sum(axis=1), 1.0)
    assert np.mean(tiny.max(axis=1) > 0.99) > 0.9      # nearly one class per row


def test_pad_partition_of_no_device():
    pd = pad_partition(np.zeros((5, 2, 2)), np.zeros(5, np.int64), [])
    assert pd.x.shape == (0, 0, 2, 2) and pd.y.shape == (0, 0)


def _ref_group_sizes(total, num_devices, fractions):
    """numpy reference, written out: group g is devices [start_g, start_g + n_g) with
    n_g = N // G (+1 for the first N % G groups); its count is f_g * total rounded by largest
    remainder; inside a group the count is split as evenly as possible, extras first."""
    g = len(fractions)
    n_g = [num_devices // g + (1 if i < num_devices % g else 0) for i in range(g)]
    exact = [f * total for f in fractions]
    counts = [int(np.floor(e)) for e in exact]
    for i in sorted(range(g), key=lambda i: -(exact[i] - counts[i]))[: total - sum(counts)]:
        counts[i] += 1
    sizes = []
    for i in range(g):
        sizes += [counts[i] // n_g[i] + (1 if j < counts[i] % n_g[i] else 0)
                  for j in range(n_g[i])]
    return np.array(sizes), np.repeat(np.arange(g), n_g), np.array(counts)


GROUP_CASES = [((0.01, 0.99), 20, 50), ((0.01, 0.99), 7, 30), ((0.5, 0.3, 0.2), 10, 33),
               ((0.1, 0.2, 0.3, 0.4), 9, 41), ((1.0,), 5, 13), ((0.25,) * 4, 4, 10),
               ((0.001, 0.009, 0.99), 11, 60), ((1 / 3, 1 / 3, 1 / 3), 5, 2)]


@pytest.mark.parametrize("fractions,num_devices,spd", GROUP_CASES)
def test_skew_groups_sizes_match_reference(fractions, num_devices, spd):
    labels = mnist_like()
    total = num_devices * spd
    parts = partition(labels, num_devices, "skew", np.random.default_rng(3),
                      samples_per_device=spd, skew_groups=fractions, min_size=0)
    check_valid(parts, len(labels), num_devices, min_size=0)
    sizes, members, counts = _ref_group_sizes(total, num_devices, fractions)
    got = np.array(partition_stats(labels, parts, 10)["sizes"])
    np.testing.assert_array_equal(got, sizes)
    np.testing.assert_array_equal(np.bincount(members, weights=got).astype(int), counts)
    assert got.sum() == total
    for g in range(len(fractions)):   # equal shares inside a group
        assert np.ptp(got[members == g]) <= 1
    stats = partition_stats(labels, parts, 10)
    assert [sum(h) for h in stats["label_histograms"]] == list(got)


def test_skew_groups_half_and_half():
    """(0.01, 0.99) on 100 devices x 600: devices 0-49 share 1% (12 each), 50-99 share 99%."""
    parts = partition(mnist_like(60000), 100, "skew", np.random.default_rng(0),
                      samples_per_device=600, skew_groups=(0.01, 0.99))
    sizes = np.array([len(p) for p in parts])
    np.testing.assert_array_equal(sizes[:50], 12)
    np.testing.assert_array_equal(sizes[50:], 1188)


def test_skew_groups_min_size_and_errors():
    labels = mnist_like()
    parts = partition(labels, 20, "skew", np.random.default_rng(0), samples_per_device=50,
                      skew_groups=(0.001, 0.999), min_size=5)
    sizes = np.array([len(p) for p in parts])
    check_valid(parts, len(labels), 20, min_size=5)
    assert sizes.sum() == 1000 and np.all(sizes[:10] == 5)   # group 0 raised to the minimum
    assert np.ptp(sizes[10:]) <= 1                            # taken evenly from group 1
    bad = {"sum": (0.3, 0.3), "zero": (0.0, 1.0), "negative": (-0.5, 1.5), "empty": (),
           "text": ("0.5", "0.5"), "bool": (True,), "nan": (float("nan"), 1.0),
           "too many groups": (1 / 30,) * 30}
    for name, fractions in bad.items():
        with pytest.raises(ConfigError, match="skew_fractions") as e:
            partition(labels, 20, "skew", np.random.default_rng(0), samples_per_device=50,
                      skew_groups=fractions)
        assert "positive numbers summing to 1 within 1e-6" in str(e.value), name
        if name == "too many groups":
            assert "30 groups but num_devices=20" in str(e.value)
    with pytest.raises(ConfigError, match="one of them"):
        partition(labels, 2, "skew", np.random.default_rng(0), skew_groups=(0.5, 0.5),
                  skew_fractions=(0.5, 0.5))
