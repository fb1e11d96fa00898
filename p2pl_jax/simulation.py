"""The simulator: SimState, the jitted round, initialisation with max norm sync.

Every device's parameters and optimizer (momentum) state are stacked on a leading device axis
[N, ...]. One round (P2PL, "Each round k"):
  1. local phase  - vmapped `local_update` (E epochs of SGD-momentum, lax.scan over batches);
  2. consensus    - theta_n <- sum_{m in closed nbhd_k(n)} w_nm(k) theta_m, one mixing product;
  3. momentum     - kept, reset to zero, or mixed like theta.
Link failures are sampled inside the round from the round key; the weights W(k) are recomputed
on the surviving graph. Algorithms share this machinery:
  p2pl        consensus with the chosen weights over the (failing) graph;
  fedavg      consensus is the server's data-size weighted global average (W = 1 pi^T);
  local       no consensus; centralized is `local` with one device holding all the data.

The round is a pure function `round_step(state, arrays, hp, spec)`; `Simulator` binds the
arrays and jits it with the state donated.
"""

import dataclasses
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

ALGORITHMS = ("p2pl", "fedavg", "local", "centralized")
MOMENTUM_AFTER_CONSENSUS = ("keep", "reset", "mix")


@flax.struct.dataclass
class SimState:
    """The whole simulation state (a pytree).

    params, opt_state: every device's model and optax.sgd state, leaves [N, ...].
    round: int32 scalar, rounds completed. rng: the root key (uint32 [2]).
    """

    params: Any
    opt_state: Any
    round: jax.Array
    rng: jax.Array


@flax.struct.dataclass
class HParams:
    """Hyperparameters that are arrays, so one compiled round serves any value (and sweeps)."""

    learning_rate: jax.Array
    momentum: jax.Array
    link_failure_prob: jax.Array


@flax.struct.dataclass
class Arrays:
    """Device-resident inputs of the round: data and graph.

    x [T, ...], y [T]: every device's data concatenated; device n owns rows
      offsets[n] .. offsets[n] + sizes[n] - 1 (offsets, sizes [N] int32).
    idx, valid, edge_id [N, K]: neighbour lists of the static graph (column 0 = self).
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


def _mix(spec: Spec, arrays: Arrays, w: jax.Array, tree):
    if spec.backend == "global":
        return consensus.mix_global(arrays.pi, tree)
    if spec.backend == "dense":
        n = arrays.idx.shape[0]
        w_dense = (mixing.dense_from_lists(arrays.idx, w, n) if spec.link_failures
                   else arrays.w_dense)
        return consensus.mix_dense(w_dense, tree)
    return consensus.mix_gather(arrays.idx, w, tree)


def round_step(state: SimState, arrays: Arrays, hp: HParams, *, spec: Spec,
               local_update: Callable, return_local: bool = False):
    """One round for all devices. Returns (new state, metrics dict of scalars [, local params])."""
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
    local_params = params
    links_up = jnp.ones((), jnp.float32)
    if spec.algorithm in ("p2pl", "fedavg"):
        w = arrays.weights
        if spec.link_failures:
            valid_k = network.surviving_links(rng.link_key(key), arrays.valid, arrays.edge_id,
                                              spec.num_edges, hp.link_failure_prob,
                                              spec.link_mode)
            w = mixing.neighbour_weights(arrays.idx, valid_k, arrays.sizes, spec.scheme)
            links_up = network.links_up_fraction(arrays.valid, valid_k)
        params = _mix(spec, arrays, w, params)
        if spec.momentum_after_consensus == "mix":
            opt_state = _mix(spec, arrays, w, opt_state)
        elif spec.momentum_after_consensus == "reset":
            opt_state = jax.tree.map(jnp.zeros_like, opt_state)
    new_state = state.replace(params=params, opt_state=opt_state, round=state.round + 1)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf))
                                for leaf in jax.tree.leaves(params)]))
    metrics = {"train_loss": jnp.mean(loss), "links_up": links_up, "params_finite": finite}
    if return_local:
        return new_state, metrics, local_params
    return new_state, metrics


class Simulator:
    """Binds model, data and graph; builds the initial state and the jitted round.

    Args:
      model: a Flax module for one device.
      x, y: training data [T, ...], [T]; parts: one index array into x per device.
      adj: bool [N, N] adjacency of the static graph (ignored by fedavg/local/centralized).
      algorithm, mixing_scheme, sync_mode, backend, link_mode, momentum_after_consensus: as in
        the config reference.
      link_failures: compile link-failure sampling into the round (needed when p > 0 or swept).
      local_epochs, batch_size: the local phase.
      device_block: 0 vmaps the local phase over all devices at once (best on accelerators);
        k > 0 runs blocks of k devices one after another (lax.map), which keeps each block's
        working set in cache (faster on CPU). The result is the same.
    """

    def __init__(self, *, model: nn.Module, x: np.ndarray, y: np.ndarray,
                 parts: list[np.ndarray], adj: np.ndarray, algorithm: str = "p2pl",
                 mixing_scheme: str = "data_size", sync_mode: str = "max_norm",
                 backend: str = "auto", link_failures: bool = False,
                 link_mode: str = "symmetric", momentum_after_consensus: str = "keep",
                 local_epochs: int = 1, batch_size: int = 10, device_block: int = 0):
        self.model = model
        self.num_devices = n = len(parts)
        self.input_shape = tuple(x.shape[1:])
        sizes = np.array([len(p) for p in parts], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rows = np.concatenate(parts)
        self.algorithm = algorithm
        self.sync_mode = "shared_seed" if algorithm in ("fedavg", "centralized") else sync_mode
        if algorithm != "p2pl":
            link_failures = False
        self.adj = np.asarray(adj, bool)
        self.diameter = graphs.diameter(nx.from_numpy_array(self.adj)) if n > 1 else 0
        lists = graphs.neighbour_lists(self.adj)
        sizes_np = np.asarray(sizes, np.int64)
        pi = sizes_np / sizes_np.sum()
        if algorithm == "p2pl" and mixing_scheme == "fedavg":
            algorithm = self.algorithm = "fedavg"   # W = 1 pi^T: the server average
            link_failures = False
        if algorithm == "p2pl":
            weights = np.asarray(mixing.neighbour_weights(
                jnp.asarray(lists.idx), jnp.asarray(lists.valid),
                jnp.asarray(sizes_np, jnp.float32), mixing_scheme))
            w_dense_np = mixing.mixing_matrix(self.adj, sizes_np, mixing_scheme)
            k = lists.idx.shape[1]
            resolved = consensus.choose_backend(backend, n, k)
            if backend == "auto" and not link_failures and np.all(w_dense_np == w_dense_np[:1]):
                resolved, pi = "global", w_dense_np[0]   # identical rows: one average, broadcast
        else:
            weights = np.zeros(lists.idx.shape, np.float32)
            w_dense_np = np.zeros((1, 1))
            resolved = "global" if algorithm == "fedavg" else "none"
        self.backend = resolved
        self.spec = Spec(algorithm=algorithm, scheme=mixing_scheme, backend=resolved,
                         link_failures=bool(link_failures), link_mode=link_mode,
                         num_edges=int(self.adj.sum() // 2),
                         momentum_after_consensus=momentum_after_consensus,
                         device_block=int(device_block))
        w_dense = w_dense_np if resolved == "dense" else np.zeros((1, 1))
        self.arrays = Arrays(
            x=jnp.asarray(x[rows]), y=jnp.asarray(y[rows], jnp.int32),
            offsets=jnp.asarray(offsets, jnp.int32), sizes=jnp.asarray(sizes, jnp.int32),
            idx=jnp.asarray(lists.idx), valid=jnp.asarray(lists.valid),
            edge_id=jnp.asarray(lists.edge_id), weights=jnp.asarray(weights, jnp.float32),
            w_dense=jnp.asarray(w_dense, jnp.float32), pi=jnp.asarray(pi, jnp.float32))
        self.local_update = make_local_update(model.apply, max_size=int(sizes.max()),
                                              batch_size=batch_size, local_epochs=local_epochs)
        fn = partial(round_step, spec=self.spec, local_update=self.local_update)
        self._round = jax.jit(fn, donate_argnums=0)
        self._round_with_local = jax.jit(partial(fn, return_local=True), donate_argnums=0)
        self._init = jax.jit(self._init_state)

    def _init_state(self, root: jax.Array) -> SimState:
        n = self.num_devices
        init_one = lambda key: init_params(self.model, key, self.input_shape)
        if self.sync_mode == "shared_seed":
            one = init_one(rng.init_keys(root, 1)[0])
            params = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (n, *leaf.shape)), one)
        else:
            params = jax.vmap(init_one)(rng.init_keys(root, n))
            if self.sync_mode == "max_norm":
                params = sync.max_norm_sync(params, self.arrays.idx, self.arrays.valid,
                                            self.diameter)
        opt_state = jax.vmap(make_optimizer(0.0, 0.0).init)(params)
        return SimState(params=params, opt_state=opt_state, round=jnp.zeros((), jnp.int32),
                        rng=root)

    def init(self, seed: int) -> SimState:
        """The state before round 1: independent inits, then phase-0 synchronization."""
        return self._init(rng.root_key(seed))

    def compile(self, state: SimState, hp: HParams, *, return_local: bool = False) -> float:
        """Compiles the round ahead of time; returns the compile time in seconds."""
        t0 = time.perf_counter()
        self._round = self._round.lower(state, self.arrays, hp).compile()
        if return_local:
            self._round_with_local = self._round_with_local.lower(
                state, self.arrays, hp).compile()
        return time.perf_counter() - t0

    def step(self, state: SimState, hp: HParams, *, return_local: bool = False):
        """Runs one jitted round (the state's buffers are donated)."""
        if return_local:
            return self._round_with_local(state, self.arrays, hp)
        return self._round(state, self.arrays, hp)


def make_hparams(learning_rate: float, momentum: float, link_failure_prob: float) -> HParams:
    """HParams as float32 arrays."""
    f = lambda v: jnp.asarray(v, jnp.float32)
    return HParams(learning_rate=f(learning_rate), momentum=f(momentum),
                   link_failure_prob=f(link_failure_prob))
