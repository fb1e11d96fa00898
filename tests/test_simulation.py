"""Tests for p2pl_jax.simulation: the vmapped, jitted round against a per-device Python reference.

The reference below is written independently of the library's vectorised code: a Python loop
over devices and mini-batches, plain `jax.grad` on one device's parameters, hand-written SGD with
momentum (m <- g + beta m; theta <- theta - lr m), and the dense float64 numpy mixing matrix on the
surviving graph rebuilt from the same link key. Only the sample order (`batch_order`) and the
key derivation (`rng`) are taken from the library: they are the definition of which samples a
device sees, the maths is what is checked.
"""

import atexit
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import smoke
from p2pl_jax import graphs, mixing, network, rng, runner, simulation
from p2pl_jax.local_update import batch_order, make_optimizer
from p2pl_jax.models import MLP, init_params

# Share compiled executables between Simulator instances and the CLI subprocess of test_cli.py
# (identical computations, e.g. the smoke config's round, are then compiled once per session).
_JIT_CACHE = os.path.join(tempfile.gettempdir(), f"p2pl_jax_test_jit_cache_{os.getpid()}")
jax.config.update("jax_compilation_cache_dir", _JIT_CACHE)
atexit.register(shutil.rmtree, _JIT_CACHE, True)

SIZES = (7, 12, 20, 3)       # unequal: 2, 3, 5, 1 steps of batch 4, three partial batches
BATCH = 4
LR, BETA, P_FAIL = 0.1, 0.9, 0.5
SHAPE = (8, 8, 1)
MODEL = MLP(hidden_sizes=(8,), num_classes=10)


# ----------------------------------------------------------------------------- the reference


def _loss(params, xb, yb):
    logits = MODEL.apply({"params": params}, xb)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(logp[jnp.arange(len(yb)), yb])


_grad = jax.jit(jax.grad(_loss))   # jit only to save time: one compile per batch shape


def _ref_local(params, mom, x_dev, y_dev, key, max_size, *, batch_size=BATCH, grad=_grad):
    """One device's local phase (one epoch): a Python loop over batches, manual SGD-momentum."""
    size = len(y_dev)
    for e in range(1):
        order, valid = batch_order(jax.random.fold_in(key, e), size, max_size, batch_size)
        order, valid = np.asarray(order), np.asarray(valid)
        np.testing.assert_array_equal(np.sort(order[valid]), np.arange(size))  # a permutation
        for rows_b, valid_b in zip(order, valid):
            rows = rows_b[valid_b]
            if rows.size == 0:
                continue                                  # data exhausted: the device idles
            g = grad(params, jnp.asarray(x_dev[rows]), jnp.asarray(y_dev[rows]))
            mom = jax.tree.map(lambda gi, mi: np.asarray(gi) + BETA * mi, g, mom)
            params = jax.tree.map(lambda pi, mi: pi - LR * mi, params, mom)
    return params, mom


def _device(tree, n):
    return jax.tree.map(lambda leaf: np.array(leaf[n]), tree)


def _stack(trees):
    return jax.tree.map(lambda *leaves: np.stack(leaves), *trees)


def _ref_local_all(params, mom, data, key_of_round):
    x, y, parts = data
    keys = rng.local_keys(key_of_round, len(parts))
    max_size = max(len(p) for p in parts)
    out = [_ref_local(_device(params, n), _device(mom, n), x[p], y[p], keys[n], max_size)
           for n, p in enumerate(parts)]
    return _stack([o[0] for o in out]), _stack([o[1] for o in out])


def _round_adjacency(adj, key_of_round, mode):
    """The surviving adjacency of a round, rebuilt from the round's link key."""
    n = adj.shape[0]
    link_key = rng.link_key(key_of_round)
    prob = jnp.float32(P_FAIL)
    a = np.zeros((n, n), bool)
    if mode == "symmetric":
        e = graphs.edges(adj)
        up = np.asarray(network.edge_up(link_key, len(e), prob))[:len(e)]
        a[e[up, 0], e[up, 1]] = True
        a[e[up, 1], e[up, 0]] = True
    else:
        lists = graphs.neighbour_lists(adj)
        vk = np.asarray(network.surviving_links(link_key, jnp.asarray(lists.valid),
                                                jnp.asarray(lists.edge_id), len(graphs.edges(adj)),
                                                prob, mode))
        rows = np.broadcast_to(np.arange(n)[:, None], lists.idx.shape)
        a[rows[:, 1:][vk[:, 1:]], lists.idx[:, 1:][vk[:, 1:]]] = True
    assert not np.any(a & ~adj)
    return a


def _mix(w, tree):
    return jax.tree.map(
        lambda leaf: (w @ leaf.reshape(len(w), -1).astype(np.float64)).reshape(leaf.shape)
        .astype(np.float32), tree)


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def data():
    """Synthetic images; the devices own disjoint random rows (some rows belong to nobody)."""
    g = np.random.default_rng(0)
    total = sum(SIZES) + 8
    x = g.normal(size=(total, *SHAPE)).astype(np.float32)
    y = g.integers(0, 10, total)
    perm = g.permutation(total)
    parts = np.split(perm[:sum(SIZES)], np.cumsum(SIZES)[:-1])
    return x, y, parts


def _random_params(n, seed):
    one = jax.eval_shape(lambda: init_params(MODEL, jax.random.PRNGKey(0), SHAPE))
    g = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.5 * g.normal(size=(n, *s.shape))).astype(np.float32), one)


def _state(params, seed):
    params = jax.tree.map(jnp.asarray, params)
    return simulation.SimState(params=params,
                               opt_state=jax.vmap(make_optimizer(0.0, 0.0).init)(params),
                               round=jnp.zeros((), jnp.int32), rng=rng.root_key(seed))


def _momentum(state):
    """The momentum buffers of a state, as a tree like params (optax.sgd's trace)."""
    leaves = jax.tree.leaves(state.opt_state)
    treedef = jax.tree.structure(state.params)
    assert len(leaves) == treedef.num_leaves
    return jax.tree.unflatten(treedef, [np.asarray(leaf) for leaf in leaves])


def _assert_close(got, expected, rtol=1e-5, atol=1e-5):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def _sim(data, adj, **kw):
    x, y, parts = data
    return simulation.Simulator(model=MODEL, x=x, y=y, parts=parts, adj=adj, batch_size=BATCH,
                                **kw)


def _independent_inits(model, root, n, shape):
    return _stack([jax.tree.map(np.asarray, init_params(model, k, shape))
                   for k in rng.init_keys(root, n)])


# ----------------------------------------------------------------------------- p2pl rounds

VARIANTS = [  # topology, mixing, link mode, momentum after consensus, backend
    ("cycle", "data_size", "symmetric", "keep", "auto"),
    ("path", "metropolis", "asymmetric", "reset", "auto"),
    ("cycle", "metropolis", "asymmetric", "mix", "gather"),
]


@pytest.mark.parametrize("topology,scheme,mode,after,backend", VARIANTS,
                         ids=["-".join(v) for v in VARIANTS])
def test_round_equals_python_reference(data, topology, scheme, mode, after, backend):
    adj = graphs.adjacency(graphs.make_graph(topology, len(SIZES)))
    sim = _sim(data, adj, mixing_scheme=scheme, link_failures=True, link_mode=mode,
               momentum_after_consensus=after, backend=backend)
    assert sim.backend == ("dense" if backend == "auto" else backend)
    seed = 3
    params = _random_params(len(SIZES), seed)
    mom = jax.tree.map(np.zeros_like, params)
    state = _state(params, seed)
    hp = simulation.make_hparams(LR, BETA, P_FAIL)
    sizes = np.array(SIZES)
    changed = []
    for r in range(2):
        key = rng.round_key(rng.root_key(seed), r)
        params, mom = _ref_local_all(params, mom, data, key)
        a = _round_adjacency(adj, key, mode)
        changed.append((a != adj).any() and a.any())
        w = mixing.mixing_matrix(a, sizes, scheme)
        params = _mix(w, params)
        if after == "mix":
            mom = _mix(w, mom)
        elif after == "reset":
            mom = jax.tree.map(np.zeros_like, mom)

        state, metrics = sim.step(state, hp)
        assert int(state.round) == r + 1
        _assert_close(state.params, params)
        _assert_close(_momentum(state), mom)
        np.testing.assert_allclose(float(metrics["links_up"]), a.sum() / adj.sum(), rtol=1e-6)
    assert any(changed), "no round had a partial graph: the link failures went untested"


# ----------------------------------------------------------------------------- baselines


def test_fedavg_is_data_size_weighted_average(data):
    # (Complete, like test_consensus' 'global' backend case: the same compiled round serves both.)
    adj = graphs.adjacency(graphs.make_graph("complete", len(SIZES)))
    sim = _sim(data, adj, algorithm="fedavg", sync_mode="none", link_failures=True)
    assert sim.backend == "global" and sim.sync_mode == "shared_seed"
    seed = 4
    state = sim.init(seed)
    # shared_seed: every device starts from one init, that of the first init key.
    params = jax.tree.map(np.asarray, state.params)
    one = init_params(MODEL, rng.init_keys(rng.root_key(seed), 1)[0], SHAPE)
    _assert_close(params, jax.tree.map(lambda v: np.broadcast_to(v, (len(SIZES), *v.shape)), one),
                  rtol=1e-6, atol=1e-7)
    mom = jax.tree.map(np.zeros_like, params)
    pi = np.array(SIZES) / sum(SIZES)
    hp = simulation.make_hparams(LR, BETA, P_FAIL)   # link failures do not touch the server
    for r in range(2):
        params, mom = _ref_local_all(params, mom, data, rng.round_key(rng.root_key(seed), r))
        params = _mix(np.tile(pi, (len(SIZES), 1)), params)
        state, _ = sim.step(state, hp)
        for leaf in jax.tree.leaves(state.params):
            np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[:1], leaf.shape))
        _assert_close(state.params, params)
        _assert_close(_momentum(state), mom)   # momentum kept: per device, not averaged


def test_mixing_fedavg_means_fedavg_algorithm(data):
    adj = graphs.adjacency(graphs.make_graph("cycle", len(SIZES)))
    sim = _sim(data, adj, mixing_scheme="fedavg", link_failures=True)
    assert sim.spec.algorithm == "fedavg" and sim.backend == "global"
    assert not sim.spec.link_failures


def test_local_is_training_alone_and_sync_none_is_independent(data):
    adj = graphs.adjacency(graphs.make_graph("cycle", len(SIZES)))
    sim = _sim(data, adj, algorithm="local", sync_mode="none", link_failures=True)
    assert sim.backend == "none"
    seed = 5
    state = sim.init(seed)
    params = jax.tree.map(np.asarray, state.params)
    # sync=none: each device keeps its own init, drawn from its own key; all distinct.
    _assert_close(params, _independent_inits(MODEL, rng.root_key(seed), len(SIZES), SHAPE),
                  rtol=1e-6, atol=1e-7)
    kernel = params["Dense_0"]["kernel"]
    for i in range(len(SIZES)):
        for j in range(i):
            assert not np.allclose(kernel[i], kernel[j])
    mom = jax.tree.map(np.zeros_like, params)
    hp = simulation.make_hparams(LR, BETA, P_FAIL)
    for r in range(2):
        params, mom = _ref_local_all(params, mom, data, rng.round_key(rng.root_key(seed), r))
        state, _ = sim.step(state, hp)
        _assert_close(state.params, params)


# ----------------------------------------------------------------------------- real config


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    for rec in records:
        rec.pop("wall_s")
    return records


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    c = smoke.get_config()
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        c.seed = seed
        runner.run(c, str(tmp_path / name))
        runs.append(_records(str(tmp_path / name)))
    assert len(runs[0]) == c.rounds
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert all(a["acc_mean"] != b["acc_mean"] for a, b in zip(runs[0], runs[2]))


def test_max_norm_sync_holds_largest_init():
    """The smoke config (cycle of 4, sync=max_norm): every device holds the max-norm init."""
    c = smoke.get_config()
    sim, _, info = runner.build(c)
    assert sim.sync_mode == "max_norm" and info["diameter"] == 2
    root = rng.root_key(c.seed)
    inits = _independent_inits(sim.model, root, c.num_devices, sim.input_shape)
    norms = np.sqrt(sum((leaf.reshape(c.num_devices, -1).astype(np.float64) ** 2).sum(1)
                        for leaf in jax.tree.leaves(inits)))
    best = int(np.argmax(norms))
    state = sim.init(c.seed)
    for got, leaf in zip(jax.tree.leaves(state.params), jax.tree.leaves(inits), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.broadcast_to(leaf[best], leaf.shape),
                                   rtol=1e-6, atol=1e-7)
    kernels = jax.tree.leaves(inits)[1]   # (Dense_0 bias, Dense_0 kernel, ...): biases are 0
    assert kernels.ndim == 3 and not np.allclose(kernels[best], kernels[(best + 1) % 4])


def test_centralized_is_one_model_on_all_data():
    c = smoke.get_config()
    c.algorithm = "centralized"
    sim, ds, info = runner.build(c)
    assert sim.num_devices == 1 and sim.backend == "none" and sim.sync_mode == "shared_seed"
    assert "slem" not in info
    parts = runner._partition(c, ds, c.num_devices)
    x_all = ds.x_train[np.concatenate(parts)]
    y_all = ds.y_train[np.concatenate(parts)]
    assert len(y_all) == c.num_devices * c.samples_per_device
    np.testing.assert_array_equal(np.asarray(sim.arrays.x), x_all)
    np.testing.assert_array_equal(np.asarray(sim.arrays.y), y_all)
    np.testing.assert_array_equal(np.asarray(sim.arrays.sizes), [len(y_all)])
    assert sim.spec.algorithm == "centralized" and info["num_edges"] is None   # no graph



# ----------------------------------------------------------------------------- the CNN


def test_cnn_round_equals_python_reference(data):
    """The vmapped round with the small CNN (convolutions, pooling: 4-D leaves on the device
    axis) equals the per-device loop; the loop differentiates the model itself."""
    from p2pl_jax.models import CNN

    cnn = CNN(features=(4,), dense=8, num_classes=10)
    grad = jax.jit(jax.grad(lambda p, xb, yb: -jnp.mean(jax.nn.log_softmax(
        cnn.apply({"params": p}, xb))[jnp.arange(len(yb)), yb])))
    x, y, parts = data
    adj = graphs.adjacency(graphs.make_graph("cycle", len(SIZES)))
    sim = simulation.Simulator(model=cnn, x=x, y=y, parts=parts, adj=adj, batch_size=BATCH,
                               sync_mode="none", backend="gather")
    seed = 6
    state = sim.init(seed)
    params = jax.tree.map(np.asarray, state.params)
    assert jax.tree.leaves(params)[1].ndim == 5     # Conv_0 kernel [N, 3, 3, 1, 4]
    mom = jax.tree.map(np.zeros_like, params)
    w = mixing.mixing_matrix(adj, np.array(SIZES), "data_size")
    hp = simulation.make_hparams(LR, BETA)
    for r in range(2):
        keys = rng.local_keys(rng.round_key(rng.root_key(seed), r), len(parts))
        out = [_ref_local(_device(params, n), _device(mom, n), x[p], y[p], keys[n],
                          max(SIZES), grad=grad) for n, p in enumerate(parts)]
        params, mom = _mix(w, _stack([o[0] for o in out])), _stack([o[1] for o in out])
        state, _ = sim.step(state, hp)
        _assert_close(state.params, params, rtol=2e-5, atol=2e-5)
        _assert_close(_momentum(state), mom, rtol=2e-5, atol=2e-5)


# ----------------------------------------------------------------------------- eval_after_local


@pytest.mark.parametrize("algorithm", ["local", "p2pl"])
def test_eval_after_local_through_the_runner(tmp_path, algorithm, mnist_dir):
    """local_* metrics are those of the models before consensus: equal to the ordinary ones when
    there is no consensus (local), different with it (p2pl); asking for them changes nothing
    else."""
    c = smoke.get_config()
    c.algorithm, c.rounds, c.tensorboard = algorithm, 3, False
    runner.run(c, str(tmp_path / "plain"))
    c.eval_after_local = True
    runner.run(c, str(tmp_path / "local"))
    plain, local = _records(str(tmp_path / "plain")), _records(str(tmp_path / "local"))
    keys = ("acc_min", "acc_mean", "acc_max", "test_loss")
    for a, b in zip(plain, local, strict=True):
        assert all(b[k] == a[k] for k in a)           # the same run
        if algorithm == "local":
            assert all(b[f"local_{k}"] == b[k] for k in keys)
        else:
            assert b["local_acc_mean"] != b["acc_mean"] and b["local_test_loss"] != b["test_loss"]


def test_a_device_without_data_idles_and_the_loss_stays_finite(data):
    """A device holding no sample takes no step: its model is unchanged by the local phase, and
    the round's train_loss (the mean over devices of each device's mean step loss) is finite."""
    x, y, parts = data
    parts = [parts[0], np.array([], np.int64), parts[2]]
    adj = graphs.adjacency(graphs.make_graph("path", 3))
    sim = simulation.Simulator(model=MODEL, x=x, y=y, parts=parts, adj=adj, batch_size=BATCH,
                               algorithm="local", sync_mode="none")
    state = sim.init(0)
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = sim.step(state, simulation.make_hparams(LR, BETA))
    assert np.isfinite(float(metrics["train_loss"]))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a)[1], b[1])
        assert not np.array_equal(np.asarray(a)[0], b[0])


def test_diameter_of_one_device_and_graph_faults_off_for_baselines(data):
    x, y, parts = data
    one = simulation.Simulator(model=MODEL, x=x, y=y, parts=[np.concatenate(parts)],
                               adj=np.zeros((1, 1), bool), algorithm="centralized",
                               batch_size=BATCH)
    assert one.diameter == 0
    adj = graphs.adjacency(graphs.make_graph("path", len(SIZES)))
    assert _sim(data, adj).diameter == len(SIZES) - 1
    for algorithm in ("fedavg", "local"):
        sim = _sim(data, adj, algorithm=algorithm, max_delay=2, link_failures=True,
                   link_bursts=True, time_varying="random_geometric")
        assert sim.spec.max_delay == 0 and not sim.spec.link_failures
        assert not sim.spec.bursts and sim.spec.time_varying == ""
        assert sim.init(0).history is None


def test_params_finite_flags_one_bad_entry_in_one_leaf(data):
    """params_finite is False as soon as one entry of one leaf of one device is not finite
    (devices all offline, so the round leaves the planted NaN where it is)."""
    adj = graphs.adjacency(graphs.make_graph("cycle", len(SIZES)))
    sim = _sim(data, adj, algorithm="local", dropouts=True)
    hp = simulation.make_hparams(LR, BETA, dropout_prob=1.0)
    state = sim.init(0)
    _, metrics = sim.step(state, hp)
    assert bool(metrics["params_finite"])
    state = sim.init(0)
    leaves, treedef = jax.tree.flatten(state.params)
    leaves[-1] = leaves[-1].at[1, 0].set(jnp.nan)
    state = state.replace(params=jax.tree.unflatten(treedef, leaves))
    _, metrics = sim.step(state, hp)
    assert not bool(metrics["params_finite"])
    assert float(metrics["train_loss"]) == 0.0 and float(metrics["devices_up"]) == 0.0


def test_sync_none_stays_independent_when_the_diameter_is_unknown():
    """Above DIAMETER_MAX_N the diameter is not computed (None); sync=none must still leave
    every device its own initialisation."""
    adj = graphs.adjacency(graphs.make_graph("path", 3))
    nl = graphs.neighbour_lists(adj)
    root = rng.root_key(2)
    state = simulation._init_state(root, jnp.asarray(nl.idx), jnp.asarray(nl.valid), model=MODEL,
                                   input_shape=SHAPE, num_devices=3, sync_mode="none",
                                   diameter=None, max_delay=0)
    _assert_close(state.params, _independent_inits(MODEL, root, 3, SHAPE), rtol=1e-6, atol=1e-7)
