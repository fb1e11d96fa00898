"""Consensus mixing weights W (row n = device n): θ_n ← Σ_m w_nm θ_m.

Graphs may be directed after asymmetric link failures: adj[n, m] = True means n receives θ_m.
Ω_n = {m ≠ n : adj[n, m]}, Ω̄_n = Ω_n ∪ {n}, d_n = |Ω_n| (the receiver's in-degree), so every
row sums to 1 for every scheme:

- data_size:  w_nm = |D_m| / Σ_{l ∈ Ω̄_n} |D_l| for m ∈ Ω̄_n (if that sum is 0, w_nn = 1).
- metropolis: w_nm = 1 / (1 + max(d_n, d_m)) for m ∈ Ω_n, w_nn = 1 − Σ_{m ∈ Ω_n} w_nm.
- uniform:    w_nm = 1 / (d_n + 1) for m ∈ Ω̄_n.
- max_degree: w_nm = 1 / (d_max + 1) for m ∈ Ω_n, w_nn = the rest; d_max = max_n d_n.
- fedavg:     W = 1 πᵀ, π = |D| / Σ|D| (ignores the graph).

On an undirected graph metropolis and max_degree are symmetric, hence doubly stochastic; fedavg is
doubly stochastic iff the sizes are equal; data_size and uniform are only row stochastic.

`mixing_matrix` is the dense float64 numpy reference. `neighbour_weights` computes the same weights
with jnp on padded neighbour lists (see graphs.neighbour_lists), traceable under jit and vmap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from p2pl_jax.errors import ConfigError, check_choice

SCHEMES = ("data_size", "metropolis", "uniform", "max_degree", "fedavg")
DOUBLY_STOCHASTIC = ("metropolis", "max_degree")  # and fedavg when all sizes are equal
ROW_STOCHASTIC = SCHEMES
NEIGHBOUR_SCHEMES = ("data_size", "metropolis", "uniform", "max_degree")


def mixing_matrix(adj: np.ndarray, sizes: np.ndarray, scheme: str) -> np.ndarray:
    """Dense float64 [N, N] mixing matrix.

    adj: bool [N, N], adj[n, m] = n receives from m (may be non-symmetric; diagonal ignored).
    sizes: [N] nonnegative data set sizes |D_n| (used by data_size and fedavg).
    """
    check_choice("mixing", scheme, SCHEMES)
    adj = np.asarray(adj, dtype=bool).copy()
    np.fill_diagonal(adj, False)
    n = adj.shape[0]
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.shape != (n,) or not np.all(np.isfinite(sizes)) or np.any(sizes < 0):
        raise ConfigError(f"sizes must be {n} finite nonnegative numbers, got {sizes!r}")
    eye = np.eye(n, dtype=bool)
    deg = adj.sum(axis=1).astype(np.float64)
    if scheme == "fedavg":
        total = sizes.sum()
        if total <= 0:
            raise ConfigError("mixing='fedavg' needs a positive total data size")
        return np.tile(sizes / total, (n, 1))
    if scheme == "uniform":
        return (adj | eye) / (deg[:, None] + 1.0)
    if scheme == "data_size":
        w = np.where(adj | eye, sizes[None, :], 0.0)
        denom = w.sum(axis=1, keepdims=True)
        return np.where(denom > 0, w / np.where(denom > 0, denom, 1.0), eye.astype(np.float64))
    if scheme == "metropolis":
        off = np.where(adj, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    else:  # max_degree
        off = adj / (deg.max(initial=0.0) + 1.0)
    return off + np.diag(1.0 - off.sum(axis=1))


def neighbour_weights(idx: jax.Array, valid: jax.Array, sizes: jax.Array,
                      scheme: str) -> jax.Array:
    """float32 [N, K] mixing weights on padded neighbour lists; jit/vmap traceable.

    idx: int32 [N, K], idx[n, 0] = n (self), idx[n, k] = a possible neighbour of n.
    valid: bool [N, K], valid[n, k] = n receives θ_{idx[n, k]} this round (k >= 1).
    sizes: [N] nonnegative |D_n|.
    Returns w with w[n, k] = w_{n, idx[n, k]} of `mixing_matrix` on the graph whose edges are the
    valid entries; 0 where invalid. Column 0 holds the self weight and is always used (valid[:, 0]
    is ignored: a device always keeps its own parameters); entries other than column 0 equal to n
    are ignored. d_n = number of valid non-self entries of row n; max_degree uses max_n d_n.
    `scheme` must be static. "fedavg" is rejected (ConfigError): it is a global average with no
    neighbour-list form, applied by the simulator directly as W = 1 πᵀ.
    """
    check_choice("mixing (neighbour scheme)", scheme, NEIGHBOUR_SCHEMES)
    idx = jnp.asarray(idx)
    n = idx.shape[0]
    nb = jnp.asarray(valid, bool) & (idx != jnp.arange(n)[:, None])  # Ω_n, column 0 False
    deg = nb.sum(axis=1).astype(jnp.float32)
    sizes = jnp.asarray(sizes, jnp.float32)
    if scheme == "uniform":
        w_nb = nb / (deg[:, None] + 1.0)
        w_self = 1.0 / (deg + 1.0)
    elif scheme == "data_size":
        s_nb = jnp.where(nb, sizes[idx], 0.0)
        denom = s_nb.sum(axis=1) + sizes
        ok = denom > 0
        safe = jnp.where(ok, denom, 1.0)
        w_nb = jnp.where(ok[:, None], s_nb / safe[:, None], 0.0)
        w_self = jnp.where(ok, sizes / safe, 1.0)
    else:
        if scheme == "metropolis":
            w_nb = jnp.where(nb, 1.0 / (1.0 + jnp.maximum(deg[:, None], deg[idx])), 0.0)
        else:  # max_degree
            w_nb = nb / (deg.max() + 1.0)
        w_self = 1.0 - w_nb.sum(axis=1)
    return w_nb.astype(jnp.float32).at[:, 0].add(w_self.astype(jnp.float32))


def column_weights(idx: jax.Array, valid: jax.Array, rev: jax.Array, sizes: jax.Array,
                   scheme: str, delivered: jax.Array | None = None) -> jax.Array:
    """float32 [N, K] column-stochastic weights on the receivers' lists (push-sum).

    Every sender m splits its mass over its closed out-neighbourhood with the weights `scheme`
    gives a receiver over its closed in-neighbourhood (so W is the scheme on the reversed graph,
    transposed: column m sums to 1). valid[n, k]: idx[n, k] sends to n this round; rev:
    `simulation.reverse_positions` of idx (lists of an undirected structure). delivered (a
    subset of valid, default valid): the messages that arrive; the share of one that does not
    is kept by its sender (acknowledged push-sum: mass is conserved). Returns P with
    P[n, k] = the share sender idx[n, k] gives n (P[n, 0] = what n keeps; 0 elsewhere).
    """
    idx = jnp.asarray(idx)
    n = idx.shape[0]
    valid = jnp.asarray(valid, bool)
    delivered = valid if delivered is None else jnp.asarray(delivered, bool)
    cols = jnp.arange(idx.shape[1])[None, :]
    not_self = idx != jnp.arange(n)[:, None]
    # out_of[m, j]: m sends to idx[m, j] (m is in the receiver's list at position rev[m, j]).
    out_of = lambda mask: (rev > 0) & mask[idx, rev]
    w_out = neighbour_weights(idx, out_of(valid) | (cols == 0), sizes, scheme)
    lost = jnp.sum(jnp.where(out_of(valid & ~delivered) & (cols > 0), w_out, 0.0), axis=1)
    given = jnp.where(delivered & not_self, w_out[idx, rev], 0.0)
    return jnp.where(cols == 0, (w_out[:, 0] + lost)[:, None], given).astype(jnp.float32)


def dense_from_lists(idx: jax.Array, weights: jax.Array, num_devices: int) -> jax.Array:
    """Scatter-adds [N, K] list weights into a dense [N, N] W: W[n, idx[n, k]] += weights[n, k]."""
    rows = jnp.broadcast_to(jnp.arange(idx.shape[0])[:, None], idx.shape)
    return jnp.zeros((num_devices, num_devices), weights.dtype).at[rows, idx].add(weights)


def spectral_info(W: np.ndarray) -> dict:
    """Spectrum summary of a row-stochastic [N, N] W.

    slem: second-largest eigenvalue modulus, max |λ| over the eigenvalues other than the one
    closest to 1 (only one is removed, so a disconnected graph gives slem = 1); 0 for N = 1.
    spectral_gap: 1 − slem. Uses eigvalsh when W is symmetric, eigvals otherwise.
    """
    W = np.asarray(W, dtype=np.float64)
    if W.shape[0] <= 1:
        return {"slem": 0.0, "spectral_gap": 1.0}
    lam = np.linalg.eigvalsh(W) if np.allclose(W, W.T, atol=1e-12) else np.linalg.eigvals(W)
    lam = np.delete(lam, np.argmin(np.abs(lam - 1.0)))
    slem = float(np.max(np.abs(lam)))
    return {"slem": slem, "spectral_gap": 1.0 - slem}


def stationary_distribution(W: np.ndarray) -> np.ndarray:
    """The left Perron vector π of a row-stochastic W (πᵀ W = πᵀ, π ≥ 0, Σ π = 1).

    Repeated mixing alone (no local training) drives every θ_n to Σ_m π_m θ_m(0) on a connected
    graph, so π is how much each device's model counts in the consensus: uniform for doubly
    stochastic W; for data_size weights on an undirected graph π_n ∝ |D_n| Σ_{l ∈ Ω̄_n} |D_l|
    (W is reversible). Computed as the null vector of (W − I)ᵀ by SVD (float64).
    """
    W = np.asarray(W, dtype=np.float64)
    _, _, vt = np.linalg.svd(W.T - np.eye(W.shape[0]))
    pi = np.abs(vt[-1])
    return pi / pi.sum()
