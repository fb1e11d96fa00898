"""CHOCO-SGD (Koloskova, Stich & Jaggi, ICML 2019): compressed gossip with public copies.

Every device n holds x_n and a public copy x_hat_n that all its neighbours hold too (aux
"public", x_hat_0 = 0). With compressor Q and consensus step gamma:
    half    = LocalSGD(x)                                  (one plain step: x - eta g(x))
    q       = Q(half - x_hat)                              (what is sent)
    x_hat+  = x_hat + q                                    (by the sender and its neighbours)
    x+      = half + gamma (W x_hat+ - x_hat+)
This is the paper's Algorithm 2 with T local steps in place of one. With Q = identity and
gamma = 1, x+ = W half: P2PL.
Compressors (p2pl_jax/compression.py): none, top_k, random_k, qsgd, sign, per tensor.
Messages: the compressed q (its real size, see compression.message_bytes).
Needs symmetric doubly stochastic weights (metropolis default, max_degree) on an undirected
static graph; every fault is refused: every neighbour of n must apply the same q_n to its
copy of x_hat_n, and a lost message, a new neighbour or an offline device (which misses its
neighbours' q) would leave a copy stale, which needs per-link copies (K times the memory).
"""

import jax
import jax.numpy as jnp

from p2pl_jax import compression, rng
from p2pl_jax.algorithms.base import Algorithm

_COPIES = ("every neighbour holds one shared public copy x_hat_n; a lost message or a new "
           "neighbour would leave a copy stale (needs per-link copies, not modelled)")
_SYMMETRIC = "CHOCO's consensus step needs a symmetric doubly stochastic W"


def init(params) -> dict:
    return {"public": jax.tree.map(jnp.zeros_like, params)}


def communicate(rnd, params, aux, local):
    spec = rnd.spec
    half = local.local
    diff = jax.tree.map(jnp.subtract, half, aux["public"])
    q = compression.compress(rng.compress_key(rnd.key), diff, spec.compressor,
                             ratio=spec.compress_ratio, bits=spec.qsgd_bits)
    public = jax.tree.map(jnp.add, aux["public"], q)
    mixed = rnd.mix(public)
    gamma = rnd.hp.consensus_step
    params = jax.tree.map(lambda h, m, p: h + gamma * (m - p), half, mixed, public)
    return params, rnd.momentum(local.opt_state), {"public": public}


ALGORITHM = Algorithm(
    name="choco", paper="Koloskova, Stich & Jaggi, ICML 2019 (CHOCO-SGD)", weights="row",
    communicate=communicate, schemes=("metropolis", "max_degree"),
    default_scheme="metropolis", faults=frozenset(), directed=False,
    momentum_modes=("keep", "reset"), init=init, compresses=True,
    message_bytes=lambda sizes, spec: compression.message_bytes(
        sizes, spec.compressor, ratio=spec.compress_ratio, bits=spec.qsgd_bits),
    why={"mixing": _SYMMETRIC + " (metropolis and max_degree are, on an undirected graph)",
         "link_failures": _COPIES, "asymmetric": _COPIES, "bursts": _COPIES,
         "time_varying": _COPIES, "delays": _COPIES, "dropouts": _COPIES.replace(
             "a lost message", "an offline device (it misses its neighbours' q)"),
         "directed": _SYMMETRIC,
         "momentum_after_consensus": "momentum is not part of the public copies"})
