"""P2PL (the paper's algorithm): adapt, then combine.

    x_n <- sum_m w_nm(k) LocalSGD_m(x_m)        (local phase, then one mixing product)

Messages: every device sends its locally trained model to each neighbour (4 P bytes).
Accepts every neighbour scheme (row-stochastic weights recomputed on the round's graph),
every fault, and directed graphs (receivers weight what they receive).
"""

from p2pl_jax import mixing
from p2pl_jax.algorithms.base import ALL_FAULTS, Algorithm


def communicate(rnd, params, aux, local):
    params, history = rnd.gossip(local.local, rnd.history)
    return params, rnd.momentum(local.opt_state), aux, history


ALGORITHM = Algorithm(
    name="p2pl", paper="Sakthi et al., P2PL (arXiv 2310.18861)", weights="row",
    communicate=communicate, schemes=mixing.NEIGHBOUR_SCHEMES, default_scheme="data_size",
    faults=ALL_FAULTS, directed=True)
