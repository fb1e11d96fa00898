"""Tests for p2pl_jax.sync: max norm synchronization (P2PL phase 0) against networkx distances."""

import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest

from p2pl_jax.graphs import adjacency, diameter, make_graph, neighbour_lists
from p2pl_jax.sync import global_norms, max_norm_sources, max_norm_sync

# (topology, N, make_graph kwargs, expected diameter or None). One N keeps the number of distinct
# array shapes (hence of small XLA compilations) down.
GRAPHS = [
    ("path", 10, {}, 9),
    ("cycle", 10, {}, 5),
    ("star", 10, {}, 2),
    ("random_geometric", 10, {"radius": 0.5, "seed": 3}, None),
    ("grid", 10, {}, 5),
]
GRAPH_IDS = [f"{t}-{n}" for t, n, _, _ in GRAPHS]


def _tree(n: int, seed: int, scales: np.ndarray) -> dict:
    """A [N, ...] parameter tree with two leaves; device n's leaves are scaled by scales[n]."""
    g = np.random.default_rng(seed)
    w = g.normal(size=(n, 4, 3)).astype(np.float32)
    b = g.normal(size=(n, 3)).astype(np.float32)
    # Normalise every device to norm 1, then scale, so the norms are exactly known and distinct.
    norm = np.sqrt((w ** 2).sum(axis=(1, 2)) + (b ** 2).sum(axis=1))
    f = (scales / norm).astype(np.float32)
    return {"w": w * f[:, None, None], "b": b * f[:, None]}


def _case(case, argmax_at=None, seed=0):
    topology, n, kw, expected_diameter = case
    graph = make_graph(topology, n, **kw)
    adj = adjacency(graph)
    scales = np.random.default_rng(seed).permutation(n).astype(np.float32) + 1.0
    if argmax_at is not None:
        scales[[argmax_at, int(np.argmax(scales))]] = scales[[int(np.argmax(scales)), argmax_at]]
    return graph, adj, _tree(n, seed, scales), scales


def test_global_norms_match_numpy():
    g = np.random.default_rng(0)
    tree = {"a": g.normal(size=(5, 3, 2)), "b": g.normal(size=(5, 7)), "c": g.normal(size=(5,))}
    tree = {k: v.astype(np.float32) for k, v in tree.items()}
    expected = np.sqrt(sum((v.reshape(5, -1).astype(np.float64) ** 2).sum(axis=1)
                           for v in tree.values()))
    got = np.asarray(global_norms({k: jnp.asarray(v) for k, v in tree.items()}))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("case", GRAPHS, ids=GRAPH_IDS)
def test_diameter_steps_reach_everyone(case):
    graph, adj, tree, scales = _case(case)
    n = adj.shape[0]
    diam = diameter(graph)
    if case[3] is not None:
        assert diam == case[3]
    lists = neighbour_lists(adj)
    synced = max_norm_sync({k: jnp.asarray(v) for k, v in tree.items()}, jnp.asarray(lists.idx),
                           jnp.asarray(lists.valid), diam)
    best = int(np.argmax(scales))
    for k, leaf in tree.items():
        expected = np.broadcast_to(leaf[best], leaf.shape)
        np.testing.assert_array_equal(np.asarray(synced[k]), expected)
    np.testing.assert_allclose(np.asarray(global_norms(synced)), np.full(n, scales.max()),
                               rtol=1e-5)


@pytest.mark.parametrize("case", GRAPHS, ids=GRAPH_IDS)
def test_each_step_takes_max_over_growing_ball(case):
    """After s steps device n holds the largest-norm init within graph distance s of n."""
    graph, adj, tree, scales = _case(case, seed=1)
    n = adj.shape[0]
    dist = dict(nx.all_pairs_shortest_path_length(graph))
    lists = neighbour_lists(adj)
    norms = jnp.asarray(scales)
    for s in range(diameter(graph) + 1):
        src = np.asarray(max_norm_sources(norms, jnp.asarray(lists.idx),
                                          jnp.asarray(lists.valid), s))
        for v in range(n):
            ball = [m for m in range(n) if dist[v][m] <= s]
            assert src[v] == ball[int(np.argmax(scales[ball]))], (s, v)


def test_path_needs_diameter_steps():
    """On a path of 10 with the largest norm at one end, 8 steps leave the other end behind."""
    case = GRAPHS[0]
    graph, adj, tree, scales = _case(case, argmax_at=0, seed=2)
    lists = neighbour_lists(adj)
    idx, valid = jnp.asarray(lists.idx), jnp.asarray(lists.valid)
    jtree = {k: jnp.asarray(v) for k, v in tree.items()}
    assert int(np.argmax(scales)) == 0 and diameter(graph) == 9
    for s in range(9):
        synced = max_norm_sync(jtree, idx, valid, s)
        holds_best = np.array([np.array_equal(np.asarray(synced["w"][v]), tree["w"][0])
                               for v in range(10)])
        # Exactly the devices within distance s of device 0 hold its parameters.
        np.testing.assert_array_equal(holds_best, np.arange(10) <= s)
    synced = max_norm_sync(jtree, idx, valid, 9)
    for k, leaf in tree.items():
        np.testing.assert_array_equal(np.asarray(synced[k]), np.broadcast_to(leaf[0], leaf.shape))


@pytest.mark.parametrize("topology,kw", [("path", {}), ("cycle", {}), ("star", {}),
                                         ("random_geometric", {"radius": 0.6})])
def test_until_stable_equals_diameter_steps(topology, kw):
    from p2pl_jax import graphs, sync

    g = graphs.make_graph(topology, 12, seed=2, **kw)
    nl = graphs.neighbour_lists(graphs.adjacency(g))
    gen = np.random.default_rng(0)
    params = {"w": jnp.asarray(gen.normal(size=(12, 3, 2)) * gen.uniform(0.5, 2, (12, 1, 1)),
                               jnp.float32)}
    idx, valid = jnp.asarray(nl.idx), jnp.asarray(nl.valid)
    a = sync.max_norm_sync(params, idx, valid, graphs.diameter(g))
    b = sync.max_norm_sync_until_stable(params, idx, valid)
    np.testing.assert_array_equal(np.asarray(a["w"]), np.asarray(b["w"]))
