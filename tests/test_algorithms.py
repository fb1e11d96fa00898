"""The algorithms of p2pl_jax.algorithms against an independent per-device reference, the
properties every algorithm shares, and the equivalences that hold by construction.

The reference (this file and tests/reference.py) shares no code with the library's round. It
re-derives every random draw from rng.py's documented key derivation with literal tags (round 2,
local 3, link 4, dropout 5, compress 9: fold_in(round key, 9), then per leaf i fold_in(.., i)
split into N device keys), runs every device's local phase in a Python loop (T steps: step t
takes batch t mod s of the shuffle of epoch t // s), builds the round's graph itself (directed
graphs, the one-peer time-varying exponential graph, symmetric and asymmetric link failures on
the neighbour-list layout, dropouts), computes its weights from mixing.py's formulas and
applies each algorithm's update equations as its module docstring writes them:

  dpsgd              x+ = W x + (local - x)
  gradient_tracking  local phase along g + c; y = c + g_bar; x+ = W x + (local - x);
                     c+ = W y - g_bar                                    (c_0 = 0)
  push_sum           z = x / w; local from z; x+ = P (x + local - z); w+ = P w, with P
                     column-stochastic: every sender splits its mass over its closed
                     out-neighbourhood by the scheme on the reversed round graph, and keeps
                     the share of a message that is lost
  choco              q = Q(local - x_hat) (0 when offline); x_hat += q;
                     x+ = local + gamma (W x_hat - x_hat)                (x_hat_0 = 0)

Compiles dominate the run time (a round costs seconds to compile on CPU, microseconds to run),
so every Simulator is built once (`sim`) and reused by every test that needs its program, with
the hyperparameters (momentum, probabilities, learning rate, consensus step) varied as arrays.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import (
    BATCH,
    BETA,
    EDGES,
    FAST_COMPILE,
    LEAVES,
    LR,
    MODEL,
    SIZES,
    adjacency,
    assert_close,
    compress_vector,
    device,
    make_data,
    random_params,
    ref_local,
    ref_weights,
    round_key,
    stack,
    tag,
    tree,
    uniform,
)

from configs import smoke
from p2pl_jax import algorithms, checkpoint, graphs, runner, simulation
from p2pl_jax import rng as lib_rng
from p2pl_jax.errors import ConfigError
from p2pl_jax.local_update import make_optimizer

N = len(SIZES)
ROUNDS = 3
DATA = make_data(SIZES)
STATIC = adjacency(N, EDGES)
# The directed exponential graph: n hears m iff n = m + 2^j mod N for some 2^j < N.
EXPONENTIAL = np.array([[n != m and any((m + 2 ** j) % N == n for j in range(N) if 2 ** j < N)
                         for m in range(N)] for n in range(N)])
# A strongly connected directed graph whose in- and out-degrees differ (sender -> receiver).
ARCS = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0), (0, 2), (2, 0), (1, 4), (3, 1)]
DIRECTED = np.zeros((N, N), bool)
for _sender, _receiver in ARCS:
    DIRECTED[_receiver, _sender] = True
GRAPHS = {"static": STATIC, "exponential": EXPONENTIAL, "directed": DIRECTED}
# mixing=auto, as the modules' docstrings give it.
DEFAULT_SCHEME = {"p2pl": "data_size", "dpsgd": "metropolis", "gradient_tracking": "metropolis",
                  "push_sum": "uniform", "choco": "metropolis"}
NEW = ("dpsgd", "gradient_tracking", "push_sum", "choco")
WITH_AUX = ("gradient_tracking", "push_sum", "choco")

# Every Simulator of this file: name -> its config (Simulator kwargs plus graph and n).
SIMS = {
    "p2pl-T1": dict(algorithm="p2pl", mixing_scheme="metropolis", local_steps=1),
    "p2pl-E1": dict(algorithm="p2pl", mixing_scheme="metropolis"),
    "dpsgd-sym-drop-T3": dict(algorithm="dpsgd", link_failures=True, dropouts=True,
                              local_steps=3, backend="dense"),
    "dpsgd-asym-T1-mix": dict(algorithm="dpsgd", link_failures=True, link_mode="asymmetric",
                              local_steps=1, backend="gather", mixing_scheme="data_size",
                              momentum_after_consensus="mix"),
    "gt-sym-drop-T3": dict(algorithm="gradient_tracking", link_failures=True, dropouts=True,
                           local_steps=3),
    "gt-T1-maxdeg-reset": dict(algorithm="gradient_tracking", local_steps=1,
                               mixing_scheme="max_degree", momentum_after_consensus="reset",
                               backend="gather"),
    "push-directed-asym-drop-T3": dict(algorithm="push_sum", graph="directed",
                                       link_failures=True, link_mode="asymmetric",
                                       dropouts=True, local_steps=3),
    "push-tvexp-datasize-T1": dict(algorithm="push_sum", graph="exponential",
                                   time_varying="exponential", mixing_scheme="data_size",
                                   local_steps=1, momentum_after_consensus="reset"),
    "push-metropolis-T1": dict(algorithm="push_sum", mixing_scheme="metropolis", local_steps=1),
    "push-metropolis-E1": dict(algorithm="push_sum", mixing_scheme="metropolis"),
    "choco-none-T1": dict(algorithm="choco", local_steps=1),
    "choco-none-E1": dict(algorithm="choco"),
    "choco-top_k-T3": dict(algorithm="choco", compressor="top_k", compress_ratio=0.1,
                           local_steps=3, mixing_scheme="max_degree"),
    "choco-random_k-E1": dict(algorithm="choco", compressor="random_k", compress_ratio=0.25,
                              momentum_after_consensus="reset", backend="gather"),
    "choco-qsgd-T3": dict(algorithm="choco", compressor="qsgd", qsgd_bits=2, local_steps=3),
    "choco-sign-T1": dict(algorithm="choco", compressor="sign", local_steps=1),
}
for _name in algorithms.ALGORITHMS:   # one device, 3 local steps (two epochs of 7 samples)
    SIMS[f"{_name}-N1"] = dict(algorithm=_name, n=1, local_steps=3)

# Push-sum with lost messages: a sender splits its mass over the out-neighbours it sends to and,
# learning which messages were lost, keeps their share (push_sum.py, mixing.column_weights,
# docs/ALGORITHMS.md "acknowledged (sender keeps)"); the reference's default rule.

# Reference cases: sim, hyperparameters, momenta to run, fault events that must happen.
CASES = {
    "dpsgd-sym-links-dropouts-T3": dict(sim="dpsgd-sym-drop-T3", p=0.3, drop=0.25,
                                        momenta=(BETA, 0.0),
                                        events={"link down", "offline", "second epoch"}),
    "dpsgd-asym-links-T1-mix-gather": dict(sim="dpsgd-asym-T1-mix", p=0.3, momenta=(BETA,),
                                           events={"link down", "one-way link"}),
    "gt-sym-links-dropouts-T3": dict(sim="gt-sym-drop-T3", p=0.3, drop=0.25,
                                     momenta=(BETA, 0.0), events={"link down", "offline"}),
    "gt-T1-max_degree-reset": dict(sim="gt-T1-maxdeg-reset", momenta=(0.0, BETA), events=set()),
    "push-directed-T3": dict(sim="push-directed-asym-drop-T3", momenta=(BETA, 0.0),
                             events=set()),
    "push-directed-asym-links-dropouts-T3": dict(
        sim="push-directed-asym-drop-T3", p=0.3, drop=0.25, momenta=(BETA, 0.0),
        events={"link down", "offline", "one-way link", "lost message"}),
    "push-tv-exponential-data_size-T1-reset": dict(sim="push-tvexp-datasize-T1",
                                                   momenta=(BETA,), events=set()),
    "push-metropolis-E1": dict(sim="push-metropolis-E1", momenta=(0.0,), events=set()),
    "choco-none-T1": dict(sim="choco-none-T1", gamma=0.5, momenta=(BETA, 0.0), events=set()),
    "choco-none-E1": dict(sim="choco-none-E1", gamma=0.7, momenta=(0.0,), events=set()),
    "choco-top_k-T3-max_degree": dict(sim="choco-top_k-T3", gamma=0.6, momenta=(BETA,),
                                      events=set()),
    "choco-random_k-E1-reset": dict(sim="choco-random_k-E1", gamma=0.8, momenta=(BETA,),
                                    events=set()),
    "choco-qsgd-T3": dict(sim="choco-qsgd-T3", gamma=0.5, momenta=(BETA, 0.0), events=set()),
    "choco-sign-T1-gather": dict(sim="choco-sign-T1", gamma=0.4, momenta=(0.0,), events=set()),
}


def _config(name):
    c = dict(SIMS[name])
    return c.pop("n", N), c.pop("graph", "static"), c





@functools.cache
def sim(name) -> simulation.Simulator:
    n, graph, kw = _config(name)
    x, y, parts = DATA
    adj = GRAPHS[graph]
    if n == 1:
        parts, adj = [parts[0]], np.zeros((1, 1), bool)
    s = simulation.Simulator(model=MODEL, x=x, y=y, parts=parts, adj=adj, batch_size=BATCH,
                             sync_mode="none", diameter=None, **kw)
    # The Simulator's jitted round (its round_fn, state donated), compiled with FAST_COMPILE.
    s._round = jax.jit(s.round_fn, donate_argnums=0, compiler_options=FAST_COMPILE)
    return s


_LAYOUTS = {}   # id(Simulator) -> the shapes of its init state (the Simulators live forever)


def start_state(s: simulation.Simulator, params0, seed) -> simulation.SimState:
    """The state before round 1 from params0: the layout of the Simulator's init (round 0, no
    messages yet), the algorithm's own aux (algorithm.init), zero momentum, the root key of
    `seed`. (Built from the init's shapes: compiling the init itself would cost seconds.)"""
    params = tree(jnp.asarray, params0)
    if id(s) not in _LAYOUTS:
        _LAYOUTS[id(s)] = jax.eval_shape(s.init_state, lib_rng.root_key(seed))
    base = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), _LAYOUTS[id(s)])
    return base.replace(params=params, rng=lib_rng.root_key(seed),
                        opt_state=jax.vmap(make_optimizer(0.0, 0.0).init)(params),
                        aux=s.algorithm_record.init(params))


def hparams(lr=LR, beta=BETA, p=0.0, drop=0.0, gamma=1.0):
    return simulation.make_hparams(lr, beta, p, dropout_prob=drop, consensus_step=gamma)


def _momentum(params, opt_state):
    return jax.tree.unflatten(jax.tree.structure(params),
                              [np.asarray(m) for m in jax.tree.leaves(opt_state)])


def library_run(s, hp, params0, seed, rounds=ROUNDS):
    """Every round's host copy of (params, momentum, aux, comm, metrics)."""
    state = start_state(s, params0, seed)
    out = []
    for _ in range(rounds):
        state, metrics = s.step(state, hp)
        host = jax.device_get(state)
        out.append(dict(params=host.params, mom=_momentum(host.params, host.opt_state),
                        aux=host.aux, comm=host.comm,
                        metrics={k: np.asarray(v) for k, v in jax.device_get(metrics).items()}))
    return out


# ----------------------------------------------------------------------------- the reference


def ref_round_graph(adj, key, r, c, p, alive, events):
    """(offered, arrived) bool [N, N] (x[n, m]: n hears m) of round r: the static graph masked
    by the one-peer exponential graph, links drawn down, and every link of an offline device
    (offered: the sender is online; arrived: the link is up and both ends online)."""
    n_dev = adj.shape[0]
    union = adj | adj.T
    rows = [[n] + [m for m in range(n_dev) if m != n and union[n, m]] for n in range(n_dev)]
    k_max = max(len(row) for row in rows)
    a = adj.copy()
    if c.get("time_varying") == "exponential":   # i sends only to i + 2^(r mod L)
        hops = math.floor(math.log2(n_dev - 1)) + 1
        shift = 2 ** (r % hops)
        a &= np.array([[m == (n - shift) % n_dev for m in range(n_dev)] for n in range(n_dev)])
    offered = a & alive[None, :]
    if c.get("link_failures"):
        prob, up = np.float32(p), np.zeros_like(a)
        if c.get("link_mode", "symmetric") == "symmetric":   # one draw per undirected pair
            pairs = [(i, j) for i in range(n_dev) for j in range(i + 1, n_dev) if union[i, j]]
            u = uniform(tag(key, "link"), (len(pairs),))
            for (i, j), ui in zip(pairs, u, strict=True):
                up[i, j] = up[j, i] = ui >= prob
        else:                                # one draw per neighbour-list entry n <- m
            u = uniform(tag(key, "link"), (n_dev, k_max))
            for n, row in enumerate(rows):
                for k, m in enumerate(row[1:], start=1):
                    up[n, m] = u[n, k] >= prob
            if (up != up.T)[union].any():
                events.add("one-way link")
        if (a & ~up).any():
            events.add("link down")
        a &= up
    a &= alive[:, None] & alive[None, :]
    lost = offered & ~a & ~np.eye(n_dev, dtype=bool)
    if (lost.any(axis=0) & (a & ~np.eye(n_dev, dtype=bool)).any(axis=0)).any():
        events.add("lost message")      # a sender lost some messages and delivered others
    return offered, a


def column_weights(offered, arrived, sizes, scheme, lost="keep"):
    """P[n, m] = the share sender m gives receiver n: the scheme's weights on the reversed
    graph of the messages m sends (m 'receives' from its out-neighbours), transposed, so column
    m sums to 1; the share of a message that does not arrive stays with its sender (the
    documented rule, lost="keep"). lost="arrived" is what the library does instead: the scheme
    on the reversed graph of the messages that arrive."""
    if lost == "arrived":
        return ref_weights(arrived.T, sizes, scheme).T
    share = ref_weights(offered.T, sizes, scheme).T
    off_diag = ~np.eye(len(sizes), dtype=bool)
    p = np.where(arrived & off_diag, share, 0.0)
    kept = np.where(offered & ~arrived & off_diag, share, 0.0).sum(axis=0)
    return p + np.diag(np.diag(share) + kept)


def combine_row(w_row, trees):
    """sum_m w_row[m] tree_m (float64 accumulation)."""
    return tree(lambda *leaves: sum(w_row[m] * leaves[m].astype(np.float64)
                                    for m in range(len(trees))).astype(np.float32), *trees)


def combine(w, trees):
    """out_n = sum_m w[n, m] tree_m, device by device."""
    return [combine_row(w[n], trees) for n in range(w.shape[0])]


def compress(key, diffs, kind, ratio, bits):
    """Q of every device's copy of every leaf: leaf i of device n with
    split(fold_in(fold_in(round key, 9), i), N)[n]."""
    n_dev = len(diffs)
    out = [tree(np.copy, d) for d in diffs]
    for i, (layer, name) in enumerate(LEAVES):
        keys = jax.random.split(jax.random.fold_in(tag(key, "compress"), i), n_dev)
        for n in range(n_dev):
            v = diffs[n][layer][name]
            out[n][layer][name] = compress_vector(kind, v.reshape(-1), keys[n], ratio=ratio,
                                                  bits=bits).reshape(v.shape)
    return out


def reference_run(name, params0, seed, *, lr=LR, beta=BETA, p=0.0, drop=0.0, gamma=1.0,
                  rounds=ROUNDS, lost="keep", copies="shared"):
    """The algorithm of SIMS[name], device by device. Returns the rounds (as library_run) and
    the fault events that happened. lost: push-sum's rule for lost messages (column_weights).
    copies: choco's x_hat_m as one copy every neighbour of m holds ("shared", the docstring's
    model) or as device n's own copy, which only the q_m that reach n update ("own")."""
    n_dev, graph, c = _config(name)
    algorithm = c["algorithm"]
    scheme = c.get("mixing_scheme", "auto")
    scheme = DEFAULT_SCHEME[algorithm] if scheme == "auto" else scheme
    x_all, y_all, parts = DATA
    adj = GRAPHS[graph]
    sizes = np.array([len(q) for q in parts], np.float64)
    max_size, steps = int(sizes.max()), c.get("local_steps", 0)
    after = c.get("momentum_after_consensus", "keep")
    x = [device(params0, n) for n in range(n_dev)]
    mom = [tree(np.zeros_like, t) for t in x]
    corr = [tree(np.zeros_like, t) for t in x]         # gradient tracking's c
    public = [tree(np.zeros_like, t) for t in x]       # choco's x_hat
    held = {(n, m): public[m] for n in range(n_dev) for m in range(n_dev) if adj[n, m]}
    weight = np.ones(n_dev, np.float32)                # push-sum's w
    sent_total, delivered_total = np.zeros(n_dev, int), np.zeros(n_dev, int)
    events, out = set(), []
    for r in range(rounds):
        key = round_key(seed, r)
        local_keys = jax.random.split(tag(key, "local"), n_dev)
        alive = np.ones(n_dev, bool)
        if c.get("dropouts"):
            alive = uniform(tag(key, "drop"), (n_dev,)) >= np.float32(drop)
            if not alive.all():
                events.add("offline")
        offered, arrived = ref_round_graph(adj, key, r, c, p, alive, events)
        # local phase (an offline device keeps its model and momentum, its mean gradient is 0)
        start = [tree(lambda a, w_n=weight[n]: a / w_n, x[n]) if algorithm == "push_sum" else x[n]
                 for n in range(n_dev)]
        local, g_bar, losses = [], [], []
        for n, rows in enumerate(parts):
            if steps > -(-len(rows) // BATCH):
                events.add("second epoch")
            if alive[n]:
                t_n, mom[n], loss_n, g_n = ref_local(
                    start[n], mom[n], x_all[rows], y_all[rows], local_keys[n], max_size,
                    c.get("local_epochs", 1), steps=steps, lr=lr, beta=beta,
                    corr=corr[n] if algorithm == "gradient_tracking" else None)
                losses.append(loss_n)
            else:
                t_n, g_n = start[n], tree(np.zeros_like, start[n])
            local.append(t_n)
            g_bar.append(g_n)
        # communication
        w = ref_weights(arrived, sizes, scheme)
        if algorithm == "p2pl":
            x = combine(w, local)
        elif algorithm == "dpsgd":
            x = [tree(lambda wx, end, s: wx + (end - s), wx_n, local[n], x[n])
                 for n, wx_n in enumerate(combine(w, x))]
        elif algorithm == "gradient_tracking":
            y = [tree(lambda a, b: (a + b).astype(np.float32), corr[n], g_bar[n])
                 for n in range(n_dev)]
            x = [tree(lambda wx, end, s: wx + (end - s), wx_n, local[n], x[n])
                 for n, wx_n in enumerate(combine(w, x))]
            corr = [tree(lambda wy, g: (wy - g).astype(np.float32), wy_n, g_bar[n])
                    for n, wy_n in enumerate(combine(w, y))]
        elif algorithm == "push_sum":
            w = column_weights(offered, arrived, sizes, scheme, lost)
            half = [tree(lambda a, end, s: a + (end - s), x[n], local[n], start[n])
                    for n in range(n_dev)]
            x = combine(w, half)
            weight = (w @ weight.astype(np.float64)).astype(np.float32)
        elif algorithm == "choco":
            diff = [tree(np.subtract, local[n], public[n]) for n in range(n_dev)]
            q = compress(key, diff, c.get("compressor", "none"), c.get("compress_ratio"),
                         c.get("qsgd_bits"))
            q = [q[n] if alive[n] else tree(np.zeros_like, q[n]) for n in range(n_dev)]
            public = [tree(np.add, public[n], q[n]) for n in range(n_dev)]
            if copies == "own":     # n's copy of x_hat_m takes q_m only when q_m reaches n
                held = {(n, m): tree(np.add, h, q[m]) if arrived[n, m] else h
                        for (n, m), h in held.items()}
                if any(not np.array_equal(h["Dense_0"]["kernel"], public[m]["Dense_0"]["kernel"])
                       and arrived[n, m] for (n, m), h in held.items()):
                    events.add("stale copy")
                seen = [[held[(n, m)] if (n, m) in held else public[m] for m in range(n_dev)]
                        for n in range(n_dev)]
                mixed = [combine_row(w[n], seen[n]) for n in range(n_dev)]
            else:
                mixed = combine(w, public)
            x = [tree(lambda h, m, pub: h + np.float32(gamma) * (m - pub), local[n], wx, public[n])
                 for n, wx in enumerate(mixed)]
        if after == "mix":
            mom = combine(w, mom)
        elif after == "reset":
            mom = [tree(np.zeros_like, m) for m in mom]
        off_diag = ~np.eye(n_dev, dtype=bool)
        sent = (offered & off_diag).sum(axis=0)        # per sender
        delivered = (arrived & off_diag).sum(axis=0)
        sent_total, delivered_total = sent_total + sent, delivered_total + delivered
        aux = {"dpsgd": {}, "p2pl": {}, "gradient_tracking": {"correction": stack(corr)},
               "push_sum": {"weight": weight}, "choco": {"public": stack(public)}}[algorithm]
        out.append(dict(params=stack(x), mom=stack(mom), aux=aux,
                        comm={"sent": sent_total, "delivered": delivered_total, "server": 0},
                        metrics={"train_loss": np.mean(losses) if losses else 0.0,
                                 "messages_sent": sent.sum(),
                                 "messages_delivered": delivered.sum(),
                                 "messages_sent_max": sent.max()}))
    return out, events


def assert_rounds_equal(got, want, rtol=2e-5, atol=2e-5):
    for r, (g, w) in enumerate(zip(got, want, strict=True), start=1):
        assert_close(g["params"], w["params"], f"params after round {r}", rtol, atol)
        assert_close(g["mom"], w["mom"], f"momentum after round {r}", rtol, atol)
        assert_close(g["aux"], w["aux"], f"aux after round {r}", rtol, atol)
        assert jax.tree.structure(g["aux"]) == jax.tree.structure(w["aux"])
        for k in ("sent", "delivered", "server"):
            np.testing.assert_array_equal(g["comm"][k], w["comm"][k], err_msg=f"comm {k} {r}")
        for k in ("messages_sent", "messages_delivered", "messages_sent_max"):
            assert int(g["metrics"][k]) == int(w["metrics"][k]), (k, r)
        assert float(g["metrics"]["train_loss"]) == pytest.approx(
            float(w["metrics"]["train_loss"]), rel=1e-5, abs=1e-6), ("train_loss", r)


# ----------------------------------------------------------------------------- 1. reference


@pytest.mark.parametrize("case", [pytest.param(k, marks=v.get("marks", ())) for k, v in
                                  CASES.items()])
def test_round_equals_independent_reference(case):
    c = {k: v for k, v in CASES[case].items() if k != "marks"}
    name, momenta, expected = c.pop("sim"), c.pop("momenta"), c.pop("events")
    s = sim(name)
    seed = 3
    params0 = random_params(seed, N)
    for beta in momenta:
        want, events = reference_run(name, params0, seed, beta=beta, **c)
        assert expected <= events, f"untested: {expected - events}"
        got = library_run(s, hparams(beta=beta, **c), params0, seed)
        assert_rounds_equal(got, want)


def test_choco_refuses_dropouts():
    """CHOCO under dropouts would need per-device copies: an offline device misses its
    neighbours' q_m of that round, yet every neighbour of m is taken to hold the same x_hat_m.
    (The reference's copies="own" models them; the library refuses the combination.)"""
    c = smoke.get_config()
    c.algorithm, c.dropout_prob = "choco", 0.3
    with pytest.raises(ConfigError, match="dropout_prob=0.3 does not apply to algorithm=choco"):
        runner.validate(c)


def test_default_schemes_and_message_sizes():
    """mixing=auto is what the docstrings say; one message is 4 P bytes (dpsgd), 8 P (x and the
    tracker), 4 P + 4 (x and w), and choco's compressed size (P = 226 parameters)."""
    for name, scheme in DEFAULT_SCHEME.items():
        assert algorithms.resolve(name, "auto") == (name, scheme)
    leaves = (8, 128, 10, 80)
    p = sum(leaves)
    assert sim("dpsgd-sym-drop-T3").message_bytes == 4 * p
    assert sim("gt-sym-drop-T3").message_bytes == 8 * p
    assert sim("push-directed-asym-drop-T3").message_bytes == 4 * p + 4
    assert sim("choco-none-T1").message_bytes == 4 * p
    assert sim("choco-top_k-T3").message_bytes == 8 * (1 + 13 + 1 + 8)          # ratio 0.1
    assert sim("choco-random_k-E1").message_bytes == 8 * (2 + 32 + 3 + 20)       # ratio 0.25
    assert sim("choco-qsgd-T3").message_bytes == sum(4 + math.ceil(d * 3 / 8)
                                                          for d in leaves)
    assert sim("choco-sign-T1").message_bytes == sum(4 + math.ceil(d / 8) for d in leaves)


def test_exponential_graph_is_the_documented_one():
    assert np.array_equal(graphs.adjacency(graphs.make_graph("exponential", N)), EXPONENTIAL)


# ----------------------------------------------------------------------------- 2. shared suite

# The compiled program each algorithm's shared tests run (one device for the baselines).
SUITE = {"p2pl": "p2pl-T1", "fedavg": "fedavg-N1", "local": "local-N1",
         "centralized": "centralized-N1", "dpsgd": "dpsgd-sym-drop-T3",
         "gradient_tracking": "gt-sym-drop-T3", "push_sum": "push-directed-asym-drop-T3",
         "choco": "choco-qsgd-T3"}
SUITE_HP = dict(p=0.3, drop=0.25, gamma=0.5)


def test_suite_covers_every_algorithm():
    """Including sharding: tests/sharded_check.py (run by test_sharding.py over 8 forced CPU
    devices) has a case for every algorithm but centralized (one device)."""
    import sharded_check

    assert set(SUITE) == set(algorithms.ALGORITHMS)
    sharded = {kw.get("algorithm", "p2pl") for kw, _, _ in sharded_check.CASES.values()}
    assert sharded == set(algorithms.ALGORITHMS) - {"centralized"}


def _signature(state):
    leaves, treedef = jax.tree.flatten(state)
    return treedef, [(tuple(a.shape), jnp.dtype(a.dtype), bool(getattr(a, "weak_type", False)))
                     for a in leaves]


def _every_fault_sim(name):
    """A Simulator with every fault the algorithm accepts compiled in (never compiled here)."""
    faults = algorithms.get(name).faults
    x, y, parts = DATA
    kw = dict(link_failures="link_failures" in faults, link_bursts="bursts" in faults,
              link_mode="asymmetric" if "asymmetric" in faults else "symmetric",
              dropouts="dropouts" in faults, max_delay=1 if "delays" in faults else 0,
              time_varying="erdos_renyi" if "time_varying" in faults else "")
    return simulation.Simulator(model=MODEL, x=x, y=y, parts=parts, adj=STATIC, batch_size=BATCH,
                                algorithm=name, local_steps=3, diameter=None, **kw)


@pytest.mark.parametrize("name", algorithms.ALGORITHMS)
def test_state_signature_is_stable_under_jit(name):
    """The round maps the init state's tree, shapes, dtypes and weak types onto themselves
    (with every fault the algorithm takes), so a jitted loop never retraces."""
    s = _every_fault_sim(name)
    init = jax.eval_shape(s.init_state, lib_rng.root_key(0))
    out, metrics = jax.eval_shape(s.round_fn, init, s.arrays, hparams(**SUITE_HP))
    assert _signature(out) == _signature(init)
    assert set(init.comm) == {"sent", "delivered", "server"}
    if name in WITH_AUX:
        assert jax.tree.leaves(init.aux), "the algorithm's state is missing"
    assert {"messages_sent", "messages_delivered", "messages_sent_max"} <= set(metrics)


@pytest.mark.parametrize("name", algorithms.ALGORITHMS)
def test_round_is_traced_once(name):
    """Three rounds from the state the algorithm's init builds trace the round once."""
    s = sim(SUITE[name])
    n = s.num_devices
    state = start_state(s, random_params(1, n), 1)
    assert _signature(state) == _signature(jax.eval_shape(s.init_state, lib_rng.root_key(1)))
    for _ in range(3):
        state, _ = s.step(state, hparams(**SUITE_HP))
    assert s._round._cache_size() == 1


@pytest.mark.parametrize("name", algorithms.ALGORITHMS)
def test_one_device_is_local_training(name):
    """With one device every algorithm is plain local training (algorithm=local), and local
    training is the reference's local phase."""
    params0 = random_params(2, 1)
    hp = hparams(**SUITE_HP)
    got = library_run(sim(f"{name}-N1"), hp, params0, 2)
    want = library_run(sim("local-N1"), hp, params0, 2)
    for g, w in zip(got, want, strict=True):
        params = g["params"]
        if name == "push_sum":
            np.testing.assert_allclose(g["aux"]["weight"], 1.0, rtol=1e-6)
        assert_close(params, w["params"], "params", 1e-5, 1e-6)
        assert_close(g["mom"], w["mom"], "momentum", 1e-5, 1e-6)
        assert float(g["metrics"]["train_loss"]) == pytest.approx(
            float(w["metrics"]["train_loss"]), rel=1e-6)
    # local itself against the reference: 3 steps per round over device 0's 7 samples
    x_all, y_all, parts = DATA
    theta, mom = device(params0, 0), tree(np.zeros_like, device(params0, 0))
    for r in range(ROUNDS):
        key = jax.random.split(tag(round_key(2, r), "local"), 1)[0]
        theta, mom, _, _ = ref_local(theta, mom, x_all[parts[0]], y_all[parts[0]], key,
                                     len(parts[0]), steps=3)
        assert_close(want[r]["params"], stack([theta]), f"local round {r + 1}")


@pytest.mark.parametrize("name", algorithms.ALGORITHMS)
def test_checkpoint_round_trip(name, tmp_path):
    """A state with aux and comm saved and restored is the same state, and resumes exactly."""
    s = sim(SUITE[name])
    hp = hparams(**SUITE_HP)
    state = start_state(s, random_params(4, s.num_devices), 4)
    for _ in range(2):
        state, _ = s.step(state, hp)
    saved = jax.device_get(state)
    ck = checkpoint.Checkpointer(str(tmp_path / "ck"))
    ck.save(2, state, {"fingerprint": {}, "records": []})
    restored = ck.restore()
    ck.close()
    back = checkpoint.into_state(state, restored.arrays, restored.meta["leaves"], "test")
    assert jax.tree.structure(back) == jax.tree.structure(saved)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(saved), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
        assert np.asarray(a).dtype == b.dtype
    if name in WITH_AUX:
        assert jax.tree.leaves(back.aux)
    if name in NEW:
        assert int(np.sum(back.comm["sent"])) > 0
    # (into_state commits its arrays to the template's devices; a jitted call would retrace
    # for committed inputs, the runner's AOT-compiled round does not: resume from host values)
    resumed, _ = s.step(jax.tree.map(jnp.asarray, jax.device_get(back)), hp)
    straight, _ = s.step(state, hp)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- 3. equivalences


@pytest.mark.parametrize("variant", ["T1", "E1"])
def test_choco_uncompressed_full_step_is_p2pl(variant):
    """compressor=none, consensus_step=1: x+ = W local (P2PL with metropolis weights)."""
    params0 = random_params(5, N)
    got = library_run(sim(f"choco-none-{variant}"), hparams(gamma=1.0), params0, 5)
    want = library_run(sim(f"p2pl-{variant}"), hparams(), params0, 5)
    for g, w in zip(got, want, strict=True):
        assert_close(g["params"], w["params"], "params", 1e-5, 1e-6)
        assert_close(g["mom"], w["mom"], "momentum", 1e-5, 1e-6)


@pytest.mark.parametrize("variant", ["T1", "E1"])
def test_push_sum_on_doubly_stochastic_weights_is_p2pl(variant):
    """Metropolis on an undirected irregular graph is symmetric: P = W, w stays 1, z = x, and
    x+ = P (x + local - x) = W local."""
    params0 = random_params(6, N)
    got = library_run(sim(f"push-metropolis-{variant}"), hparams(), params0, 6)
    want = library_run(sim(f"p2pl-{variant}"), hparams(), params0, 6)
    for g, w in zip(got, want, strict=True):
        assert_close(g["params"], w["params"], "params", 1e-5, 1e-6)
        assert_close(g["mom"], w["mom"], "momentum", 1e-5, 1e-6)
        np.testing.assert_allclose(g["aux"]["weight"], 1.0, rtol=1e-6)
        for k in ("messages_sent", "messages_delivered"):
            assert int(g["metrics"][k]) == int(w["metrics"][k])


def test_gradient_tracking_average_tracker_is_average_gradient():
    """With metropolis weights (doubly stochastic on every round's undirected graph, link
    failures and dropouts included) mean_n c_n = 0 every round: the trackers y = c + g_bar
    average to the average local gradient."""
    s = sim("gt-sym-drop-T3")
    state = start_state(s, random_params(7, N), 7)
    hp = hparams(p=0.3, drop=0.25)
    links, devices = [], []
    for _ in range(5):
        state, metrics = s.step(state, hp)
        links.append(float(metrics["links_up"]))
        devices.append(float(metrics["devices_up"]))
        for c in jax.tree.leaves(state.aux["correction"]):
            c = np.asarray(c, np.float64)
            assert np.abs(c).max() > 1e-3          # the corrections are not trivially zero
            np.testing.assert_allclose(c.mean(axis=0), 0.0, atol=1e-6 * (1 + np.abs(c).max()))
    assert min(links) < 1 and min(devices) < 1, (links, devices)


def test_push_sum_conserves_mass():
    """Under asymmetric link failures and dropouts on a directed graph, with a zero
    learning rate x is only mixed: sum_n w_n = N and sum_n x_n stay what they were."""
    s = sim("push-directed-asym-drop-T3")
    params0 = random_params(8, N)
    state = start_state(s, params0, 8)
    hp = hparams(lr=0.0, p=0.4, drop=0.25)
    total = [np.asarray(a, np.float64).sum(axis=0) for a in jax.tree.leaves(params0)]
    moved, links, devices = 0.0, [], []
    for _ in range(5):
        state, metrics = s.step(state, hp)
        links.append(float(metrics["links_up"]))
        devices.append(float(metrics["devices_up"]))
        w = np.asarray(state.aux["weight"], np.float64)
        assert w.sum() == pytest.approx(N, rel=1e-6)
        moved = max(moved, np.abs(w - 1).max())
        for a, t in zip(jax.tree.leaves(state.params), total, strict=True):
            np.testing.assert_allclose(np.asarray(a, np.float64).sum(axis=0), t, atol=2e-5)
    assert moved > 0.05 and min(links) < 1 and min(devices) < 1, (moved, links, devices)
