"""Consensus mixing weights W (row n = device n): θ_n ← Σ_m w_nm θ_m.

Graphs may be directed after asymmetric link failures: adj[n, m] = True means n receives θ_m.
Ω_n = {m ≠ n : adj[n, m]}, Ω̄_n = Ω_n ∪ {n}, d_n = |Ω_n| (the receiver's in-degree), so every
row sums to 1 for every scheme:

- data_size:  w_nm = |D_m| / Σ_{l ∈ Ω̄_n} |D_l| for m ∈ Ω̄_n (if that sum is 0, w_nn = 1).
- metropolis: w_nm = 1 / (1 + max(d_n, d_m)) for m ∈ Ω_n, w_nn = 1 − Σ_{m ∈ Ω_n} w_nm.
- uniform:    w_nm = 1 / (d_n + 1) for m ∈ Ω̄_n.
- max_degree: w_nm = 1 / (d_max + 1) for m ∈ Ω_n, w_nn = the rest; d_max = max_n d_n.
- fedavg:     W = 1 πᵀ, π = |D| / Σ|D| (ignores the graph).
- data_size_mh: Metropolis–Hastings towards π_n ∝ |D_n|, proposal q_nm = 1 / (d_n + 1) (the
              uniform weights): w_nm = min(1 / (d_n + 1), |D_m| / (|D_n| (d_m + 1))) for
              m ∈ Ω_n, w_nn = 1 − Σ_{m ∈ Ω_n} w_nm (|D_n| = 0: w_nm = 1 / (d_n + 1)).

On an undirected graph metropolis and max_degree are symmetric, hence doubly stochastic; fedavg is
doubly stochastic iff the sizes are equal; data_size and uniform are only row stochastic.
data_size_mh is reversible on an undirected graph, |D_n| w_nm = min(|D_n| / (d_n + 1),
|D_m| / (d_m + 1)) = |D_m| w_mn, so |D|ᵀ W = |D|ᵀ: its stationary distribution is exactly the
data shares p = |D| / Σ|D| (FedAvg's weighting), on every round's graph, so it holds under
symmetric link failures and dropouts too. Its proposal is the uniform one rather than
metropolis's 1 / (1 + max(d_n, d_m)) because every off-diagonal weight is then at least as large
(Peskun order: mixes at least as fast asymptotically); both give metropolis for equal sizes, and
w_nn ≥ 1 / (d_n + 1) > 0 (aperiodic, so it converges on bipartite graphs too). A device with no
data gets π_n = 0: it takes its neighbours' models but none takes its own, so it relays nothing.
On a directed graph the formula is computed the same way (d = in-degree) but is not reversible,
so the runner refuses data_size_mh there (NEEDS_UNDIRECTED).

`mixing_matrix` is the dense float64 numpy reference. `neighbour_weights` computes the same weights
with jnp on padded neighbour lists (see graphs.neighbour_lists), traceable under jit and vmap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph
from scipy.sparse import linalg as splinalg

from p2pl_jax import graphs
from p2pl_jax.errors import ConfigError, check_choice

SCHEMES = ("data_size", "metropolis", "uniform", "max_degree", "fedavg", "data_size_mh")
DOUBLY_STOCHASTIC = ("metropolis", "max_degree")  # and fedavg when all sizes are equal
ROW_STOCHASTIC = SCHEMES
NEIGHBOUR_SCHEMES = ("data_size", "metropolis", "uniform", "max_degree", "data_size_mh")
NEEDS_UNDIRECTED = ("data_size_mh",)   # stationary = data shares only when links are two-way


def mixing_matrix(adj: np.ndarray, sizes: np.ndarray, scheme: str) -> np.ndarray:
    """Dense float64 [N, N] mixing matrix.

    adj: bool [N, N], adj[n, m] = n receives from m (may be non-symmetric; diagonal ignored).
    sizes: [N] nonnegative data set sizes |D_n| (used by data_size, data_size_mh and fedavg).
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
    if scheme == "data_size_mh":
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = sizes[None, :] / (sizes[:, None] * (deg[None, :] + 1.0))
        accept = np.where(sizes[:, None] > 0, ratio, np.inf)
        off = np.where(adj, np.minimum(1.0 / (deg[:, None] + 1.0), accept), 0.0)
    elif scheme == "metropolis":
        off = np.where(adj, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    else:  # max_degree
        off = adj / (deg.max(initial=0.0) + 1.0)
    return off + np.diag(1.0 - off.sum(axis=1))


def sparse_mixing_matrix(adj: np.ndarray | sp.sparray, sizes: np.ndarray,
                         scheme: str) -> sp.csr_array:
    """`mixing_matrix` as a float64 CSR [N, N] with N + nnz(adj) entries (the graph's and the
    diagonal), built from a dense or sparse adjacency without an N x N array (fedavg, 1 πᵀ,
    is dense by nature). Same formulas in float64; the self weights 1 − Σ w_nm may differ from
    the dense ones in the last bit (another summation order).
    """
    check_choice("mixing", scheme, SCHEMES)
    a = graphs.as_sparse(adj)
    n = a.shape[0]
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.shape != (n,) or not np.all(np.isfinite(sizes)) or np.any(sizes < 0):
        raise ConfigError(f"sizes must be {n} finite nonnegative numbers, got {sizes!r}")
    if scheme == "fedavg":
        return sp.csr_array(mixing_matrix(np.zeros((n, n), bool), sizes, scheme))
    counts = np.diff(a.indptr)
    deg = counts.astype(np.float64)
    rows, cols = np.repeat(np.arange(n), counts), a.indices
    if scheme == "uniform":
        off, diag = 1.0 / (deg[rows] + 1.0), 1.0 / (deg + 1.0)
    elif scheme == "data_size":
        denom = sizes + np.bincount(rows, sizes[cols], minlength=n)
        ok = denom > 0
        safe = np.where(ok, denom, 1.0)
        off = np.where(ok[rows], sizes[cols] / safe[rows], 0.0)
        diag = np.where(ok, sizes / safe, 1.0)
    else:
        if scheme == "data_size_mh":
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = sizes[cols] / (sizes[rows] * (deg[cols] + 1.0))
            accept = np.where(sizes[rows] > 0, ratio, np.inf)
            off = np.minimum(1.0 / (deg[rows] + 1.0), accept)
        elif scheme == "metropolis":
            off = 1.0 / (1.0 + np.maximum(deg[rows], deg[cols]))
        else:  # max_degree
            off = np.full(len(rows), 1.0 / (deg.max(initial=0.0) + 1.0))
        diag = 1.0 - np.bincount(rows, off, minlength=n)
    self_ = np.arange(n)
    w = sp.csr_array((np.concatenate([off, diag]),
                      (np.concatenate([rows, self_]), np.concatenate([cols, self_]))),
                     shape=(n, n))
    w.sort_indices()
    return w


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
        if scheme == "data_size_mh":   # deg[idx] is the neighbour's degree this round
            s_n = sizes[:, None]
            accept = jnp.where(s_n > 0, sizes[idx] / (jnp.where(s_n > 0, s_n, 1.0)
                                                       * (deg[idx] + 1.0)), jnp.inf)
            w_nb = jnp.where(nb, jnp.minimum(1.0 / (deg[:, None] + 1.0), accept), 0.0)
        elif scheme == "metropolis":
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


# Dense eigenvalues up to here (eigvals of a non-symmetric 1000 x 1000 W: ~1 s on 2 cores);
# ARPACK on the sparse W above (~0.1 s at 1000, ~1 s at 10^4).
SPECTRUM_DENSE_MAX_N = 500


def spectral_info(W: np.ndarray | sp.sparray, dense_max_n: int = SPECTRUM_DENSE_MAX_N) -> dict:
    """Spectrum summary of a row-stochastic [N, N] W (dense, or sparse: `sparse_mixing_matrix`).

    slem: second-largest eigenvalue modulus, max |λ| over the eigenvalues other than the one
    closest to 1 (only one is removed, so a disconnected graph gives slem = 1); 0 for N = 1.
    spectral_gap: 1 − slem. Up to `dense_max_n` devices (or for a dense W): all eigenvalues,
    eigvalsh when W is symmetric, eigvals otherwise. A larger sparse W: the extreme ones by
    ARPACK (`_extreme_eigenvalues`), O(nnz) memory; they agree with the dense ones to ~1e-10.
    """
    n = W.shape[0]
    if n <= 1:
        return {"slem": 0.0, "spectral_gap": 1.0}
    if sp.issparse(W) and n > dense_max_n:
        lam = _extreme_eigenvalues(sp.csr_array(W, dtype=np.float64))
    else:
        W = W.toarray() if sp.issparse(W) else W
        W = np.asarray(W, dtype=np.float64)
        lam = np.linalg.eigvalsh(W) if np.allclose(W, W.T, atol=1e-12) else np.linalg.eigvals(W)
    lam = np.delete(lam, np.argmin(np.abs(lam - 1.0)))
    slem = float(np.max(np.abs(lam)))
    return {"slem": slem, "spectral_gap": 1.0 - slem}


def _extreme_eigenvalues(W: sp.csr_array) -> np.ndarray:
    """Eigenvalues of a sparse row-stochastic W that contain its SLEM (N > 3).

    Disconnected (as an undirected graph): [1, 1]. Symmetric, or reversible (then D W D⁻¹ is,
    D = diag(√π)): the two largest by shift-invert Lanczos at 1 + 1e-6 (one sparse LU; plain
    Lanczos needs ~1/√gap steps, and the gap of a random geometric graph is ~1e-4 at 10^5
    nodes) and the smallest by plain Lanczos (well separated). Otherwise (a directed graph):
    the three of largest modulus by Arnoldi.
    """
    pattern = W.astype(bool)
    if csgraph.connected_components(pattern, directed=True, connection="weak")[0] > 1:
        return np.ones(2)
    diff, scale = abs(W - W.T), abs(W.T)
    sym = W if (diff - 1e-5 * scale).max() <= 1e-12 else _symmetrized(W)
    if sym is None:
        return splinalg.eigs(W, k=3, which="LM", return_eigenvectors=False)
    try:
        top = splinalg.eigsh(sym, k=2, sigma=1.0 + 1e-6, which="LM", return_eigenvectors=False)
    except RuntimeError:   # singular LU
        top = splinalg.eigsh(sym, k=2, which="LA", return_eigenvectors=False)
    bottom = splinalg.eigsh(sym, k=1, which="SA", return_eigenvectors=False)
    return np.concatenate([top, bottom])


def _symmetrized(W: sp.csr_array) -> sp.csr_array | None:
    """D W D⁻¹ (symmetric, same eigenvalues as W), D = diag(√π), when W is reversible: a
    connected symmetric pattern of positive off-diagonal weights and π_n w_nm = π_m w_mn (π
    propagated along a BFS tree by π_m / π_n = w_nm / w_mn, then checked on every edge to
    1e-9); None otherwise."""
    n = W.shape[0]
    off = W.copy()
    off.setdiag(0.0)
    off.eliminate_zeros()
    if np.any(off.data < 0) or (off.astype(bool) != off.T.astype(bool)).nnz:
        return None
    off.sort_indices()
    off_t = sp.csr_array(off.T)
    off_t.sort_indices()   # same pattern: off_t.data[i] = w_mn for off.data[i] = w_nm
    order, pred = csgraph.breadth_first_order(off, 0, directed=True, return_predecessors=True)
    keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(off.indptr)) * n + off.indices
    child = order[1:]
    at = np.searchsorted(keys, pred[child].astype(np.int64) * n + child)
    step = (np.log(off.data[at]) - np.log(off_t.data[at])).tolist()   # log π_child / π_parent
    log_pi = [0.0] * n
    parent = pred.tolist()
    for m, s in zip(child.tolist(), step):
        log_pi[m] = log_pi[parent[m]] + s
    root_pi = np.exp(0.5 * (np.asarray(log_pi) - max(log_pi)))   # √π, up to a factor
    flow = sp.diags_array(root_pi**2) @ off   # π_n w_nm
    if (abs(flow - flow.T) - 1e-9 * abs(flow)).max() > 0:
        return None
    sym = sp.diags_array(root_pi) @ off @ sp.diags_array(1.0 / root_pi)
    sym = 0.5 * (sym + sym.T) + sp.diags_array(W.diagonal())
    return sp.csr_array(sym)


def stationary_distribution(W: np.ndarray) -> np.ndarray:
    """The left Perron vector π of a row-stochastic W (πᵀ W = πᵀ, π ≥ 0, Σ π = 1).

    Repeated mixing alone (no local training) drives every θ_n to Σ_m π_m θ_m(0) on a connected
    graph, so π is how much each device's model counts in the consensus: uniform for doubly
    stochastic W; for data_size weights on an undirected graph π_n ∝ |D_n| Σ_{l ∈ Ω̄_n} |D_l|
    (W is reversible); for data_size_mh π = |D| / Σ|D| exactly. Computed as the null vector of
    (W − I)ᵀ by SVD (float64).
    """
    W = np.asarray(W, dtype=np.float64)
    _, _, vt = np.linalg.svd(W.T - np.eye(W.shape[0]))
    pi = np.abs(vt[-1])
    return pi / pi.sum()
