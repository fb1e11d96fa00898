"""The evaluator (metrics.py) against an independent float64 numpy computation.

The numpy reference below has its own MLP forward pass (Dense = x @ kernel + bias, ReLU between
layers, images flattened), its own log-softmax cross-entropy and its own consensus distance
sqrt((1/N) sum_n ||theta_n - theta_bar||^2). The test set (103 examples) is a multiple of neither
example_chunk (20) nor device_chunk (2, with N = 5 devices), so both paddings are exercised.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from p2pl_jax import metrics
from p2pl_jax.models import MLP, init_params

N = 5
N_TEST = 103
EXAMPLE_CHUNK = 20
DEVICE_CHUNK = 2
SHAPE = (4, 4, 1)
MODEL = MLP(hidden_sizes=(8,), num_classes=10)


# ----------------------------------------------------------------------------- numpy reference


def _np_logits(p, x):
    """One device's MLP in float64: p = {'Dense_0': {kernel, bias}, 'Dense_1': ...}."""
    h = np.asarray(x, np.float64).reshape(len(x), -1)
    layers = sorted(p, key=lambda name: int(name.split("_")[1]))
    for i, name in enumerate(layers):
        h = h @ np.asarray(p[name]["kernel"], np.float64) + np.asarray(p[name]["bias"],
                                                                        np.float64)
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def _np_device(params, n):
    return jax.tree.map(lambda leaf: np.asarray(leaf)[n], params)


def _np_metrics(params, x, y):
    """acc [N], loss [N], consensus distance: all in float64 numpy."""
    n_dev = jax.tree.leaves(params)[0].shape[0]
    acc, loss = [], []
    for n in range(n_dev):
        z = _np_logits(_np_device(params, n), x)
        zmax = z.max(axis=1, keepdims=True)
        logp = z - zmax - np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
        acc.append(np.mean(z.argmax(axis=1) == y))
        loss.append(-np.mean(logp[np.arange(len(y)), y]))
    flat = np.concatenate([np.asarray(leaf, np.float64).reshape(n_dev, -1)
                           for leaf in jax.tree.leaves(params)], axis=1)
    cd = np.sqrt(np.sum((flat - flat.mean(axis=0)) ** 2) / n_dev)
    return np.array(acc), np.array(loss), cd


def _min_margin(params, x):
    """Smallest gap between the top two logits over all devices and examples."""
    n_dev = jax.tree.leaves(params)[0].shape[0]
    gaps = []
    for n in range(n_dev):
        z = np.sort(_np_logits(_np_device(params, n), x), axis=1)
        gaps.append((z[:, -1] - z[:, -2]).min())
    return min(gaps)


# ----------------------------------------------------------------------------- fixtures


def _one_model_shapes():
    return jax.eval_shape(lambda: init_params(MODEL, jax.random.PRNGKey(0), SHAPE))


def _random_params(n, seed):
    g = np.random.default_rng(seed)
    return jax.tree.map(lambda s: g.normal(size=(n, *s.shape)).astype(np.float32),
                        _one_model_shapes())


@pytest.fixture(scope="module")
def setup():
    """Distinct random models, a test set whose labels partly follow device 0's predictions
    (so accuracies differ a lot between devices), and the evaluator."""
    g = np.random.default_rng(0)
    params = _random_params(N, 1)
    # Devices 0 and 2 predict class 0 on a zero image (what the padding rows are, with label
    # 0): counting padded rows as correct would change their accuracy.
    for n in (0, 2):
        z0 = _np_logits(_np_device(params, n), np.zeros((1, *SHAPE)))[0]
        params["Dense_1"]["bias"][n, 0] += z0[1:].max() - z0[0] + 0.5
    x = g.normal(size=(N_TEST, *SHAPE)).astype(np.float32)
    y = g.integers(0, 10, N_TEST)
    pred0 = _np_logits(_np_device(params, 0), x).argmax(axis=1)
    follow = g.random(N_TEST) < 0.6
    y = np.where(follow, pred0, y).astype(np.int32)
    ev = metrics.make_evaluator(MODEL.apply, jnp.asarray(x), jnp.asarray(y),
                                device_chunk=DEVICE_CHUNK, example_chunk=EXAMPLE_CHUNK)
    return params, x, y, ev


def _evaluate(ev, params):
    out = ev(jax.tree.map(jnp.asarray, params))
    return {k: np.asarray(v) for k, v in out.items()}


def _check_against_numpy(out, params, x, y):
    acc, loss, cd = _np_metrics(params, x, y)
    assert out["acc"].shape == (N,) and out["loss"].shape == (N,)
    # Accuracies are k / 103: equal up to float rounding (margins are checked to be wide).
    np.testing.assert_allclose(out["acc"], acc, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["loss"], loss, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(out["consensus_distance"], cd, rtol=2e-5, atol=1e-6)
    return acc, loss, cd


# ----------------------------------------------------------------------------- tests


def test_param_tree_is_what_the_numpy_forward_assumes():
    shapes = _one_model_shapes()
    assert set(shapes) == {"Dense_0", "Dense_1"}
    assert {k: v.shape for k, v in shapes["Dense_0"].items()} == {"kernel": (16, 8),
                                                                  "bias": (8,)}
    assert {k: v.shape for k, v in shapes["Dense_1"].items()} == {"kernel": (8, 10),
                                                                  "bias": (10,)}
    # And the numpy forward is flax's forward.
    p = _np_device(_random_params(1, 7), 0)
    x = np.random.default_rng(3).normal(size=(6, *SHAPE)).astype(np.float32)
    got = np.asarray(MODEL.apply({"params": jax.tree.map(jnp.asarray, p)}, jnp.asarray(x)))
    np.testing.assert_allclose(got, _np_logits(p, x), rtol=1e-5, atol=1e-5)


def test_distinct_models_match_numpy(setup):
    params, x, y, ev = setup
    assert N_TEST % EXAMPLE_CHUNK and N % DEVICE_CHUNK     # both paddings are exercised
    assert _min_margin(params, x) > 1e-3                  # argmax is float32-robust
    # The padding rows are zero images with label 0: some devices predict class 0 on them.
    zero_pred = [_np_logits(_np_device(params, n), np.zeros((1, *SHAPE))).argmax()
                 for n in range(N)]
    assert zero_pred[0] == zero_pred[2] == 0
    out = _evaluate(ev, params)
    assert not bool(out["identical"])
    acc, loss, cd = _check_against_numpy(out, params, x, y)
    assert len(np.unique(np.round(acc, 6))) >= 3          # the devices really differ
    assert len(np.unique(np.round(loss, 4))) == N
    assert cd > 0


def _identical_params(params, n_src=0):
    return jax.tree.map(lambda leaf: np.repeat(np.asarray(leaf)[n_src:n_src + 1], N, axis=0),
                        params)


def test_identical_models_take_the_shortcut_with_the_same_metrics(setup):
    params, x, y, ev = setup
    for src in (0, 3):
        same = _identical_params(params, src)
        out = _evaluate(ev, same)
        assert bool(out["identical"])
        acc, loss, _ = _check_against_numpy(out, same, x, y)
        assert float(out["consensus_distance"]) == 0.0   # exactly, no rounding
        # The same numbers as the full (non-shortcut) evaluation of that model.
        full = _evaluate(ev, params)
        np.testing.assert_allclose(out["acc"], full["acc"][src], rtol=0, atol=1e-7)
        np.testing.assert_allclose(out["loss"], full["loss"][src], rtol=1e-6)


@pytest.mark.parametrize("odd", [N - 1, N // 2], ids=["last", "middle"])
def test_one_differing_device_is_not_identical(setup, odd):
    """All but one device identical: no shortcut, every device gets its own numbers (a
    shortcut that broadcast device 0's metrics would get the odd device wrong)."""
    params, x, y, ev = setup
    mixed = jax.tree.map(lambda same, orig: np.concatenate(
        [same[:odd], np.asarray(orig)[odd:odd + 1], same[odd + 1:]]),
        _identical_params(params, 0), params)
    out = _evaluate(ev, mixed)
    assert not bool(out["identical"])
    acc, loss, cd = _check_against_numpy(out, mixed, x, y)
    assert abs(acc[odd] - acc[0]) > 0.05 and abs(loss[odd] - loss[0]) > 0.05
    assert cd > 0


@pytest.mark.parametrize("odd", [N - 1, N // 2], ids=["last", "middle"])
@pytest.mark.parametrize("leaf_path", [("Dense_1", "bias"), ("Dense_0", "kernel")],
                         ids=["out_bias", "hidden_kernel"])
def test_difference_in_one_leaf_only(setup, odd, leaf_path):
    """All models identical except one entry of one leaf of one device: not identical."""
    params, x, y, ev = setup
    same = _identical_params(params, 0)
    same = jax.tree.map(np.copy, same)
    layer, name = leaf_path
    leaf = same[layer][name]
    flat = leaf.reshape(N, -1)
    flat[odd, 0] += 3.0
    same[layer][name] = flat.reshape(leaf.shape)
    out = _evaluate(ev, same)
    assert not bool(out["identical"])
    acc, loss, cd = _check_against_numpy(out, same, x, y)
    assert abs(loss[odd] - loss[0]) > 1e-3
    np.testing.assert_allclose(cd, 3.0 * np.sqrt((N - 1) / N ** 2), rtol=1e-5)


def test_consensus_distance_function_against_numpy():
    params = _random_params(N, 11)
    # Give the devices a common offset: the distance must not depend on it.
    shifted = jax.tree.map(lambda leaf: leaf + 5.0, params)
    _, _, cd = _np_metrics(params, np.zeros((1, *SHAPE)), np.zeros(1, int))
    for tree in (params, shifted):
        got = float(metrics.consensus_distance(jax.tree.map(jnp.asarray, tree)))
        np.testing.assert_allclose(got, cd, rtol=2e-5)


def test_summarize_against_numpy(setup):
    params, x, y, ev = setup
    out = ev(jax.tree.map(jnp.asarray, params))
    s = metrics.summarize(out)
    acc, loss, cd = _np_metrics(params, x, y)
    assert set(s) == {"acc_min", "acc_mean", "acc_max", "test_loss", "consensus_distance"}
    assert all(isinstance(v, float) for v in s.values())
    assert s["acc_min"] == pytest.approx(acc.min(), abs=1e-6)
    assert s["acc_mean"] == pytest.approx(acc.mean(), abs=1e-6)
    assert s["acc_max"] == pytest.approx(acc.max(), abs=1e-6)
    assert s["test_loss"] == pytest.approx(loss.mean(), rel=2e-5)
    assert s["consensus_distance"] == pytest.approx(cd, rel=2e-5)
    assert s["acc_min"] < s["acc_mean"] < s["acc_max"]
