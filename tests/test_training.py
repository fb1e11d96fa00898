"""The local step's training options against an independent per-device reference.

uint8 images decoded per batch (data.decode), random crop and flip (augment), coupled weight
decay, Nesterov momentum, learning-rate schedules read from the round counter, and bfloat16
compute. The reference shares no code with the library's local phase or its augmentation: it
re-derives the augmentation draws from rng.py's documented derivation (the local key folded
with 2^31 - 1, the epoch and the batch; split into a crop and a flip key; offsets
randint(0, 9) of shape [B, 2], flips bernoulli(1/2) of shape [B]), pads and crops in numpy,
decodes with the formula (p / 255 - mean) / std in float32, and writes the schedules and the
optimizer out by hand. algorithm=local isolates the local phase (no communication).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import BATCH, BETA, LR, MODEL, assert_close, epoch_order, stack, tag, tree
from reference import loss as ref_loss
from reference import round_key as ref_round_key

from p2pl_jax import data, schedules, simulation
from p2pl_jax.local_update import make_optimizer
from p2pl_jax.models import init_params

SIZES = (7, 12, 3, 9)     # unequal: partial batches, idle devices, two buckets
N = len(SIZES)
SHAPE = (4, 4, 3)
MEAN, STD = (0.4, 0.5, 0.6), (0.25, 0.2, 0.0)   # a std-0 channel is only centred
WD = 0.05
ROUNDS = 3
SEED = 4


def make_uint8_data(seed=0):
    g = np.random.default_rng(seed)
    total = sum(SIZES) + 3
    x = g.integers(0, 256, (total, *SHAPE)).astype(np.uint8)
    y = g.integers(0, 10, total)
    perm = g.permutation(total)
    return x, y, np.split(perm[:sum(SIZES)], np.cumsum(SIZES)[:-1])


def params0():
    one = jax.eval_shape(lambda: init_params(MODEL, jax.random.PRNGKey(0), SHAPE))
    g = np.random.default_rng(SEED)
    return tree(lambda s: (0.5 * g.normal(size=(N, *s.shape))).astype(np.float32), one)


def ref_factor(kind, r, rounds, warmup, milestones=(), gamma=0.1):
    """The schedule of schedules.py's docstring, by hand."""
    if r < warmup:
        return (r + 1) / warmup
    if kind == "cosine":
        return (1 + math.cos(math.pi * (r - warmup) / (rounds - warmup))) / 2
    if kind == "step":
        marks = milestones or (rounds // 2, 3 * rounds // 4)
        return gamma ** sum(m <= r for m in marks)
    return 1.0


def ref_decode(xb):
    v = xb.astype(np.float32) / np.float32(255.0)
    std = np.array(STD, np.float32)
    return (v - np.array(MEAN, np.float32)) / np.where(std > 0, std, np.float32(1.0))


def ref_crop_flip(key, xb):
    k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, 2**31 - 1), xb[1]),
                           xb[2])
    k_crop, k_flip = jax.random.split(k)
    offsets = np.asarray(jax.random.randint(k_crop, (BATCH, 2), 0, 9))
    flips = np.asarray(jax.random.bernoulli(k_flip, 0.5, (BATCH,)))
    out = []
    for i, image in enumerate(xb[0]):
        padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
        crop = padded[offsets[i, 0]:offsets[i, 0] + 4, offsets[i, 1]:offsets[i, 1] + 4]
        out.append(crop[:, ::-1] if flips[i] else crop)
    return np.stack(out)


def _grad_fn(dtype):
    def f(p, x, y):
        if dtype == "bfloat16":
            p = tree(lambda a: a.astype(jnp.bfloat16), p)
            x = x.astype(jnp.bfloat16)
            h = x.reshape(x.shape[0], -1)
            h = jax.nn.relu(h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
            logits = (h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]).astype(jnp.float32)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y])
        return ref_loss(p, x, y)
    return jax.jit(jax.grad(f))


GRADS = {d: _grad_fn(d) for d in ("float32", "bfloat16")}


def ref_run(x, y, parts, *, augment, nesterov, schedule, local_steps=0, dtype="float32"):
    """Every device alone (algorithm=local) for ROUNDS rounds; params after each round."""
    kind, warmup = schedule
    theta = [tree(lambda a, n=n: np.array(a[n]), params0()) for n in range(N)]
    mom = [tree(np.zeros_like, t) for t in theta]
    max_size = max(SIZES)
    out = []
    for r in range(ROUNDS):
        lr = np.float32(LR * ref_factor(kind, r, ROUNDS, warmup))
        keys = jax.random.split(tag(ref_round_key(SEED, r), "local"), N)
        for n, p in enumerate(parts):
            per_epoch = -(-len(p) // BATCH)
            steps = ([(t // per_epoch, t % per_epoch) for t in range(local_steps)]
                     if local_steps else [(0, b) for b in range(per_epoch)])
            for e, b in steps:
                rows = p[epoch_order(keys[n], e, len(p), max_size)[b * BATCH:(b + 1) * BATCH]]
                xb = ref_crop_flip(keys[n], (x[rows], e, b)) if augment else x[rows]
                g = GRADS[dtype](theta[n], jnp.asarray(ref_decode(xb)), jnp.asarray(y[rows]))
                g = tree(lambda gi, t: np.asarray(gi, np.float32) + np.float32(WD) * t,
                         g, theta[n])
                mom[n] = tree(lambda gi, m: gi + np.float32(BETA) * m, g, mom[n])
                step = (tree(lambda gi, m: gi + np.float32(BETA) * m, g, mom[n]) if nesterov
                        else mom[n])
                theta[n] = tree(lambda t, s, lr=lr: t - lr * s, theta[n], step)
        out.append(stack(theta))
    return out


def library_run(x, y, parts, *, augment, nesterov, schedule, local_steps=0, dtype="float32"):
    kind, warmup = schedule
    sim = simulation.Simulator(
        model=MODEL, x=x, y=y, parts=parts, adj=np.ones((N, N), bool), algorithm="local",
        batch_size=BATCH, sync_mode="none", local_steps=local_steps,
        normalisation=(MEAN, STD), augment=augment, nesterov=nesterov, compute_dtype=dtype,
        lr_schedule=schedules.LRSchedule(kind, rounds=ROUNDS, warmup_rounds=warmup))
    params = tree(jnp.asarray, params0())
    state = sim.init(SEED).replace(
        params=params, opt_state=jax.vmap(make_optimizer(0.0, 0.0).init)(params))
    hp = simulation.make_hparams(LR, BETA, weight_decay=WD)
    out, lrs = [], []
    for _ in range(ROUNDS):
        state, metrics = sim.step(state, hp)
        out.append(tree(np.asarray, state.params))
        lrs.append(float(metrics.get("learning_rate", np.nan)))
    return out, lrs, sim


CASES = {
    "augment-nesterov-cosine-warmup": dict(augment=True, nesterov=True,
                                           schedule=("cosine", 1)),
    "augment-steps-step-schedule": dict(augment=True, nesterov=False, schedule=("step", 0),
                                        local_steps=5),
}


def _flat(t) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in jax.tree.leaves(t)])


@pytest.mark.parametrize("name", list(CASES))
def test_local_phase_equals_reference(name):
    """uint8 data decoded per batch, crops and flips, weight decay, Nesterov and the schedule:
    every device's parameters after each of 3 rounds equal the per-device reference, and
    the round reports the learning rate it used. The crops and flips are really drawn: the
    reference without augmentation differs (so the equality is not that of two plain runs)."""
    kw = CASES[name]
    x, y, parts = make_uint8_data()
    got, lrs, sim = library_run(x, y, parts, **kw)
    if not kw.get("local_steps"):
        assert sim.buckets, "the devices should run in more than one scan"
    want = ref_run(x, y, parts, **kw)
    for r in range(ROUNDS):
        assert_close(got[r], want[r], f"params after round {r + 1}")
        kind, warmup = kw["schedule"]
        assert lrs[r] == pytest.approx(LR * ref_factor(kind, r, ROUNDS, warmup), rel=1e-6)
    plain = ref_run(x, y, parts, **{**kw, "augment": False})
    assert np.max(np.abs(_flat(got[0]) - _flat(plain[0]))) > 1e-3


def test_bfloat16_compute_follows_its_reference():
    """compute_dtype=bfloat16: float32 parameters, updates from bfloat16 forward and backward
    passes, so the result follows the bfloat16 reference much more closely than the float32
    one (which it must differ from)."""
    x, y, parts = make_uint8_data()
    kw = dict(augment=False, nesterov=False, schedule=("constant", 0))
    got, _, _ = library_run(x, y, parts, dtype="bfloat16", **kw)
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(got[-1]))
    g = _flat(got[-1])
    to_bf16 = np.max(np.abs(g - _flat(ref_run(x, y, parts, dtype="bfloat16", **kw)[-1])))
    to_f32 = np.max(np.abs(g - _flat(ref_run(x, y, parts, **kw)[-1])))
    assert to_f32 > 1e-3 and to_bf16 < to_f32 / 4, (to_bf16, to_f32)


def test_decode_in_a_jitted_batch_equals_the_host_to_the_bit():
    """XLA rewrites x / 255 as x * (1 / 255); decode's table keeps the stored-uint8 path
    equal to the float32 images a host would compute."""
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for norm, shape in ((None, (256, 1)), ((MEAN, STD), (256, 3))):
        x = np.broadcast_to(pixels.reshape(256, 1), shape).copy()
        host = data.decode(x, norm)
        jitted = np.asarray(jax.jit(lambda v, n=norm: data.decode(v, n))(x))
        assert host.dtype == jitted.dtype == np.float32
        np.testing.assert_array_equal(jitted, host)
        formula = x.astype(np.float32) / np.float32(255.0)
        if norm is not None:
            formula = ref_decode(x)
        np.testing.assert_array_equal(host, formula)
    floats = np.ones((2, 3), np.float32)
    assert data.decode(floats) is floats


@pytest.mark.parametrize("kind,warmup,milestones", [
    ("constant", 0, ()), ("constant", 3, ()), ("cosine", 0, ()), ("cosine", 4, ()),
    ("step", 0, ()), ("step", 2, (2, 7)), ("step", 0, (5,))])
def test_schedule_factors(kind, warmup, milestones):
    rounds = 10
    s = schedules.LRSchedule(kind, rounds=rounds, warmup_rounds=warmup, step_rounds=milestones,
                             step_gamma=0.5)
    got = [float(s.factor(jnp.asarray(r))) for r in range(rounds)]
    want = [ref_factor(kind, r, rounds, warmup, milestones, 0.5) for r in range(rounds)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert s.is_constant == (kind == "constant" and warmup == 0)


def test_a_scheduled_run_resumes_only_with_its_horizon():
    """With cosine or step, `rounds` is the schedule's horizon: it stays in the checkpoint's
    fingerprint (a resumed run with other rounds is refused); without a schedule it may change."""
    from configs import smoke
    from p2pl_jax import checkpoint

    c = smoke.get_config().to_dict()
    assert "rounds" not in checkpoint.fingerprint(c)
    for kind in ("cosine", "step"):
        assert checkpoint.fingerprint({**c, "lr_schedule": kind})["rounds"] == c["rounds"]
    assert "rounds" not in checkpoint.fingerprint({**c, "lr_warmup_rounds": 3})
