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

import networkx as nx
import numpy as np
from absl import logging

from p2pl_jax.errors import ConfigError, check_choice, check_range

TOPOLOGIES = (
    "complete", "cycle", "path", "star", "grid", "torus", "random_geometric", "erdos_renyi",
    "watts_strogatz", "barabasi_albert", "random_regular", "edgelist", "exponential",
)
DIRECTED = ("exponential",)   # always directed; edgelist is directed with directed=True

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

    kind = nx.DiGraph if g.is_directed() else nx.Graph
    g = kind(g)  # plain copy, drops node positions and other attributes' views
    g.remove_edges_from(list(nx.selfloop_edges(g)))
    g = nx.relabel_nodes(g, {old: new for new, old in enumerate(sorted(g.nodes))})
    comps = (nx.number_strongly_connected_components(g) if g.is_directed()
             else nx.number_connected_components(g))
    if comps > 1 and not allow_disconnected:
        hint = {"random_geometric": "a larger graph_radius", "erdos_renyi": "a larger graph_p",
                "watts_strogatz": "a larger graph_k", "random_regular": "a larger graph_degree",
                "edgelist": "an edge list that links every device"}
        hint = hint.get(topology, "a denser topology")
        raise ConfigError(f"topology={topology!r} with num_devices={n} gave a disconnected graph "
                          f"({comps} {'strongly connected ' if g.is_directed() else ''}"
                          f"components); consensus cannot reach every device. Try {hint}, "
                          f"another seed, or allow_disconnected=True")
    return g


def adjacency(graph: nx.Graph) -> np.ndarray:
    """bool [N, N] adjacency of a graph with nodes 0..N-1, zero diagonal: symmetric for an
    undirected graph; for a directed one adj[n, m] = True iff m -> n (n receives from m)."""
    n = graph.number_of_nodes()
    adj = nx.to_numpy_array(graph, nodelist=range(n), dtype=float) != 0
    adj = adj.T if graph.is_directed() else adj | adj.T
    np.fill_diagonal(adj, False)
    return adj


def diameter(graph: nx.Graph) -> int:
    """Longest shortest path; the max over connected components (0 for a single node)."""
    return max((nx.diameter(graph.subgraph(c)) for c in nx.connected_components(graph)), default=0)


def edges(adj: np.ndarray) -> np.ndarray:
    """int32 [E, 2] undirected edges (i, j), i < j, sorted; of adj | adj.T if adj is directed."""
    adj = np.asarray(adj, dtype=bool)
    return np.argwhere(np.triu(adj | adj.T, k=1)).astype(np.int32)


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


def neighbour_lists(adj: np.ndarray) -> NeighbourLists:
    """Padded neighbour lists of a bool [N, N] adjacency (row n lists the m with adj[n, m])."""
    adj = np.asarray(adj, dtype=bool).copy()
    np.fill_diagonal(adj, False)
    n = adj.shape[0]
    k_max = int(adj.sum(axis=1).max(initial=0))
    order = np.argsort(~adj, axis=1, kind="stable")[:, :k_max]  # neighbours first, ascending
    nb_valid = np.take_along_axis(adj, order, axis=1)
    self_col = np.arange(n)[:, None]
    idx = np.concatenate([self_col, np.where(nb_valid, order, self_col)], axis=1).astype(np.int32)
    valid = np.concatenate([np.ones((n, 1), bool), nb_valid], axis=1)
    e = edges(adj)
    eid = np.full((n, n), -1, np.int32)
    eid[e[:, 0], e[:, 1]] = np.arange(len(e), dtype=np.int32)
    eid[e[:, 1], e[:, 0]] = np.arange(len(e), dtype=np.int32)
    edge_id = np.where(valid, eid[self_col, idx], -1).astype(np.int32)
    edge_id[:, 0] = -1
    return NeighbourLists(idx=idx, valid=valid, edge_id=edge_id)
