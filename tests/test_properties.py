"""Property-based tests (hypothesis) for graphs, partitions and mixing weights.

The fixed-case suites (test_graphs, test_partition, test_mixing) check chosen graphs and data
sets; here hypothesis generates the inputs: topologies with their parameters, arbitrary (also
directed, also disconnected) adjacency matrices, label arrays, scheme parameters, data set sizes
with zeros and random link-failure masks. Every property is checked against a small independent
reference written below (Python loops over entries, a BFS), never against the code under test.

Settings are derandomized (reproducible in CI) and keep no example database (nothing is written
into the repository); sizes are small (N <= 12) so the file runs in well under a minute on a
2-core CPU.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import deque

import jax
import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.extra.numpy import arrays

from p2pl_jax.errors import ConfigError
from p2pl_jax.graphs import (
    DIRECTED,
    TOPOLOGIES,
    adjacency,
    diameter,
    edges,
    make_graph,
    neighbour_lists,
)
from p2pl_jax.mixing import (
    DOUBLY_STOCHASTIC,
    NEIGHBOUR_SCHEMES,
    SCHEMES,
    dense_from_lists,
    mixing_matrix,
    neighbour_weights,
    spectral_info,
    stationary_distribution,
)
from p2pl_jax.partition import SCHEMES as PARTITION_SCHEMES
from p2pl_jax.partition import one_device_fraction, pad_partition, partition, partition_stats

# No example database (database=None), and hypothesis's other cache (constants it finds in the
# source) goes to the temp dir instead of ./.hypothesis, unless the user chose a place for it.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "p2pl-jax-hypothesis"))
BASE = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def cfg(n: int) -> settings:
    return settings(BASE, max_examples=n)


MAX_N = 12
SEEDS = st.integers(0, 2**32 - 1)

# ---------------------------------------------------------------------------------------------
# Independent references.
# ---------------------------------------------------------------------------------------------


def ref_adjacency_from_pairs(n, pairs):
    """bool [n, n] from undirected pairs, self pairs dropped."""
    adj = np.zeros((n, n), bool)
    for u, v in pairs:
        if u != v:
            adj[u, v] = adj[v, u] = True
    return adj


def bfs_distances(adj, src):
    n = len(adj)
    dist = [-1] * n
    dist[src] = 0
    queue = deque([src])
    while queue:
        u = queue.popleft()
        for v in range(n):
            if adj[u][v] and dist[v] < 0:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def ref_connected(adj):
    return len(adj) == 0 or min(bfs_distances(adj, 0)) >= 0


def ref_diameter(adj):
    """Max over sources of the largest finite BFS distance (= max over components)."""
    return max((max(bfs_distances(adj, s)) for s in range(len(adj))), default=0)


def ref_edges(adj):
    n = len(adj)
    return [(i, j) for i in range(n) for j in range(i + 1, n) if adj[i][j] or adj[j][i]]


def open_nbhd(adj, i):
    return [m for m in range(len(adj)) if m != i and adj[i][m]]


def ref_mixing(adj, sizes, scheme):
    """Entry-by-entry transcription of the formulas in mixing.py's module docstring."""
    n = len(adj)
    nb = [open_nbhd(adj, i) for i in range(n)]
    deg = [len(x) for x in nb]
    w = np.zeros((n, n))
    for i in range(n):
        if scheme == "fedavg":
            total = float(sum(sizes))
            for m in range(n):
                w[i, m] = sizes[m] / total
        elif scheme == "uniform":
            for m in nb[i] + [i]:
                w[i, m] = 1.0 / (deg[i] + 1)
        elif scheme == "data_size":
            total = float(sum(sizes[m] for m in nb[i] + [i]))
            if total == 0:
                w[i, i] = 1.0
            else:
                for m in nb[i] + [i]:
                    w[i, m] = sizes[m] / total
        elif scheme == "metropolis":
            for m in nb[i]:
                w[i, m] = 1.0 / (1 + max(deg[i], deg[m]))
            w[i, i] = 1.0 - sum(w[i, m] for m in nb[i])
        elif scheme == "max_degree":
            d_max = max(deg, default=0)
            for m in nb[i]:
                w[i, m] = 1.0 / (d_max + 1)
            w[i, i] = 1.0 - sum(w[i, m] for m in nb[i])
        elif scheme == "data_size_mh":
            for m in nb[i]:
                accept = 1.0 if sizes[i] == 0 else min(
                    1.0, sizes[m] * (deg[i] + 1) / (sizes[i] * (deg[m] + 1)))
                w[i, m] = accept / (deg[i] + 1)
            w[i, i] = 1.0 - sum(w[i, m] for m in nb[i])
        else:
            raise AssertionError(scheme)
    return w


def default_rows(n):
    return max(r for r in range(1, n + 1) if n % r == 0 and r * r <= n)


def ref_lattice(n, rows, periodic):
    cols = n // rows
    pairs = []
    for r in range(rows):
        for c in range(cols):
            for rr, cc in ((r + 1, c), (r, c + 1)):
                if periodic:
                    rr, cc = rr % rows, cc % cols
                if rr < rows and cc < cols:
                    pairs.append((r * cols + c, rr * cols + cc))
    return ref_adjacency_from_pairs(n, pairs)


# ---------------------------------------------------------------------------------------------
# Strategies.
# ---------------------------------------------------------------------------------------------

MIN_DEVICES = {"cycle": 3, "star": 2, "watts_strogatz": 2, "barabasi_albert": 2,
               "random_regular": 2, "edgelist": 2}
ALWAYS_CONNECTED = ("complete", "cycle", "path", "star", "grid", "torus", "barabasi_albert")
SEEDED = ("random_geometric", "erdos_renyi", "watts_strogatz", "barabasi_albert",
          "random_regular")


@st.composite
def graph_cases(draw):
    topology = draw(st.sampled_from([t for t in TOPOLOGIES if t not in DIRECTED]))
    n = draw(st.integers(MIN_DEVICES.get(topology, 1), MAX_N))
    kw = {"seed": draw(st.integers(0, 2**16))}
    if topology == "random_geometric":
        kw["radius"] = draw(st.floats(0.05, 1.5))
    elif topology == "erdos_renyi":
        kw["p"] = draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0))
    elif topology == "watts_strogatz":
        kw["p"] = draw(st.floats(0.0, 1.0))
        kw["k"] = 2 * draw(st.integers(0, (n - 1) // 2))
    elif topology == "barabasi_albert":
        kw["m"] = draw(st.integers(1, n - 1))
    elif topology == "random_regular":
        degree = draw(st.integers(0, n - 1))
        kw["degree"] = degree - (n * degree) % 2
    elif topology in ("grid", "torus"):
        kw["grid_rows"] = draw(st.none() | st.sampled_from(
            [r for r in range(1, n + 1) if n % r == 0]))
    pairs = None
    if topology == "edgelist":
        pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1))
                              .filter(lambda uv: uv[0] != uv[1]), min_size=1, max_size=3 * n))
    allow = draw(st.booleans())
    return topology, n, kw, pairs, allow


@st.composite
def adjacencies(draw, min_n=1, max_n=MAX_N, symmetric=False, connected=False):
    """bool [n, n]; diagonal arbitrary unless symmetric (then zero); maybe disconnected."""
    n = draw(st.integers(min_n, max_n))
    density = draw(st.sampled_from([0.0, 0.15, 0.4, 0.7, 1.0]))
    rng = np.random.default_rng(draw(SEEDS))
    adj = rng.random((n, n)) < density
    # A few explicitly flipped entries let hypothesis shrink towards small counterexamples.
    for i, j in draw(st.lists(st.tuples(st.integers(0, max(n - 1, 0)),
                                        st.integers(0, max(n - 1, 0))), max_size=4 if n else 0)):
        adj[i, j] = ~adj[i, j]
    if symmetric:
        adj = np.triu(adj, 1)
        adj = adj | adj.T
    if connected:  # add a random spanning tree
        order = rng.permutation(n)
        for a in range(1, n):
            b = order[rng.integers(0, a)]
            adj[order[a], b] = adj[b, order[a]] = True
    return adj


def sizes_for(n, positive=False, equal=False):
    if equal:
        return st.integers(1, 50).map(lambda s: np.full(n, float(s)))
    lo = 1 if positive else 0
    return arrays(np.float64, n, elements=st.integers(lo, 20).map(float), fill=st.nothing())


# ---------------------------------------------------------------------------------------------
# Graphs.
# ---------------------------------------------------------------------------------------------


def _build(topology, n, kw, pairs, allow):
    if topology != "edgelist":
        return make_graph(topology, n, allow_disconnected=allow, **kw)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "edges.txt")
        with open(path, "w") as f:
            f.write("# generated\n")
            for u, v in pairs:
                f.write(f"{u} {v}  # edge\n\n")
        return make_graph(topology, n, edgelist_path=path, allow_disconnected=allow, **kw)


@cfg(150)
@given(graph_cases())
def test_make_graph_invariants(case):
    topology, n, kw, pairs, allow = case
    try:
        g = _build(topology, n, kw, pairs, allow)
    except ConfigError as e:  # only allowed for a disconnected graph when that is not allowed
        assert not allow and "disconnected" in str(e), str(e)
        assert topology not in ALWAYS_CONNECTED
        g = _build(topology, n, kw, pairs, True)
        assert not ref_connected(adjacency(g))
        return
    assert sorted(g.nodes) == list(range(n))
    assert nx.number_of_selfloops(g) == 0
    adj = adjacency(g)
    assert adj.shape == (n, n) and adj.dtype == bool
    assert np.array_equal(adj, ref_adjacency_from_pairs(n, g.edges()))
    assert np.array_equal(adj, adj.T) and not adj.diagonal().any()
    if not allow or topology in ALWAYS_CONNECTED:
        assert ref_connected(adj)
    deg = adj.sum(axis=1)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    off = i != j
    if topology == "complete":
        assert np.array_equal(adj, off)
    elif topology == "cycle":
        assert np.array_equal(adj, (abs(i - j) == 1) | (abs(i - j) == n - 1))
    elif topology == "path":
        assert np.array_equal(adj, abs(i - j) == 1)
    elif topology == "star":
        assert np.array_equal(adj, off & ((i == 0) | (j == 0)))
    elif topology in ("grid", "torus"):
        rows = kw["grid_rows"] or default_rows(n)
        assert np.array_equal(adj, ref_lattice(n, rows, topology == "torus"))
    elif topology == "random_regular":
        assert np.all(deg == kw["degree"])
    elif topology == "watts_strogatz":
        assert adj.sum() // 2 == n * kw["k"] // 2  # rewiring keeps the edge count
    elif topology == "barabasi_albert":
        assert adj.sum() // 2 == kw["m"] * (n - kw["m"])
    elif topology == "erdos_renyi" and kw["p"] in (0.0, 1.0):
        assert np.array_equal(adj, off if kw["p"] == 1.0 else np.zeros((n, n), bool))
    elif topology == "random_geometric":
        pos = nx.get_node_attributes(g, "pos")
        if len(pos) == n:  # positions survive the copy in networkx 3
            for a in range(n):
                for b in range(a + 1, n):
                    assert adj[a, b] == (math.dist(pos[a], pos[b]) <= kw["radius"])
    elif topology == "edgelist":
        assert np.array_equal(adj, ref_adjacency_from_pairs(n, pairs))
    if topology in SEEDED:  # reproducible from the seed
        assert np.array_equal(adjacency(_build(topology, n, kw, pairs, True)), adj)


@cfg(120)
@given(st.integers(1, MAX_N), st.lists(st.tuples(st.integers(0, MAX_N - 1),
                                                 st.integers(0, MAX_N - 1)), max_size=40))
def test_adjacency_of_any_graph(n, pairs):
    pairs = [(u % n, v % n) for u, v in pairs]
    g = nx.empty_graph(n)
    g.add_edges_from(pairs)  # self loops included: adjacency must drop them
    adj = adjacency(g)
    assert adj.dtype == bool and np.array_equal(adj, ref_adjacency_from_pairs(n, pairs))


@cfg(200)
@given(adjacencies(min_n=0))
def test_edges_are_the_upper_triangle_pairs(adj):
    e = edges(adj)
    ref = ref_edges(adj)
    assert e.dtype == np.int32 and e.shape == (len(ref), 2)
    assert [tuple(map(int, x)) for x in e] == ref  # i < j, lexicographic, of adj | adj.T


@cfg(200)
@given(adjacencies())
def test_neighbour_lists_layout(adj):
    n = len(adj)
    nl = neighbour_lists(adj)
    nbrs = [open_nbhd(adj, i) for i in range(n)]  # adj's diagonal is random here: ignored
    k = max(len(x) for x in nbrs) + 1
    assert nl.idx.shape == nl.valid.shape == nl.edge_id.shape == (n, k)
    assert nl.idx.dtype == nl.edge_id.dtype == np.int32 and nl.valid.dtype == bool
    edge_row = {pair: r for r, pair in enumerate(ref_edges(adj))}
    for i in range(n):
        pad = k - 1 - len(nbrs[i])
        assert nl.idx[i].tolist() == [i] + nbrs[i] + [i] * pad
        assert nl.valid[i].tolist() == [True] * (1 + len(nbrs[i])) + [False] * pad
        ids = [-1] + [edge_row[(min(i, m), max(i, m))] for m in nbrs[i]] + [-1] * pad
        assert nl.edge_id[i].tolist() == ids


@cfg(100)
@given(adjacencies(symmetric=True))
def test_neighbour_lists_edge_id_same_both_directions(adj):
    nl = neighbour_lists(adj)
    seen = {}
    for i in range(len(adj)):
        for k in np.flatnonzero(nl.valid[i, 1:]) + 1:
            pair = (min(i, int(nl.idx[i, k])), max(i, int(nl.idx[i, k])))
            seen.setdefault(pair, set()).add(int(nl.edge_id[i, k]))
    assert sorted(seen) == ref_edges(adj)
    assert all(len(ids) == 1 for ids in seen.values())
    assert sorted(ids.pop() for ids in seen.values()) == list(range(len(seen)))


@cfg(150)
@given(adjacencies(symmetric=True))
def test_diameter_matches_bfs(adj):
    g = nx.from_numpy_array(adj.astype(int))
    assert diameter(g) == ref_diameter(adj)


# ---------------------------------------------------------------------------------------------
# Partitions.
# ---------------------------------------------------------------------------------------------


@st.composite
def partition_cases(draw, scheme):
    n = draw(st.integers(1, 150))
    num_classes = draw(st.integers(1, 6))
    labels = draw(arrays(np.int64, n, elements=st.integers(0, num_classes - 1)))
    num_devices = draw(st.integers(1, min(MAX_N, n)))
    min_size = draw(st.integers(0, min(2, n // num_devices)) | st.integers(0, n // num_devices))
    spd = draw(st.none() | st.integers(max(min_size, 1), n // num_devices))
    kw = {"samples_per_device": spd, "min_size": min_size}
    if scheme == "shards":
        kw["shards_per_device"] = draw(st.integers(1, 4))
    elif scheme == "dirichlet":
        kw["dirichlet_alpha"] = draw(st.sampled_from([0.01, 0.1, 0.5, 1.0, 10.0, 100.0]))
    elif scheme == "skew":
        if draw(st.booleans()):
            kw["skew_sigma"] = draw(st.floats(0.0, 3.0))
        else:
            w = draw(st.lists(st.integers(0, 5), min_size=num_devices, max_size=num_devices)
                     .filter(lambda x: sum(x) > 0))
            kw["skew_fractions"] = [x / sum(w) for x in w]
    return labels, num_devices, kw, draw(SEEDS)


def check_parts(parts, n, num_devices, min_size):
    assert len(parts) == num_devices
    seen = set()
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1 and len(p) >= min_size
        for i in p.tolist():
            assert 0 <= i < n and i not in seen  # in range, disjoint across and within parts
            seen.add(i)
    return seen


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
@cfg(60)
@given(data=st.data())
def test_partition_invariants(scheme, data):
    labels, num_devices, kw, seed = data.draw(partition_cases(scheme))
    n = len(labels)
    spd, min_size = kw["samples_per_device"], kw["min_size"]
    total = n if spd is None else num_devices * spd
    run = lambda: partition(labels, num_devices, scheme, np.random.default_rng(seed), **kw)
    if scheme == "shards":
        num_shards = num_devices * kw["shards_per_device"]
        shard_size = total // num_shards if num_shards <= total else 0
        per = kw["shards_per_device"] * shard_size
        if num_shards > total or per < min_size:
            with pytest.raises(ConfigError, match="shards"):
                run()
            return
    parts = run()
    used = check_parts(parts, n, num_devices, min_size)
    sizes = [len(p) for p in parts]
    if scheme == "iid":
        assert sizes == [n // num_devices if spd is None else spd] * num_devices
    elif scheme == "shards":
        assert sizes == [per] * num_devices
        assert len(used) == num_shards * shard_size
        n_labels = max(min(shard_size, len(set(labels.tolist()))), 1)
        assert all(len(set(labels[p].tolist())) <= kw["shards_per_device"] * n_labels
                   for p in parts)
    else:  # dirichlet, skew: every sample of the (sub)set is used
        assert sum(sizes) == total
    if spd is None and scheme in ("dirichlet", "skew"):
        assert used == set(range(n))
    again = run()  # deterministic for the same seed
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@cfg(80)
@given(st.integers(1, 8), st.integers(1, 3), st.integers(1, 5), st.data())
def test_shards_are_pure_when_classes_fill_whole_shards(num_devices, spd, shard_size, data):
    """Class counts that are multiples of the shard size make every shard single-label, so a
    device holds at most shards_per_device labels, each a multiple of the shard size."""
    num_shards = num_devices * spd
    shard_class = data.draw(st.lists(st.integers(0, 5), min_size=num_shards,
                                     max_size=num_shards))
    seed = data.draw(SEEDS)
    labels = np.random.default_rng(seed).permutation(np.repeat(shard_class, shard_size))
    parts = partition(labels, num_devices, "shards", np.random.default_rng(seed),
                      shards_per_device=spd)
    used = check_parts(parts, len(labels), num_devices, 1)
    assert used == set(range(len(labels)))
    for p in parts:
        assert len(p) == spd * shard_size
        counts = {}
        for i in p.tolist():
            counts[int(labels[i])] = counts.get(int(labels[i]), 0) + 1
        assert len(counts) <= spd
        assert all(c % shard_size == 0 for c in counts.values()), counts


@cfg(120)
@given(st.integers(1, MAX_N), st.data())
def test_skew_fractions_apportioned(num_devices, data):
    w = data.draw(st.lists(st.integers(0, 5), min_size=num_devices, max_size=num_devices)
                  .filter(lambda x: sum(x) > 0))
    fractions = [x / sum(w) for x in w]
    n = data.draw(st.integers(num_devices, 200))
    min_size = data.draw(st.integers(0, min(2, n // num_devices))
                         | st.integers(0, n // num_devices))
    parts = partition(np.zeros(n, int), num_devices, "skew",
                      np.random.default_rng(data.draw(SEEDS)), skew_fractions=fractions,
                      min_size=min_size)
    check_parts(parts, n, num_devices, min_size)
    sizes = [len(p) for p in parts]
    assert sum(sizes) == n
    largest = max(sizes)
    for s, f in zip(sizes, fractions, strict=True):
        lo, hi = math.floor(f * n), math.ceil(f * n)  # largest remainder: floor or ceil
        if min_size == 0:
            assert lo <= s <= hi
        elif hi < min_size:  # raised to exactly min_size
            assert s == min_size
        else:
            assert min_size <= s <= max(hi, min_size)
            if s < lo:  # lowered: only the largest devices give, down to a common level
                assert s >= largest - 1


@cfg(100)
@given(st.integers(1, 50), st.floats(0.0, 1.0))
def test_one_device_fraction(num_devices, fraction):
    if num_devices == 1 and fraction != 1.0:
        with pytest.raises(ConfigError):
            one_device_fraction(num_devices, fraction)
        return
    fr = one_device_fraction(num_devices, fraction)
    assert len(fr) == num_devices and fr[0] == fraction
    assert all(x >= 0 for x in fr) and math.isclose(sum(fr), 1.0, abs_tol=1e-12)
    assert all(math.isclose(x, (1 - fraction) / (num_devices - 1), abs_tol=1e-15)
               for x in fr[1:])


@cfg(80)
@given(st.sampled_from(PARTITION_SCHEMES), st.data())
def test_partition_stats_and_padding(scheme, data):
    labels, num_devices, kw, seed = data.draw(partition_cases(scheme))
    try:
        parts = partition(labels, num_devices, scheme, np.random.default_rng(seed), **kw)
    except ConfigError:  # shards that do not fit; covered above
        return
    num_classes = int(labels.max()) + 1 + data.draw(st.integers(0, 2))
    stats = partition_stats(labels, parts, num_classes)
    assert stats["sizes"] == [len(p) for p in parts]
    ref = [[sum(1 for i in p.tolist() if labels[i] == c) for c in range(num_classes)]
           for p in parts]
    assert stats["label_histograms"] == ref
    assert all(type(s) is int for s in stats["sizes"])
    x = np.arange(len(labels) * 2, dtype=np.float32).reshape(-1, 2)
    pd = pad_partition(x, labels, parts)
    max_n = max(len(p) for p in parts)
    assert pd.x.shape == (num_devices, max_n, 2) and pd.mask.shape == (num_devices, max_n)
    for d, p in enumerate(parts):
        for c in range(max_n):
            real = c < len(p)
            assert pd.mask[d, c] == real
            assert pd.y[d, c] == (labels[p[c]] if real else 0)
            assert pd.x[d, c].tolist() == (x[p[c]].tolist() if real else [0.0, 0.0])


@cfg(60)
@given(st.integers(1, 60), st.integers(1, MAX_N), st.integers(0, 20))
def test_partition_rejects_too_few_samples(n, num_devices, min_size):
    labels = np.zeros(n, int)
    rng = np.random.default_rng(0)
    if num_devices * min_size > n:
        with pytest.raises(ConfigError, match="min_size"):
            partition(labels, num_devices, "iid", rng, min_size=min_size)
    else:
        check_parts(partition(labels, num_devices, "skew", rng, min_size=min_size),
                    n, num_devices, min_size)


# ---------------------------------------------------------------------------------------------
# Mixing.
# ---------------------------------------------------------------------------------------------


def closed_mask(adj):
    a = np.asarray(adj, bool).copy()
    np.fill_diagonal(a, True)
    return a


@cfg(250)
@given(st.sampled_from(SCHEMES), st.data())
def test_mixing_matrix_matches_reference(scheme, data):
    adj = data.draw(adjacencies(symmetric=data.draw(st.booleans())))  # directed or not
    n = len(adj)
    sizes = data.draw(sizes_for(n))
    if scheme == "fedavg" and sizes.sum() == 0:
        with pytest.raises(ConfigError, match="fedavg"):
            mixing_matrix(adj, sizes, scheme)
        return
    w = mixing_matrix(adj, sizes, scheme)
    assert w.shape == (n, n) and w.dtype == np.float64
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    if scheme != "fedavg":
        assert np.all(w[~closed_mask(adj)] == 0)
    np.testing.assert_allclose(w, ref_mixing(adj, sizes, scheme), atol=1e-12, rtol=0)


@cfg(150)
@given(st.sampled_from(DOUBLY_STOCHASTIC + ("fedavg",)), st.data())
def test_doubly_stochastic_preserves_the_average(scheme, data):
    adj = data.draw(adjacencies(symmetric=True))  # undirected, isolated nodes allowed
    n = len(adj)
    sizes = data.draw(sizes_for(n, equal=scheme == "fedavg"))
    w = mixing_matrix(adj, sizes, scheme)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(w, w.T, atol=1e-15)
    x = np.random.default_rng(data.draw(SEEDS)).normal(size=(n, 3))
    y = w @ x
    for c in range(3):
        assert math.isclose(sum(y[:, c]) / n, sum(x[:, c]) / n, abs_tol=1e-12)


N_PAD = K_PAD = MAX_N
_nw = jax.jit(neighbour_weights, static_argnames="scheme")


def _pad_lists(idx, n_pad, k_pad):
    n, k = idx.shape
    out = np.broadcast_to(np.arange(n_pad, dtype=np.int32)[:, None], (n_pad, k_pad)).copy()
    out[:n, :k] = idx
    return out


@cfg(150)
@given(st.sampled_from(NEIGHBOUR_SCHEMES), st.data())
def test_neighbour_weights_match_dense_reference(scheme, data):
    """Lists of a (maybe directed) graph padded to one [12, 12] shape, with a random mask over
    every entry: self column, real neighbours and padding (idx == n, which must be ignored)."""
    adj = data.draw(adjacencies(symmetric=data.draw(st.booleans())))
    n = len(adj)
    idx = _pad_lists(neighbour_lists(adj).idx, N_PAD, K_PAD)
    valid = data.draw(arrays(np.bool_, (N_PAD, K_PAD), elements=st.booleans(), fill=st.nothing()))
    sizes = data.draw(sizes_for(N_PAD))
    w = np.asarray(_nw(idx, valid, sizes, scheme=scheme))
    assert w.shape == (N_PAD, K_PAD) and w.dtype == np.float32
    masked = np.zeros((N_PAD, N_PAD), bool)
    for r in range(N_PAD):
        for k in range(1, K_PAD):
            if valid[r, k] and idx[r, k] != r:
                masked[r, idx[r, k]] = True
            else:
                assert w[r, k] == 0, (r, k)
    assert not masked[n:].any()  # padded devices are isolated
    dense = np.zeros((N_PAD, N_PAD))
    for r in range(N_PAD):
        for k in range(K_PAD):
            dense[r, idx[r, k]] += w[r, k]
    np.testing.assert_allclose(dense, ref_mixing(masked, sizes, scheme), atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(dense_from_lists(idx, w, N_PAD)), dense, atol=1e-7)


@cfg(200)
@given(st.sampled_from(SCHEMES), st.data())
def test_stationary_distribution_is_a_fixed_point(scheme, data):
    adj = data.draw(adjacencies(symmetric=data.draw(st.booleans())))
    n = len(adj)
    sizes = data.draw(sizes_for(n, positive=scheme == "fedavg"))
    w = mixing_matrix(adj, sizes, scheme)
    pi = stationary_distribution(w)
    assert pi.shape == (n,) and np.all(pi >= 0)
    assert math.isclose(sum(pi), 1.0, abs_tol=1e-12)
    residual = [sum(pi[m] * w[m, j] for m in range(n)) - pi[j] for j in range(n)]
    assert max(abs(r) for r in residual) < 1e-9, residual
    if scheme == "fedavg":
        np.testing.assert_allclose(pi, sizes / sizes.sum(), atol=1e-12)
    elif scheme in DOUBLY_STOCHASTIC and np.array_equal(adj, adj.T) and ref_connected(adj):
        np.testing.assert_allclose(pi, 1.0 / n, atol=1e-10)


@cfg(150)
@given(st.data())
def test_stationary_distribution_data_size_closed_form(data):
    adj = data.draw(adjacencies(symmetric=True, connected=True))
    n = len(adj)
    sizes = data.draw(sizes_for(n, positive=True))
    pi = stationary_distribution(mixing_matrix(adj, sizes, "data_size"))
    closed = [sizes[i] * sum(sizes[m] for m in open_nbhd(adj, i) + [i]) for i in range(n)]
    np.testing.assert_allclose(pi, np.array(closed) / sum(closed), atol=1e-10, rtol=0)


@cfg(150)
@given(st.data())
def test_stationary_distribution_data_size_mh_is_the_data_shares(data):
    """data_size_mh on any undirected graph (isolated nodes allowed): every |D|-weighted
    column sum equals |D_m| (|D|ᵀ W = |D|ᵀ), and on a connected one π = |D| / Σ|D|."""
    adj = data.draw(adjacencies(symmetric=True))
    n = len(adj)
    sizes = data.draw(sizes_for(n))
    w = mixing_matrix(adj, sizes, "data_size_mh")
    for m in range(n):
        assert math.isclose(sum(sizes[i] * w[i, m] for i in range(n)), sizes[m],
                            rel_tol=1e-12, abs_tol=1e-9)
    if ref_connected(adj) and min(sizes) > 0:
        pi = stationary_distribution(w)
        np.testing.assert_allclose(pi, np.asarray(sizes) / sum(sizes), atol=1e-9, rtol=0)


@cfg(120)
@given(st.sampled_from(DOUBLY_STOCHASTIC), st.data())
def test_spectral_info_symmetric(scheme, data):
    """For a symmetric stochastic W the singular values are |eigenvalues| and the largest is 1,
    so slem is the second singular value (1 on a disconnected graph)."""
    adj = data.draw(adjacencies(min_n=2, symmetric=True))
    w = mixing_matrix(adj, np.ones(len(adj)), scheme)
    info = spectral_info(w)
    second = np.linalg.svd(w, compute_uv=False)[1]
    assert math.isclose(info["slem"], second, abs_tol=1e-9)
    assert math.isclose(info["spectral_gap"], 1.0 - info["slem"], abs_tol=1e-15)
    if not ref_connected(adj):
        assert math.isclose(info["slem"], 1.0, abs_tol=1e-9)
