"""Push-sum / stochastic gradient push (SGP, Assran et al., ICML 2019).

Every device holds a numerator x_n and a push-sum weight w_n (w_0 = 1) and trains and is
evaluated at the de-biased model z_n = x_n / w_n. With column-stochastic P(k):
    z      = x / w
    local  = LocalSGD(z)                         (one plain step: z - eta g(z))
    x+     = P (x + local - z),    w+ = P w      (one mixing product of both)
With one local step this is SGP's update x+ = P (x - eta g(z)); with T steps, the T-step
displacement of z is pushed (local SGP). Column-stochastic weights: every sender splits its
mass over its closed out-neighbourhood with the weights `--config.mixing` gives a receiver
over its closed in-neighbourhood (the transposed scheme; uniform, the default, is SGP's
1 / (out-degree + 1)), recomputed on the round's graph. Every neighbour scheme but
data_size_mh, whose point (a row-stochastic W with stationary distribution |D| / sum |D|) is
lost here: the de-biased models tend to the plain average for any column-stochastic P.

Message loss: the acknowledged (sender-keeps) model. A device learns which of its messages
were lost (an acknowledgement, or a beacon for symmetric failures) and keeps their share
itself, so P(k) stays column-stochastic and sum_n x_n and sum_n w_n are conserved exactly in
every round (plain push-sum, which drops the lost share, loses mass; the running-sum variant
of Hadjicostis et al. 2016 recovers it but needs per-link state, K times the model memory).
Messages: x and w (4 P + 4 bytes per link). Accepts directed graphs and every fault but
delays (in-flight mass would need per-link buffers).
"""

import jax
import jax.numpy as jnp

from p2pl_jax import mixing
from p2pl_jax.algorithms.base import Algorithm, model_bytes


def init(params) -> dict:
    n = jax.tree.leaves(params)[0].shape[0]
    return {"weight": jnp.ones((n,), jnp.float32)}


def debiased(params, aux):
    """z = x / w on every leaf."""
    w = aux["weight"]
    return jax.tree.map(lambda x: x / w.reshape((-1,) + (1,) * (x.ndim - 1)), params)


def communicate(rnd, params, aux, local):
    half = jax.tree.map(lambda x, end, start: x + (end - start), params, local.local,
                        local.start)
    mixed = rnd.mix({"x": half, "weight": aux["weight"]})
    return mixed["x"], rnd.momentum(local.opt_state), {"weight": mixed["weight"]}


ALGORITHM = Algorithm(
    name="push_sum", paper="Assran et al., ICML 2019 (SGP); Kempe et al. 2003 (push-sum)",
    weights="column", communicate=communicate,
    schemes=tuple(s for s in mixing.NEIGHBOUR_SCHEMES if s not in mixing.NEEDS_UNDIRECTED),
    default_scheme="uniform",
    faults=frozenset({"link_failures", "asymmetric", "bursts", "dropouts", "time_varying"}),
    directed=True, momentum_modes=("keep", "reset"), init=init, train_point=debiased,
    eval_params=debiased, message_bytes=lambda sizes, spec: model_bytes(sizes, spec) + 4,
    why={"mixing": "push-sum's de-biased models tend to the plain average whatever the "
                   "column-stochastic weights, so data_size_mh's stationary distribution "
                   "(the data shares of a row-stochastic W) does not apply",
         "delays": "late push-sum messages would need per-link buffers for the mass in flight",
         "momentum_after_consensus": "momentum is of z, which is not what is pushed"})
