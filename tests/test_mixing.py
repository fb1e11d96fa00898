"""Tests for p2pl_jax.mixing: one invariant suite over every scheme x many graphs x sizes."""

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest

from p2pl_jax import analysis, graphs, mixing
from p2pl_jax.errors import ConfigError
from p2pl_jax.graphs import adjacency, make_graph, neighbour_lists
from p2pl_jax.mixing import (
    DOUBLY_STOCHASTIC,
    NEIGHBOUR_SCHEMES,
    SCHEMES,
    dense_from_lists,
    mixing_matrix,
    neighbour_weights,
    spectral_info,
)

# (topology, N, make_graph kwargs); N from 2 to 40, all connected for these seeds.
GRAPHS = [
    ("erdos_renyi", 10, {"p": 0.5, "seed": 0}),
    ("erdos_renyi", 15, {"p": 0.35, "seed": 1}),
    ("erdos_renyi", 25, {"p": 0.25, "seed": 2}),
    ("erdos_renyi", 40, {"p": 0.15, "seed": 3}),
    ("erdos_renyi", 2, {"p": 1.0}),
    ("random_geometric", 20, {"radius": 0.45, "seed": 0}),
    ("random_geometric", 30, {"radius": 0.4, "seed": 1}),
    ("cycle", 3, {}),
    ("cycle", 8, {}),
    ("cycle", 17, {}),
    ("star", 9, {}),
    ("path", 2, {}),
    ("path", 11, {}),
    ("grid", 12, {}),
    ("grid", 20, {}),
    ("torus", 9, {}),
    ("torus", 16, {}),
    ("watts_strogatz", 20, {"k": 4, "p": 0.2, "seed": 0}),
    ("watts_strogatz", 30, {"k": 6, "p": 0.1, "seed": 1}),
    ("barabasi_albert", 25, {"m": 1, "seed": 0}),
    ("barabasi_albert", 15, {"m": 3, "seed": 1}),
    ("random_regular", 12, {"degree": 3, "seed": 0}),
    ("random_regular", 20, {"degree": 4, "seed": 1}),
    ("complete", 2, {}),
    ("complete", 7, {}),
]
GRAPH_IDS = [f"{t}-{n}-{i}" for i, (t, n, _) in enumerate(GRAPHS)]
REGULAR = ("cycle", "complete", "torus", "random_regular")

_nw = jax.jit(neighbour_weights, static_argnames="scheme")


def _adj(case):
    topology, n, kw = case
    return adjacency(make_graph(topology, n, **kw))


def _sizes(n, kind, seed=0):
    if kind == "equal":
        return np.full(n, 100.0)
    return np.random.default_rng(seed + n).integers(1, 1000, n).astype(np.float64)


@pytest.mark.parametrize("sizes_kind", ["equal", "unequal"])
@pytest.mark.parametrize("case", GRAPHS, ids=GRAPH_IDS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_invariants(scheme, case, sizes_kind):
    adj = _adj(case)
    n = adj.shape[0]
    sizes = _sizes(n, sizes_kind)
    w = mixing_matrix(adj, sizes, scheme)
    assert w.shape == (n, n) and w.dtype == np.float64
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    if scheme != "fedavg":
        assert np.all(w[~(adj | np.eye(n, dtype=bool))] == 0)
    doubly = scheme in DOUBLY_STOCHASTIC or (scheme == "fedavg" and sizes_kind == "equal")
    if doubly:
        np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
        x = np.random.default_rng(n).normal(size=(n, 3))
        np.testing.assert_allclose((w @ x).mean(axis=0), x.mean(axis=0), atol=1e-12)
    if scheme in DOUBLY_STOCHASTIC:
        np.testing.assert_allclose(w, w.T, atol=1e-15)
    if scheme == "fedavg":
        np.testing.assert_allclose(w, np.tile(sizes / sizes.sum(), (n, 1)), atol=1e-15)
    if scheme == "data_size":  # w_nm / w_nn = |D_m| / |D_n| on Ω_n
        rows, cols = np.nonzero(adj)
        np.testing.assert_allclose(w[rows, cols] / w[rows, rows], sizes[cols] / sizes[rows],
                                   rtol=1e-12)
    if scheme == "uniform":
        np.testing.assert_allclose(w[adj | np.eye(n, dtype=bool)],
                                   np.repeat(1.0 / (adj.sum(1) + 1), adj.sum(1) + 1))


@pytest.mark.parametrize("case", [c for c in GRAPHS if c[0] in REGULAR],
                         ids=[GRAPH_IDS[i] for i, c in enumerate(GRAPHS) if c[0] in REGULAR])
def test_data_size_is_uniform_on_regular_graphs_with_equal_sizes(case):
    adj = _adj(case)
    sizes = _sizes(adj.shape[0], "equal")
    np.testing.assert_allclose(mixing_matrix(adj, sizes, "data_size"),
                               mixing_matrix(adj, sizes, "uniform"), atol=1e-15)


def _masked_adj(idx, valid):
    """Directed adjacency with adj[n, idx[n, k]] = True for the valid non-self entries."""
    n = idx.shape[0]
    adj = np.zeros((n, n), bool)
    rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    adj[rows[valid], idx[valid]] = True
    np.fill_diagonal(adj, False)
    return adj


def _masks(nl, rng):
    """Full, symmetric (per-edge) and asymmetric (per-entry) link failures with rate 0.3."""
    edge_ok = rng.random(nl.edge_id.max(initial=-1) + 1) > 0.3
    sym = nl.valid & np.where(nl.edge_id >= 0, edge_ok[nl.edge_id], True)
    asym = nl.valid & (rng.random(nl.valid.shape) > 0.3)
    asym[:, 0] = True
    return {"full": nl.valid, "symmetric": sym, "asymmetric": asym}


# Every graph is padded to one [N_PAD, K_PAD] shape (extra devices are isolated, extra columns are
# padding) so the jitted functions compile once per scheme; this also exercises padding.
N_PAD = max(n for _, n, _ in GRAPHS)
K_PAD = N_PAD
_dense = jax.jit(dense_from_lists, static_argnums=2)


def _pad(idx, valid, sizes):
    n, k = idx.shape
    idx_p = np.broadcast_to(np.arange(N_PAD, dtype=np.int32)[:, None], (N_PAD, K_PAD)).copy()
    valid_p = np.zeros((N_PAD, K_PAD), bool)
    valid_p[:, 0] = True
    idx_p[:n, :k], valid_p[:n, :k] = idx, valid
    sizes_p = np.full(N_PAD, 7.0)
    sizes_p[:n] = sizes
    return jnp.asarray(idx_p), jnp.asarray(valid_p), jnp.asarray(sizes_p)


@pytest.mark.parametrize("case", GRAPHS, ids=GRAPH_IDS)
@pytest.mark.parametrize("scheme", NEIGHBOUR_SCHEMES)
def test_neighbour_weights_match_dense(scheme, case):
    adj = _adj(case)
    n = adj.shape[0]
    nl = neighbour_lists(adj)
    rng = np.random.default_rng(n)
    for sizes_kind in ("equal", "unequal"):
        sizes = _sizes(n, sizes_kind)
        for name, valid in _masks(nl, rng).items():
            idx_p, valid_p, sizes_p = _pad(nl.idx, valid, sizes)
            w = _nw(idx_p, valid_p, sizes_p, scheme=scheme)
            assert w.shape == (N_PAD, K_PAD) and w.dtype == jnp.float32
            assert np.all(np.asarray(w)[:, 1:][~np.asarray(valid_p)[:, 1:]] == 0), name
            dense = np.asarray(_dense(idx_p, w, N_PAD))
            np.testing.assert_allclose(dense[n:], np.eye(N_PAD)[n:], atol=1e-7)
            masked = _masked_adj(nl.idx, valid)
            if name == "symmetric":
                assert np.array_equal(masked, masked.T)
            np.testing.assert_allclose(dense[:n, :n], mixing_matrix(masked, sizes, scheme),
                                       atol=1e-6, err_msg=f"{scheme} {name} {sizes_kind}")


@pytest.mark.parametrize("scheme", NEIGHBOUR_SCHEMES)
def test_neighbour_weights_vmap(scheme):
    adj = _adj(GRAPHS[2])
    n = adj.shape[0]
    nl = neighbour_lists(adj)
    rng = np.random.default_rng(0)
    valids = np.stack([_masks(nl, rng)["asymmetric"] for _ in range(4)])
    sizes = _sizes(n, "unequal")
    fn = jax.jit(jax.vmap(lambda v: neighbour_weights(nl.idx, v, sizes, scheme)))
    ws = np.asarray(fn(jnp.asarray(valids)))
    for valid, w in zip(valids, ws, strict=True):
        dense = np.asarray(dense_from_lists(nl.idx, w, n))
        np.testing.assert_allclose(dense, mixing_matrix(_masked_adj(nl.idx, valid), sizes, scheme),
                                   atol=1e-6)


def test_directed_reference():
    rng = np.random.default_rng(1)
    adj = rng.random((12, 12)) < 0.3
    np.fill_diagonal(adj, False)
    sizes = _sizes(12, "unequal")
    deg = adj.sum(axis=1)  # in-degree of the receiver
    for scheme in SCHEMES:
        w = mixing_matrix(adj, sizes, scheme)
        assert np.all(w >= 0)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    w = mixing_matrix(adj, sizes, "metropolis")
    n, m = np.argwhere(adj)[0]
    assert w[n, m] == pytest.approx(1 / (1 + max(deg[n], deg[m])))
    w = mixing_matrix(adj, sizes, "max_degree")
    assert w[n, m] == pytest.approx(1 / (1 + deg.max()))


def test_zero_sizes_and_errors():
    adj = adjacency(nx.path_graph(3))
    w = mixing_matrix(adj, np.array([0.0, 0.0, 5.0]), "data_size")
    np.testing.assert_allclose(w[0], [1, 0, 0])  # empty neighbourhood keeps its own parameters
    np.testing.assert_allclose(w[1], [0, 0, 1])
    nl = neighbour_lists(adj)
    idx_p, valid_p, sizes_p = _pad(nl.idx, nl.valid, np.array([0.0, 0.0, 5.0]))
    dense = _dense(idx_p, _nw(idx_p, valid_p, sizes_p, scheme="data_size"), N_PAD)
    np.testing.assert_allclose(np.asarray(dense)[:3, :3], w, atol=1e-7)
    with pytest.raises(ConfigError, match="mixing.*'metropolis'"):
        mixing_matrix(adj, np.ones(3), "gossip")
    with pytest.raises(ConfigError, match="sizes"):
        mixing_matrix(adj, np.array([1.0, -1.0, 1.0]), "uniform")
    with pytest.raises(ConfigError, match="fedavg"):
        mixing_matrix(adj, np.zeros(3), "fedavg")
    with pytest.raises(ConfigError, match="mixing"):
        neighbour_weights(nl.idx, nl.valid, jnp.ones(3), "fedavg")


def test_spectral_info():
    adj = adjacency(nx.complete_graph(6))
    info = spectral_info(mixing_matrix(adj, np.ones(6), "uniform"))
    assert info["slem"] == pytest.approx(0.0, abs=1e-10)
    assert info["spectral_gap"] == pytest.approx(1.0, abs=1e-10)
    for n in (5, 8, 13, 20):
        w = mixing_matrix(adjacency(nx.cycle_graph(n)), np.ones(n), "uniform")
        expected = (1 + 2 * np.cos(2 * np.pi / n)) / 3
        assert spectral_info(w)["slem"] == pytest.approx(expected, abs=1e-10)
    w = mixing_matrix(adjacency(make_graph("star", 7)), _sizes(7, "unequal"), "data_size")
    info = spectral_info(w)  # non-symmetric: eigvals path
    lam = np.sort(np.abs(np.linalg.eigvals(w)))
    assert info["slem"] == pytest.approx(lam[-2]) and 0 <= info["slem"] < 1
    assert info["spectral_gap"] == pytest.approx(1 - info["slem"])
    two = adjacency(nx.disjoint_union(nx.path_graph(3), nx.path_graph(3)))
    assert spectral_info(mixing_matrix(two, np.ones(6), "metropolis"))["slem"] == pytest.approx(1)
    assert spectral_info(np.ones((1, 1)))["slem"] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_stationary_distribution(seed):
    """πᵀW = πᵀ; uniform for doubly stochastic schemes; π_n ∝ |D_n| Σ_{Ω̄_n} |D_l| for
    data_size (reversible); and mixing alone drives every row of W^k to π."""
    g = graphs.make_graph("watts_strogatz", 15, seed=seed, k=4, p=0.3)
    adj = graphs.adjacency(g)
    sizes = np.random.default_rng(seed).integers(1, 50, size=15)
    for scheme in ("data_size", "uniform", "metropolis", "max_degree"):
        W = mixing.mixing_matrix(adj, sizes, scheme)
        pi = mixing.stationary_distribution(W)
        np.testing.assert_allclose(pi @ W, pi, atol=1e-12)
        assert pi.min() > 0 and pi.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(np.linalg.matrix_power(W, 2000), np.tile(pi, (15, 1)),
                                   atol=1e-8)
        if scheme in mixing.DOUBLY_STOCHASTIC:
            np.testing.assert_allclose(pi, 1 / 15, atol=1e-12)
    closed = sizes * ((adj | np.eye(15, dtype=bool)) @ sizes)
    W = mixing.mixing_matrix(adj, sizes, "data_size")
    np.testing.assert_allclose(mixing.stationary_distribution(W), closed / closed.sum(),
                               atol=1e-12)


def test_mixing_analysis_table():
    lines = analysis.table(20, 2, 0.5, 2000, ["equal", "lognormal:1", "top:0.5"],
                                  ["data_size", "metropolis"])
    rows = [line.split(" | ") for line in lines if line.startswith("| top:0.5")]
    assert len(rows) == 2
    share = float(rows[0][1])
    assert share == pytest.approx(0.5, abs=0.01)
    ratio = {r[2]: float(r[5].rstrip(" |")) for r in rows}
    assert ratio["metropolis"] == pytest.approx(1 / 20 / share, rel=0.05)   # π = 1/N
    assert ratio["data_size"] > 1.0   # data_size gives the big device at least its share
    sizes = analysis.device_sizes("lognormal:1", 20, 2000, 0)
    assert sizes.sum() == 2000 and len(sizes) == 20


@pytest.mark.parametrize("sizes", [(0.0, 1.0, 0.0), (0.0, 0.5, 0.0)])
def test_data_size_follows_the_only_device_with_data(sizes):
    """A receiver whose closed neighbourhood holds data only at one neighbour takes that
    neighbour's model (however small the data); only an all-empty neighbourhood keeps its own."""
    adj = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], bool)        # path 0 - 1 - 2
    expected = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(mixing.mixing_matrix(adj, np.array(sizes), "data_size"),
                                  expected)
    nl = graphs.neighbour_lists(adj)
    w = mixing.neighbour_weights(jnp.asarray(nl.idx), jnp.asarray(nl.valid),
                                 jnp.asarray(sizes, jnp.float32), "data_size")
    np.testing.assert_allclose(np.asarray(mixing.dense_from_lists(jnp.asarray(nl.idx), w, 3)),
                               expected)
    isolated = mixing.mixing_matrix(np.zeros((2, 2), bool), np.zeros(2), "data_size")
    np.testing.assert_array_equal(isolated, np.eye(2))


def test_spectral_info_of_one_device():
    assert mixing.spectral_info(np.ones((1, 1))) == {"slem": 0.0, "spectral_gap": 1.0}


def _eigen_pi(w):
    """numpy reference: the left eigenvector of W for the eigenvalue closest to 1, normalised."""
    lam, vecs = np.linalg.eig(w.T)
    v = np.real(vecs[:, np.argmin(np.abs(lam - 1.0))])
    return v / v.sum()


MH_SIZES = {
    "unequal": lambda n: _sizes(n, "unequal"),
    "lognormal": lambda n: np.round(600 * n * np.exp(2.0 * np.random.default_rng(n)
                                                     .standard_normal(n)) / n) + 1,
    "one-device-skew": lambda n: np.array([0.99 * 600 * n] + [0.01 * 600 * n / (n - 1)] * (n - 1)),
    "two-groups": lambda n: np.array([6.0] * (n // 2) + [594.0] * (n - n // 2)),
}


@pytest.mark.parametrize("sizes_kind", MH_SIZES)
@pytest.mark.parametrize("case", [c for c in GRAPHS if c[1] >= 3],
                         ids=[GRAPH_IDS[i] for i, c in enumerate(GRAPHS) if c[1] >= 3])
def test_data_size_mh_stationary_distribution_is_the_data_shares(case, sizes_kind):
    """pi^T W = pi^T with pi = |D| / sum |D| (to 1e-6 against numpy's eigenvector), and
    detailed balance pi_n w_nm = pi_m w_mn; data_size is the biased control."""
    adj = _adj(case)
    n = adj.shape[0]
    sizes = MH_SIZES[sizes_kind](n)
    share = sizes / sizes.sum()
    w = mixing_matrix(adj, sizes, "data_size_mh")
    np.testing.assert_allclose(share @ w, share, atol=1e-12)
    np.testing.assert_allclose(_eigen_pi(w), share, atol=1e-6)
    flow = share[:, None] * w
    np.testing.assert_allclose(flow, flow.T, atol=1e-15)
    assert np.all(np.diag(w) >= 1.0 / (adj.sum(1) + 1) - 1e-12)   # lazy: aperiodic
    if sizes_kind == "one-device-skew" and adj[0].sum() < n - 1:   # big device not a hub
        assert abs(_eigen_pi(mixing_matrix(adj, sizes, "data_size"))[0] - share[0]) > 1e-3


@pytest.mark.parametrize("case", GRAPHS, ids=GRAPH_IDS)
def test_data_size_mh_is_metropolis_for_equal_sizes(case):
    adj = _adj(case)
    sizes = _sizes(adj.shape[0], "equal")
    np.testing.assert_allclose(mixing_matrix(adj, sizes, "data_size_mh"),
                               mixing_matrix(adj, sizes, "metropolis"), atol=1e-15)


def test_data_size_mh_keeps_the_data_shares_under_symmetric_failures_and_dropouts():
    """The list weights of every round's graph (symmetric link failures, offline devices
    isolated) keep pi = |D| / sum |D| fixed, so a product of rounds does too."""
    adj = _adj(GRAPHS[6])
    n = adj.shape[0]
    nl = neighbour_lists(adj)
    sizes = MH_SIZES["one-device-skew"](n)
    share = sizes / sizes.sum()
    rng = np.random.default_rng(3)
    product = np.eye(n)
    for _ in range(5):
        valid = _masks(nl, rng)["symmetric"]
        online = rng.random(n) > 0.3
        valid = valid & online[:, None] & online[nl.idx]
        valid[:, 0] = True
        idx_p, valid_p, sizes_p = _pad(nl.idx, valid, sizes)
        w = np.asarray(_dense(idx_p, _nw(idx_p, valid_p, sizes_p, scheme="data_size_mh"),
                              N_PAD), np.float64)[:n, :n]
        np.testing.assert_allclose(w[~online], np.eye(n)[~online], atol=1e-7)
        np.testing.assert_allclose(share @ w, share, atol=1e-6)
        product = w @ product
    np.testing.assert_allclose(share @ product, share, atol=1e-6)


def test_data_size_mh_with_empty_devices():
    """A device with no data takes its neighbours' models (proposal weights) and gives none."""
    adj = adjacency(nx.path_graph(3))
    w = mixing_matrix(adj, np.array([0.0, 1.0, 0.0]), "data_size_mh")
    np.testing.assert_allclose(w, [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5]])
    nl = neighbour_lists(adj)
    idx_p, valid_p, sizes_p = _pad(nl.idx, nl.valid, np.array([0.0, 1.0, 0.0]))
    dense = _dense(idx_p, _nw(idx_p, valid_p, sizes_p, scheme="data_size_mh"), N_PAD)
    np.testing.assert_allclose(np.asarray(dense)[:3, :3], w, atol=1e-7)
