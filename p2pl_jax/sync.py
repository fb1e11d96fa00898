"""Max norm synchronization (P2PL phase 0).

For S = diameter(G) steps every device looks at the parameters held by its closed neighbourhood
and adopts the one with the largest Frobenius norm (all parameters together). After diameter(G)
steps every device holds the largest-norm initialisation of the whole network.

Implemented as pointer jumping on the padded neighbour lists: src[n] is the device whose
initialisation n currently holds; one step is
  src[n] <- argmax_{m in closed nbhd(n)} ||theta_src[m]||,
and the parameters are gathered once at the end. Ties go to the lowest neighbour-list column
(the device itself first).
"""

import jax
import jax.numpy as jnp

SYNC_MODES = ("max_norm", "none", "shared_seed")


def global_norms(tree) -> jax.Array:
    """[N] Frobenius norm of each device's parameters (all leaves together) of a [N, ...] tree."""
    sq = [jnp.sum(jnp.square(leaf.reshape(leaf.shape[0], -1)), axis=1)
          for leaf in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(sq))


def max_norm_sources(norms: jax.Array, idx: jax.Array, valid: jax.Array,
                     num_steps: int) -> jax.Array:
    """[N] index of the device whose init each device holds after `num_steps` sync steps."""
    n = norms.shape[0]

    def step(_, src):
        cand = src[idx]                                   # [N, K] what each neighbour holds
        cand_norm = jnp.where(valid, norms[cand], -jnp.inf)
        best = jnp.argmax(cand_norm, axis=1)
        return jnp.take_along_axis(cand, best[:, None], axis=1)[:, 0]

    # a loop, not unrolled: the compile time does not grow with the diameter
    return jax.lax.fori_loop(0, num_steps, step, jnp.arange(n))


def max_norm_sync(params, idx: jax.Array, valid: jax.Array, num_steps: int):
    """Runs `num_steps` max-norm steps on a [N, ...] parameter tree; returns the synced tree."""
    src = max_norm_sources(global_norms(params), idx, valid, num_steps)
    return jax.tree.map(lambda leaf: leaf[src], params)


def max_norm_sync_until_stable(params, idx: jax.Array, valid: jax.Array):
    """Max norm sync run until no device changes (at most N steps), for graphs too large to
    compute the diameter cheaply. A device's choice can only change while the global maximum
    is still spreading, so the fixed point is the same state diameter(G) steps reach."""
    norms = global_norms(params)
    n = norms.shape[0]

    def step(carry):
        src, _, count = carry
        cand = src[idx]
        best = jnp.argmax(jnp.where(valid, norms[cand], -jnp.inf), axis=1)
        new = jnp.take_along_axis(cand, best[:, None], axis=1)[:, 0]
        return new, jnp.any(new != src), count + 1

    src, _, _ = jax.lax.while_loop(lambda c: c[1] & (c[2] < n), step,
                                   (jnp.arange(n), jnp.array(True), 0))
    return jax.tree.map(lambda leaf: leaf[src], params)
