"""D-PSGD (Lian et al., NeurIPS 2017): gossip and gradient from the same point.

    x_n <- sum_m w_nm(k) x_m + (LocalSGD_n(x_n) - x_n)

With one local step of plain SGD this is x+ = W x - eta g(x), the paper's update (as against
P2PL's W (x - eta g(x))). With T local steps it is the "local D-PSGD" of Wang & Joshi
(Cooperative SGD, 2018): the displacement of T local steps is added to the gossiped model.
Messages: the model before the local phase (4 P bytes per link); it can be sent while the
device computes. Row-stochastic weights (default metropolis, doubly stochastic on undirected
graphs as in the paper); every fault; directed graphs are refused (the analysis needs a
symmetric W; use push_sum there).
"""

import jax

from p2pl_jax import mixing
from p2pl_jax.algorithms.base import ALL_FAULTS, Algorithm


def communicate(rnd, params, aux, local):
    mixed, history = rnd.gossip(params, rnd.history)
    params = jax.tree.map(lambda m, end, start: m + (end - start), mixed, local.local,
                          local.start)
    return params, rnd.momentum(local.opt_state), aux, history


ALGORITHM = Algorithm(
    name="dpsgd", paper="Lian et al., NeurIPS 2017 (D-PSGD)", weights="row",
    communicate=communicate, schemes=mixing.NEIGHBOUR_SCHEMES, default_scheme="metropolis",
    faults=ALL_FAULTS, directed=False,
    why={"directed": "D-PSGD's analysis needs a symmetric mixing matrix; on a directed graph "
                     "use algorithm=push_sum (or p2pl)"})
