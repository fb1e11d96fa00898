"""FedAvg (McMahan et al., AISTATS 2017) and the two no-communication baselines.

fedavg: every online device trains from the server model; the server averages the online
devices' models weighted by data size and every device holds the result (an offline one
receives it when it is next online, before it trains again). Messages: one upload per online
device and one broadcast to each online device (4 P bytes each). With channel=wireless the
uploads and the broadcast go over the base station's links (wireless.station_round): the server
averages the uploads that arrived, and a device that misses the broadcast keeps its own model.
local: every device trains on its own data, no communication.
centralized: `local` with one device holding the union of the data.
"""

import jax
import jax.numpy as jnp

from p2pl_jax import consensus
from p2pl_jax.algorithms.base import Algorithm


def participation_weights(pi, alive):
    """FedAvg's average over the online devices: pi restricted to `alive`, renormalised
    (pi itself if no device is online: nobody trained, so every model is unchanged)."""
    up = jnp.where(alive, pi, 0.0)
    total = up.sum()
    return jnp.where(total > 0, up / jnp.where(total > 0, total, 1.0), pi)


def _fedavg(rnd, params, aux, local):
    pi = rnd.arrays.pi if not rnd.spec.dropouts else participation_weights(rnd.arrays.pi,
                                                                            rnd.alive)
    if rnd.uploaded is not None:   # wireless: the server averages what reached it
        pi = participation_weights(rnd.arrays.pi, rnd.uploaded)
    params = consensus.mix_global(pi, local.local)
    if rnd.downloaded is not None:
        # A device that missed the broadcast (or every device, when no upload arrived and the
        # server has nothing new) keeps its own model.
        got = rnd.downloaded & jnp.any(rnd.uploaded)
        params = jax.tree.map(lambda avg, own: jnp.where(
            got.reshape((-1,) + (1,) * (own.ndim - 1)), avg, own), params, local.local)
    opt_state = local.opt_state
    if rnd.spec.momentum_after_consensus == "mix":
        opt_state = consensus.mix_global(pi, opt_state)
    elif rnd.spec.momentum_after_consensus == "reset":
        opt_state = rnd.momentum(opt_state)
    return params, opt_state, aux


def _local(rnd, params, aux, local):
    return local.local, local.opt_state, aux


_NO_GRAPH = {"graph": "it does not communicate over a peer-to-peer graph; device "
                      "unavailability: dropout_prob"}

FEDAVG = Algorithm(name="fedavg", paper="McMahan et al., AISTATS 2017 (FedAvg)",
                   weights="server", communicate=_fedavg, faults=frozenset({"dropouts"}),
                   sync="shared_seed", why=_NO_GRAPH)
LOCAL = Algorithm(name="local", paper="no communication (each device alone)", weights="none",
                  communicate=_local, faults=frozenset({"dropouts"}), why=_NO_GRAPH)
CENTRALIZED = Algorithm(name="centralized", paper="one model on all the data", weights="none",
                        communicate=_local, sync="shared_seed", pooled_data=True,
                        why={**_NO_GRAPH, "dropouts": "it has one device"})
