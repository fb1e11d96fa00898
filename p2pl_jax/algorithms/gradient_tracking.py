"""Gradient tracking (DIGing, Nedic et al. 2017; GT-DSGD, Pu & Nedic 2021): each device
tracks the network-average gradient and steps along its tracker.

DIGing with stochastic gradients g:
    x+ = W x - eta y,        y+ = W y + g(x+) - g(x),        y_0 = g(x_0).
Implemented with one correction per device in aux, c = (W y_prev) - g_prev (c_0 = 0):
    local phase from x, every step along g + c            (one plain SGD step: x - eta y)
    y   = c + g_bar                                       (g_bar: mean raw gradient of the phase)
    x+  = W x + (local - x)
    c+  = W (c + g_bar) - g_bar  = W y - g_bar
With one local step and no momentum this is DIGing exactly. With T local steps every step is
corrected by the same c and g_bar is the phase's mean gradient (the "local gradient tracking"
of K-GT, Liu et al. 2023, without its separate outer step size). Momentum, when on, acts on
the corrected gradient. With doubly stochastic W the invariant mean_n c_n = 0 holds every round,
so mean_n y_n = mean_n g_bar_n: the tracker average is the average local gradient.
Messages: x and c + g_bar (8 P bytes per link). Needs doubly stochastic weights every round:
metropolis (default) or max_degree on an undirected graph, symmetric link failures only.
"""

import jax

from p2pl_jax.algorithms.base import Algorithm, model_bytes

_DOUBLY = ("the tracker average equals the average gradient only with doubly stochastic "
           "weights every round")


def init(params) -> dict:
    return {"correction": jax.tree.map(jax.numpy.zeros_like, params)}


def correction(aux):
    return aux["correction"]


def communicate(rnd, params, aux, local):
    c, g = aux["correction"], local.mean_grad
    y = jax.tree.map(lambda a, b: a + b, c, g)
    mixed = rnd.mix({"x": params, "y": y})
    params = jax.tree.map(lambda m, end, start: m + (end - start), mixed["x"], local.local,
                          local.start)
    new_c = jax.tree.map(lambda wy, gb: wy - gb, mixed["y"], g)
    return params, rnd.momentum(local.opt_state), {"correction": new_c}


ALGORITHM = Algorithm(
    name="gradient_tracking", paper="Nedic, Olshevsky & Shi 2017 (DIGing); Pu & Nedic 2021",
    weights="row", communicate=communicate, schemes=("metropolis", "max_degree"),
    default_scheme="metropolis",
    faults=frozenset({"link_failures", "bursts", "dropouts", "time_varying"}),
    directed=False, needs_mean_grad=True, correction=correction, init=init,
    message_bytes=lambda sizes, spec: 2 * model_bytes(sizes, spec),
    why={"mixing": _DOUBLY + " (metropolis and max_degree are, on an undirected graph)",
         "asymmetric": _DOUBLY + "; asymmetric failures make W non-symmetric",
         "delays": _DOUBLY + "; late trackers break the invariant",
         "directed": _DOUBLY + "; use push_sum on directed graphs"})
