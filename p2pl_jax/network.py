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


TIME_VARYING = ("random_geometric", "erdos_renyi", "exponential")
DELAY_MODES = ("fixed", "random")


def round_failure_prob(key: jax.Array, prob: jax.Array, burst_prob: jax.Array,
                       burst_failure_prob: jax.Array) -> jax.Array:
    """The round's link failure probability: `burst_failure_prob` in a burst round (which
    happens with probability `burst_prob`), `prob` otherwise."""
    burst = jax.random.uniform(key) < burst_prob
    return jnp.where(burst, burst_failure_prob, prob)


def devices_alive(key: jax.Array, num_devices: int, dropout_prob: jax.Array) -> jax.Array:
    """bool [N]: devices online this round (each offline with probability `dropout_prob`)."""
    return jax.random.uniform(key, (num_devices,)) >= dropout_prob


def drop_devices(idx: jax.Array, valid: jax.Array, alive: jax.Array) -> jax.Array:
    """Neighbour-list entries that survive device dropouts: both ends must be online.

    An offline device neither sends nor receives: its row keeps only itself (column 0).
    """
    keep = alive[:, None] & alive[idx]
    is_self = jnp.arange(valid.shape[1])[None, :] == 0
    return valid & (keep | is_self)


def complete_lists(num_devices: int):
    """Neighbour lists of the complete graph, as numpy arrays (idx, edge_id) [N, N].

    Column 0 is the device itself; edge_id indexes the N*N matrix of unordered pairs
    (min * N + max), -1 on self. Used for graphs drawn afresh each round, whose edges are
    a mask over these lists.
    """
    import numpy as np

    n = num_devices
    others = np.array([[m for m in range(n) if m != i] for i in range(n)], np.int64)
    idx = np.concatenate([np.arange(n)[:, None], others.reshape(n, n - 1)], axis=1)
    lo, hi = np.minimum(idx, np.arange(n)[:, None]), np.maximum(idx, np.arange(n)[:, None])
    edge_id = lo * n + hi
    edge_id[:, 0] = -1
    return idx.astype(np.int32), edge_id.astype(np.int32)


def random_graph_mask(key: jax.Array, idx: jax.Array, kind: str, radius: jax.Array,
                      p: jax.Array) -> jax.Array:
    """bool [N, N] mask over `complete_lists` for a fresh random graph of this round.

    random_geometric: N points uniform in the unit square, an edge when closer than `radius`;
    erdos_renyi: each pair independently with probability p.
    """
    n = idx.shape[0]
    if kind == "random_geometric":
        pos = jax.random.uniform(key, (n, 2))
        d2 = jnp.sum(jnp.square(pos[:, None, :] - pos[idx]), axis=-1)
        mask = d2 <= radius ** 2
    elif kind == "erdos_renyi":
        u = jax.random.uniform(key, (n, n))
        u = jnp.triu(u, 1) + jnp.triu(u, 1).T
        mask = u[jnp.arange(n)[:, None], idx] < p
    else:
        raise ValueError(f"unknown time-varying graph {kind!r}; allowed: {TIME_VARYING}")
    return mask.at[:, 0].set(True)


def sample_delays(key: jax.Array, shape: tuple, max_delay: int, mode: str) -> jax.Array:
    """int32 delays (in rounds) of each neighbour-list entry: all `max_delay` (fixed) or
    uniform on {0, ..., max_delay} (random). Column 0 (self) is never delayed."""
    if mode == "fixed":
        d = jnp.full(shape, max_delay, jnp.int32)
    elif mode == "random":
        d = jax.random.randint(key, shape, 0, max_delay + 1, jnp.int32)
    else:
        raise ValueError(f"unknown delay mode {mode!r}; allowed: {DELAY_MODES}")
    return d.at[:, 0].set(0)


def exponential_peer_mask(idx: jax.Array, round_index: jax.Array) -> jax.Array:
    """bool [N, K] mask of the one-peer exponential graph of round k (SGP's time-varying
    graph): device i sends only to i + 2^(k mod L) mod N, L = floor(log2(N - 1)) + 1, so
    receiver n keeps the entry of sender n - 2^(k mod L) (and itself)."""
    n = idx.shape[0]
    hops = max((n - 1).bit_length(), 1)
    shift = jnp.left_shift(1, jnp.mod(round_index, hops))
    sender = jnp.mod(jnp.arange(n) - shift, n)
    mask = idx == sender[:, None]
    return mask.at[:, 0].set(True)
