"""The simulator: SimState, the jitted round, initialisation with max norm sync.

Every device's parameters and optimizer (momentum) state are stacked on a leading device axis
[N, ...]. One round (P2PL, "Each round k"):
  1. local phase  - vmapped `local_update` (E epochs of SGD-momentum, lax.scan over batches);
  2. consensus    - theta_n <- sum_{m in closed nbhd_k(n)} w_nm(k) theta_m, one mixing product;
  3. momentum     - kept, reset to zero, or mixed like theta.
Link failures are sampled inside the round from the round key; the weights W(k) are recomputed
on the surviving graph. Algorithms share this machinery:
  p2pl        consensus with the chosen weights over the (failing) graph;
  fedavg      consensus is the server's data-size weighted global average (W = 1 pi^T), over the
              devices online this round when devices drop out (partial participation);
  local       no consensus; centralized is `local` with one device holding all the data.
Device dropouts apply to p2pl, fedavg and local; link failures, delays and time-varying graphs
to p2pl only.

The round is a pure function `round_step(state, arrays, hp, spec)`; `Simulator` binds the
arrays and jits it with the state donated.
"""

import dataclasses
import functools
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np

from p2pl_jax import consensus, graphs, mixing, network, rng, sync
from p2pl_jax.local_update import make_local_update, make_optimizer
from p2pl_jax.models import init_params

DIAMETER_MAX_N = 2000
ALGORITHMS = ("p2pl", "fedavg", "local", "centralized")
MOMENTUM_AFTER_CONSENSUS = ("keep", "reset", "mix")


@flax.struct.dataclass
class SimState:
    """The whole simulation state (a pytree).

    params, opt_state: every device's model and optax.sgd state, leaves [N, ...].
    round: int32 scalar, rounds completed. rng: the root key (uint32 [2]).
    history: with message delays, what every device sent in the last D + 1 rounds, leaves
      [D + 1, N, ...] (history[d] = d rounds ago); None otherwise.
    """

    params: Any
    opt_state: Any
    round: jax.Array
    rng: jax.Array
    history: Any = None


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


@flax.struct.dataclass
class Arrays:
    """Device-resident inputs of the round: data and graph.

    x [T, ...], y [T]: every device's data concatenated; device n owns rows
      offsets[n] .. offsets[n] + sizes[n] - 1 (offsets, sizes [N] int32).
    idx, valid, edge_id [N, K]: neighbour lists of the static graph (column 0 = self); for
      time-varying graphs, of the complete graph (the round's graph is a mask over them).
    weights [N, K]: the static graph's mixing weights; w_dense [N, N] the same as a matrix
    (only for the dense backend); pi [N]: data-size average weights (fedavg / global backend).
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

    @property
    def dynamic(self) -> bool:
        """Whether the round's graph (and so its weights) changes from round to round."""
        return self.link_failures or self.dropouts or bool(self.time_varying)


def _mix(spec: Spec, arrays: Arrays, w: jax.Array, tree):
    if spec.backend == "global":
        return consensus.mix_global(arrays.pi, tree)
    if spec.backend == "dense":
        n = arrays.idx.shape[0]
        w_dense = mixing.dense_from_lists(arrays.idx, w, n) if spec.dynamic else arrays.w_dense
        return consensus.mix_dense(w_dense, tree)
    return consensus.mix_gather(arrays.idx, w, tree)


def _round_graph(spec: Spec, arrays: Arrays, hp: HParams, key: jax.Array,
                 alive: jax.Array | None) -> jax.Array:
    """bool [N, K]: the neighbour-list entries that carry a message this round."""
    valid = arrays.valid
    if spec.time_varying:
        valid = valid & network.random_graph_mask(rng.graph_key(key), arrays.idx,
                                                  spec.time_varying, hp.graph_radius,
                                                  hp.graph_p)
    if spec.link_failures:
        prob = hp.link_failure_prob
        if spec.bursts:
            prob = network.round_failure_prob(rng.burst_key(key), prob, hp.link_burst_prob,
                                              hp.link_burst_failure_prob)
        valid = network.surviving_links(rng.link_key(key), valid, arrays.edge_id,
                                        spec.num_edges, prob, spec.link_mode)
    if alive is not None:
        valid = network.drop_devices(arrays.idx, valid, alive)
    return valid


def participation_weights(pi: jax.Array, alive: jax.Array) -> jax.Array:
    """FedAvg's average over the online devices: pi restricted to `alive`, renormalised
    (pi itself if no device is online: nobody trained, so every model is unchanged)."""
    up = jnp.where(alive, pi, 0.0)
    total = up.sum()
    return jnp.where(total > 0, up / jnp.where(total > 0, total, 1.0), pi)


def round_step(state: SimState, arrays: Arrays, hp: HParams, *, spec: Spec,
               local_update: Callable, return_local: bool = False):
    """One round for all devices. Returns (new state, metrics dict of scalars [, local params]).

    Takes and returns [N, ...] pytrees (state.params, state.opt_state).
    """
    n = arrays.sizes.shape[0]
    key = rng.round_key(state.rng, state.round)
    per_device = (state.params, state.opt_state, arrays.offsets, arrays.sizes,
                  rng.local_keys(key, n))
    one = lambda a: local_update(*a, hp.learning_rate, hp.momentum, arrays.x, arrays.y)
    if spec.device_block and spec.device_block < n:
        # Blocks of devices one after another (vmap inside a block): same maths, but a
        # block's parameters, momentum and gradients stay in cache for the whole epoch.
        params, opt_state, loss = jax.lax.map(one, per_device, batch_size=spec.device_block)
    else:
        params, opt_state, loss = jax.vmap(one)(per_device)

    alive = None
    devices_up = jnp.ones((), jnp.float32)
    if spec.dropouts:   # an offline device neither trains nor sends nor receives
        alive = network.devices_alive(rng.dropout_key(key), n, hp.dropout_prob)
        keep = lambda new, old: jnp.where(alive.reshape((n,) + (1,) * (new.ndim - 1)), new, old)
        params = jax.tree.map(keep, params, state.params)
        opt_state = jax.tree.map(keep, opt_state, state.opt_state)
        loss = jnp.where(alive, loss, 0.0) * n / jnp.maximum(alive.sum(), 1)
        devices_up = jnp.mean(alive.astype(jnp.float32))

    local_params = params
    history = state.history
    links_up = jnp.ones((), jnp.float32)
    if spec.algorithm == "fedavg":
        # The server averages the models of the devices that were online, weighted by data
        # size, and every device holds the result (an offline one receives it when it is
        # next online, before it trains again).
        pi = arrays.pi if alive is None else participation_weights(arrays.pi, alive)
        params = consensus.mix_global(pi, params)
        if spec.momentum_after_consensus == "mix":
            opt_state = consensus.mix_global(pi, opt_state)
        elif spec.momentum_after_consensus == "reset":
            opt_state = jax.tree.map(jnp.zeros_like, opt_state)
    elif spec.algorithm == "p2pl":
        w = arrays.weights
        if spec.dynamic:
            valid_k = _round_graph(spec, arrays, hp, key, alive)
            w = mixing.neighbour_weights(arrays.idx, valid_k, arrays.sizes, spec.scheme)
            links_up = network.links_up_fraction(arrays.valid, valid_k)
        if spec.max_delay:
            history = jax.tree.map(lambda h, p: jnp.concatenate([p[None], h[:-1]]),
                                   history, params)
            delays = network.sample_delays(rng.delay_key(key), arrays.idx.shape,
                                           spec.max_delay, spec.delay_mode)
            params = consensus.mix_delayed(arrays.idx, w, delays, history, params)
        else:
            params = _mix(spec, arrays, w, params)
        if spec.momentum_after_consensus == "mix":
            opt_state = _mix(spec, arrays, w, opt_state)
        elif spec.momentum_after_consensus == "reset":
            opt_state = jax.tree.map(jnp.zeros_like, opt_state)
    new_state = state.replace(params=params, opt_state=opt_state, round=state.round + 1,
                              history=history)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf))
                                for leaf in jax.tree.leaves(params)]))
    metrics = {"train_loss": jnp.mean(loss), "links_up": links_up, "devices_up": devices_up,
               "params_finite": finite}
    if return_local:
        return new_state, metrics, local_params
    return new_state, metrics


class Simulator:
    """Binds model, data and graph; builds the initial state and the jitted round.

    Args:
      model: a Flax module for one device.
      x, y: training data [T, ...], [T]; parts: one index array into x per device.
      adj: bool [N, N] adjacency of the static graph (ignored by fedavg/local/centralized;
        with a time-varying graph, the graph of phase 0 only).
      algorithm, mixing_scheme, sync_mode, backend, link_mode, momentum_after_consensus: as in
        the config reference.
      link_failures: compile link-failure sampling into the round (needed when p > 0 or swept);
        link_bursts: and per-round bursts. dropouts: compile device dropouts.
      time_varying: "" or a kind in network.TIME_VARYING: draw a fresh graph every round.
      max_delay, delay_mode: late messages (0: none). Memory: max_delay + 1 extra copies of
        every device's parameters.
      local_epochs, batch_size: the local phase.
      device_block: 0 vmaps the local phase over all devices at once (best on accelerators);
        k > 0 runs blocks of k devices one after another (lax.map), which keeps each block's
        working set in cache (faster on CPU). The result is the same.
    """

    def __init__(self, *, model: nn.Module, x: np.ndarray, y: np.ndarray,
                 parts: list[np.ndarray], adj: np.ndarray, algorithm: str = "p2pl",
                 mixing_scheme: str = "data_size", sync_mode: str = "max_norm",
                 backend: str = "auto", link_failures: bool = False,
                 link_mode: str = "symmetric", link_bursts: bool = False,
                 dropouts: bool = False, time_varying: str = "", max_delay: int = 0,
                 delay_mode: str = "fixed", momentum_after_consensus: str = "keep",
                 local_epochs: int = 1, batch_size: int = 10, device_block: int = 0):
        self.model = model
        self.num_devices = n = len(parts)
        self.input_shape = tuple(x.shape[1:])
        sizes = np.array([len(p) for p in parts], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rows = np.concatenate(parts)
        self.sync_mode = "shared_seed" if algorithm in ("fedavg", "centralized") else sync_mode
        if algorithm == "p2pl" and mixing_scheme == "fedavg":
            algorithm = "fedavg"   # W = 1 pi^T: the server average
        self.algorithm = algorithm
        if algorithm != "p2pl":   # link faults act on P2PL's graph only (runner.validate
            link_failures = link_bursts = False   # rejects them for other algorithms)
            time_varying, max_delay = "", 0
        if algorithm == "centralized":
            dropouts = False
        self.adj = np.asarray(adj, bool)
        # The diameter (networkx, all-pairs BFS) costs minutes at N = 10^4: above
        # DIAMETER_MAX_N it is not computed (None) and max norm sync runs to its fixed point.
        self.diameter = (graphs.diameter(nx.from_numpy_array(self.adj)) if 1 < n <= DIAMETER_MAX_N
                         else (0 if n == 1 else None))
        static = graphs.neighbour_lists(self.adj)
        self._sync_lists = (static.idx, static.valid)
        if time_varying:
            idx, edge_id = network.complete_lists(n)
            valid = np.ones(idx.shape, bool)
            num_edges = n * n
        else:
            idx, valid, edge_id = static.idx, static.valid, static.edge_id
            num_edges = int(self.adj.sum() // 2)
        pi = sizes / sizes.sum()
        dynamic = link_failures or dropouts or bool(time_varying)
        if algorithm == "p2pl":
            weights = np.asarray(mixing.neighbour_weights(
                jnp.asarray(static.idx), jnp.asarray(static.valid),
                jnp.asarray(sizes, jnp.float32), mixing_scheme))
            w_dense_np = mixing.mixing_matrix(self.adj, sizes, mixing_scheme)
            if time_varying:
                weights = np.zeros(idx.shape, np.float32)
            resolved = consensus.choose_backend(backend, n, idx.shape[1])
            if (backend == "auto" and not dynamic and not max_delay
                    and np.all(w_dense_np == w_dense_np[:1])):
                resolved, pi = "global", w_dense_np[0]   # identical rows: one average, broadcast
        else:
            weights = np.zeros(idx.shape, np.float32)
            w_dense_np = np.zeros((1, 1))
            resolved = "global" if algorithm == "fedavg" else "none"
        self.backend = resolved
        self.spec = Spec(algorithm=algorithm, scheme=mixing_scheme, backend=resolved,
                         link_failures=bool(link_failures or link_bursts), link_mode=link_mode,
                         num_edges=num_edges,
                         momentum_after_consensus=momentum_after_consensus,
                         device_block=int(device_block), dropouts=bool(dropouts),
                         bursts=bool(link_bursts), time_varying=time_varying,
                         max_delay=int(max_delay), delay_mode=delay_mode)
        # The static graph's dense float64 W (P2PL only; None otherwise), e.g. for its spectrum.
        self.mixing_matrix = w_dense_np if algorithm == "p2pl" else None
        w_dense = w_dense_np if (resolved == "dense" and not dynamic) else np.zeros((1, 1))
        self.arrays = Arrays(
            x=jnp.asarray(x[rows]), y=jnp.asarray(y[rows], jnp.int32),
            offsets=jnp.asarray(offsets, jnp.int32), sizes=jnp.asarray(sizes, jnp.int32),
            idx=jnp.asarray(idx), valid=jnp.asarray(valid), edge_id=jnp.asarray(edge_id),
            weights=jnp.asarray(weights, jnp.float32),
            w_dense=jnp.asarray(w_dense, jnp.float32), pi=jnp.asarray(pi, jnp.float32))
        self.local_update = make_local_update(model.apply, max_size=int(sizes.max()),
                                              batch_size=batch_size, local_epochs=local_epochs)
        self.round_fn = partial(round_step, spec=self.spec, local_update=self.local_update)
        self._round = jax.jit(self.round_fn, donate_argnums=0)
        self._round_with_local = jax.jit(partial(self.round_fn, return_local=True),
                                         donate_argnums=0)
        self._init_static = dict(model=model, input_shape=self.input_shape, num_devices=n,
                                 sync_mode=self.sync_mode, diameter=self.diameter,
                                 max_delay=self.spec.max_delay)
        self._sharded_init = None
        # What the compiled local phase depends on (sweeps group replicas by it).
        self.local_update_key = (model, int(sizes.max()), batch_size, local_epochs)

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
        """
        from p2pl_jax import sharding

        n = self.num_devices
        sharding.check_divisible(n, mesh)
        rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        arrays_sh = sharding.device_axis_sharding(self.arrays, n, mesh)
        arrays_sh = arrays_sh.replace(x=rep, y=rep)
        self.arrays = jax.device_put(self.arrays, arrays_sh)
        self.spec = dataclasses.replace(self.spec, device_block=0)
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

    def eval_params(self, state: SimState):
        """The [N, ...] parameters a device is evaluated with (the algorithm's `eval_params`)."""
        return state.params

    def step(self, state: SimState, hp: HParams, *, return_local: bool = False):
        """Runs one jitted round (the state's buffers are donated)."""
        if return_local:
            return self._round_with_local(state, self.arrays, hp)
        return self._round(state, self.arrays, hp)


def _init_state(root, sync_idx, sync_valid, *, model, input_shape, num_devices, sync_mode,
                diameter, max_delay) -> SimState:
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
                    rng=root, history=history)


@functools.lru_cache(maxsize=64)
def _jitted_init(**static) -> Callable:
    """One compiled initialisation per static setting, shared by simulators (and sweeps)."""
    return jax.jit(partial(_init_state, **static))


def make_hparams(learning_rate: float, momentum: float, link_failure_prob: float = 0.0, *,
                 dropout_prob: float = 0.0, link_burst_prob: float = 0.0,
                 link_burst_failure_prob: float = 0.0, graph_radius: float = 0.0,
                 graph_p: float = 0.0) -> HParams:
    """HParams as float32 arrays."""
    f = lambda v: jnp.asarray(v, jnp.float32)
    return HParams(learning_rate=f(learning_rate), momentum=f(momentum),
                   link_failure_prob=f(link_failure_prob), dropout_prob=f(dropout_prob),
                   link_burst_prob=f(link_burst_prob),
                   link_burst_failure_prob=f(link_burst_failure_prob),
                   graph_radius=f(graph_radius), graph_p=f(graph_p))
