"""Per-round network realism, sampled with jax.random inside the jitted round.

Link failures act on the padded neighbour lists (idx, valid, edge_id) of the static graph:

  symmetric   each undirected edge is down with probability p (both directions together)
  asymmetric  each direction n <- m is down on its own with probability p

The device's own entry (column 0) never fails. The mixing weights of the round are then
recomputed on the surviving (possibly directed) graph, so rows stay stochastic for the receiver.
"""

import jax
import jax.numpy as jnp

LINK_MODES = ("symmetric", "asymmetric")


def edge_up(key: jax.Array, num_edges: int, prob: jax.Array) -> jax.Array:
    """bool [E]: which undirected edges are up this round (each down with probability `prob`)."""
    return jax.random.uniform(key, (max(num_edges, 1),)) >= prob


def surviving_links(key: jax.Array, valid: jax.Array, edge_id: jax.Array, num_edges: int,
                    prob: jax.Array, mode: str) -> jax.Array:
    """bool [N, K]: entries of the neighbour lists whose link is up this round.

    valid, edge_id: [N, K] from `graphs.neighbour_lists` (edge_id -1 on self and padding).
    """
    if mode == "symmetric":
        up = edge_up(key, num_edges, prob)[jnp.maximum(edge_id, 0)]
    elif mode == "asymmetric":
        up = jax.random.uniform(key, valid.shape) >= prob
    else:
        raise ValueError(f"unknown link failure mode {mode!r}; allowed: {LINK_MODES}")
    is_self = jnp.arange(valid.shape[1])[None, :] == 0
    return valid & (up | is_self)


def links_up_fraction(valid: jax.Array, valid_k: jax.Array) -> jax.Array:
    """Fraction of the graph's directed links (self entries excluded) that are up."""
    off = valid.at[:, 0].set(False)
    total = jnp.maximum(off.sum(), 1)
    return jnp.sum(valid_k & off) / total
