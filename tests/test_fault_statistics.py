"""Statistics of every fault sampler, on the helper and through the jitted round.

Probabilities are asymmetric (0.2 and 0.8), so an inverted comparison (rate p instead of 1 - p)
is far outside the tolerance. Tolerances are 5 binomial standard errors (or a proven upper bound
on the standard error where the indicators are dependent), and every draw has a fixed seed, so
the tests are deterministic and cannot flake.

Many rounds are run cheaply: a tiny Simulator (12 devices, 4 samples each, MLP hidden (4,), one
batch covering all data) and `lax.scan` over its round function. Compilation dominates the cost,
so probabilities are traced arguments (HParams arrays; jitted samplers taking p), and one
Simulator compiled with symmetric link failures, bursts and dropouts serves the link, burst and
dropout tests (each switched off by a zero probability in the others).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from p2pl_jax import graphs, network, rng, simulation
from p2pl_jax.local_update import make_optimizer
from p2pl_jax.models import MLP, init_params

PROBS = (0.2, 0.8)
SIGMAS = 5.0
N_DEV = 12
ROUNDS = 300   # every scanned run has this length: one compilation per Simulator


def _tol(p, trials):
    """5 binomial standard errors of a frequency of `trials` Bernoulli(p) draws."""
    return SIGMAS * np.sqrt(p * (1 - p) / trials)


def _keys(count, seed):
    return jax.random.split(jax.random.PRNGKey(seed), count)


def _rgg_prob(r):
    """P(|U - V| <= r) for U, V uniform in the unit square, r <= 1."""
    return np.pi * r ** 2 - 8 * r ** 3 / 3 + r ** 4 / 2


def _graph_density_tol(p, n, graphs_count):
    """5 x an upper bound on the standard error of the mean edge density of `graphs_count`
    independent graphs on n nodes whose edge indicators are Bernoulli(p), independent for
    disjoint pairs (random geometric: independent points) and with covariance <= p(1 - p)
    (Cauchy-Schwarz) for the n (n-1) (n-2) ordered pairs of distinct edges sharing a node."""
    m = n * (n - 1) / 2
    var = p * (1 - p) * (m + n * (n - 1) * (n - 2)) / m ** 2
    return SIGMAS * np.sqrt(var / graphs_count)


# ----------------------------------------------------------------------------- tiny simulator


@functools.cache
def _sim(graph="complete", **kw):
    gen = np.random.default_rng(0)
    x = gen.normal(size=(4 * N_DEV, 2, 2, 1)).astype(np.float32)
    y = gen.integers(0, 10, size=4 * N_DEV)
    parts = [np.arange(4 * i, 4 * (i + 1)) for i in range(N_DEV)]
    adj = graphs.adjacency(graphs.make_graph(graph, N_DEV))
    return simulation.Simulator(model=MLP(hidden_sizes=(4,)), x=x, y=y, parts=parts, adj=adj,
                                batch_size=4, device_block=0, **kw)


@functools.cache
def _scan_fn(sim):
    def run(state, arrays, hp):
        body = lambda s, _: sim.round_fn(s, arrays, hp)
        return jax.lax.scan(body, state, None, length=ROUNDS)

    return jax.jit(run)


def _run_rounds(sim, hp, seed=0):
    """Metrics of ROUNDS consecutive rounds, each an array [ROUNDS]."""
    state, ms = _scan_fn(sim)(sim.init(seed), sim.arrays, hp)
    assert int(state.round) == ROUNDS
    return {k: np.asarray(v) for k, v in ms.items()}


def _hp(**kw):
    return simulation.make_hparams(0.05, 0.0, **kw)


# ----------------------------------------------------------------------------- link failures


def _complete_lists(n):
    nl = graphs.neighbour_lists(graphs.adjacency(graphs.make_graph("complete", n)))
    return nl, n * (n - 1) // 2


def _adjacency_of(idx, valid_k):
    """bool [..., N, N] directed adjacency n <- idx[n, k] of the surviving entries (k >= 1)."""
    n = idx.shape[0]
    onehot = idx[:, 1:, None] == np.arange(n)[None, None, :]          # [N, K-1, N]
    return np.einsum("...nk,nkm->...nm", valid_k[..., 1:].astype(np.int32), onehot) > 0


@functools.cache
def _link_sampler(n, mode):
    nl, num_edges = _complete_lists(n)
    fn = jax.jit(jax.vmap(lambda k, p: network.surviving_links(
        k, jnp.asarray(nl.valid), jnp.asarray(nl.edge_id), num_edges, p, mode),
        in_axes=(0, None)))
    return nl, lambda keys, p: np.asarray(fn(keys, jnp.float32(p)))


@pytest.mark.parametrize("p", PROBS)
def test_symmetric_link_failures_rate_and_symmetry(p):
    n, draws = 20, 200
    nl, sample = _link_sampler(n, "symmetric")
    vk = sample(_keys(draws, 1), p)
    assert vk[:, :, 0].all()                                         # self never fails
    adj = _adjacency_of(nl.idx, vk)
    np.testing.assert_array_equal(adj, np.swapaxes(adj, 1, 2))       # both directions equal
    iu = np.triu_indices(n, 1)
    up = adj[:, iu[0], iu[1]]                                        # [draws, E] independent
    assert abs(up.mean() - (1 - p)) < _tol(p, up.size)


@pytest.mark.parametrize("p", PROBS)
def test_asymmetric_link_failures_rate_and_independent_directions(p):
    n, draws = 20, 200
    nl, sample = _link_sampler(n, "asymmetric")
    vk = sample(_keys(draws, 2), p)
    assert vk[:, :, 0].all()
    adj = _adjacency_of(nl.idx, vk)
    iu = np.triu_indices(n, 1)
    fwd, bwd = adj[:, iu[0], iu[1]], adj[:, iu[1], iu[0]]
    assert abs(np.concatenate([fwd, bwd]).mean() - (1 - p)) < _tol(p, 2 * fwd.size)
    both = (fwd & bwd).mean()                                        # independent directions
    q = (1 - p) ** 2
    assert abs(both - q) < _tol(q, fwd.size)


def _faulty_sim():
    """Complete graph; symmetric link failures, bursts and dropouts compiled in."""
    return _sim(link_failures=True, link_mode="symmetric", link_bursts=True, dropouts=True)


@pytest.mark.parametrize("mode", network.LINK_MODES)
def test_link_failures_through_the_round(mode):
    rounds = ROUNDS
    sim = _faulty_sim() if mode == "symmetric" else _sim(link_failures=True, link_mode=mode)
    links = N_DEV * (N_DEV - 1) // 2 * (1 if mode == "symmetric" else 2)
    for p in PROBS:
        m = _run_rounds(sim, _hp(link_failure_prob=p))
        assert abs(m["links_up"].mean() - (1 - p)) < _tol(p, links * rounds), (mode, p)
        assert np.all(m["devices_up"] == 1.0)


# ----------------------------------------------------------------------------- dropouts


def _round_keys(seed, rounds, derive):
    """[rounds, 2]: derive(round key of round r) for r = 0 .. rounds - 1."""
    root = rng.root_key(seed)
    return jax.vmap(lambda r: derive(rng.round_key(root, r)))(jnp.arange(rounds))


_alive_sampler = jax.jit(jax.vmap(network.devices_alive, in_axes=(0, None, None)),
                         static_argnums=1)


@pytest.mark.parametrize("p", PROBS)
def test_devices_alive_rate(p):
    n, draws = 100, 200
    alive = np.asarray(_alive_sampler(_keys(draws, 3), n, jnp.float32(p)))
    assert alive.shape == (draws, n) and alive.dtype == bool
    assert abs(alive.mean() - (1 - p)) < _tol(p, alive.size)


def test_dropouts_through_the_round():
    rounds = ROUNDS
    sim = _faulty_sim()
    keys = _round_keys(4, rounds, rng.dropout_key)
    for p in PROBS:
        m = _run_rounds(sim, _hp(dropout_prob=p), seed=4)
        assert abs(m["devices_up"].mean() - (1 - p)) < _tol(p, N_DEV * rounds), p
        # Each round's metric is exactly the fraction alive drawn from that round's key.
        alive = np.asarray(_alive_sampler(keys, N_DEV, jnp.float32(p)))
        np.testing.assert_allclose(m["devices_up"], alive.mean(axis=1), rtol=1e-6)
        # With no link failures, a link is up iff both its ends are online.
        a = alive.sum(axis=1)
        np.testing.assert_allclose(m["links_up"], a * (a - 1) / (N_DEV * (N_DEV - 1)),
                                   rtol=1e-6)


# ----------------------------------------------------------------------------- bursts


_burst_sampler = jax.jit(jax.vmap(network.round_failure_prob, in_axes=(0, None, None, None)))


@pytest.mark.parametrize("burst_prob", PROBS)
def test_burst_rounds_rate(burst_prob):
    draws = 4000
    probs = np.asarray(_burst_sampler(_keys(draws, 5), jnp.float32(0.1),
                                      jnp.float32(burst_prob), jnp.float32(0.9)))
    burst = np.isclose(probs, 0.9)
    assert np.all(burst | np.isclose(probs, 0.1))
    assert abs(burst.mean() - burst_prob) < _tol(burst_prob, draws)


def test_bursts_through_the_round():
    """Normal rounds lose no link, burst rounds lose every link: links_up is exactly 0 or 1,
    and the burst rounds are the rounds whose burst key says so."""
    rounds = ROUNDS
    sim = _faulty_sim()
    keys = _round_keys(6, rounds, rng.burst_key)
    for bp in PROBS:
        hp = _hp(link_failure_prob=0.0, link_burst_prob=bp, link_burst_failure_prob=1.0)
        m = _run_rounds(sim, hp, seed=6)
        up = m["links_up"]
        assert set(np.unique(up)) <= {0.0, 1.0}
        burst = up == 0.0
        assert abs(burst.mean() - bp) < _tol(bp, rounds), bp
        np.testing.assert_array_equal(m["devices_up"], 1.0)
        expect = np.asarray(_burst_sampler(keys, jnp.float32(0.0), jnp.float32(bp),
                                           jnp.float32(1.0))) == 1.0
        np.testing.assert_array_equal(burst, expect)


# ----------------------------------------------------------------------------- delays


def test_random_delays_uniform_and_self_never_delayed():
    max_delay, shape = 3, (4000, 10)
    d = np.asarray(jax.jit(network.sample_delays, static_argnums=(1, 2, 3))(
        jax.random.PRNGKey(7), shape, max_delay, "random"))
    assert d.dtype == np.int32
    assert np.all(d[:, 0] == 0)
    nb = d[:, 1:].ravel()
    assert nb.min() == 0 and nb.max() == max_delay
    q = 1 / (max_delay + 1)
    freq = np.bincount(nb, minlength=max_delay + 1) / nb.size
    np.testing.assert_array_less(np.abs(freq - q), _tol(q, nb.size))


def test_random_delays_through_the_round():
    """The round's delays recovered from its output: with learning rate 0, equal data sizes
    on the complete graph (every weight 1/N) and what was sent d rounds ago equal to the
    indicator of entry d of one leaf, device n's new entry d is (1/N) #{k: delay[n, k] = d}."""
    d_max, rounds = 3, 200
    sim = _sim(max_delay=d_max, delay_mode="random", backend="gather")
    one = jax.eval_shape(lambda: init_params(sim.model, jax.random.PRNGKey(0), (2, 2, 1)))
    leaves, treedef = jax.tree.flatten(
        jax.tree.map(lambda s: jax.ShapeDtypeStruct((N_DEV, *s.shape), s.dtype), one))
    which = int(np.argmax([np.prod(leaf.shape[1:]) for leaf in leaves]))
    shape = leaves[which].shape
    assert shape[0] == N_DEV and np.prod(shape[1:]) > d_max

    def indicator(entry):
        flat = np.zeros((N_DEV, int(np.prod(shape[1:]))), np.float32)
        flat[:, entry] = 1.0
        return flat.reshape(shape)

    def tree_with(value_of_chosen):
        return jax.tree.unflatten(treedef, [value_of_chosen if i == which else
                                            np.zeros(leaf.shape, np.float32)
                                            for i, leaf in enumerate(leaves)])

    params = tree_with(indicator(0))                       # sent this round (delay 0)
    # history[j] becomes slot j + 1 once this round's message is pushed in.
    history = jax.tree.map(lambda *s: jnp.stack(s),
                           *[tree_with(indicator(j + 1)) for j in range(d_max)],
                           tree_with(np.zeros(shape, np.float32)))
    hp = simulation.make_hparams(0.0, 0.0)
    opt_init = make_optimizer(0.0, 0.0).init
    out = []
    for r in range(rounds):   # a fresh state each round (sim.step donates it)
        p_r = jax.tree.map(jnp.asarray, params)
        state = simulation.SimState(params=p_r, opt_state=jax.vmap(opt_init)(p_r),
                                    round=jnp.asarray(r, jnp.int32), rng=rng.root_key(0),
                                    history=jax.tree.map(jnp.array, history))
        new, _ = sim.step(state, hp)
        out.append(np.asarray(jax.tree.leaves(new.params)[which]).reshape(N_DEV, -1))
    out = np.stack(out)[..., :d_max + 1]
    counts = out * N_DEV
    counts[..., 0] -= 1.0                                  # the own (never delayed) term
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-4)
    counts = np.round(counts)
    np.testing.assert_array_equal(counts.sum(-1), N_DEV - 1)
    q = 1 / (d_max + 1)
    total = N_DEV * (N_DEV - 1) * rounds
    freq = counts.sum(axis=(0, 1)) / total
    np.testing.assert_array_less(np.abs(freq - q), _tol(q, total))


# ----------------------------------------------------------------------------- time-varying


_mask_sampler = jax.jit(jax.vmap(network.random_graph_mask, in_axes=(0, None, None, None, None)),
                        static_argnums=2)


def _masks(kind, n, draws, radius, p, seed):
    idx, _ = network.complete_lists(n)
    masks = np.asarray(_mask_sampler(_keys(draws, seed), jnp.asarray(idx), kind,
                                     jnp.float32(radius), jnp.float32(p)))
    assert masks[:, :, 0].all()
    adj = _adjacency_of(idx, masks)
    np.testing.assert_array_equal(adj, np.swapaxes(adj, 1, 2))       # undirected
    iu = np.triu_indices(n, 1)
    return adj[:, iu[0], iu[1]]


@pytest.mark.parametrize("radius", [0.2, 0.35, 0.5])
def test_random_geometric_density_is_the_exact_probability(radius):
    n, draws = 40, 500
    edges = _masks("random_geometric", n, draws, radius, 0.0, 8)
    p = _rgg_prob(radius)
    assert abs(edges.mean() - p) < _graph_density_tol(p, n, draws)


@pytest.mark.parametrize("p", PROBS)
def test_erdos_renyi_density(p):
    n, draws = 40, 200
    edges = _masks("erdos_renyi", n, draws, 0.0, p, 9)
    assert abs(edges.mean() - p) < _tol(p, edges.size)


def test_time_varying_graphs_through_the_round():
    """With the complete graph's lists as the base, links_up is the round graph's density."""
    rounds = ROUNDS
    pairs = N_DEV * (N_DEV - 1) // 2
    rgg = _sim(time_varying="random_geometric")
    for radius in (0.2, 0.5):
        m = _run_rounds(rgg, _hp(graph_radius=radius), seed=10)
        p = _rgg_prob(radius)
        assert abs(m["links_up"].mean() - p) < _graph_density_tol(p, N_DEV, rounds), radius
        assert np.std(m["links_up"]) > 0                  # a fresh graph every round
    er = _sim(time_varying="erdos_renyi")
    for p in PROBS:
        m = _run_rounds(er, _hp(graph_p=p), seed=11)
        assert abs(m["links_up"].mean() - p) < _tol(p, pairs * rounds), p


# ----------------------------------------------------------------------------- rng streams


def _streams(root, r, n):
    k = rng.round_key(root, r)
    local = rng.local_keys(k, n)
    named = {"round": k, "link": rng.link_key(k), "dropout": rng.dropout_key(k),
             "graph": rng.graph_key(k), "delay": rng.delay_key(k), "burst": rng.burst_key(k)}
    named.update({f"local{i}": local[i] for i in range(n)})
    return named


def test_rng_streams_distinct_and_uncorrelated():
    rounds, n = 2000, 3
    root = rng.root_key(0)
    streams = jax.jit(jax.vmap(lambda r: _streams(root, r, n)))(jnp.arange(rounds))
    streams = {k: np.asarray(v) for k, v in streams.items()}
    init = np.asarray(rng.init_keys(root, n))
    # Every key of every round (and the init keys) is distinct from every other.
    all_keys = np.concatenate([v for v in streams.values()] + [init, np.asarray(root)[None]])
    assert len({tuple(k) for k in all_keys}) == len(all_keys)
    # Uniform draws: uncorrelated between streams, and between consecutive rounds.
    u = {name: np.asarray(jax.vmap(jax.random.uniform)(jnp.asarray(v)))
         for name, v in streams.items()}
    bound = SIGMAS / np.sqrt(rounds)
    for a, b in itertools.combinations(u, 2):
        c = np.corrcoef(u[a], u[b])[0, 1]
        assert abs(c) < bound, (a, b, c)
    for name, v in u.items():
        c = np.corrcoef(v[:-1], v[1:])[0, 1]
        assert abs(c) < bound, (name, c)
        assert abs(v.mean() - 0.5) < SIGMAS * np.sqrt(1 / 12 / rounds), name


def test_rng_derivation_is_the_documented_one():
    """Pins rng.py's docstring with literal tags: INIT 1, ROUND 2, LOCAL 3, LINK 4, DROP 5,
    GRAPH 6, DELAY 7, BURST 8 (a changed tag changes every simulation's draws)."""
    fold, split = jax.random.fold_in, jax.random.split
    eq = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for seed in (0, 17):
        root = rng.root_key(seed)
        eq(root, jax.random.PRNGKey(seed))
        eq(rng.init_keys(root, 4), split(fold(root, 1), 4))
        for r in (0, 1, 9):
            k = rng.round_key(root, r)
            eq(k, fold(fold(root, 2), r))
            eq(rng.local_keys(k, 4), split(fold(k, 3), 4))
            eq(rng.link_key(k), fold(k, 4))
            eq(rng.dropout_key(k), fold(k, 5))
            eq(rng.graph_key(k), fold(k, 6))
            eq(rng.delay_key(k), fold(k, 7))
            eq(rng.burst_key(k), fold(k, 8))
