"""The scalable host set-up (issue #12): sparse graph facts, sparse W and its spectrum, the
Simulator on a sparse adjacency, and summary.json's setup_time_s.

References: networkx (diameters), dense numpy (neighbour lists by a Python loop, the dense
mixing matrix, numpy eigenvalues).
"""

import json

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from p2pl_jax import graphs, mixing, simulation
from p2pl_jax.models import MLP


def _undirected_cases():
    yield "rgg", graphs.make_graph("random_geometric", 60, seed=2, radius=0.25)
    yield "er", graphs.make_graph("erdos_renyi", 40, seed=1, p=0.1, allow_disconnected=True)
    yield "ba", graphs.make_graph("barabasi_albert", 50, seed=3, m=2)
    yield "cycle", nx.cycle_graph(17)
    yield "torus", graphs.make_graph("torus", 24)
    yield "star", nx.star_graph(9)
    yield "complete", nx.complete_graph(7)
    yield "two_parts", nx.disjoint_union(nx.path_graph(6), nx.cycle_graph(9))
    yield "isolated", nx.empty_graph(5)


def _nx_diameter(g: nx.Graph) -> int:
    return max((nx.diameter(g.subgraph(c)) for c in nx.connected_components(g)), default=0)


@pytest.mark.parametrize("name,g", list(_undirected_cases()))
def test_diameter_matches_networkx(name, g):
    want = _nx_diameter(g)
    assert graphs.diameter(g) == want
    assert graphs.diameter(graphs.sparse_adjacency(g)) == want
    assert simulation.graph_diameter(graphs.adjacency(g)) == (want if len(g) > 1 else 0)


def test_diameter_work_budget():
    g = nx.cycle_graph(40)   # vertex-transitive: the bounds prune nothing, 40 BFS of 80 + 40
    assert graphs.diameter(g, max_work=40 * 120) == 20
    assert graphs.diameter(g, max_work=39 * 120) is None


def _directed_cases():
    yield "exponential", graphs.make_graph("exponential", 13)
    yield "ring", nx.cycle_graph(9, create_using=nx.DiGraph)
    r = np.random.default_rng(4)
    for i in range(3):
        dg = nx.gnp_random_graph(25, 0.15, seed=int(r.integers(1 << 30)), directed=True)
        yield f"gnp{i}", dg


@pytest.mark.parametrize("name,g", list(_directed_cases()))
def test_directed_diameter_matches_networkx(name, g):
    want = nx.diameter(g) if nx.is_strongly_connected(g) else None
    adj = graphs.adjacency(g)   # adj[n, m]: m -> n
    assert graphs.directed_diameter(adj) == want
    assert simulation.graph_diameter(sp.csr_array(adj)) == want


def _ref_lists(adj: np.ndarray):
    """Padded lists by a Python loop over the dense adjacency."""
    n = len(adj)
    union = adj | adj.T
    pairs = sorted((i, j) for i in range(n) for j in range(i + 1, n) if union[i, j])
    eid = {p: e for e, p in enumerate(pairs)}
    rows = [[m for m in range(n) if adj[i, m] and m != i] for i in range(n)]
    k = max((len(r) for r in rows), default=0) + 1
    idx = np.array([[i] + r + [i] * (k - 1 - len(r)) for i, r in enumerate(rows)], np.int32)
    valid = np.array([[True] * (1 + len(r)) + [False] * (k - 1 - len(r)) for r in rows])
    edge_id = np.array([[-1] + [eid[(min(i, m), max(i, m))] for m in r] + [-1] * (k - 1 - len(r))
                        for i, r in enumerate(rows)], np.int32)
    return np.array(pairs, np.int32).reshape(-1, 2), idx, valid, edge_id


@pytest.mark.parametrize("seed", range(6))
def test_sparse_lists_match_loop(seed):
    r = np.random.default_rng(seed)
    n = int(r.integers(2, 25))
    adj = r.random((n, n)) < 0.2
    if seed % 2:
        adj |= adj.T
    np.fill_diagonal(adj, False)
    e, idx, valid, edge_id = _ref_lists(adj)
    for a in (adj, sp.csr_array(adj), sp.coo_array(adj)):
        nl = graphs.neighbour_lists(a)
        np.testing.assert_array_equal(graphs.edges(a), e)
        np.testing.assert_array_equal(nl.idx, idx)
        np.testing.assert_array_equal(nl.valid, valid)
        np.testing.assert_array_equal(nl.edge_id, edge_id)
    dense_lists = simulation.graph_lists(adj)
    sparse_lists = simulation.graph_lists(sp.csr_array(adj))
    for f in ("idx", "valid", "edge_id", "sync_idx", "sync_valid"):
        np.testing.assert_array_equal(getattr(dense_lists, f), getattr(sparse_lists, f))
    assert sparse_lists.num_edges == len(e) == graphs.num_edges(adj)
    # valid marks n <- idx[n, k] (column 0 self); a Python loop over the union's lists
    u = simulation.graph_lists(adj | adj.T)
    want = np.array([[k == 0 or (u.valid[i, k] and adj[i, u.idx[i, k]])
                      for k in range(u.idx.shape[1])] for i in range(n)])
    np.testing.assert_array_equal(sparse_lists.valid, want)


@pytest.mark.parametrize("topology,kw,directed", [
    ("random_geometric", {"radius": 0.3}, False), ("grid", {}, False),
    ("barabasi_albert", {"m": 1}, False), ("exponential", {}, True)])
def test_sparse_adjacency_is_adjacency(topology, kw, directed):
    g = graphs.make_graph(topology, 20, seed=5, allow_disconnected=True, **kw)
    a = graphs.sparse_adjacency(g)
    assert isinstance(a, sp.csr_array) and a.dtype == bool and a.has_sorted_indices
    np.testing.assert_array_equal(a.toarray(), graphs.adjacency(g))
    assert graphs.is_symmetric(a) == (not directed)


def _weight_cases():
    r = np.random.default_rng(0)
    for topo, n, kw in [("random_geometric", 40, {"radius": 0.3}),
                        ("erdos_renyi", 30, {"p": 0.15}), ("exponential", 16, {})]:
        adj = graphs.adjacency(graphs.make_graph(topo, n, seed=1, allow_disconnected=True, **kw))
        yield topo, adj, r.integers(1, 60, n).astype(float)
    adj = graphs.adjacency(nx.star_graph(6))
    yield "star_zero_sizes", adj, np.array([0.0, 3, 0, 5, 0, 1, 2])


@pytest.mark.parametrize("scheme", mixing.SCHEMES)
@pytest.mark.parametrize("name,adj,sizes", list(_weight_cases()))
def test_sparse_mixing_matrix_matches_dense(name, adj, sizes, scheme):
    w = mixing.sparse_mixing_matrix(sp.csr_array(adj), sizes, scheme)
    assert isinstance(w, sp.csr_array)
    # same formulas in float64; the self weights are sums in another order (last bit)
    np.testing.assert_allclose(w.toarray(), mixing.mixing_matrix(adj, sizes, scheme),
                               rtol=0, atol=1e-15)
    if scheme != "fedavg":
        assert w.nnz == len(adj) + adj.sum()


def _spectrum_cases():
    r = np.random.default_rng(1)
    rgg = graphs.adjacency(graphs.make_graph("random_geometric", 150, seed=3, radius=0.2))
    unequal = r.integers(1, 100, 150).astype(float)
    yield "metropolis_rgg", rgg, np.ones(150), "metropolis", "symmetric"
    yield "max_degree_rgg", rgg, np.ones(150), "max_degree", "symmetric"
    yield "data_size_rgg", rgg, unequal, "data_size", "reversible"
    yield "uniform_rgg", rgg, np.ones(150), "uniform", "reversible"
    yield "data_size_mh_rgg", rgg, unequal, "data_size_mh", "reversible"
    ba = graphs.adjacency(graphs.make_graph("barabasi_albert", 120, seed=2, m=2))
    yield "data_size_ba", ba, unequal[:120], "data_size", "reversible"
    expo = graphs.adjacency(graphs.make_graph("exponential", 40))
    yield "uniform_exponential", expo, np.ones(40), "uniform", "arnoldi"
    yield "data_size_exponential", expo, unequal[:40], "data_size", "arnoldi"
    two = graphs.adjacency(nx.disjoint_union(nx.path_graph(20), nx.cycle_graph(30)))
    yield "disconnected", two, np.ones(50), "metropolis", "disconnected"


@pytest.mark.parametrize("name,adj,sizes,scheme,path", list(_spectrum_cases()))
def test_sparse_spectrum_matches_dense(name, adj, sizes, scheme, path):
    dense = mixing.spectral_info(mixing.mixing_matrix(adj, sizes, scheme))
    w = mixing.sparse_mixing_matrix(adj, sizes, scheme)
    sparse = mixing.spectral_info(w, dense_max_n=0)   # force ARPACK
    assert set(sparse) == set(dense) == {"slem", "spectral_gap"}
    # tolerance: ARPACK to machine precision on well-conditioned W; 1e-9 is ample
    assert sparse["slem"] == pytest.approx(dense["slem"], abs=1e-9)
    assert sparse["spectral_gap"] == pytest.approx(dense["spectral_gap"], abs=1e-9)
    # the path taken: symmetrizing must apply to reversible W and only to them
    sym = mixing._symmetrized(w) if path != "disconnected" else None
    if path != "disconnected":
        assert (sym is not None) == (path in ("reversible", "symmetric"))
    if sym is not None:
        np.testing.assert_allclose(np.linalg.eigvalsh(sym.toarray()),
                                   np.sort(np.linalg.eigvals(w.toarray()).real), atol=1e-9)
    # dense_max_n at or above N: the dense eigenvalues of the same W
    assert mixing.spectral_info(w, dense_max_n=len(adj)) == mixing.spectral_info(w.toarray())


def _sim(adj, **kw):
    r = np.random.default_rng(0)
    n = adj.shape[0]
    x = r.random((4 * n, 2, 2, 1), dtype=np.float32)
    y = r.integers(0, 3, 4 * n)
    parts = [np.arange(4 * i, 4 * i + 1 + i % 3) for i in range(n)]
    return simulation.Simulator(model=MLP(hidden_sizes=(3,), num_classes=3), x=x, y=y,
                                parts=parts, adj=adj, batch_size=2, **kw)


@pytest.mark.parametrize("algorithm,backend", [("p2pl", "gather"), ("p2pl", "dense"),
                                               ("push_sum", "gather")])
def test_simulator_sparse_adj_is_dense_adj(algorithm, backend):
    g = graphs.make_graph("random_geometric", 12, seed=1, radius=0.6)
    dense = graphs.adjacency(g)
    a, b = _sim(dense, algorithm=algorithm, backend=backend), _sim(
        graphs.sparse_adjacency(g), algorithm=algorithm, backend=backend)
    assert a.diameter == b.diameter == nx.diameter(g)
    assert a.backend == b.backend == backend
    for f in ("idx", "valid", "edge_id", "weights", "w_dense", "pi", "rev"):
        np.testing.assert_array_equal(getattr(a.arrays, f), getattr(b.arrays, f))
    np.testing.assert_array_equal(a.mixing_matrix, b.mixing_matrix)
    np.testing.assert_allclose(b.mixing_weights.toarray(), b.mixing_matrix, atol=1e-15)
    if backend == "dense":   # the dense W the round uses is mixing_matrix, float32
        np.testing.assert_array_equal(b.arrays.w_dense, b.mixing_matrix.astype(np.float32))


def test_global_backend_on_complete_graph():
    sim = _sim(graphs.sparse_adjacency(nx.complete_graph(6)), mixing_scheme="data_size")
    assert sim.backend == "global"
    np.testing.assert_allclose(sim.arrays.pi, sim.mixing_matrix[0], rtol=1e-6)


def test_setup_time_in_summary(tmp_path, monkeypatch):
    """summary.json reports setup_time_s > 0 (build + init), not part of wall_time_s: with a
    2 s initialisation, setup_time_s >= 2 and the two spans add up to at most the run's time
    (were the init also in wall_time_s, they would exceed it by 2 s)."""
    import time

    from configs import smoke
    from p2pl_jax import runner

    init = simulation.Simulator.init

    def slow_init(self, seed):
        time.sleep(2.0)
        return init(self, seed)

    monkeypatch.setattr(simulation.Simulator, "init", slow_init)
    c = smoke.get_config()
    c.rounds = 1
    t = time.perf_counter()
    summary = runner.run(c, str(tmp_path))
    elapsed = time.perf_counter() - t
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["setup_time_s"] == pytest.approx(summary["setup_time_s"])
    assert 2.0 <= summary["setup_time_s"] < elapsed
    assert 0 < summary["wall_time_s"]
    assert summary["setup_time_s"] + summary["wall_time_s"] <= elapsed
