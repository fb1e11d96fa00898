"""One device's local phase: E epochs of mini-batch SGD with momentum over its own data.

Written for a single device (unbatched); `simulation.py` vmaps it over the device axis.

Data layout: all devices' samples are concatenated in one array x [T, ...] (shared, not
vmapped); device n owns rows offset_n .. offset_n + size_n - 1. This costs no padding however
skewed the sizes are. One epoch is one pass over the device's own shuffled data, ceil(size_n / B)
steps; the scan runs ceil(max_n / B) steps for everybody and a device whose data is exhausted
sits idle (masked: parameters and momentum unchanged). The last, partial batch averages the loss
over its real samples only.

SGD with momentum is optax.sgd(lr, momentum) (PyTorch convention): m <- g + beta m,
theta <- theta - lr m.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def make_optimizer(learning_rate, momentum) -> optax.GradientTransformation:
    """SGD with (heavy-ball) momentum; both hyperparameters may be traced arrays (sweeps)."""
    return optax.sgd(learning_rate, momentum=momentum)


def num_steps(max_size: int, batch_size: int) -> int:
    """Scan length of one epoch: ceil(max_n / B)."""
    return -(-max_size // batch_size)


def batch_order(key: jax.Array, size: jax.Array, max_size: int,
                batch_size: int) -> tuple[jax.Array, jax.Array]:
    """A random order of the `size` real samples, cut into batches.

    Returns idx int32 [steps, B] (indices into the padded arrays) and valid bool [steps, B]
    (False for padding). Real samples come first, in a uniformly random order.
    """
    steps = num_steps(max_size, batch_size)
    pos = jnp.arange(max_size)
    u = jax.random.uniform(key, (max_size,))
    order = jnp.argsort(jnp.where(pos < size, u, 2.0)).astype(jnp.int32)
    pad = steps * batch_size - max_size
    order = jnp.concatenate([order, jnp.zeros((pad,), jnp.int32)])
    valid = jnp.arange(steps * batch_size) < size
    return order.reshape(steps, batch_size), valid.reshape(steps, batch_size)


def make_local_update(apply_fn: Callable, *, max_size: int, batch_size: int,
                      local_epochs: int) -> Callable:
    """Builds `local_update(params, opt_state, offset, size, key, lr, momentum, x, y)`.

    Args of the returned function (one device, no leading device axis except x, y):
      params, opt_state: the device's model and optax.sgd state.
      offset, size: the device's rows of x, y are offset .. offset + size - 1.
      key: the device's key for this round; lr, momentum: scalars (may be traced).
      x [T, ...], y [T] int: every device's data, concatenated (shared across devices).
    Returns (params, opt_state, mean training loss over the steps taken).
    """

    def loss_fn(params, xb, yb, vb):
        logits = apply_fn({"params": params}, xb)
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
        count = jnp.maximum(vb.sum(), 1)
        return jnp.sum(jnp.where(vb, per_example, 0.0)) / count

    grad_fn = jax.value_and_grad(loss_fn)

    def local_update(params, opt_state, offset, size, key, lr, momentum, x, y):
        tx = make_optimizer(lr, momentum)

        def step(carry, batch):
            params, opt_state, loss_sum, count = carry
            idx, valid = batch
            rows = offset + idx
            loss, grads = grad_fn(params, x[rows], y[rows], valid)
            updates, new_opt_state = tx.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            active = valid[0]  # real samples come first: a batch is active iff its first is
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)
            carry = (keep(new_params, params), keep(new_opt_state, opt_state),
                     loss_sum + jnp.where(active, loss, 0.0), count + active)
            return carry, None

        def epoch(carry, epoch_index):
            idx, valid = batch_order(jax.random.fold_in(key, epoch_index), size, max_size,
                                     batch_size)
            carry, _ = jax.lax.scan(step, carry, (idx, valid))
            return carry, None

        init = (params, opt_state, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        (params, opt_state, loss_sum, count), _ = jax.lax.scan(
            epoch, init, jnp.arange(local_epochs))
        return params, opt_state, loss_sum / jnp.maximum(count, 1)

    return local_update
