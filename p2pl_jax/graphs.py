"""Communication graphs (host side, networkx + numpy).

A graph G = (V, E) on N devices is undirected, has nodes 0..N-1 and no self loops. The simulator
uses three host-side views of it:

- `adjacency(G)`: bool [N, N], adj[n, m] = True iff {n, m} ∈ E (symmetric, zero diagonal).
- `edges(adj)`: int32 [E, 2], one row (i, j) with i < j per undirected edge, sorted
  lexicographically. Link failures are sampled per row of this array.
- `neighbour_lists(adj)`: padded closed neighbourhoods Ω̄_n as fixed-shape [N, K] arrays, so the
  jitted round can gather neighbour parameters with `theta[idx]` and mask with `valid`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable

import networkx as nx
import numpy as np
import scipy.sparse as sp
from absl import logging
from scipy.sparse import csgraph

from p2pl_jax.errors import ConfigError, check_choice, check_range

TOPOLOGIES = (
    "complete", "cycle", "path", "star", "grid", "torus", "random_geometric", "erdos_renyi",
    "watts_strogatz", "barabasi_albert", "random_regular", "edgelist", "exponential",
)
DIRECTED = ("exponential",)   # always directed; edgelist is directed with directed=True
# Topologies drawn from `seed` (the others ignore it); graph_resample applies to these only.
RANDOM_TOPOLOGIES = ("random_geometric", "erdos_renyi", "watts_strogatz", "barabasi_albert",
                     "random_regular")
RESAMPLE_STRIDE = 1000   # graph seed = seed + RESAMPLE_STRIDE * k, k = 0, 1, ...
MAX_RESAMPLES = 100
# The parameter that makes a disconnected graph of each topology denser.
DENSER = {"random_geometric": "a larger graph_radius", "erdos_renyi": "a larger graph_p",
          "watts_strogatz": "a larger graph_k", "random_regular": "a larger graph_degree",
          "edgelist": "an edge list that links every device"}

# Smallest num_devices each topology accepts.
_MIN_DEVICES = {"exponential": 2, "cycle": 3, "star": 2, "watts_strogatz": 2, "barabasi_albert": 2,
                "random_regular": 2, "edgelist": 2}


def _default_rows(n: int) -> int:
    """The largest divisor of n that is <= sqrt(n)."""
    return max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)


def _grid(n: int, rows: int | None, periodic: bool) -> nx.Graph:
    if rows is None:
        rows = _default_rows(n)
    check_range("graph_rows", rows, 1, n, integer=True)
    rows = int(rows)
    if n % rows:
        raise ConfigError(f"graph_rows={rows} must divide num_devices={n} "
                          f"(a grid needs graph_rows * cols == num_devices)")
    g = nx.grid_2d_graph(rows, n // rows, periodic=periodic)
    return nx.convert_node_labels_to_integers(g, ordering="sorted")  # row-major: r * cols + c


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# What an edge-list file holds (quoted in the errors about it).
EDGELIST_FORMAT = ("a text file, one 'u v' pair of integer node ids per line, '#' starts a "
                   "comment")
_GZIP_MAGIC = b"\x1f\x8b"


def _edgelist_lines(path: str) -> list[str]:
    """The lines of a text edge list; ConfigError naming the file for a binary one."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig").splitlines()   # a byte-order mark is not a node id
    except UnicodeDecodeError as e:
        hint = (" (it is gzip-compressed: decompress it first, e.g. `gunzip -k`)"
                if raw.startswith(_GZIP_MAGIC) else "")
        raise ConfigError(f"edgelist_path={path!r} is not a text file{hint}: byte {e.start} is "
                          f"not UTF-8; expected {EDGELIST_FORMAT}") from None


def _read_edgelist(path: str | None, n: int, directed: bool = False) -> nx.Graph:
    if path is None or not str(path).strip():
        raise ConfigError("topology='edgelist' needs edgelist_path "
                          "(a text file, one 'u v' per line)")
    if not os.path.isfile(path):
        raise ConfigError(f"edgelist_path={path!r}: file not found")
    g = nx.empty_graph(n, create_using=nx.DiGraph if directed else nx.Graph)
    duplicates, first_duplicate = 0, None
    for lineno, raw in enumerate(_edgelist_lines(path), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not all(_is_int(x) for x in parts):
            raise ConfigError(f"edgelist_path={path!r} line {lineno}: expected two integer "
                              f"node ids 'u v', got {raw.strip()!r}")
        u, v = int(parts[0]), int(parts[1])
        if not (0 <= u < n and 0 <= v < n):
            raise ConfigError(f"edgelist_path={path!r} line {lineno}: node id out of range; "
                              f"allowed: 0..{n - 1} (num_devices={n})")
        if u == v:
            raise ConfigError(f"edgelist_path={path!r} line {lineno}: self loop {u}-{v} "
                              f"is not allowed")
        if g.has_edge(u, v):   # undirected: also v u listed before
            duplicates += 1
            first_duplicate = first_duplicate or (lineno, u, v)
            continue
        g.add_edge(u, v)
    if g.number_of_edges() == 0:
        raise ConfigError(f"edgelist_path={path!r} holds no edges")
    if duplicates:
        lineno, u, v = first_duplicate
        logging.warning(
            "edgelist_path=%r: dropped %d duplicate edge(s), each an edge listed before (the "
            "first on line %d: '%d %d'; %s); every edge is used once: %d distinct edges",
            path, duplicates, lineno, u, v,
            "in a directed list 'u v' and 'v u' are two edges" if directed
            else "'u v' and 'v u' are the same undirected edge", g.number_of_edges())
    return g


def make_graph(topology: str, num_devices: int, *, seed: int = 0, radius: float = 0.2,
               p: float = 0.1, k: int = 4, m: int = 2, degree: int = 4,
               grid_rows: int | None = None, edgelist_path: str | None = None,
               allow_disconnected: bool = False, directed: bool = False) -> nx.Graph:
    """Builds the communication graph.

    Returns an undirected nx.Graph with nodes 0..N-1 (N = num_devices) and no self loops, or
    an nx.DiGraph (edge u -> v: u sends to v) for topology=exponential (i -> i + 2^k mod N,
    2^k < N, the graph SGP uses) and for an edge list read with directed=True ("u v" = u
    sends to v). A directed graph must be strongly connected.
    Random topologies are reproducible from `seed`. Parameters (config field in brackets):
    radius [graph_radius] for random_geometric (nodes uniform in the unit square, edge iff
    Euclidean distance <= radius); p [graph_p] for erdos_renyi and the rewiring probability of
    watts_strogatz; k [graph_k] ring-lattice degree of watts_strogatz (even, < N); m [graph_m]
    edges per new node of barabasi_albert (1 <= m < N); degree [graph_degree] of random_regular
    (0 <= degree < N, N * degree even); grid_rows [graph_rows] for grid/torus (must divide N;
    default the largest divisor <= sqrt(N)); edgelist_path for edgelist (see below). Raises
    ConfigError on bad parameters and, unless allow_disconnected, on a disconnected graph.

    The edge list (topology=edgelist) is a UTF-8 text file with one "u v" pair of integer node
    ids (0 <= u, v < N) per line; '#' starts a comment, blank lines are skipped. An edge listed
    more than once (the same "u v" again, or "v u" after "u v" in an undirected list; in a
    directed list "u v" and "v u" are two edges) is kept once (the later listings are dropped),
    with a logged warning naming the file and how many duplicates were dropped. A self loop
    "u u", a malformed line, a node id out of range, a binary (e.g. gzip-compressed) file or a
    file with no edges is a ConfigError naming the file (and the line).
    """
    check_choice("topology", topology, TOPOLOGIES)
    check_range("num_devices", num_devices, _MIN_DEVICES.get(topology, 1), integer=True)
    n = int(num_devices)
    if topology == "complete":
        g = nx.complete_graph(n)
    elif topology == "cycle":
        g = nx.cycle_graph(n)
    elif topology == "path":
        g = nx.path_graph(n)
    elif topology == "star":
        g = nx.star_graph(n - 1)
    elif topology in ("grid", "torus"):
        g = _grid(n, grid_rows, periodic=topology == "torus")
    elif topology == "random_geometric":
        check_range("graph_radius", radius, 0, lo_open=True)
        g = nx.random_geometric_graph(n, radius, dim=2, seed=seed)
    elif topology == "erdos_renyi":
        check_range("graph_p", p, 0, 1)
        g = nx.erdos_renyi_graph(n, p, seed=seed)
    elif topology == "watts_strogatz":
        check_range("graph_p", p, 0, 1)
        check_range("graph_k", k, 0, n, integer=True, hi_open=True)
        if k % 2:
            raise ConfigError(f"graph_k={k} must be even for topology='watts_strogatz'")
        g = nx.watts_strogatz_graph(n, int(k), p, seed=seed)
    elif topology == "barabasi_albert":
        check_range("graph_m", m, 1, n, integer=True, hi_open=True)
        g = nx.barabasi_albert_graph(n, int(m), seed=seed)
    elif topology == "random_regular":
        check_range("graph_degree", degree, 0, n, integer=True, hi_open=True)
        if (n * degree) % 2:
            raise ConfigError(f"graph_degree={degree} with num_devices={n}: "
                              f"num_devices * graph_degree must be even for random_regular")
        g = nx.random_regular_graph(int(degree), n, seed=seed)
    elif topology == "exponential":
        g = nx.DiGraph()
        g.add_nodes_from(range(n))
        g.add_edges_from((i, (i + 2 ** j) % n) for i in range(n)
                         for j in range((n - 1).bit_length()) if (i + 2 ** j) % n != i)
    else:  # edgelist
        g = _read_edgelist(edgelist_path, n, directed)

    pos = nx.get_node_attributes(g, "pos") if topology == "random_geometric" else None
    kind = nx.DiGraph if g.is_directed() else nx.Graph
    g = kind(g)  # plain copy, drops node positions and other attributes' views
    if pos:   # the unit square's points (channel=wireless scales them to the area)
        g.graph["positions"] = tuple(tuple(float(v) for v in pos[i]) for i in sorted(pos))
    g.remove_edges_from(list(nx.selfloop_edges(g)))
    g = nx.relabel_nodes(g, {old: new for new, old in enumerate(sorted(g.nodes))})
    comps = (nx.number_strongly_connected_components(g) if g.is_directed()
             else nx.number_connected_components(g))
    if comps > 1 and not allow_disconnected:
        hint = DENSER.get(topology, "a denser topology")
        raise ConfigError(f"topology={topology!r} with num_devices={n} gave a disconnected graph "
                          f"({comps} {'strongly connected ' if g.is_directed() else ''}"
                          f"components); consensus cannot reach every device. Try {hint}, "
                          f"another seed, or allow_disconnected=True")
    return g


def first_connected(build: Callable[[int], nx.Graph], seed: int,
                    tries: int) -> tuple[nx.Graph, int, int]:
    """The resample rule: (graph, graph seed, components) of the first connected
    `build(seed + RESAMPLE_STRIDE * k)` for k = 0 .. tries - 1, else of the last one tried."""
    for k in range(tries):
        graph_seed = seed + RESAMPLE_STRIDE * k
        g = build(graph_seed)
        comps = nx.number_connected_components(g)
        if comps == 1:
            break
    return g, graph_seed, comps


def resampled_graph(topology: str, num_devices: int, *, seed: int = 0,
                    tries: int = MAX_RESAMPLES, **kwargs) -> tuple[nx.Graph, int]:
    """(graph, graph_seed): the first connected `make_graph(topology, num_devices,
    seed=seed + RESAMPLE_STRIDE * k, **kwargs)` for k = 0, 1, ..., tries - 1 (the config's
    graph_resample=True). A deterministic rule, so no seed is skipped or picked by hand: the
    graph seed is recorded in summary.json. Only for RANDOM_TOPOLOGIES (ConfigError otherwise);
    ConfigError naming the topology's density parameter and num_devices when all `tries`
    graphs are disconnected.
    """
    check_choice("topology (with graph_resample=True)", topology, RANDOM_TOPOLOGIES)
    kwargs = {**kwargs, "allow_disconnected": True}
    g, graph_seed, _ = first_connected(
        lambda s: make_graph(topology, num_devices, seed=s, **kwargs), seed, tries)
    if nx.is_connected(g):
        return g, graph_seed
    raise ConfigError(
        f"graph_resample=True: topology={topology!r} with num_devices={num_devices} gave a "
        f"disconnected graph for all {tries} graph seeds seed + {RESAMPLE_STRIDE} k (seed="
        f"{seed}, k = 0..{tries - 1}); the graph is rarely connected with these parameters. "
        f"Try {DENSER.get(topology, 'a denser topology')} or more devices")


def adjacency(graph: nx.Graph) -> np.ndarray:
    """bool [N, N] adjacency of a graph with nodes 0..N-1, zero diagonal: symmetric for an
    undirected graph; for a directed one adj[n, m] = True iff m -> n (n receives from m)."""
    n = graph.number_of_nodes()
    adj = nx.to_numpy_array(graph, nodelist=range(n), dtype=float) != 0
    adj = adj.T if graph.is_directed() else adj | adj.T
    np.fill_diagonal(adj, False)
    return adj


def sparse_adjacency(graph: nx.Graph) -> sp.csr_array:
    """The matrix of `adjacency` as a bool CSR array (sorted indices, no diagonal), built from
    the edge list: O(N + E) memory, never N x N."""
    n = graph.number_of_nodes()
    pairs = np.fromiter((v for e in graph.edges() for v in e), np.int64,
                        2 * graph.number_of_edges()).reshape(-1, 2)
    recv, send = pairs[:, 1], pairs[:, 0]   # directed u -> v: adj[v, u]
    if not graph.is_directed():
        recv, send = np.concatenate([recv, send]), np.concatenate([send, recv])
    return as_sparse(sp.coo_array((np.ones(len(recv), bool), (recv, send)), shape=(n, n)))


def as_sparse(adj: np.ndarray | sp.sparray | sp.spmatrix) -> sp.csr_array:
    """bool CSR [N, N] of a dense or sparse adjacency: canonical (sorted, no duplicates), no
    stored False, zero diagonal."""
    a = sp.csr_array(adj, dtype=bool, copy=True)
    a.setdiag(False)
    a.eliminate_zeros()
    a.sum_duplicates()
    a.sort_indices()
    return a


def is_symmetric(adj: np.ndarray | sp.sparray) -> bool:
    """Whether a (dense or sparse) adjacency is symmetric (an undirected graph)."""
    if not sp.issparse(adj):
        adj = np.asarray(adj, bool)
        return bool(np.array_equal(adj, adj.T))
    a = as_sparse(adj)
    return (a != a.T).nnz == 0


def num_edges(adj: np.ndarray | sp.sparray) -> int:
    """Undirected pairs {n, m}, n != m, joined in either direction."""
    a = as_sparse(adj)
    return int((a + a.T).nnz // 2)


# Work budget of the diameter, in edge visits (N + nnz per BFS): ~5 s of csgraph BFS on 2 cores.
DIAMETER_MAX_WORK = 2 * 10**8
DIAMETER_EXACT_N = 2000   # up to here the diameter is always computed, whatever it costs


def _bfs_distances(a: sp.csr_array, sources: np.ndarray) -> np.ndarray:
    """float64 [S, N] hop distances (inf: unreachable) from `sources` along a[s, t] (s -> t)."""
    return csgraph.shortest_path(a, directed=True, unweighted=True, indices=sources)


def diameter(graph: nx.Graph | np.ndarray | sp.sparray,
             max_work: float = math.inf) -> int | None:
    """Longest shortest path; the max over connected components (0 for a single node).

    graph: an undirected nx.Graph, or a symmetric dense or sparse adjacency. Exact, by the
    bounding-diameters algorithm (Takes & Kosters 2011) on scipy's csgraph BFS: the
    eccentricity e(v) of a BFS source bounds every w in its component, max(d(v, w),
    e(v) - d(v, w)) <= e(w) <= e(v) + d(v, w); a node whose upper bound is at most the largest
    eccentricity found cannot raise it. Most sparse random graphs need tens of BFS (a random
    geometric graph of 10^5 nodes: 13); vertex-transitive ones (cycle, torus) need N. Memory
    O(N + E). Returns None when the BFS would visit more than `max_work` edges.
    """
    a = sparse_adjacency(graph) if isinstance(graph, nx.Graph) else as_sparse(graph)
    n = a.shape[0]
    if n <= 1 or a.nnz == 0:
        return 0
    if a.nnz == n * (n - 1):
        return 1   # complete
    a = sp.csr_array(a, dtype=np.float64)
    lower, upper = np.zeros(n), np.full(n, np.inf)
    candidates = np.ones(n, bool)
    best, work, pick_upper = 0.0, 0, True
    while candidates.any():
        if work + n + a.nnz > max_work:
            return None
        work += n + a.nnz
        c = np.flatnonzero(candidates)
        v = c[np.argmax(upper[c])] if pick_upper else c[np.argmin(lower[c])]
        pick_upper = not pick_upper   # alternate periphery and centre, as Takes & Kosters
        d = _bfs_distances(a, np.array([v]))[0]
        seen = np.isfinite(d)
        ecc = d[seen].max()
        best = max(best, ecc)
        lower[seen] = np.maximum(lower[seen], np.maximum(d[seen], ecc - d[seen]))
        upper[seen] = np.minimum(upper[seen], ecc + d[seen])
        candidates &= upper > best
        candidates[v] = False
    return int(best)


def directed_diameter(adj: np.ndarray | sp.sparray, max_work: float = math.inf) -> int | None:
    """The longest shortest path along the edges of a directed graph (adj[n, m]: m -> n; the
    maximum over ordered pairs is the same for either orientation), or None when it is not
    strongly connected or all-pairs BFS (chunked over sources, O(2^22) distances at a time)
    would visit more than `max_work` edges."""
    a = as_sparse(adj)
    n = a.shape[0]
    if n <= 1:
        return 0
    if csgraph.connected_components(a, directed=True, connection="strong")[0] > 1:
        return None
    if n * (n + a.nnz) > max_work:
        return None
    a = sp.csr_array(a, dtype=np.float64)
    chunk = max(1, (1 << 22) // n)
    return int(max(_bfs_distances(a, np.arange(s, min(n, s + chunk))).max()
                   for s in range(0, n, chunk)))


def edges(adj: np.ndarray | sp.sparray) -> np.ndarray:
    """int32 [E, 2] undirected edges (i, j), i < j, sorted; of adj | adj.T if adj is directed.
    adj: dense bool [N, N] or sparse."""
    a = as_sparse(adj)
    upper = sp.triu(a + a.T, k=1, format="csr")
    upper.sort_indices()
    rows = np.repeat(np.arange(a.shape[0]), np.diff(upper.indptr))
    return np.stack([rows, upper.indices], axis=1).astype(np.int32).reshape(-1, 2)


@dataclasses.dataclass(frozen=True)
class NeighbourLists:
    """Padded closed neighbourhoods, K = max degree + 1.

    idx: int32 [N, K]; idx[n, 0] = n, then n's neighbours in increasing order, then padding that
        repeats n.
    valid: bool [N, K]; True for column 0 (self) and real neighbours, False for padding.
    edge_id: int32 [N, K]; row of `edges(adj)` holding the edge {n, idx[n, k]}; -1 for self and
        padding.
    """

    idx: np.ndarray
    valid: np.ndarray
    edge_id: np.ndarray


def neighbour_lists(adj: np.ndarray | sp.sparray) -> NeighbourLists:
    """Padded neighbour lists of a dense bool [N, N] or sparse adjacency (row n lists the m
    with adj[n, m]); O(N K + E) memory."""
    a = as_sparse(adj)
    n = a.shape[0]
    deg = np.diff(a.indptr)
    k_max = int(deg.max(initial=0))
    rows = np.repeat(np.arange(n), deg)
    cols = np.arange(a.nnz) - a.indptr[rows] + 1   # column in the list (0 is self)
    idx = np.repeat(np.arange(n, dtype=np.int32)[:, None], k_max + 1, axis=1)
    idx[rows, cols] = a.indices
    valid = np.zeros(idx.shape, bool)
    valid[:, 0] = True
    valid[rows, cols] = True
    e = edges(a).astype(np.int64)
    lo, hi = np.minimum(rows, a.indices), np.maximum(rows, a.indices)
    edge_id = np.full(idx.shape, -1, np.int32)
    edge_id[rows, cols] = np.searchsorted(e[:, 0] * n + e[:, 1], lo.astype(np.int64) * n + hi)
    return NeighbourLists(idx=idx, valid=valid, edge_id=edge_id)
