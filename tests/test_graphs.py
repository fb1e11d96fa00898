"""Tests for p2pl_jax.graphs."""

import gzip
import logging

import networkx as nx
import numpy as np
import pytest

from p2pl_jax import graphs
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

RANDOM = ("random_geometric", "erdos_renyi", "watts_strogatz", "barabasi_albert",
          "random_regular")
KW = {"random_geometric": {"radius": 0.7}, "erdos_renyi": {"p": 0.5},
      "watts_strogatz": {"k": 4, "p": 0.3}}


@pytest.fixture
def edgefile(tmp_path):
    def write(text):
        path = tmp_path / "edges.txt"
        path.write_text(text)
        return str(path)
    return write


@pytest.mark.parametrize("topology", [t for t in TOPOLOGIES if t not in DIRECTED])
@pytest.mark.parametrize("n", [6, 12])
def test_every_topology_builds(topology, n, edgefile):
    kw = dict(KW.get(topology, {}))
    if topology == "edgelist":
        kw["edgelist_path"] = edgefile("# ring\n" + "".join(f"{i} {(i + 1) % n}\n"
                                                          for i in range(n)) + "\n")
    g = make_graph(topology, n, seed=1, **kw)
    assert sorted(g.nodes) == list(range(n))
    assert nx.is_connected(g)
    adj = adjacency(g)
    assert adj.shape == (n, n) and adj.dtype == bool
    assert np.array_equal(adj, adj.T)
    assert not adj.diagonal().any()
    assert nx.number_of_selfloops(g) == 0


@pytest.mark.parametrize("topology", RANDOM)
def test_random_graphs_seeded(topology):
    kw = KW.get(topology, {})
    a = adjacency(make_graph(topology, 20, seed=3, **kw))
    b = adjacency(make_graph(topology, 20, seed=3, **kw))
    c = adjacency(make_graph(topology, 20, seed=4, **kw))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("n", [3, 4, 7, 10])
def test_diameters(n):
    assert diameter(make_graph("cycle", n)) == n // 2
    assert diameter(make_graph("path", n)) == n - 1
    assert diameter(make_graph("complete", n)) == 1
    assert diameter(make_graph("star", n)) == 2
    assert diameter(make_graph("complete", 1)) == 0


def test_grid_shapes():
    g = make_graph("grid", 12)  # 3 x 4
    assert diameter(g) == 2 + 3
    assert make_graph("grid", 12, grid_rows=2).number_of_edges() == 2 * 5 + 6
    assert nx.is_isomorphic(make_graph("grid", 5), nx.path_graph(5))  # 1 x 5
    torus = make_graph("torus", 16)
    assert all(d == 4 for _, d in torus.degree)
    with pytest.raises(ConfigError, match="graph_rows"):
        make_graph("grid", 12, grid_rows=5)


def test_disconnected():
    with pytest.raises(ConfigError, match="disconnected") as e:
        make_graph("random_geometric", 30, radius=0.01)
    assert "graph_radius" in str(e.value) and "allow_disconnected" in str(e.value)
    g = make_graph("random_geometric", 30, radius=0.01, allow_disconnected=True)
    assert g.number_of_nodes() == 30
    two_paths = nx.disjoint_union(nx.path_graph(4), nx.path_graph(2))
    assert diameter(two_paths) == 3


def test_edges_sorted():
    adj = adjacency(make_graph("erdos_renyi", 15, p=0.4, seed=2))
    e = edges(adj)
    assert e.dtype == np.int32 and e.shape == (adj.sum() // 2, 2)
    assert np.all(e[:, 0] < e[:, 1])
    assert [tuple(x) for x in e] == sorted(tuple(x) for x in e)
    assert adj[e[:, 0], e[:, 1]].all()


@pytest.mark.parametrize("topology,kw", [("star", {}), ("path", {}),
                                         ("barabasi_albert", {"m": 2}),
                                         ("erdos_renyi", {"p": 0.5})])
def test_neighbour_lists(topology, kw):
    adj = adjacency(make_graph(topology, 13, seed=5, **kw))
    nl = neighbour_lists(adj)
    n = adj.shape[0]
    deg = adj.sum(axis=1)
    assert nl.idx.shape == nl.valid.shape == nl.edge_id.shape == (n, deg.max() + 1)
    assert nl.idx.dtype == nl.edge_id.dtype == np.int32
    assert np.array_equal(nl.idx[:, 0], np.arange(n)) and nl.valid[:, 0].all()
    e = edges(adj)
    for i in range(n):
        nbrs = nl.idx[i, 1:][nl.valid[i, 1:]]
        assert sorted(nbrs) == list(np.flatnonzero(adj[i]))
        assert np.all(nl.idx[i, 1:][~nl.valid[i, 1:]] == i)  # padding repeats self
        assert np.all(nl.edge_id[i][~nl.valid[i]] == -1) and nl.edge_id[i, 0] == -1
        for k in np.flatnonzero(nl.valid[i, 1:]) + 1:
            u, v = sorted((i, nl.idx[i, k]))
            assert tuple(e[nl.edge_id[i, k]]) == (u, v)


def test_errors(edgefile, tmp_path):
    with pytest.raises(ConfigError, match="topology.*'complete'.*'edgelist'"):
        make_graph("hypercube", 8)
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="graph_p"):
            make_graph("erdos_renyi", 8, p=bad)
    with pytest.raises(ConfigError, match="graph_radius"):
        make_graph("random_geometric", 8, radius=0.0)
    with pytest.raises(ConfigError, match="graph_k"):
        make_graph("watts_strogatz", 8, k=3)
    with pytest.raises(ConfigError, match="graph_k"):
        make_graph("watts_strogatz", 8, k=8)
    with pytest.raises(ConfigError, match="graph_m"):
        make_graph("barabasi_albert", 8, m=8)
    with pytest.raises(ConfigError, match="graph_degree"):
        make_graph("random_regular", 7, degree=3)
    with pytest.raises(ConfigError, match="num_devices"):
        make_graph("cycle", 0)
    with pytest.raises(ConfigError, match="not found"):
        make_graph("edgelist", 4, edgelist_path=str(tmp_path / "nope.txt"))
    with pytest.raises(ConfigError, match="edgelist_path"):
        make_graph("edgelist", 4)
    with pytest.raises(ConfigError, match="no edges"):
        make_graph("edgelist", 4, edgelist_path=edgefile("# nothing\n\n"))
    with pytest.raises(ConfigError, match="line 2"):
        make_graph("edgelist", 4, edgelist_path=edgefile("0 1\n1 x\n"))
    with pytest.raises(ConfigError, match="line 3"):
        make_graph("edgelist", 4, edgelist_path=edgefile("0 1\n\n1 2 3\n"))
    with pytest.raises(ConfigError, match="out of range"):
        make_graph("edgelist", 4, edgelist_path=edgefile("0 1\n1 4\n"))
    with pytest.raises(ConfigError, match="self loop"):
        make_graph("edgelist", 4, edgelist_path=edgefile("0 1\n2 2\n"))


@pytest.mark.parametrize("n", [2, 5, 8, 13])
def test_exponential_graph_is_i_to_i_plus_powers_of_two(n):
    """By hand: i sends to i + 1, i + 2, i + 4, ... (< N) mod N; adj is receiver-major."""
    g = make_graph("exponential", n)
    assert g.is_directed() and nx.is_strongly_connected(g)
    want = np.zeros((n, n), bool)
    for i in range(n):
        hop = 1
        while hop < n:
            want[(i + hop) % n, i] = True   # receiver (i + hop) hears sender i
            hop *= 2
    np.fill_diagonal(want, False)
    assert np.array_equal(adjacency(g), want)


def test_directed_edgelist_keeps_direction_and_must_be_strongly_connected(edgefile):
    ring = edgefile("0 1\n1 2\n2 0\n")
    adj = adjacency(make_graph("edgelist", 3, edgelist_path=ring, directed=True))
    assert adj[1, 0] and adj[2, 1] and adj[0, 2] and not adj[0, 1]
    chain = edgefile("0 1\n1 2\n")
    with pytest.raises(ConfigError, match="strongly connected"):
        make_graph("edgelist", 3, edgelist_path=chain, directed=True)


# ------------------------------------------------------------- edge-list files: binary, repeats


@pytest.mark.parametrize("kind", ["gzip", "random bytes"])
def test_binary_edgelist_is_a_config_error_naming_the_file(tmp_path, kind):
    """A binary file (e.g. the edge list still gzip-compressed) is a ConfigError naming the file
    and the expected format, not a UnicodeDecodeError."""
    ring = "".join(f"{i} {(i + 1) % 4}\n" for i in range(4)).encode()
    path = tmp_path / "edges.bin"
    # bytes(range(128, 256)) is never UTF-8: a fixed stand-in for random bytes
    path.write_bytes(gzip.compress(ring) if kind == "gzip" else bytes(range(128, 256)) * 4)
    with pytest.raises(ConfigError) as e:
        make_graph("edgelist", 4, edgelist_path=str(path))
    msg = str(e.value)
    assert f"edgelist_path={str(path)!r}" in msg and "not a text file" in msg, msg
    assert "one 'u v' pair of integer node ids per line" in msg, msg
    assert ("gzip" in msg) == (kind == "gzip"), msg


def test_utf8_byte_order_mark_is_not_part_of_the_first_node_id(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf0 1\n1 2\n2 0\n")
    assert nx.utils.edges_equal(make_graph("edgelist", 3, edgelist_path=str(path)).edges,
                                [(0, 1), (1, 2), (0, 2)])


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_duplicate_edges_are_merged_with_a_warning(edgefile, caplog):
    """The same pair again, or reversed in an undirected list, is one edge; a warning names the
    file and how many listings were dropped."""
    path = edgefile("0 1\n1 2\n2 3\n3 0\n1 0  # reversed\n0 1\n2 3\n")
    ring = adjacency(make_graph("cycle", 4))
    with caplog.at_level(logging.WARNING):
        adj = adjacency(make_graph("edgelist", 4, edgelist_path=path))
    np.testing.assert_array_equal(adj, ring)
    (msg,) = _warnings(caplog)
    assert repr(path) in msg and "dropped 3 duplicate edge(s)" in msg, msg
    assert "line 5: '1 0'" in msg and "4 distinct edges" in msg, msg


def test_directed_edgelist_merges_only_the_same_direction(edgefile, caplog):
    path = edgefile("0 1\n1 0\n1 2\n2 0\n0 1\n")
    with caplog.at_level(logging.WARNING):
        g = make_graph("edgelist", 3, edgelist_path=path, directed=True)
    assert sorted(g.edges) == [(0, 1), (1, 0), (1, 2), (2, 0)]
    (msg,) = _warnings(caplog)
    assert "dropped 1 duplicate edge(s)" in msg and "line 5: '0 1'" in msg, msg


def test_edgelist_without_repeats_logs_no_warning(edgefile, caplog):
    with caplog.at_level(logging.WARNING):
        make_graph("edgelist", 3, edgelist_path=edgefile("0 1\n1 2\n2 0\n"))
    assert _warnings(caplog) == []


def _connected_bfs(adj):
    """Independent connectivity check: breadth-first search from node 0 over a bool [N, N]."""
    seen, frontier = {0}, [0]
    while frontier:
        frontier = [m for n in frontier for m in np.flatnonzero(adj[n]) if m not in seen]
        seen.update(frontier)
    return len(seen) == len(adj)


# (topology, N, make_graph kwargs, seed): near the connectivity threshold, `seed` disconnected
RESAMPLE_CASES = [("random_geometric", 20, {"radius": 0.3}, 1),
                  ("random_geometric", 4, {"radius": 0.4}, 0),
                  ("erdos_renyi", 20, {"p": 0.12}, 0)]


@pytest.mark.parametrize("topology,n,kw,seed", RESAMPLE_CASES)
def test_resampled_graph_is_the_first_connected_seed(topology, n, kw, seed):
    draw = lambda s: adjacency(make_graph(topology, n, seed=s, allow_disconnected=True, **kw))
    assert not _connected_bfs(draw(seed))   # the case is near the threshold
    k = next(k for k in range(100) if _connected_bfs(draw(seed + 1000 * k)))
    assert k >= 1
    g, graph_seed = graphs.resampled_graph(topology, n, seed=seed, **kw)
    assert graph_seed == seed + 1000 * k
    np.testing.assert_array_equal(adjacency(g), draw(seed + 1000 * k))
    assert _connected_bfs(adjacency(g))
    g0, seed0 = graphs.resampled_graph(topology, n, seed=seed + 1000 * k, **kw)  # k = 0
    assert seed0 == seed + 1000 * k and nx.utils.graphs_equal(g0, g)


def test_resampled_graph_errors():
    with pytest.raises(ConfigError) as e:
        graphs.resampled_graph("random_geometric", 20, seed=0, radius=0.01, tries=5)
    msg = str(e.value)
    assert "graph_radius" in msg and "num_devices=20" in msg and "5 graph seeds" in msg
    with pytest.raises(ConfigError, match="graph_resample.*'random_geometric'"):
        graphs.resampled_graph("cycle", 5)
