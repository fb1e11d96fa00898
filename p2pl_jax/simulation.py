"""The simulator: SimState, the jitted round, initialisation with max norm sync.

Every device's parameters and optimizer (momentum) state are stacked on a leading device axis
[N, ...]. One round reads the same for every algorithm (p2pl_jax/algorithms/, one record each):
  1. local phase  - vmapped `local_update` from the algorithm's train point (E epochs or T
                    steps of SGD-momentum, lax.scan over batches), with its gradient correction;
  2. faults       - dropouts mask the local phase; the round's graph (time-varying, link
                    failures, bursts, dropouts) and its row- or column-stochastic weights;
  3. communicate  - the algorithm's `communicate` (one mixing product, on the stacked pytree);
  4. metrics      - training loss, links and devices up, messages sent and delivered.
Which faults are compiled in follows from the algorithm's static facts (algorithms.check_config
refuses the rest), so the round holds no algorithm names.

The round is a pure function `round_step(state, arrays, hp, spec)`. Host-side set-up is done by
functions that return data (`data_layout`, `graph_lists`, `static_weights`, `graph_diameter`);
`Simulator` binds their results and jits the round with the state donated.
"""

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from p2pl_jax import algorithms, buckets, consensus, graphs, mixing, network, rng, sync, wireless
from p2pl_jax import data as data_lib
from p2pl_jax.local_update import make_local_update, make_optimizer
from p2pl_jax.models import init_params
from p2pl_jax.schedules import LRSchedule

ALGORITHMS = algorithms.ALGORITHMS
MOMENTUM_AFTER_CONSENSUS = ("keep", "reset", "mix")


@flax.struct.dataclass
class SimState:
    """The whole simulation state (a pytree).

    params, opt_state: every device's model and optax.sgd state, leaves [N, ...].
    round: int32 scalar, rounds completed. rng: the root key (uint32 [2]).
    history: with message delays, what every device sent in the last D + 1 rounds, leaves
      [D + 1, N, ...] (history[d] = d rounds ago); None otherwise (the round's fault state).
    aux: the algorithm's own state (see algorithms/base.py), e.g. push-sum weights [N].
    comm: cumulative message counters, int32: sent [N] and delivered [N] (per sender) and
      server [] (FedAvg's broadcasts); bytes are these counts times the algorithm's message
      size (computed on the host, exactly). With channel=wireless also the bill, float32:
      energy [N] (J per device), time [] (simulated s), air [] (s of transmissions) and
      station [] (the base station's J, fedavg).
    """

    params: Any
    opt_state: Any
    round: jax.Array
    rng: jax.Array
    history: Any = None
    aux: Any = None
    comm: Any = None


@flax.struct.dataclass
class HParams:
    """Hyperparameters that are arrays, so one compiled round serves any value (and sweeps)."""

    learning_rate: jax.Array
    momentum: jax.Array
    link_failure_prob: jax.Array
    dropout_prob: jax.Array = 0.0
    link_burst_prob: jax.Array = 0.0
    link_burst_failure_prob: jax.Array = 0.0
    graph_radius: jax.Array = 0.0
    graph_p: jax.Array = 0.0
    consensus_step: jax.Array = 1.0
    weight_decay: jax.Array = 0.0


@flax.struct.dataclass
class Arrays:
    """Device-resident inputs of the round: data and graph.

    x [T, ...], y [T]: every device's data concatenated; device n owns rows
      offsets[n] .. offsets[n] + sizes[n] - 1 (offsets, sizes [N] int32).
    idx, valid, edge_id [N, K]: neighbour lists of the static graph (column 0 = self); for
      time-varying graphs, of the complete graph (the round's graph is a mask over them).
    weights [N, K]: the static graph's mixing weights; w_dense [N, N] the same as a matrix
    (only for the dense backend); pi [N]: data-size average weights (fedavg / global backend).
    rev [N, K] (column-stochastic algorithms only): rev[n, k] = the column of n in the list of
    idx[n, k] (0 on self and padding), to read what a sender gives each receiver.
    For directed graphs the lists are those of the undirected union and `valid` marks the
    entries n <- idx[n, k] that are edges.
    order, position [N] int32 (bucketed local phase only, Spec.buckets): the devices grouped by
    bucket (buckets.plan), and position[n] = where device n is in `order`.
    channel (channel=wireless only, wireless.py): snr [N, K] the entries' mean SNR (linear),
    q [N, K] their success probability (loss_correction=inverse_probability), up / down [N]
    the base-station links' mean SNR (fedavg), compute_j / compute_s [N] a device's local
    phase energy and time.
    """

    x: jax.Array
    y: jax.Array
    offsets: jax.Array
    sizes: jax.Array
    idx: jax.Array
    valid: jax.Array
    edge_id: jax.Array
    weights: jax.Array
    w_dense: jax.Array
    pi: jax.Array
    rev: jax.Array | None = None
    order: jax.Array | None = None
    position: jax.Array | None = None
    channel: Any = None


@dataclasses.dataclass(frozen=True)
class Spec:
    """Static (compile-time) description of the round."""

    algorithm: str
    scheme: str
    backend: str          # dense | gather | global | none
    link_failures: bool   # sample link failures each round
    link_mode: str        # symmetric | asymmetric
    num_edges: int
    momentum_after_consensus: str
    device_block: int = 0  # 0: vmap all devices at once; else lax.map over blocks of this size
    dropouts: bool = False     # sample device dropouts each round
    bursts: bool = False       # link failure bursts (per-round failure probability)
    time_varying: str = ""     # "" or a kind in network.TIME_VARYING, drawn each round
    max_delay: int = 0         # D: messages arrive up to D rounds late (0: no delays)
    delay_mode: str = "fixed"  # fixed (all D) | random (uniform on 0..D per link per round)
    local_steps: int = 0       # T > 0: T local steps per round instead of local epochs
    compressor: str = "none"   # choco: compression.COMPRESSORS
    compress_ratio: float = 0.01
    qsgd_bits: int = 4
    buckets: tuple = ()        # buckets.Bucket plan of the local phase; () = one padded scan
    lr_schedule: LRSchedule = LRSchedule()   # the learning rate's factor per round
    link: wireless.Link | None = None   # channel=wireless: the link budget (None: ideal)

    @property
    def dynamic(self) -> bool:
        """Whether the round's graph (and so its weights) changes from round to round."""
        return graph_changes(self.link_failures, self.dropouts, self.time_varying,
                             self.link is not None)


def graph_changes(link_failures: bool, dropouts: bool, time_varying: str,
                  channel: bool) -> bool:
    """Spec.dynamic from its fields (also used before the Spec exists)."""
    return bool(link_failures or dropouts or time_varying or channel)


def _round_graph(spec: Spec, arrays: Arrays, hp: HParams, key: jax.Array,
                 round_index: jax.Array, alive: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """(offered, valid) bool [N, K]: the entries of the round's graph whose sender is online
    (a message is sent on each), and those whose message arrives (link up, both ends online)."""
    valid = arrays.valid
    if spec.time_varying == "exponential":
        valid = valid & network.exponential_peer_mask(arrays.idx, round_index)
    elif spec.time_varying:
        valid = valid & network.random_graph_mask(rng.graph_key(key), arrays.idx,
                                                  spec.time_varying, hp.graph_radius,
                                                  hp.graph_p)
    offered = valid if alive is None else valid & alive[arrays.idx]
    if spec.link_failures:
        prob = hp.link_failure_prob
        if spec.bursts:
            prob = network.round_failure_prob(rng.burst_key(key), prob, hp.link_burst_prob,
                                              hp.link_burst_failure_prob)
        valid = network.surviving_links(rng.link_key(key), valid, arrays.edge_id,
                                        spec.num_edges, prob, spec.link_mode)
    if alive is not None:
        valid = network.drop_devices(arrays.idx, valid, alive)
    return offered, valid


def participation_weights(pi: jax.Array, alive: jax.Array) -> jax.Array:
    """FedAvg's average over the online devices (see algorithms/fedavg.py)."""
    return algorithms.fedavg.participation_weights(pi, alive)


def _round_weights(kind: str, scheme: str, arrays: Arrays, offered: jax.Array,
                   valid: jax.Array) -> jax.Array:
    """The round's weights: a receiver's over what arrived (row), or a sender's split over what
    it sent, keeping the share of what was lost (column)."""
    if kind == "column":
        return mixing.column_weights(arrays.idx, offered, arrays.rev, arrays.sizes, scheme,
                                     delivered=valid)
    return mixing.neighbour_weights(arrays.idx, valid, arrays.sizes, scheme)


def _per_sender(idx: jax.Array, entries: jax.Array) -> jax.Array:
    """int32 [N]: how many of the non-self entries of each sender are True."""
    n = idx.shape[0]
    return jnp.zeros((n,), jnp.int32).at[idx[:, 1:]].add(entries[:, 1:].astype(jnp.int32))


def _local_phase(spec: Spec, local_update: Callable, start, opt_state, corr, arrays: Arrays,
                 hp: HParams, key: jax.Array, lr: jax.Array):
    """The vmapped local phase of every device: one padded scan, or one per bucket."""
    n = arrays.sizes.shape[0]
    per_device = (start, opt_state, arrays.offsets, arrays.sizes, rng.local_keys(key, n))
    if corr is not None:
        per_device = per_device + (corr,)

    def run(devices, count: int, **sizes):
        one = lambda a: local_update(*a[:5], lr, hp.momentum, arrays.x, arrays.y, *a[5:],
                                     weight_decay=hp.weight_decay, **sizes)
        if spec.device_block and spec.device_block < count:
            # Blocks of devices one after another (vmap inside a block): same maths, but a
            # block's parameters, momentum and gradients stay in cache for the whole epoch.
            return jax.lax.map(one, devices, batch_size=spec.device_block)
        return jax.vmap(one)(devices)

    if not spec.buckets:
        return run(per_device, n)
    # One scan per bucket, each as long as its largest device needs (buckets.py); the
    # results are put back in device order.
    outs = []
    for b in spec.buckets:
        members = arrays.order[b.start:b.start + b.count]
        outs.append(run(jax.tree.map(lambda leaf, m=members: leaf[m], per_device), b.count,
                        max_size=b.max_size, min_size=b.min_size))
    return jax.tree.map(lambda *parts: jnp.concatenate(parts)[arrays.position], *outs)


def round_step(state: SimState, arrays: Arrays, hp: HParams, *, spec: Spec,
               local_update: Callable, return_local: bool = False):
    """One round for all devices. Returns (new state, metrics dict of scalars [, local params]).

    Takes and returns [N, ...] pytrees (state.params, state.opt_state, state.aux).
    """
    algo = algorithms.get(spec.algorithm)
    n = arrays.sizes.shape[0]
    key = rng.round_key(state.rng, state.round)
    aux = {} if state.aux is None else state.aux
    start = algo.train_point(state.params, aux)
    corr = algo.correction(aux) if algo.correction is not None else None
    lr = hp.learning_rate
    if not spec.lr_schedule.is_constant:
        lr = lr * spec.lr_schedule.factor(state.round)
    local, opt_state, loss, mean_grad = _local_phase(spec, local_update, start,
                                                     state.opt_state, corr, arrays, hp, key, lr)

    alive = None
    devices_up = jnp.ones((), jnp.float32)
    if spec.dropouts:   # an offline device neither trains nor sends nor receives
        alive = network.devices_alive(rng.dropout_key(key), n, hp.dropout_prob)
        on = lambda leaf: alive.reshape((n,) + (1,) * (leaf.ndim - 1))
        keep = lambda new, old: jnp.where(on(new), new, old)
        local = jax.tree.map(keep, local, start)
        opt_state = jax.tree.map(keep, opt_state, state.opt_state)
        if mean_grad is not None:
            mean_grad = jax.tree.map(lambda g: jnp.where(on(g), g, 0.0), mean_grad)
        loss = jnp.where(alive, loss, 0.0) * n / jnp.maximum(alive.sum(), 1)
        devices_up = jnp.mean(alive.astype(jnp.float32))

    links_up = jnp.ones((), jnp.float32)
    w = arrays.weights
    zeros = jnp.zeros((n,), jnp.int32)
    sent, delivered, server = zeros, zeros, jnp.zeros((), jnp.int32)
    server_got = server   # the server's broadcasts that arrived (all, unless wireless)
    online = jnp.ones((n,), bool) if alive is None else alive
    link, channel, extra = spec.link, arrays.channel, {}
    delays = uploaded = downloaded = None
    if algo.uses_graph:
        offered, valid_k = arrays.valid, arrays.valid
        if spec.dynamic:
            offered, valid_k = _round_graph(spec, arrays, hp, key, state.round, alive)
            if link is not None:   # which messages the wireless channel delivers
                out = wireless.graph_round(rng.channel_key(key), link, channel["snr"],
                                           arrays.idx, offered, arrays.edge_id,
                                           spec.num_edges, online, spec.max_delay)
                valid_k, delays = valid_k & out.arrive, out.delays
                extra = wireless.bill(link, out.tx_time, out.rx_time, channel["compute_j"],
                                      channel["compute_s"], online, busy_time=out.busy_time)
            if link is not None and link.correction == "inverse_probability":
                w, clipped = wireless.inverse_probability_weights(
                    algo.weights, arrays.weights, arrays.idx, valid_k, channel["q"])
                extra["weights_clipped"] = jnp.mean(clipped.astype(jnp.float32))
            else:
                w = _round_weights(algo.weights, spec.scheme, arrays, offered, valid_k)
            links_up = network.links_up_fraction(arrays.valid, valid_k)
        sent, delivered = _per_sender(arrays.idx, offered), _per_sender(arrays.idx, valid_k)
    elif algo.weights == "server":   # one upload per online device, one broadcast to each
        sent = delivered = online.astype(jnp.int32)
        server = server_got = jnp.sum(sent)
        if link is not None:   # through the base station's wireless links
            uploaded, downloaded, tx, rx, station = wireless.station_round(
                rng.channel_key(key), link, channel["up"], channel["down"], online)
            delivered, server_got = uploaded.astype(jnp.int32), jnp.sum(downloaded)
            extra = wireless.bill(link, tx, rx, channel["compute_j"], channel["compute_s"],
                                  online, extra_s=station)
            extra["station"] = (link.bs_tx_w * station).astype(jnp.float32)
            links_up = jnp.mean((uploaded & downloaded).astype(jnp.float32))
    elif link is not None:
        extra = wireless.bill(link, zeros, zeros, channel["compute_j"], channel["compute_s"],
                              online)
    rnd = algorithms.Round(spec=spec, arrays=arrays, hp=hp, key=key, w=w, alive=online,
                           dynamic=spec.dynamic, history=state.history, delays=delays,
                           uploaded=uploaded, downloaded=downloaded)
    out = algo.communicate(rnd, state.params,
                           aux, algorithms.LocalResult(start=start, local=local,
                                                       opt_state=opt_state,
                                                       mean_grad=mean_grad))
    params, opt_state, aux = out[:3]
    history = out[3] if len(out) > 3 else state.history
    comm = state.comm
    if comm is not None:
        comm = {**comm, "sent": comm["sent"] + sent, "delivered": comm["delivered"] + delivered,
                "server": comm["server"] + server}
        if "energy" in comm:   # the wireless bill, cumulative
            comm.update(energy=comm["energy"] + extra["energy"],
                        time=comm["time"] + extra["duration"], air=comm["air"] + extra["air"],
                        station=comm["station"] + extra.get("station", 0.0),
                        server_delivered=comm["server_delivered"] + server_got)
    new_state = state.replace(params=params, opt_state=opt_state, round=state.round + 1,
                              history=history, aux=aux if state.aux is not None else None,
                              comm=comm)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf))
                                for leaf in jax.tree.leaves(params)]))
    metrics = {"train_loss": jnp.mean(loss), "links_up": links_up, "devices_up": devices_up,
               "params_finite": finite, "messages_sent": jnp.sum(sent) + server,
               "messages_delivered": jnp.sum(delivered) + server_got,
               "messages_sent_max": jnp.max(sent)}
    if not spec.lr_schedule.is_constant:
        metrics["learning_rate"] = lr
    if extra:
        metrics.update(energy_j=jnp.sum(extra["energy"]),
                       energy_max_device_j=jnp.max(extra["energy"]),
                       sim_time_s=extra["duration"], air_time_s=extra["air"])
        if "station" in extra:
            metrics["energy_station_j"] = extra["station"]
        if "weights_clipped" in extra:
            metrics["weights_clipped"] = extra["weights_clipped"]
    if return_local:
        return new_state, metrics, local
    return new_state, metrics


@dataclasses.dataclass(frozen=True)
class GraphLists:
    """Host-side neighbour lists of the round (numpy), from `graph_lists`.

    idx, valid, edge_id [N, K]: as in Arrays; num_edges: undirected pairs (link failures);
    sync_idx, sync_valid: the static graph's lists (max norm sync of phase 0).
    """

    idx: np.ndarray
    valid: np.ndarray
    edge_id: np.ndarray
    num_edges: int
    sync_idx: np.ndarray
    sync_valid: np.ndarray


def data_layout(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, offsets, sizes): the data rows in device order, and each device's slice."""
    sizes = np.array([len(p) for p in parts], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return np.concatenate(parts), offsets, sizes


def graph_lists(adj: np.ndarray | sp.sparray, time_varying: str = "") -> GraphLists:
    """Neighbour lists of a (possibly directed, adj[n, m] = n receives from m) adjacency.

    Directed graphs use the lists of the undirected union with `valid` marking the directed
    edges. A random time-varying graph uses the complete graph's lists (its round graph is a
    mask over them); the one-peer exponential graph masks the static exponential graph's.
    adj: dense bool [N, N] or sparse; O(N K + E) memory (the complete lists: N^2).
    """
    adj = graphs.as_sparse(adj)
    union = graphs.as_sparse(adj + adj.T)
    static = graphs.neighbour_lists(union)
    valid = static.valid & _has_entries(adj, static.idx)
    valid[:, 0] = True
    num_edges = union.nnz // 2
    if time_varying and time_varying != "exponential":
        n = adj.shape[0]
        idx, edge_id = network.complete_lists(n)
        return GraphLists(idx=idx, valid=np.ones(idx.shape, bool), edge_id=edge_id,
                          num_edges=n * n, sync_idx=static.idx, sync_valid=valid)
    return GraphLists(idx=static.idx, valid=valid, edge_id=static.edge_id,
                      num_edges=num_edges, sync_idx=static.idx, sync_valid=valid)


def _has_entries(adj: sp.csr_array, idx: np.ndarray) -> np.ndarray:
    """bool [N, K]: adj[n, idx[n, k]] of a canonical CSR adjacency (graphs.as_sparse)."""
    n = adj.shape[0]
    if adj.nnz == 0:
        return np.zeros(idx.shape, bool)
    keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(adj.indptr)) * n + adj.indices
    query = np.arange(n, dtype=np.int64)[:, None] * n + idx
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return keys[pos] == query


def reverse_positions(idx: np.ndarray) -> np.ndarray:
    """int32 [N, K]: rev[n, k] = the column j with idx[idx[n, k], j] == n (0 on self and
    padding), for lists of an undirected structure (every neighbour lists n back)."""
    n, k = idx.shape
    cols = np.broadcast_to(np.arange(k), idx.shape)
    real = (cols > 0) & (idx != np.arange(n)[:, None])
    keys = (np.arange(n)[:, None] * n + idx)[real]
    order = np.argsort(keys, kind="stable")
    sorted_keys, sorted_cols = keys[order], cols[real][order]
    query = idx.astype(np.int64) * n + np.arange(n)[:, None]
    pos = np.clip(np.searchsorted(sorted_keys, query), 0, max(len(sorted_keys) - 1, 0))
    found = real & (sorted_keys[pos] == query) if len(sorted_keys) else np.zeros_like(real)
    return np.where(found, sorted_cols[pos] if len(sorted_keys) else 0, 0).astype(np.int32)


def static_weights(kind: str, adj: np.ndarray | sp.sparray, lists: GraphLists,
                   sizes: np.ndarray, scheme: str,
                   rev: np.ndarray | None = None) -> tuple[np.ndarray, sp.csr_array]:
    """(weights [N, K] float32 on the lists, float64 CSR W) of the static graph (no N x N:
    `dense_weights` is the dense W).

    kind "row": the scheme's row-stochastic W; "column": its column-stochastic form (each
    sender splits its mass as the scheme would weight its out-neighbourhood), W = scheme on the
    reversed graph, transposed.
    """
    idx, valid = jnp.asarray(lists.sync_idx), jnp.asarray(lists.sync_valid)
    sizes_j = jnp.asarray(sizes, jnp.float32)
    if kind == "column":
        weights = _column_weights(idx, valid, jnp.asarray(rev), sizes_j, scheme)
        w = sp.csr_array(mixing.sparse_mixing_matrix(graphs.as_sparse(adj).T, sizes, scheme).T)
    else:
        weights = _neighbour_weights(idx, valid, sizes_j, scheme)
        w = mixing.sparse_mixing_matrix(adj, sizes, scheme)
    return np.asarray(weights, np.float32), w


# The round's weight functions, jitted for the static weights: one compile (~0.1 s) instead of
# eager dispatch of each of their ops (~1.3 s the first time); the same values bit for bit.
_neighbour_weights = jax.jit(mixing.neighbour_weights, static_argnums=3)
_column_weights = jax.jit(mixing.column_weights, static_argnums=4)


def dense_weights(kind: str, adj: np.ndarray | sp.sparray, sizes: np.ndarray,
                  scheme: str) -> np.ndarray:
    """The dense float64 [N, N] W of `static_weights` (mixing.mixing_matrix; the dense backend
    and small N only)."""
    adj = graphs.as_sparse(adj).toarray()
    if kind == "column":
        return mixing.mixing_matrix(adj.T, sizes, scheme).T
    return mixing.mixing_matrix(adj, sizes, scheme)


def graph_diameter(adj: np.ndarray | sp.sparray) -> int | None:
    """The diameter max norm sync needs (directed: along the edges), or None when it is not
    computed: a directed graph that is not strongly connected, or, above
    graphs.DIAMETER_EXACT_N devices, a graph whose BFS would visit more than
    graphs.DIAMETER_MAX_WORK edges (sync then runs to its fixed point, which needs none).
    Sparse BFS (scipy csgraph), O(N + E) memory; exact below DIAMETER_EXACT_N."""
    adj = graphs.as_sparse(adj)
    n = adj.shape[0]
    if n == 1:
        return 0
    budget = math.inf if n <= graphs.DIAMETER_EXACT_N else graphs.DIAMETER_MAX_WORK
    if graphs.is_symmetric(adj):
        return graphs.diameter(adj, budget)
    return graphs.directed_diameter(adj, budget)


class Simulator:
    """Binds model, data and graph; builds the initial state and the jitted round.

    Args:
      model: a Flax module for one device.
      x, y: training data [T, ...], [T]; parts: one index array into x per device.
      adj: bool [N, N] adjacency of the static graph, dense or scipy sparse (runner.build
        passes graphs.sparse_adjacency), adj[n, m] = n receives from m (may be
        directed; ignored by fedavg/local/centralized; with a time-varying graph, the graph of
        phase 0 only).
      algorithm (algorithms.ALGORITHMS), mixing_scheme ("auto" = the algorithm's default),
        sync_mode, backend, link_mode, momentum_after_consensus: as in the config reference.
      link_failures: compile link-failure sampling into the round (needed when p > 0 or swept);
        link_bursts: and per-round bursts. dropouts: compile device dropouts.
      time_varying: "" or a kind in network.TIME_VARYING: draw a fresh graph every round.
      max_delay, delay_mode: late messages (0: none). Memory: max_delay + 1 extra copies of
        every device's parameters.
      Faults the algorithm does not take are not compiled (runner.validate refuses them).
      local_epochs, batch_size, local_steps: the local phase (local_steps > 0: T steps).
      normalisation: the dataset's (mean, std) for data.decode of uint8 images (None: p / 255);
        nesterov, augment, compute_dtype: the local step's options (local_update.py);
        lr_schedule: the learning rate's factor per round (schedules.LRSchedule).
      compressor, compress_ratio, qsgd_bits: choco's compression.
      device_block: 0 vmaps the local phase over all devices at once (best on accelerators);
        k > 0 runs blocks of k devices one after another (lax.map), which keeps each block's
        working set in cache (faster on CPU). The result is the same.
      diameter: "auto" computes it (graph_diameter); an int or None skips the BFS.
      local_buckets: the work-proportional local phase (buckets.py): at most this many scans,
        devices grouped by size; -1 = auto (buckets.DEFAULT_MAX_BUCKETS), 1 = one padded scan
        for everybody (the program of equal sizes). Sharded runs use one scan (see `shard`).
    """

    def __init__(self, *, model: nn.Module, x: np.ndarray, y: np.ndarray,
                 parts: list[np.ndarray], adj: np.ndarray, algorithm: str = "p2pl",
                 mixing_scheme: str = "auto", sync_mode: str = "max_norm",
                 backend: str = "auto", link_failures: bool = False,
                 link_mode: str = "symmetric", link_bursts: bool = False,
                 dropouts: bool = False, time_varying: str = "", max_delay: int = 0,
                 delay_mode: str = "fixed", momentum_after_consensus: str = "keep",
                 local_epochs: int = 1, batch_size: int = 10, device_block: int = 0,
                 local_steps: int = 0, compressor: str = "none", compress_ratio: float = 0.01,
                 qsgd_bits: int = 4, diameter: int | None | str = "auto",
                 local_buckets: int = -1, normalisation=None, nesterov: bool = False,
                 augment: bool = False, compute_dtype: str = "float32",
                 lr_schedule: LRSchedule | None = None,
                 channel: wireless.Setup | None = None):
        self.model = model
        # data.decode's (mean, std) as tuples of floats (hashable: part of the compiled step)
        self.normalisation = (None if normalisation is None else
                              tuple(tuple(float(v) for v in a) for a in normalisation))
        self.num_devices = n = len(parts)
        self.input_shape = tuple(x.shape[1:])
        rows, offsets, sizes = data_layout(parts)
        algorithm, mixing_scheme = algorithms.resolve(algorithm, mixing_scheme)
        algo = self.algorithm_record = algorithms.get(algorithm)
        self.algorithm = algorithm
        self.sync_mode = algo.sync or sync_mode
        link_failures = bool(link_failures or link_bursts) and "link_failures" in algo.faults
        link_bursts = bool(link_bursts) and "bursts" in algo.faults
        dropouts = bool(dropouts) and "dropouts" in algo.faults
        time_varying = time_varying if "time_varying" in algo.faults else ""
        max_delay = int(max_delay) if "delays" in algo.faults else 0
        self.adj = graphs.as_sparse(adj)   # bool CSR: O(N + E) host memory whatever N
        self.diameter = graph_diameter(self.adj) if diameter == "auto" else diameter
        lists = graph_lists(self.adj, time_varying)
        self._sync_lists = (lists.sync_idx, lists.sync_valid)
        pi = sizes / sizes.sum()
        dynamic = graph_changes(link_failures, dropouts, time_varying, channel is not None)
        rev = np.zeros((1, 1), np.int32)
        self.mixing_weights = None   # the static graph's float64 CSR W (graph algorithms)
        self._dense_w_args = (algo.weights, sizes, mixing_scheme)
        w_dense_np = np.zeros((1, 1))
        if algo.uses_graph:
            if algo.weights == "column":
                rev = reverse_positions(lists.idx)
                sync_rev = rev if lists.idx is lists.sync_idx else reverse_positions(
                    lists.sync_idx)
            else:
                sync_rev = None
            weights, self.mixing_weights = static_weights(algo.weights, self.adj, lists, sizes,
                                                          mixing_scheme, sync_rev)
            if time_varying and time_varying != "exponential":
                weights = np.zeros(lists.idx.shape, np.float32)
            resolved = consensus.choose_backend(backend, n, lists.idx.shape[1])
            # The N x N W only for the dense backend. Identical rows need every device with a
            # self weight > 0 to be heard by all (K = N), so "auto" -> gather (K <= N / 8)
            # never has them.
            if resolved == "dense" and not dynamic:
                w_dense_np = self.mixing_matrix
            if (backend == "auto" and resolved == "dense" and not dynamic and not max_delay
                    and np.all(w_dense_np == w_dense_np[:1])):
                resolved, pi = "global", w_dense_np[0]   # identical rows: one average, broadcast
        else:
            weights = np.zeros(lists.idx.shape, np.float32)
            resolved = "global" if algo.weights == "server" else "none"
        self.backend = resolved
        self.buckets, order = buckets.plan(
            sizes, batch_size=batch_size, local_epochs=local_epochs,
            local_steps=int(local_steps),
            max_buckets=buckets.DEFAULT_MAX_BUCKETS if local_buckets == -1 else local_buckets,
            overhead=buckets.OVERHEAD.get(jax.default_backend(), buckets.OVERHEAD["gpu"]))
        self.spec = Spec(algorithm=algorithm, scheme=mixing_scheme, backend=resolved,
                         link_failures=link_failures, link_mode=link_mode,
                         num_edges=lists.num_edges,
                         momentum_after_consensus=momentum_after_consensus,
                         device_block=int(device_block), dropouts=dropouts,
                         bursts=link_bursts, time_varying=time_varying,
                         max_delay=max_delay, delay_mode=delay_mode,
                         local_steps=int(local_steps), compressor=compressor,
                         compress_ratio=float(compress_ratio), qsgd_bits=int(qsgd_bits),
                         buckets=self.buckets, lr_schedule=lr_schedule or LRSchedule())
        self._leaf_sizes = None
        self.positions = self.cycles_per_sample = None   # set with a channel
        tables = None
        if channel is not None:   # the wireless channel's link budget and the bill's inputs
            tables = self._channel_tables(channel, lists, sizes, batch_size, local_epochs,
                                          int(local_steps), link_mode)
        w_dense = w_dense_np if (resolved == "dense" and not dynamic) else np.zeros((1, 1))
        self.arrays = Arrays(
            x=jnp.asarray(x[rows]), y=jnp.asarray(y[rows], jnp.int32),
            offsets=jnp.asarray(offsets, jnp.int32), sizes=jnp.asarray(sizes, jnp.int32),
            idx=jnp.asarray(lists.idx), valid=jnp.asarray(lists.valid),
            edge_id=jnp.asarray(lists.edge_id), weights=jnp.asarray(weights, jnp.float32),
            w_dense=jnp.asarray(w_dense, jnp.float32), pi=jnp.asarray(pi, jnp.float32),
            rev=jnp.asarray(rev),
            order=jnp.asarray(order) if self.buckets else None,
            position=jnp.asarray(np.argsort(order).astype(np.int32)) if self.buckets else None,
            channel=tables)
        local_key = dict(max_size=int(sizes.max()), batch_size=batch_size,
                         local_epochs=local_epochs, local_steps=int(local_steps),
                         min_size=int(sizes.min()) if local_steps else 1,
                         with_correction=algo.correction is not None,
                         return_mean_grad=algo.needs_mean_grad, nesterov=bool(nesterov),
                         augment=bool(augment), compute_dtype=compute_dtype,
                         normalisation=self.normalisation)
        self.local_update = make_local_update(model.apply, **local_key)
        self.round_fn = partial(round_step, spec=self.spec, local_update=self.local_update)
        self._round = jax.jit(self.round_fn, donate_argnums=0)
        self._round_with_local = jax.jit(partial(self.round_fn, return_local=True),
                                         donate_argnums=0)
        self._init_static = dict(model=model, input_shape=self.input_shape, num_devices=n,
                                 sync_mode=self.sync_mode, diameter=self.diameter,
                                 max_delay=self.spec.max_delay, algorithm=algorithm,
                                 wireless_bill=channel is not None)
        self._sharded_init = None
        self._eval_params = jax.jit(lambda st: algo.eval_params(st.params, st.aux))
        # What the compiled local phase depends on (sweeps group replicas by it).
        self.local_update_key = (model, tuple(sorted(local_key.items())))

    def _channel_tables(self, channel: wireless.Setup, lists: GraphLists, sizes: np.ndarray,
                        batch_size: int, local_epochs: int, local_steps: int,
                        link_mode: str) -> dict:
        """Sets spec.link and returns Arrays.channel (see wireless.py): the entries' mean SNR
        (and success probabilities), or the base-station links', and the local phase's cost."""
        algo, radio = self.algorithm_record, channel.radio
        link = wireless.make_link(radio, self.message_bytes, max_delay=self.spec.max_delay,
                                  transmission=channel.transmission,
                                  correction=channel.correction,
                                  reciprocal=link_mode == "symmetric", fading=channel.fading)
        self.spec = dataclasses.replace(self.spec, link=link)
        self.positions = np.asarray(channel.positions, np.float64)
        f32 = lambda a: jnp.asarray(a, jnp.float32)
        tables = {}
        if algo.uses_graph:
            snr, _ = wireless.link_tables(lists.idx, lists.valid, self.positions, radio,
                                          channel.seed, channel.shadow)
            wireless.check_budget(snr, link, radio, "link of the graph")
            tables["snr"] = f32(snr)
            if channel.correction == "inverse_probability":
                tables["q"] = f32(wireless.success_probability(snr, link.theta_eff,
                                                               link.fading))
        elif algo.weights == "server":
            up, down = wireless.station_tables(self.positions, radio, channel.seed)
            wireless.check_budget(up, link, radio, "uplink to the base station")
            wireless.check_budget(down, link, radio, "downlink from the base station")
            tables.update(up=f32(up), down=f32(down))
        cycles = channel.cycles_per_sample or wireless.training_flops_per_sample(
            self.model, self.input_shape)
        self.cycles_per_sample = float(cycles)
        samples = (np.full(sizes.shape, local_steps * batch_size, np.float64) if local_steps
                   else local_epochs * sizes.astype(np.float64))
        tables["compute_s"] = f32(samples * cycles / channel.cpu_freq_hz)
        tables["compute_j"] = f32(samples * cycles * channel.cpu_kappa * channel.cpu_freq_hz ** 2)
        return tables

    def apply(self, variables, x):
        """The model on stored inputs (data.decode first): what the evaluation calls."""
        return self.model.apply(variables, data_lib.decode(x, self.normalisation))

    @functools.cached_property
    def mixing_matrix(self) -> np.ndarray | None:
        """The static graph's dense float64 [N, N] W (`dense_weights`; None without a graph),
        made when first read: N^2 memory."""
        if self.mixing_weights is None:
            return None
        return dense_weights(self._dense_w_args[0], self.adj, *self._dense_w_args[1:])

    @property
    def message_bytes(self) -> int:
        """Bytes of one message of this run's algorithm (per link, or per upload/broadcast)."""
        if self._leaf_sizes is None:
            one = jax.eval_shape(lambda: init_params(self.model, jax.random.PRNGKey(0),
                                                     self.input_shape))
            self._leaf_sizes = tuple(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(one))
        return int(self.algorithm_record.message_bytes(self._leaf_sizes, self.spec))

    def init_state(self, root: jax.Array) -> SimState:
        """The state before round 1 from root key `root` (traceable; see `init`)."""
        return _init_state(root, jnp.asarray(self._sync_lists[0]),
                           jnp.asarray(self._sync_lists[1]), **self._init_static)

    def init(self, seed: int) -> SimState:
        """The state before round 1: independent inits, then phase-0 synchronization."""
        if self._sharded_init is not None:
            return self._sharded_init(rng.root_key(seed))
        return _jitted_init(**self._init_static)(rng.root_key(seed),
                                                 jnp.asarray(self._sync_lists[0]),
                                                 jnp.asarray(self._sync_lists[1]))

    def shard(self, mesh) -> None:
        """Splits the device axis over `mesh` (see sharding.py); call before `init`.

        The local phase is then vmapped over all devices (device_block 0), each accelerator
        running its own N / mesh.size devices; consensus crosses shards inside the program.
        It is one padded scan (no buckets): a bucket gathers its devices from every shard, so
        bucketing a sharded run would move every model across the mesh twice a round and leave
        the shards unbalanced unless each shard held an equal part of every bucket. Skewed
        sharded runs pay the padded scan's cost (README, "Skewed sizes").
        """
        from p2pl_jax import sharding

        n = self.num_devices
        sharding.check_divisible(n, mesh)
        rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        arrays_sh = sharding.device_axis_sharding(self.arrays, n, mesh)
        arrays_sh = arrays_sh.replace(x=rep, y=rep)
        self.arrays = jax.device_put(self.arrays.replace(order=None, position=None),
                                     arrays_sh.replace(order=None, position=None))
        self.buckets = ()
        self.spec = dataclasses.replace(self.spec, device_block=0, buckets=())
        self.round_fn = partial(round_step, spec=self.spec, local_update=self.local_update)
        example = jax.eval_shape(self.init_state, rng.root_key(0))
        state_sh = sharding.device_axis_sharding(
            example, n, mesh, axis_of=lambda leaf: 1 if leaf.ndim > 1 and leaf.shape[0] != n
            and leaf.shape[1] == n else 0)
        self._state_sharding = state_sh
        self._round = jax.jit(self.round_fn, donate_argnums=0, out_shardings=(state_sh, rep))
        self._round_with_local = jax.jit(
            partial(self.round_fn, return_local=True), donate_argnums=0,
            out_shardings=(state_sh, rep, state_sh.params))
        self._sharded_init = jax.jit(self.init_state, out_shardings=state_sh)

    def compile(self, state: SimState, hp: HParams, *, return_local: bool = False) -> float:
        """Compiles the round ahead of time; returns the compile time in seconds."""
        t0 = time.perf_counter()
        self._round = self._round.lower(state, self.arrays, hp).compile()
        if return_local:
            self._round_with_local = self._round_with_local.lower(
                state, self.arrays, hp).compile()
        return time.perf_counter() - t0

    @property
    def compiled_rounds(self) -> list:
        """The rounds `compile` compiled (jax.stages.Compiled): the round, then with
        return_local the round that also returns the local models; [] before. memory.py reads
        their memory_analysis."""
        return [f for f in (self._round, self._round_with_local)
                if isinstance(f, jax.stages.Compiled)]

    def eval_params(self, state: SimState):
        """The [N, ...] parameters a device is evaluated with (the algorithm's `eval_params`:
        push-sum evaluates x / w); state.params itself for algorithms that evaluate x."""
        if self.algorithm_record.eval_params is algorithms.base.identity_params:
            return state.params
        return self._eval_params(state)

    def step(self, state: SimState, hp: HParams, *, return_local: bool = False):
        """Runs one jitted round (the state's buffers are donated)."""
        if return_local:
            return self._round_with_local(state, self.arrays, hp)
        return self._round(state, self.arrays, hp)


def _init_state(root, sync_idx, sync_valid, *, model, input_shape, num_devices, sync_mode,
                diameter, max_delay, algorithm: str = "p2pl",
                wireless_bill: bool = False) -> SimState:
    n = num_devices
    init_one = lambda key: init_params(model, key, input_shape)
    if sync_mode == "shared_seed":
        one = init_one(rng.init_keys(root, 1)[0])
        params = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (n, *leaf.shape)), one)
    else:
        # lax.map, not vmap: same values, half the compile time (vmapped RNG is slow to compile)
        params = jax.lax.map(init_one, rng.init_keys(root, n))
        if sync_mode == "max_norm" and diameter is None:
            params = sync.max_norm_sync_until_stable(params, sync_idx, sync_valid)
        elif sync_mode == "max_norm":
            params = sync.max_norm_sync(params, sync_idx, sync_valid, diameter)
    opt_state = jax.vmap(make_optimizer(0.0, 0.0).init)(params)
    history = None
    if max_delay:   # before round 1 every slot holds the initial parameters
        history = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (max_delay + 1, *leaf.shape)),
                               params)
    return SimState(params=params, opt_state=opt_state, round=jnp.zeros((), jnp.int32),
                    rng=root, history=history, aux=algorithms.get(algorithm).init(params),
                    comm=_counters(n, wireless_bill))


def _counters(n: int, wireless_bill: bool) -> dict:
    """SimState.comm before round 1."""
    zeros = jnp.zeros((n,), jnp.int32)
    comm = {"sent": zeros, "delivered": zeros, "server": jnp.zeros((), jnp.int32)}
    if wireless_bill:
        f0 = jnp.zeros((), jnp.float32)
        comm.update(energy=jnp.zeros((n,), jnp.float32), time=f0, air=f0, station=f0,
                    server_delivered=jnp.zeros((), jnp.int32))
    return comm


@functools.lru_cache(maxsize=64)
def _jitted_init(**static) -> Callable:
    """One compiled initialisation per static setting, shared by simulators (and sweeps)."""
    return jax.jit(partial(_init_state, **static))


def make_hparams(learning_rate: float, momentum: float, link_failure_prob: float = 0.0, *,
                 dropout_prob: float = 0.0, link_burst_prob: float = 0.0,
                 link_burst_failure_prob: float = 0.0, graph_radius: float = 0.0,
                 graph_p: float = 0.0, consensus_step: float = 1.0,
                 weight_decay: float = 0.0) -> HParams:
    """HParams as float32 arrays."""
    f = lambda v: jnp.asarray(v, jnp.float32)
    return HParams(learning_rate=f(learning_rate), momentum=f(momentum),
                   link_failure_prob=f(link_failure_prob), dropout_prob=f(dropout_prob),
                   link_burst_prob=f(link_burst_prob),
                   link_burst_failure_prob=f(link_burst_failure_prob),
                   graph_radius=f(graph_radius), graph_p=f(graph_p),
                   consensus_step=f(consensus_step), weight_decay=f(weight_decay))
