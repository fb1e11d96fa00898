"""One device's local phase: E epochs of mini-batch SGD with momentum over its own data.

Written for a single device (unbatched); `simulation.py` vmaps it over the device axis.

Data layout: all devices' samples are concatenated in one array x [T, ...] (shared, not
vmapped); device n owns rows offset_n .. offset_n + size_n - 1. This costs no padding however
skewed the sizes are. One epoch is one pass over the device's own shuffled data, ceil(size_n / B)
steps; the scan runs ceil(max / B) steps for every device vmapped together (max: the largest
of them; `buckets.py` groups devices of similar sizes so this is close to each one's own) and a
device whose data is exhausted sits idle (masked: parameters and momentum unchanged). The
last, partial batch averages the loss over its real samples only.

SGD with momentum is optax.sgd(lr, momentum) (PyTorch convention): m <- g + beta m,
theta <- theta - lr m; with nesterov, theta <- theta - lr (g + beta m). Weight decay is
PyTorch's coupled L2: g <- grad + wd theta before the optimizer (the gradient of
loss + wd / 2 |theta|^2; gradient tracking tracks this gradient). It is added to the gradient
rather than chained into the optimizer, so the optimizer state keeps optax.sgd's structure.

Inputs are stored as the data gives them (uint8 pixels for the real datasets) and every batch is
converted in the step: random crop and flip first (`augment`, augment.crop_flip, keyed by
rng.augment_key), then `data.decode` (pixel / 255, per-channel standardisation). With
compute_dtype=bfloat16 the forward and backward passes run in bfloat16 (parameters and inputs
cast in the loss), while parameters, gradients and optimizer state stay float32.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from p2pl_jax import augment as augment_lib
from p2pl_jax import data, rng

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def make_optimizer(learning_rate, momentum, nesterov: bool = False
                   ) -> optax.GradientTransformation:
    """SGD with (heavy-ball or Nesterov) momentum; the hyperparameters may be traced (sweeps)."""
    return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def num_steps(max_size: int, batch_size: int) -> int:
    """Scan length of one epoch: ceil(max_n / B)."""
    return -(-max_size // batch_size)


def batch_order(key: jax.Array, size: jax.Array, max_size: int,
                batch_size: int) -> tuple[jax.Array, jax.Array]:
    """A random order of the `size` real samples, cut into batches.

    Returns idx int32 [steps, B] (indices into the padded arrays) and valid bool [steps, B]
    (False for padding). Real samples come first, in a uniformly random order, which does
    not depend on max_size (the draws are prefix-consistent, see rng.py): a device gets the
    same batches in a bucket of any length.
    """
    steps = num_steps(max_size, batch_size)
    pos = jnp.arange(max_size)
    u = jax.random.uniform(key, (max_size,))
    order = jnp.argsort(jnp.where(pos < size, u, 2.0)).astype(jnp.int32)
    pad = steps * batch_size - max_size
    order = jnp.concatenate([order, jnp.zeros((pad,), jnp.int32)])
    valid = jnp.arange(steps * batch_size) < size
    return order.reshape(steps, batch_size), valid.reshape(steps, batch_size)


def epochs_needed(local_steps: int, min_size: int, batch_size: int) -> int:
    """Epochs the smallest device walks through in `local_steps` steps (static)."""
    return -(-local_steps // num_steps(max(min_size, 1), batch_size))


def make_local_update(apply_fn: Callable, *, max_size: int, batch_size: int,
                      local_epochs: int, local_steps: int = 0, min_size: int = 1,
                      with_correction: bool = False,
                      return_mean_grad: bool = False, nesterov: bool = False,
                      augment: bool = False, compute_dtype: str = "float32",
                      normalisation: tuple | None = None) -> Callable:
    """Builds `local_update(params, opt_state, offset, size, key, lr, momentum, x, y[, corr],
    weight_decay=0)`.

    Args of the returned function (one device, no leading device axis except x, y):
      params, opt_state: the device's model and optax.sgd state.
      offset, size: the device's rows of x, y are offset .. offset + size - 1.
      key: the device's key for this round; lr, momentum, weight_decay: scalars (may be
        traced).
      x [T, ...], y [T] int: every device's data, concatenated (shared across devices), as
        stored (uint8 images are decoded per batch with `normalisation`, data.decode).
      corr (with_correction): a pytree like params added to every step's gradient before the
        optimizer (gradient tracking's correction, tracker minus own gradient).
      max_size, min_size (static keywords): the largest and smallest size among the devices
        this call is vmapped with (default: of all devices); a bucket of the work-proportional
        local phase (buckets.py) passes its own. The batches do not depend on them.
    Returns (params, opt_state, mean training loss over the steps taken, mean raw gradient over
    the steps taken or None unless return_mean_grad).

    local_steps = 0: `local_epochs` epochs, each one pass over the device's own shuffled data
    (ceil(size_n / B) steps; the scan runs ceil(max_n / B) steps for everybody, masked).
    local_steps = T > 0: exactly T steps for every device (no masking). Step t takes batch
    t mod s_n of the shuffle of epoch floor(t / s_n), s_n = ceil(size_n / B): a device whose
    epoch is shorter than T steps goes on into further epochs, each freshly shuffled, and the
    last, partial batch of every epoch is taken as it is. Every round starts a fresh shuffle.
    Static options: nesterov, augment (crop_flip of every batch), compute_dtype (a key of
    COMPUTE_DTYPES), normalisation (data.decode's (mean, std), as tuples).
    """
    dtype = COMPUTE_DTYPES[compute_dtype]

    def loss_fn(params, xb, yb, vb):
        if dtype != jnp.float32:
            params = jax.tree.map(lambda p: p.astype(dtype), params)
            xb = xb.astype(dtype)
        logits = apply_fn({"params": params}, xb).astype(jnp.float32)
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
        count = jnp.maximum(vb.sum(), 1)
        return jnp.sum(jnp.where(vb, per_example, 0.0)) / count

    grad_fn = jax.value_and_grad(loss_fn)

    default_max, default_min = max_size, min_size

    def local_update(params, opt_state, offset, size, key, lr, momentum, x, y, corr=None, *,
                     weight_decay=0.0, max_size=default_max, min_size=default_min):
        tx = make_optimizer(lr, momentum, nesterov)
        zero = lambda: jax.tree.map(jnp.zeros_like, params)

        def batch_inputs(rows, epoch, batch):
            xb = x[rows]
            if augment:
                xb = augment_lib.crop_flip(rng.augment_key(key, epoch, batch), xb)
            return data.decode(xb, normalisation)

        def step(carry, batch):
            params, opt_state, loss_sum, count, grad_sum = carry
            idx, valid, epoch, batch_index = batch
            rows = offset + idx
            loss, grads = grad_fn(params, batch_inputs(rows, epoch, batch_index), y[rows],
                                  valid)
            grads = jax.tree.map(lambda g, p: g + weight_decay * p, grads, params)
            active = valid[0]  # real samples come first: a batch is active iff its first is
            if return_mean_grad:
                grad_sum = jax.tree.map(lambda s, g: s + jnp.where(active, g, 0.0),
                                        grad_sum, grads)
            if with_correction:
                grads = jax.tree.map(jnp.add, grads, corr)
            updates, new_opt_state = tx.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)
            carry = (keep(new_params, params), keep(new_opt_state, opt_state),
                     loss_sum + jnp.where(active, loss, 0.0), count + active, grad_sum)
            return carry, None

        grad_sum0 = zero() if return_mean_grad else None
        init = (params, opt_state, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32),
                grad_sum0)
        if local_steps:
            n_epochs = epochs_needed(local_steps, min_size, batch_size)
            idx, valid = jax.vmap(lambda e: batch_order(jax.random.fold_in(key, e), size,
                                                        max_size, batch_size))(
                jnp.arange(n_epochs))
            per_epoch = (size + batch_size - 1) // batch_size
            t = jnp.arange(local_steps)
            e, b = t // per_epoch, t % per_epoch
            carry, _ = jax.lax.scan(step, init, (idx[e, b], valid[e, b], e, b))
        else:
            def epoch(carry, epoch_index):
                idx, valid = batch_order(jax.random.fold_in(key, epoch_index), size, max_size,
                                         batch_size)
                batch_index = jnp.arange(idx.shape[0])
                carry, _ = jax.lax.scan(step, carry, (idx, valid, jnp.full_like(
                    batch_index, epoch_index), batch_index))
                return carry, None

            carry, _ = jax.lax.scan(epoch, init, jnp.arange(local_epochs))
        params, opt_state, loss_sum, count, grad_sum = carry
        mean_grad = None
        if return_mean_grad:
            mean_grad = jax.tree.map(lambda s: s / jnp.maximum(count, 1), grad_sum)
        return params, opt_state, loss_sum / jnp.maximum(count, 1), mean_grad

    return local_update
