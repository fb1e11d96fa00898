"""The algorithm interface: an algorithm is a record of pure functions plus static facts.

The jitted round (`simulation.round_step`) reads, for every algorithm alike:

    start   = train_point(params, aux)                 what the local phase trains from
    corr    = correction(aux)                          added to every local gradient (or None)
    local   = local phase from `start` (vmapped SGD)   -> LocalResult(start, local, opt, grad)
    faults  : dropouts mask the local phase; the round graph and its weights are drawn (Round)
    params, opt_state, aux[, history] = communicate(round, params, aux, local_result)
    evaluated: eval_params(params, aux)

`aux` is the algorithm's own pytree in `SimState` (trackers, public copies, push-sum weights),
made by `init` from the initial parameters; it is checkpointed and sharded
like the parameters (leaves with a leading device axis are split over the mesh).

The static facts say what an algorithm accepts (mixing schemes, faults, directed graphs,
momentum handling) and what it sends; `algorithms.check_config` turns them into the one place
that decides which combination is a ConfigError, and `simulation` into which faults are
compiled into the round. No code outside an algorithm's module compares algorithm names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp

from p2pl_jax import consensus, mixing, network, rng

# Faults an algorithm may accept (config fields in brackets):
#   link_failures [link_failure_prob, link_failure_mode=symmetric], asymmetric
#   [link_failure_mode=asymmetric], bursts [link_burst_prob], dropouts [dropout_prob],
#   time_varying [time_varying], delays [delay_rounds].
FAULTS = ("link_failures", "asymmetric", "bursts", "dropouts", "time_varying", "delays")
ALL_FAULTS = frozenset(FAULTS)
# How an algorithm's messages travel:
#   row     over the graph, each receiver averages what it receives with row-stochastic weights
#   column  over the graph, each sender splits what it sends with column-stochastic weights
#   server  to and from a server (no graph)
#   none    no communication
WEIGHTS = ("row", "column", "server", "none")


@flax.struct.dataclass
class LocalResult:
    """What the local phase produced, for `communicate` (leaves [N, ...]).

    start: the point the local phase trained from (train_point); local: where it ended;
    opt_state: the optimizer state after it; mean_grad: the mean raw stochastic gradient over
    the steps taken (only for algorithms with needs_mean_grad, else None). Offline devices
    (dropouts) have local == start, their old opt_state and mean_grad == 0.
    """

    start: Any
    local: Any
    opt_state: Any
    mean_grad: Any = None


@dataclasses.dataclass(frozen=True)
class Round:
    """One round's communication context, built by the round for `communicate` (traced).

    w: the round's weights [N, K] on the neighbour lists (receiver rows; row- or
    column-stochastic as the algorithm's `weights` says), after the round's faults.
    alive: bool [N] devices online this round (all True without dropouts).
    history: the delay history (what was sent in the last D + 1 rounds) or None; algorithms
    that accept delays send through `gossip`, which returns the advanced history.
    delays: with channel=wireless and delay_rounds > 0, each entry's delay from its air time
    (wireless.graph_round), used by `gossip` instead of delay_mode's draws.
    uploaded, downloaded: with channel=wireless, which devices' uploads reached the server and
    which received its broadcast (server algorithms; None otherwise).
    """

    spec: Any
    arrays: Any
    hp: Any
    key: jax.Array
    w: jax.Array
    alive: jax.Array
    dynamic: bool
    history: Any = None
    delays: jax.Array | None = None      # channel=wireless: the air time's delays [N, K]
    uploaded: jax.Array | None = None    # channel=wireless, server algorithms: bool [N]
    downloaded: jax.Array | None = None  # whose upload / download of the round arrived

    def mix(self, tree):
        """One mixing product W x on a [N, ...] pytree with this round's weights."""
        spec, arrays = self.spec, self.arrays
        if spec.backend == "global":
            return consensus.mix_global(arrays.pi, tree)
        if spec.backend == "dense":
            n = arrays.idx.shape[0]
            w_dense = (mixing.dense_from_lists(arrays.idx, self.w, n) if self.dynamic
                       else arrays.w_dense)
            return consensus.mix_dense(w_dense, tree)
        return consensus.mix_gather(arrays.idx, self.w, tree)

    def gossip(self, message, history):
        """W applied to what every device sent this round, with late messages when the run
        has delays (`history`: what every device sent in the last D + 1 rounds, the round's
        fault state, None without delays). Returns (mixed, history advanced by this round)."""
        spec = self.spec
        if not spec.max_delay:
            return self.mix(message), history

        history = jax.tree.map(lambda h, p: jnp.concatenate([p[None], h[:-1]]),
                               history, message)
        delays = self.delays
        if delays is None:
            delays = network.sample_delays(rng.delay_key(self.key), self.arrays.idx.shape,
                                           spec.max_delay, spec.delay_mode)
        return consensus.mix_delayed(self.arrays.idx, self.w, delays, history, message), history

    def momentum(self, opt_state):
        """The optimizer state after communication: kept, reset to zero, or mixed like x."""
        mode = self.spec.momentum_after_consensus
        if mode == "mix":
            return self.mix(opt_state)
        if mode == "reset":
            return jax.tree.map(jnp.zeros_like, opt_state)
        return opt_state


def identity_params(params, aux):
    """train_point / eval_params of algorithms that train and evaluate their x."""
    return params


def no_aux(params) -> dict:
    return {}


def model_bytes(leaf_sizes: tuple[int, ...], spec) -> int:
    """A float32 model: 4 bytes per parameter."""
    return 4 * sum(leaf_sizes)


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """An algorithm: pure functions and static facts (see the module docstring).

    name, paper: registry name and where it comes from (docs/ALGORITHMS.md has the equations).
    weights: how messages travel (WEIGHTS). schemes: the mixing schemes it accepts
      (`--config.mixing`), default_scheme: what mixing=auto means for it.
    faults: the FAULTS it accepts; directed: whether it runs on directed graphs.
    momentum_modes: the momentum_after_consensus values it accepts.
    sync: a forced phase-0 sync mode (fedavg and centralized start from one model) or None.
    needs_mean_grad / correction: the local phase returns the mean gradient / steps along
      gradient + correction(aux).
    init(params) -> aux; communicate(round, params, aux, local) -> (params, opt, aux)
      or, for algorithms that take delays, (params, opt, aux, history) from `round.gossip`;
    train_point(params, aux) and eval_params(params, aux) -> [N, ...] params;
    message_bytes(leaf_sizes, spec) -> bytes of one message (per link, or per upload).
    pooled_data: the run has one device holding every device's data (centralized).
    compresses: the algorithm compresses its messages with `--config.compressor`.
    """

    name: str
    paper: str
    weights: str
    communicate: Callable
    schemes: tuple[str, ...] = ()
    default_scheme: str = ""
    faults: frozenset = frozenset()
    directed: bool = False
    momentum_modes: tuple[str, ...] = ("keep", "reset", "mix")
    sync: str | None = None
    needs_mean_grad: bool = False
    correction: Callable | None = None
    init: Callable = no_aux
    train_point: Callable = identity_params
    eval_params: Callable = identity_params
    message_bytes: Callable = model_bytes
    pooled_data: bool = False   # one model trained on the union of the devices' data
    compresses: bool = False    # reads --config.compressor (and its ratio / bits)
    why: dict = dataclasses.field(default_factory=dict)   # reasons for what it refuses

    @property
    def uses_graph(self) -> bool:
        return self.weights in ("row", "column")
