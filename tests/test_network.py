"""Semantics of the fault models on tiny graphs (network.py, consensus.mix_delayed, round)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from p2pl_jax import consensus, graphs, mixing, network, rng, simulation
from p2pl_jax.models import MLP


def _lists(g):
    return graphs.neighbour_lists(graphs.adjacency(g))


def _adj_from(idx, valid):
    n = idx.shape[0]
    adj = np.zeros((n, n), bool)
    for i in range(n):
        for k in range(1, idx.shape[1]):
            if valid[i, k]:
                adj[i, idx[i, k]] = True
    return adj


@pytest.mark.parametrize("mode", network.LINK_MODES)
def test_down_link_carries_nothing(mode):
    g = graphs.make_graph("erdos_renyi", 12, seed=3, p=0.5)
    nl = _lists(g)
    sizes = jnp.arange(1, 13, dtype=jnp.float32)
    x = jax.random.normal(jax.random.PRNGKey(0), (12, 5))
    num_edges = graphs.edges(graphs.adjacency(g)).shape[0]
    for seed in range(5):
        valid_k = network.surviving_links(jax.random.PRNGKey(seed), jnp.asarray(nl.valid),
                                          jnp.asarray(nl.edge_id), num_edges, 0.5, mode)
        valid_k = np.asarray(valid_k)
        w = mixing.neighbour_weights(jnp.asarray(nl.idx), jnp.asarray(valid_k), sizes,
                                     "data_size")
        mixed = np.asarray(consensus.mix_gather(jnp.asarray(nl.idx), w, x))
        adj_k = _adj_from(nl.idx, valid_k)
        assert adj_k.sum() < graphs.adjacency(g).sum()     # some links did fail
        if mode == "symmetric":
            np.testing.assert_array_equal(adj_k, adj_k.T)
        # A down link carries nothing: changing a sender the receiver cannot hear changes
        # nothing for that receiver.
        for i in range(12):
            unheard = [m for m in range(12) if m != i and not adj_k[i, m]]
            if not unheard:
                continue
            x2 = np.asarray(x).copy()
            x2[unheard] += 100.0
            mixed2 = np.asarray(consensus.mix_gather(jnp.asarray(nl.idx), w, jnp.asarray(x2)))
            np.testing.assert_allclose(mixed2[i], mixed[i], rtol=1e-6)
        # Rows stay stochastic for the receiver, also with asymmetric failures.
        np.testing.assert_allclose(np.asarray(w).sum(1), 1.0, rtol=1e-6)
        for scheme in mixing.NEIGHBOUR_SCHEMES:
            w_s = mixing.neighbour_weights(jnp.asarray(nl.idx), jnp.asarray(valid_k), sizes,
                                           scheme)
            np.testing.assert_allclose(np.asarray(w_s).sum(1), 1.0, rtol=1e-6)
            assert np.all(np.asarray(w_s) >= 0)


def test_failure_probability_extremes_and_rate():
    g = graphs.make_graph("complete", 30)
    nl = _lists(g)
    args = (jnp.asarray(nl.valid), jnp.asarray(nl.edge_id), 435)
    key = jax.random.PRNGKey(1)
    all_up = network.surviving_links(key, *args, 0.0, "symmetric")
    np.testing.assert_array_equal(np.asarray(all_up), nl.valid)
    none_up = np.asarray(network.surviving_links(key, *args, 1.0, "symmetric"))
    assert none_up[:, 0].all() and not none_up[:, 1:].any()
    frac = np.mean([float(network.links_up_fraction(
        jnp.asarray(nl.valid), network.surviving_links(jax.random.PRNGKey(s), *args, 0.3,
                                                       "asymmetric"))) for s in range(20)])
    assert abs(frac - 0.7) < 0.02


def test_bursts_switch_the_round_probability():
    key = jax.random.PRNGKey(0)
    probs = [float(network.round_failure_prob(jax.random.fold_in(key, i), 0.1, 0.5, 0.9))
             for i in range(200)]
    assert set(np.round(probs, 6)) == {0.1, 0.9}
    assert 0.35 < np.mean(np.isclose(probs, 0.9)) < 0.65


def test_delay_returns_exactly_the_parameters_from_d_rounds_before():
    n, d_max = 5, 3
    g = graphs.make_graph("cycle", n)
    nl = _lists(g)
    idx = jnp.asarray(nl.idx)
    w = mixing.neighbour_weights(idx, jnp.asarray(nl.valid), jnp.ones(n), "uniform")
    # history[d][m] = a value that encodes (d, m)
    history = jnp.asarray([[[100.0 * d + m] for m in range(n)] for d in range(d_max + 1)])
    own = jnp.asarray([[-1.0 - m] for m in range(n)])
    for d in range(d_max + 1):
        delays = network.sample_delays(jax.random.PRNGKey(0), nl.idx.shape, d, "fixed")
        out = np.asarray(consensus.mix_delayed(idx, w, delays, history, own))
        for i in range(n):
            expect = w[i, 0] * own[i, 0] + sum(
                w[i, k] * (100.0 * d + int(nl.idx[i, k]))
                for k in range(1, nl.idx.shape[1]) if nl.valid[i, k])
            np.testing.assert_allclose(out[i, 0], expect, rtol=1e-6)
    rand = np.asarray(network.sample_delays(jax.random.PRNGKey(1), (50, 4), d_max, "random"))
    assert rand[:, 0].max() == 0 and rand[:, 1:].min() == 0 and rand[:, 1:].max() == d_max


def _tiny_sim(**kw):
    gen = np.random.default_rng(0)
    x = gen.normal(size=(40, 4, 4, 1)).astype(np.float32)
    y = gen.integers(0, 10, size=40)
    parts = [np.arange(i * 10, (i + 1) * 10) for i in range(4)]
    adj = graphs.adjacency(graphs.make_graph("cycle", 4))
    return simulation.Simulator(model=MLP(hidden_sizes=(8,)), x=x, y=y, parts=parts, adj=adj,
                                batch_size=5, device_block=0, **kw)


def test_dropped_device_keeps_its_parameters():
    sim = _tiny_sim(dropouts=True, backend="dense")
    hp = simulation.make_hparams(0.1, 0.9, dropout_prob=0.5)
    state = sim.init(0)
    for _ in range(3):
        before = jax.tree.map(np.asarray, state.params)
        before_m = jax.tree.map(np.asarray, state.opt_state)
        key = rng.dropout_key(rng.round_key(state.rng, state.round))
        alive = np.asarray(network.devices_alive(key, 4, 0.5))
        state, m = sim.step(state, hp)
        assert float(m["devices_up"]) == pytest.approx(alive.mean())
        for b, a in zip(jax.tree.leaves(before) + jax.tree.leaves(before_m),
                        jax.tree.leaves(state.params) + jax.tree.leaves(state.opt_state)):
            a = np.asarray(a)
            for i in range(4):
                if not alive[i]:
                    np.testing.assert_array_equal(a[i], b[i])
                else:
                    assert not np.array_equal(a[i], b[i])


def test_fedavg_with_dropouts_averages_the_online_devices():
    """Partial participation: the new global model is the data-size weighted average of the
    online devices' trained models; offline devices neither train nor count, and every device
    holds the result."""
    sim = _tiny_sim(dropouts=True, algorithm="fedavg")
    sizes = np.asarray(sim.arrays.sizes, np.float64)
    hp = simulation.make_hparams(0.1, 0.9, dropout_prob=0.5)
    state = sim.init(0)
    seen_partial = False
    for _ in range(4):
        before = jax.tree.map(np.asarray, state.params)
        key = rng.dropout_key(rng.round_key(state.rng, state.round))
        alive = np.asarray(network.devices_alive(key, 4, 0.5))
        state, m, local = sim.step(state, hp, return_local=True)
        assert float(m["devices_up"]) == pytest.approx(alive.mean())
        seen_partial |= 0 < alive.sum() < 4
        for b, loc, new in zip(jax.tree.leaves(before), jax.tree.leaves(local),
                               jax.tree.leaves(state.params)):
            loc, new = np.asarray(loc, np.float64), np.asarray(new)
            for i in range(4):
                if not alive[i]:
                    np.testing.assert_array_equal(loc[i], b[i])   # offline: did not train
            pi = sizes * alive if alive.any() else sizes
            expected = np.tensordot(pi / pi.sum(), loc, axes=1)
            for i in range(4):
                np.testing.assert_allclose(new[i], expected, rtol=1e-5, atol=1e-6)
    assert seen_partial


def test_local_with_dropouts_offline_devices_do_not_train():
    sim = _tiny_sim(dropouts=True, algorithm="local")
    hp = simulation.make_hparams(0.1, 0.9, dropout_prob=0.5)
    state = sim.init(0)
    for _ in range(3):
        before = jax.tree.map(np.asarray, state.params)
        key = rng.dropout_key(rng.round_key(state.rng, state.round))
        alive = np.asarray(network.devices_alive(key, 4, 0.5))
        state, _ = sim.step(state, hp)
        for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
            for i in range(4):
                assert np.array_equal(np.asarray(a)[i], b[i]) == (not alive[i])


def test_delayed_round_uses_history_buffer():
    sim = _tiny_sim(max_delay=2, delay_mode="fixed", backend="gather")
    hp = simulation.make_hparams(0.1, 0.0)
    state = sim.init(0)
    leaf0 = jax.tree.leaves(state.history)[0]
    assert leaf0.shape[0] == 3      # D + 1 slots
    sent = []
    for _ in range(3):
        state, _, local = sim.step(state, hp, return_local=True)
        sent.append(jax.tree.map(np.asarray, local))
    # After 3 rounds, slot d holds what was sent d rounds ago.
    for d in range(3):
        for h, s in zip(jax.tree.leaves(state.history), jax.tree.leaves(sent[2 - d])):
            np.testing.assert_array_equal(np.asarray(h[d]), s)


def test_time_varying_graph_changes_each_round():
    idx, _ = network.complete_lists(20)
    masks = [np.asarray(network.random_graph_mask(jax.random.PRNGKey(s), jnp.asarray(idx),
                                                  "random_geometric", 0.3, 0.0))
             for s in range(3)]
    assert not np.array_equal(masks[0], masks[1])
    for mask in masks:
        adj = _adj_from(idx, mask)
        np.testing.assert_array_equal(adj, adj.T)        # undirected
    er = np.asarray(network.random_graph_mask(jax.random.PRNGKey(0), jnp.asarray(idx),
                                              "erdos_renyi", 0.0, 0.5))
    adj = _adj_from(idx, er)
    np.testing.assert_array_equal(adj, adj.T)
    assert 0.4 < adj.sum() / (20 * 19) < 0.6


def test_links_up_fraction_of_a_graph_without_links_is_zero():
    valid = jnp.ones((3, 1), bool)            # three isolated devices: only the self column
    assert float(network.links_up_fraction(valid, valid)) == 0.0
    g = graphs.make_graph("path", 3)
    nl = _lists(g)
    up = jnp.asarray(nl.valid).at[0, 1].set(False)   # 0 <- 1 down: 3 of the 4 links are up
    assert float(network.links_up_fraction(jnp.asarray(nl.valid), up)) == 0.75


def test_participation_weights_with_nobody_online_keep_pi():
    pi = jnp.asarray([0.5, 0.3, 0.2])
    np.testing.assert_array_equal(
        np.asarray(simulation.participation_weights(pi, jnp.zeros(3, bool))), np.asarray(pi))
    np.testing.assert_allclose(
        np.asarray(simulation.participation_weights(pi, jnp.asarray([True, False, True]))),
        [0.5 / 0.7, 0.0, 0.2 / 0.7], rtol=1e-6)
