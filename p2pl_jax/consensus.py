"""One consensus (mixing) step on the stacked pytree: theta_n <- sum_m w_nm theta_m.

All functions take pytrees whose leaves have a leading device axis [N, ...] and return the same
structure. Backends:

  dense   W [N, N] @ X        one matrix product per leaf; best for dense/complete graphs
  gather  sum_k w[:, k] * X[idx[:, k]]   padded neighbour lists [N, K]; O(N K P) for sparse graphs
  global  every row of W is the same vector pi: X <- 1 (pi^T X), one weighted average per leaf
          (FedAvg's server average; P2PL on a complete graph with identical rows)

They compute the same thing (tests check gather and global against dense).
"""

import jax
import jax.numpy as jnp

BACKENDS = ("auto", "dense", "gather")

_HIGHEST = jax.lax.Precision.HIGHEST


def mix_dense(w: jax.Array, tree):
    """W [N, N] (row n = receiver n) applied to every leaf [N, ...]."""

    def mix(leaf):
        flat = leaf.reshape(leaf.shape[0], -1)
        out = jnp.dot(w.astype(flat.dtype), flat, precision=_HIGHEST)
        return out.reshape(leaf.shape)

    return jax.tree.map(mix, tree)


def mix_gather(idx: jax.Array, w: jax.Array, tree):
    """Neighbour-gather mixing: idx int [N, K], w [N, K] (zero on padding) -> sum_k w X[idx]."""

    def mix(leaf):
        flat = leaf.reshape(leaf.shape[0], -1)

        def body(k, acc):
            return acc + w[:, k, None].astype(flat.dtype) * flat[idx[:, k]]

        out = jax.lax.fori_loop(0, idx.shape[1], body, jnp.zeros_like(flat),
                                unroll=idx.shape[1] <= 8)
        return out.reshape(leaf.shape)

    return jax.tree.map(mix, tree)


def mix_global(pi: jax.Array, tree):
    """Every device receives the same average sum_m pi_m X_m (pi [N] sums to 1)."""

    def mix(leaf):
        avg = jnp.tensordot(pi.astype(leaf.dtype), leaf, axes=1, precision=_HIGHEST)
        return jnp.broadcast_to(avg, leaf.shape)

    return jax.tree.map(mix, tree)


def choose_backend(backend: str, num_devices: int, max_neighbours: int) -> str:
    """Resolves "auto": dense when the padded neighbour lists are wide (K > N / 8) or N <= 32."""
    if backend != "auto":
        return backend
    return "dense" if (num_devices <= 32 or max_neighbours * 8 > num_devices) else "gather"


def mix_delayed(idx: jax.Array, w: jax.Array, delays: jax.Array, history, current):
    """Mixing with late messages: theta_n <- w_n0 theta_n + sum_k w_nk H[delay_nk][idx_nk].

    history: pytree with leaves [D + 1, N, ...]; history[d] holds what every device sent d
    rounds ago (history[0] = this round). current: [N, ...] the devices' own parameters (the
    self term is never delayed). delays int [N, K] in {0..D}, column 0 = self.
    """

    def mix(hist, own):
        flat_h = hist.reshape(hist.shape[0], hist.shape[1], -1)
        flat = own.reshape(own.shape[0], -1)

        def body(k, acc):
            received = flat_h[delays[:, k], idx[:, k]]
            return acc + w[:, k, None].astype(flat.dtype) * received

        out = jax.lax.fori_loop(1, idx.shape[1], body, w[:, 0, None] * flat)
        return out.reshape(own.shape)

    return jax.tree.map(mix, history, current)
