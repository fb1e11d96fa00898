"""Tests for p2pl_jax.consensus: every backend equals the dense numpy product W @ X."""

import atexit
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from p2pl_jax import consensus, simulation
from p2pl_jax.graphs import adjacency, make_graph, neighbour_lists
from p2pl_jax.mixing import DOUBLY_STOCHASTIC, NEIGHBOUR_SCHEMES, mixing_matrix, neighbour_weights
from p2pl_jax.models import MLP, init_params

# See test_simulation.py: compiled executables are shared through a per-session disk cache.
_JIT_CACHE = os.path.join(tempfile.gettempdir(), f"p2pl_jax_test_jit_cache_{os.getpid()}")
jax.config.update("jax_compilation_cache_dir", _JIT_CACHE)
atexit.register(shutil.rmtree, _JIT_CACHE, True)

N = 10  # one N for every graph keeps the number of compiled shapes small
GRAPHS = [
    ("cycle", {}),
    ("erdos_renyi", {"p": 0.4, "seed": 0}),
    ("random_geometric", {"radius": 0.45, "seed": 3}),
    ("star", {}),
    ("complete", {}),
]
GRAPH_IDS = [t for t, _ in GRAPHS]

_dense = jax.jit(consensus.mix_dense)
_gather = jax.jit(consensus.mix_gather)
_global = jax.jit(consensus.mix_global)


def _tree(seed: int) -> dict:
    g = np.random.default_rng(seed)
    return {"w": g.normal(size=(N, 3, 2)).astype(np.float32),
            "b": g.normal(size=(N, 5)).astype(np.float32),
            "s": g.normal(size=(N,)).astype(np.float32)}


def _apply(w: np.ndarray, tree: dict) -> dict:
    """The float64 numpy reference W @ X, leaf by leaf."""
    return {k: (w @ v.reshape(N, -1).astype(np.float64)).reshape(v.shape)
            for k, v in tree.items()}


def _close(got: dict, expected: dict, rtol=1e-5, atol=1e-5) -> None:
    assert set(got) == set(expected)
    for k in expected:
        assert got[k].shape == expected[k].shape
        np.testing.assert_allclose(np.asarray(got[k]), expected[k], rtol=rtol, atol=atol,
                                   err_msg=k)


@pytest.mark.parametrize("topology,kw", GRAPHS, ids=GRAPH_IDS)
def test_dense_and_gather_equal_numpy(topology, kw):
    adj = adjacency(make_graph(topology, N, **kw))
    lists = neighbour_lists(adj)
    sizes = np.random.default_rng(7).integers(1, 500, N).astype(np.float64)
    tree = _tree(0)
    jtree = {k: jnp.asarray(v) for k, v in tree.items()}
    for scheme in NEIGHBOUR_SCHEMES:
        w_ref = mixing_matrix(adj, sizes, scheme)
        w_list = neighbour_weights(jnp.asarray(lists.idx), jnp.asarray(lists.valid),
                                   jnp.asarray(sizes, jnp.float32), scheme)
        expected = _apply(w_ref, tree)
        _close(_dense(jnp.asarray(w_ref, jnp.float32), jtree), expected)
        _close(_gather(jnp.asarray(lists.idx), w_list, jtree), expected)


def test_global_equals_rank_one_w():
    pi = np.random.default_rng(3).uniform(0.1, 1.0, N)
    pi /= pi.sum()
    tree = _tree(1)
    got = _global(jnp.asarray(pi, jnp.float32), {k: jnp.asarray(v) for k, v in tree.items()})
    _close(got, _apply(np.outer(np.ones(N), pi), tree))


@pytest.mark.parametrize("topology,kw", GRAPHS, ids=GRAPH_IDS)
def test_doubly_stochastic_preserves_average(topology, kw):
    adj = adjacency(make_graph(topology, N, **kw))
    lists = neighbour_lists(adj)
    sizes = np.random.default_rng(11).integers(1, 500, N).astype(np.float64)
    tree = _tree(2)
    jtree = {k: jnp.asarray(v) for k, v in tree.items()}
    for scheme in NEIGHBOUR_SCHEMES:
        w_list = neighbour_weights(jnp.asarray(lists.idx), jnp.asarray(lists.valid),
                                   jnp.asarray(sizes, jnp.float32), scheme)
        mixed = _gather(jnp.asarray(lists.idx), w_list, jtree)
        drift = max(float(np.abs(np.asarray(mixed[k]).mean(0) - v.mean(0)).max())
                    for k, v in tree.items())
        if scheme in DOUBLY_STOCHASTIC:
            assert drift < 1e-5, scheme
        elif scheme == "data_size":
            # Singly stochastic with unequal sizes: the uniform average moves (control case).
            assert drift > 1e-3, scheme


def test_choose_backend_rules():
    assert consensus.choose_backend("dense", 10_000, 3) == "dense"
    assert consensus.choose_backend("gather", 4, 4) == "gather"
    assert consensus.choose_backend("auto", 32, 1) == "dense"       # small N: dense
    assert consensus.choose_backend("auto", 33, 4) == "gather"      # 4 * 8 = 32 <= 33
    assert consensus.choose_backend("auto", 33, 5) == "dense"       # 5 * 8 = 40 > 33
    assert consensus.choose_backend("auto", 1000, 5) == "gather"
    assert consensus.choose_backend("auto", 1000, 126) == "dense"
    assert consensus.choose_backend("auto", 1000, 125) == "gather"


SIZES = (7, 12, 20, 3)
SHAPE = (8, 8, 1)
MODEL = MLP(hidden_sizes=(8,))


@pytest.fixture(scope="module")
def complete_case():
    # The same data and model as test_simulation's fedavg case, whose compiled round this reuses
    # through the persistent compilation cache when both modules run.
    g = np.random.default_rng(0)
    total = sum(SIZES) + 8
    x = g.normal(size=(total, *SHAPE)).astype(np.float32)
    y = g.integers(0, 10, total)
    perm = g.permutation(total)
    parts = np.split(perm[:sum(SIZES)], np.cumsum(SIZES)[:-1])
    adj = adjacency(make_graph("complete", len(SIZES)))
    return x, y, parts, adj


def _sim(complete_case, **kw):
    x, y, parts, adj = complete_case
    return simulation.Simulator(model=MODEL, x=x, y=y, parts=parts, adj=adj,
                                mixing_scheme="data_size", batch_size=4, **kw)


def test_backend_resolution(complete_case):
    x, y, parts, _ = complete_case
    assert _sim(complete_case).backend == "global"
    assert _sim(complete_case, backend="dense").backend == "dense"
    assert _sim(complete_case, link_failures=True).backend == "dense"   # rows differ per round
    cycle = adjacency(make_graph("cycle", len(SIZES)))
    sim = simulation.Simulator(model=MODEL, x=x, y=y, parts=parts, adj=cycle,
                               mixing_scheme="data_size", batch_size=4)
    assert sim.backend == "dense"


def test_global_backend_equals_dense_in_simulator(complete_case):
    sims = [_sim(complete_case), _sim(complete_case, backend="dense")]
    assert [s.backend for s in sims] == ["global", "dense"]
    g = np.random.default_rng(5)
    one = jax.eval_shape(lambda: init_params(MODEL, jax.random.PRNGKey(0), SHAPE))
    params = jax.tree.map(lambda s: g.normal(size=(len(SIZES), *s.shape)).astype(np.float32),
                          one)
    hp = simulation.make_hparams(0.1, 0.9, 0.0)
    results = []
    for sim in sims:
        tx_init = jax.vmap(simulation.make_optimizer(0.0, 0.0).init)
        state = simulation.SimState(params=jax.tree.map(jnp.asarray, params),
                                    opt_state=tx_init(jax.tree.map(jnp.asarray, params)),
                                    round=jnp.zeros((), jnp.int32),
                                    rng=jax.random.PRNGKey(0))
        state, _ = sim.step(state, hp)
        results.append(jax.tree.map(np.asarray, state.params))
    for a, b, p0 in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]),
                        jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a, np.broadcast_to(a[:1], a.shape))  # one average
        assert not np.allclose(a, p0)  # the round did change the parameters
