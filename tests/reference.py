"""Pieces of the independent per-device reference shared by test_reference_round.py and
test_algorithms.py. Nothing here imports p2pl_jax's round, weights, samplers or compressors.

Every random draw is re-derived from the key derivation rng.py documents, with literal tags
(round 2, local 3, link 4, dropout 5, graph 6, delay 7, burst 8, compress 9); the model is a
hand-written MLP (x @ kernel + bias, ReLU) with jax.grad of a hand-written cross-entropy; SGD
with momentum is m <- g + beta m, theta <- theta - lr m; the mixing weights are the formulas
of mixing.py's docstring, entry by entry.
"""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from p2pl_jax.models import MLP, init_params

SIZES = (7, 12, 20, 3, 9, 5)   # unequal: partial batches, devices idle while others train
BATCH, LR, BETA, HIDDEN = 4, 0.1, 0.9, 8
SHAPE = (4, 4, 1)
EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 2), (1, 4)]   # irregular degrees
TAGS = {"round": 2, "local": 3, "link": 4, "drop": 5, "graph": 6, "delay": 7, "burst": 8,
        "compress": 9}
MODEL = MLP(hidden_sizes=(HIDDEN,), num_classes=10)
# The model's leaves in pytree order (dict keys sorted): leaf i of the compress key.
LEAVES = (("Dense_0", "bias"), ("Dense_0", "kernel"), ("Dense_1", "bias"), ("Dense_1", "kernel"))


def _fast_compile_options() -> dict:
    """XLA CPU options that cut compile times (which dominate these tests) about fourfold: LLVM
    at -O0, as tests/test_sharding.py sets through XLA_FLAGS, and the plain loop emitters for
    fusions; the HLO passes are unchanged and the results the same. Options this XLA does not
    know are left out."""
    wanted = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
              "xla_cpu_use_fusion_emitters": False}
    known = {}
    for option, value in wanted.items():
        try:
            jax.jit(lambda v: v + 1, compiler_options={option: value}).lower(1.0).compile()
        except Exception:  # noqa: BLE001 - an option this version does not have
            continue
        known[option] = value
    return known


FAST_COMPILE = _fast_compile_options()


def loss(p, x, y):
    h = x.reshape(x.shape[0], -1)
    h = jax.nn.relu(h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    logits = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y])


value_grad = jax.jit(jax.value_and_grad(loss), compiler_options=FAST_COMPILE)
_uniform = jax.jit(jax.random.uniform, static_argnums=1, compiler_options=FAST_COMPILE)


def uniform(key, shape):
    """jax.random.uniform(key, shape) (float32 on [0, 1)), as a host array."""
    return np.asarray(_uniform(key, tuple(shape)))


def round_key(seed, r):
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), TAGS["round"]), r)


def tag(key, name):
    return jax.random.fold_in(key, TAGS[name])


def tree(fn, *trees):
    return jax.tree.map(fn, *trees)


def device(t, n):
    return tree(lambda a: np.array(a[n]), t)


def stack(trees):
    return tree(lambda *a: np.stack(a), *trees)


def epoch_order(key, epoch, size, max_size):
    """The documented shuffle: argsort of the device's first `size` of max_size uniforms."""
    u = uniform(jax.random.fold_in(key, epoch), (max_size,))[:size]
    return np.argsort(u, kind="stable")


def ref_local(theta, mom, x, y, key, max_size, epochs=1, *, steps=0, lr=LR, beta=BETA,
              corr=None):
    """One device's local phase: `epochs` passes over its data, or (steps > 0) exactly `steps`
    steps, step t taking batch t mod s of the shuffle of epoch t // s, s = ceil(size / B).
    `corr` is added to every gradient before the momentum. Returns theta, mom, the mean loss
    and the mean raw gradient over the steps taken."""
    size = len(y)
    per_epoch = -(-size // BATCH)
    if steps:
        schedule = [(t // per_epoch, t % per_epoch) for t in range(steps)]
    else:
        schedule = [(e, b) for e in range(epochs) for b in range(per_epoch)]
    losses, grads, orders = [], [], {}
    for e, b in schedule:
        if e not in orders:
            orders[e] = epoch_order(key, e, size, max_size)
        rows = orders[e][b * BATCH:(b + 1) * BATCH]
        value, g = value_grad(theta, jnp.asarray(x[rows]), jnp.asarray(y[rows]))
        g = tree(lambda a: np.asarray(a, np.float32), g)
        losses.append(float(value))
        grads.append(g)
        step = g if corr is None else tree(lambda a, c: a + c, g, corr)
        mom = tree(lambda gi, mi: gi + np.float32(beta) * mi, step, mom)
        theta = tree(lambda t, m: t - np.float32(lr) * m, theta, mom)
    mean_grad = tree(lambda *gs: np.mean(np.stack(gs).astype(np.float64), axis=0), *grads)
    return theta, mom, float(np.mean(losses)), mean_grad


def ref_weights(a, sizes, scheme):
    """Row-stochastic mixing weights on the round graph a (a[n, m]: n hears m), entry by entry
    from mixing.py's docstring."""
    n_dev = a.shape[0]
    a = a & ~np.eye(n_dev, dtype=bool)
    deg = a.sum(axis=1)
    w = np.zeros((n_dev, n_dev))
    for n in range(n_dev):
        nb = [m for m in range(n_dev) if a[n, m]]
        if scheme == "data_size":
            total = sizes[n] + sum(sizes[m] for m in nb)
            for m in nb:
                w[n, m] = sizes[m] / total
            w[n, n] = sizes[n] / total
        elif scheme == "uniform":
            for m in nb + [n]:
                w[n, m] = 1.0 / (deg[n] + 1)
        elif scheme == "metropolis":
            for m in nb:
                w[n, m] = 1.0 / (1 + max(deg[n], deg[m]))
            w[n, n] = 1.0 - w[n].sum()
        elif scheme == "max_degree":
            for m in nb:
                w[n, m] = 1.0 / (deg.max() + 1)
            w[n, n] = 1.0 - w[n].sum()
        elif scheme == "data_size_mh":   # proposal 1 / (d_n + 1), target pi ~ sizes
            for m in nb:
                accept = 1.0 if sizes[n] == 0 else min(
                    1.0, sizes[m] * (deg[n] + 1) / (sizes[n] * (deg[m] + 1)))
                w[n, m] = accept / (deg[n] + 1)
            w[n, n] = 1.0 - w[n].sum()
        else:
            raise AssertionError(scheme)
    return w


def mix(w, t):
    """x_n <- sum_m w[n, m] x_m on every leaf, accumulated in float64."""
    n_dev = w.shape[0]
    return tree(lambda leaf: (w @ leaf.reshape(n_dev, -1).astype(np.float64)).reshape(leaf.shape)
                .astype(np.float32), t)


def make_data(sizes=SIZES, seed=0):
    """(x, y, parts): random 4x4x1 inputs, 10 classes, one index array per device."""
    g = np.random.default_rng(seed)
    total = sum(sizes) + 6
    x = g.normal(size=(total, *SHAPE)).astype(np.float32)
    y = g.integers(0, 10, total)
    perm = g.permutation(total)
    parts = np.split(perm[:sum(sizes)], np.cumsum(sizes)[:-1])
    return x, y, parts


def adjacency(n, edges):
    adj = np.zeros((n, n), bool)
    for i, j in edges:
        adj[i, j] = adj[j, i] = True
    return adj


def random_params(seed, n):
    one = jax.eval_shape(lambda: init_params(MODEL, jax.random.PRNGKey(0), SHAPE))
    g = np.random.default_rng(seed)
    return tree(lambda s: (0.5 * g.normal(size=(n, *s.shape))).astype(np.float32), one)


def kept(d, ratio):
    """k = ceil(ratio d), at least 1, at most d (exact decimal arithmetic)."""
    return min(d, max(1, -(-Fraction(str(ratio)) * d // 1)))


def compress_vector(kind, v, key, *, ratio, bits):
    """One device's copy of one leaf (flat float32 v), compressed as compression.py's
    docstring says."""
    d = v.shape[0]
    if kind == "none":
        return v
    if kind in ("top_k", "random_k"):
        k = int(kept(d, ratio))
        score = np.abs(v) if kind == "top_k" else uniform(key, (d,))
        keep = np.argsort(-score, kind="stable")[:k]
        out = np.zeros_like(v)
        out[keep] = v[keep]
        return out
    if kind == "qsgd":
        s = 2 ** bits - 1
        tau = 1.0 + min(d / s ** 2, np.sqrt(d) / s)
        norm = np.float32(np.sqrt(np.sum(np.square(v, dtype=np.float32), dtype=np.float32)))
        if norm == 0:
            return np.zeros_like(v)
        u = uniform(key, (d,))
        level = np.floor(np.float32(s) * np.abs(v) / norm + u)
        return (norm * np.sign(v) * level / np.float32(s * tau)).astype(np.float32)
    if kind == "sign":
        return (np.sum(np.abs(v)) / d * np.sign(v)).astype(np.float32)
    raise AssertionError(kind)


def assert_close(got, want, what, rtol=2e-5, atol=2e-5):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol,
                                   err_msg=what)
