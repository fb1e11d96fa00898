"""The jitted round against an independent per-device reference, for every fault and option.

The reference below shares no code with the library's round. It re-derives every random draw
from the key derivation that rng.py documents, written here with literal tags (round 2, local 3,
link 4, dropout 5, graph 6, delay 7, burst 8), and then does everything else itself:

  * the sample order: the documented rule (sort the device's first |D_n| draws of
    uniform(fold_in(local key, epoch), (max_n |D_n|,))), cut into batches of B, in numpy;
  * the model: a hand-written MLP (x @ kernel + bias, ReLU) with jax.grad of a hand-written
    cross-entropy, and SGD with momentum as m <- g + beta m, theta <- theta - lr m;
  * the round's graph: the static (or freshly drawn random geometric / Erdos-Renyi) adjacency,
    minus the links drawn down (per undirected edge, or per direction on the neighbour-list
    layout), minus every link of an offline device, with bursts switching the probability;
  * the mixing weights: the formulas of mixing.py's docstring, entry by entry, on that graph;
  * delays: a list of what every device sent in every past round, indexed by the drawn delay;
  * consensus as a float64 matrix product; FedAvg as the data-size average of the online devices.

So a bug in rng tags, batch orders, the epoch loop, fault samplers, weights, the history buffer or
the mixing backends cannot pass on both sides. The model, the local phase, the weights and the
key derivation live in tests/reference.py (shared with test_algorithms.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import (
    BATCH,
    BETA,
    EDGES,
    LR,
    MODEL,
    SIZES,
    adjacency,
    assert_close,
    device,
    make_data,
    mix,
    ref_local,
    ref_weights,
    stack,
    tag,
    tree,
    uniform,
)
from reference import random_params as _random_params
from reference import round_key as _round_key

from p2pl_jax import simulation
from p2pl_jax.local_update import make_optimizer

N = len(SIZES)
ROUNDS = 3


# ----------------------------------------------------------------------------- the reference


def _ref_local(theta, mom, x, y, key, max_size, epochs):
    """One device's local phase: `epochs` passes over its data; returns theta, mom, mean loss."""
    return ref_local(theta, mom, x, y, key, max_size, epochs, lr=LR, beta=BETA)[:3]


def _layout(adj, time_varying):
    """Neighbour-list rows: [n] + the candidate neighbours of n in increasing order."""
    cand = np.ones((N, N), bool) if time_varying else adj
    rows = [[n] + [m for m in range(N) if m != n and cand[n, m]] for n in range(N)]
    return rows, max(len(r) for r in rows)


def _ref_round_graph(c, adj, hp, key, alive, events):
    """The round's adjacency (a[n, m]: n hears m) and its candidate graph's link count."""
    rows, k_max = _layout(adj, c.get("time_varying"))
    cand = np.zeros((N, N), bool)
    for n, row in enumerate(rows):
        cand[n, row[1:]] = True
    a = cand.copy()
    if c.get("time_varying") == "random_geometric":
        pos = uniform(tag(key, "graph"), (N, 2))
        r2 = np.float32(hp["graph_radius"]) ** 2
        fresh = np.array([[np.sum(np.square(pos[n] - pos[m])) <= r2 for m in range(N)]
                          for n in range(N)])
        a &= fresh
    elif c.get("time_varying") == "erdos_renyi":
        u = uniform(tag(key, "graph"), (N, N))
        a &= np.array([[u[min(n, m), max(n, m)] < np.float32(hp["graph_p"]) for m in range(N)]
                       for n in range(N)])
    if c.get("link_failures"):
        prob = np.float32(hp["link_failure_prob"])
        if c.get("link_bursts"):
            burst = uniform(tag(key, "burst"), ()) < np.float32(hp["link_burst_prob"])
            events.add("burst" if burst else "no burst")
            prob = np.float32(hp["link_burst_failure_prob"]) if burst else prob
        if c.get("link_mode", "symmetric") == "symmetric":
            if c.get("time_varying"):
                u = uniform(tag(key, "link"), (N * N,))
                edge_u = lambda n, m: u[min(n, m) * N + max(n, m)]
            else:
                pairs = sorted((i, j) for i in range(N) for j in range(i + 1, N) if adj[i, j])
                u = uniform(tag(key, "link"), (max(len(pairs), 1),))
                edge_u = lambda n, m: u[pairs.index((min(n, m), max(n, m)))]
            up = np.array([[cand[n, m] and edge_u(n, m) >= prob for m in range(N)]
                           for n in range(N)])
        else:
            u = uniform(tag(key, "link"), (N, k_max))
            up = np.zeros((N, N), bool)
            for n, row in enumerate(rows):
                for k, m in enumerate(row[1:], start=1):
                    up[n, m] = u[n, k] >= prob
        if (cand & ~up).any():
            events.add("link down")
        a &= up
    if alive is not None:
        a &= alive[:, None] & alive[None, :]
    return a, rows, k_max, cand.sum()


def reference_run(c, data, adj, hp, params0, seed, rounds=ROUNDS):
    """Per-device reference of `rounds` rounds from params0 (momentum 0). Returns the params,
    momentum and metrics of every round, and the set of fault events that happened."""
    x, y, parts = data
    sizes = np.array([len(p) for p in parts], np.float64)
    max_size = int(sizes.max())
    epochs = c.get("local_epochs", 1)
    algorithm = c.get("algorithm", "p2pl")
    after = c.get("momentum_after_consensus", "keep")
    theta, mom = params0, tree(np.zeros_like, params0)
    sent = []   # sent[t]: every device's parameters after the local phase of round t
    events, out = set(), []
    for r in range(rounds):
        key = _round_key(seed, r)
        local_keys = jax.random.split(tag(key, "local"), N)
        alive = None
        if c.get("dropouts"):
            alive = uniform(tag(key, "drop"), (N,)) >= np.float32(hp["dropout_prob"])
            if not alive.all():
                events.add("offline")
        new_theta, new_mom, losses = [], [], []
        for n, p in enumerate(parts):
            t_n, m_n = device(theta, n), device(mom, n)
            if alive is None or alive[n]:
                t_n, m_n, loss = _ref_local(t_n, m_n, x[p], y[p], local_keys[n], max_size,
                                            epochs)
                losses.append(loss)
            new_theta.append(t_n)
            new_mom.append(m_n)
        local, mom = stack(new_theta), stack(new_mom)
        sent.append(local)
        metrics = {"train_loss": np.mean(losses) if losses else 0.0,
                   "devices_up": 1.0 if alive is None else alive.mean(), "links_up": 1.0}
        if algorithm == "fedavg":
            pi = sizes * alive if alive is not None and alive.any() else sizes
            w = np.tile(pi / pi.sum(), (N, 1))
            theta = mix(w, local)
        elif algorithm == "local":
            w, theta = None, local
        else:
            a, rows, k_max, links = _ref_round_graph(c, adj, hp, key, alive, events)
            metrics["links_up"] = a.sum() / links
            w = ref_weights(a, sizes, c.get("mixing_scheme", "data_size"))
            d_max = c.get("max_delay", 0)
            if d_max:
                if c.get("delay_mode", "fixed") == "fixed":
                    delays = np.full((N, k_max), d_max)
                else:
                    delays = np.asarray(jax.random.randint(
                        tag(key, "delay"), (N, k_max), 0, d_max + 1, jnp.int32))
                flat = lambda tree: [leaf.reshape(N, -1).astype(np.float64)
                                     for leaf in jax.tree.leaves(tree)]
                cur = flat(local)
                mixed = [np.diag(w)[:, None] * leaf for leaf in cur]
                for n, row in enumerate(rows):
                    for k, m in enumerate(row[1:], start=1):
                        if not a[n, m]:
                            continue
                        t = r - int(delays[n, k])
                        past = flat(sent[t] if t >= 0 else params0)
                        if not np.array_equal(past[0][m], cur[0][m]):
                            events.add("late message")
                        for leaf, old in zip(mixed, past):
                            leaf[n] += w[n, m] * old[m]
                theta = jax.tree.unflatten(jax.tree.structure(local), [
                    m.reshape(leaf.shape).astype(np.float32)
                    for m, leaf in zip(mixed, jax.tree.leaves(local))])
            else:
                theta = mix(w, local)
        if after == "mix" and w is not None:
            mom = mix(w, mom)
        elif after == "reset" and w is not None:
            mom = tree(np.zeros_like, mom)
        out.append((theta, mom, metrics))
    return out, events


# ----------------------------------------------------------------------------- the library


@pytest.fixture(scope="module")
def data():
    return make_data(SIZES)


def _adjacency():
    return adjacency(N, EDGES)


def random_params(seed):
    return _random_params(seed, N)


def library_run(c, data, adj, hp, params0, seed, rounds=ROUNDS):
    x, y, parts = data
    kw = {k: v for k, v in c.items() if k not in ("name", "events")}
    sim = simulation.Simulator(model=MODEL, x=x, y=y, parts=parts, adj=adj, batch_size=BATCH,
                               sync_mode="none", **kw)
    params = tree(jnp.asarray, params0)
    state = sim.init(seed).replace(
        params=params, opt_state=jax.vmap(make_optimizer(0.0, 0.0).init)(params))
    if sim.spec.max_delay:
        state = state.replace(history=tree(
            lambda leaf: jnp.broadcast_to(leaf, (sim.spec.max_delay + 1, *leaf.shape)), params))
    out = []
    for _ in range(rounds):
        state, metrics = sim.step(state, hp)
        momentum = jax.tree.unflatten(jax.tree.structure(state.params),
                                      [np.asarray(m) for m in jax.tree.leaves(state.opt_state)])
        out.append((tree(np.asarray, state.params), momentum,
                    {k: float(v) for k, v in metrics.items()}))
    return out, sim


def _hp(c):
    return dict(link_failure_prob=c.pop("p", 0.0), dropout_prob=c.pop("dropout_prob", 0.0),
                link_burst_prob=c.pop("burst_prob", 0.0),
                link_burst_failure_prob=c.pop("burst_failure_prob", 0.0),
                graph_radius=c.pop("graph_radius", 0.0), graph_p=c.pop("graph_p", 0.0))


CASES = [
    dict(name="sym-links-2-epochs", link_failures=True, p=0.3, local_epochs=2, events={
        "link down"}),
    dict(name="sym-links-2-epochs-block2", link_failures=True, p=0.3, local_epochs=2,
         device_block=2, events={"link down"}),
    dict(name="asym-links-metropolis-mix-gather", link_failures=True, link_mode="asymmetric",
         p=0.3, mixing_scheme="metropolis", momentum_after_consensus="mix", backend="gather",
         events={"link down"}),
    dict(name="dropouts-uniform-reset-dense", dropouts=True, dropout_prob=0.3,
         mixing_scheme="uniform", momentum_after_consensus="reset", backend="dense",
         events={"offline"}),
    dict(name="dropouts-links-maxdegree-gather", dropouts=True, dropout_prob=0.3,
         link_failures=True, p=0.2, mixing_scheme="max_degree", backend="gather",
         device_block=2, events={"offline", "link down"}),
    dict(name="sym-links-dropouts-data_size_mh", link_failures=True, p=0.3, dropouts=True,
         dropout_prob=0.3, mixing_scheme="data_size_mh", backend="gather",
         events={"link down", "offline"}),
    dict(name="fixed-delay-2", max_delay=2, delay_mode="fixed", backend="gather",
         events={"late message"}),
    dict(name="random-delay-dropouts-metropolis", max_delay=2, delay_mode="random",
         dropouts=True, dropout_prob=0.3, mixing_scheme="metropolis",
         events={"late message", "offline"}),
    dict(name="bursts-asym", link_failures=True, link_bursts=True, link_mode="asymmetric",
         p=0.1, burst_prob=0.5, burst_failure_prob=0.9, events={"burst", "no burst",
                                                                   "link down"}),
    dict(name="time-varying-rgg-links", time_varying="random_geometric", graph_radius=0.6,
         link_failures=True, p=0.2, events={"link down"}),
    dict(name="time-varying-er-asym-dropouts", time_varying="erdos_renyi", graph_p=0.5,
         link_failures=True, link_mode="asymmetric", p=0.2, dropouts=True, dropout_prob=0.3,
         momentum_after_consensus="mix", events={"link down", "offline"}),
    dict(name="fedavg-dropouts-mix", algorithm="fedavg", dropouts=True, dropout_prob=0.3,
         momentum_after_consensus="mix", events={"offline"}),
    dict(name="fedavg-reset-2-epochs", algorithm="fedavg", momentum_after_consensus="reset",
         local_epochs=2, events=set()),
    dict(name="local-dropouts-2-epochs", algorithm="local", dropouts=True, dropout_prob=0.3,
         local_epochs=2, events={"offline"}),
]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_round_equals_independent_reference(data, case):
    c = {k: v for k, v in case.items() if k not in ("name", "events")}
    hp_values = _hp(c)
    hp = simulation.make_hparams(LR, BETA, **hp_values)
    seed = 11
    params0 = random_params(seed)
    adj = _adjacency()
    want, events = reference_run(c | {"device_block": 0}, data, adj, hp_values, params0, seed)
    assert case["events"] <= events, f"the fault went untested: {case['events'] - events}"
    got, _ = library_run(c, data, adj, hp, params0, seed)
    for r, ((gp, gm, gmet), (wp, wm, wmet)) in enumerate(zip(got, want)):
        assert_close(gp, wp, f"params after round {r + 1}")
        assert_close(gm, wm, f"momentum after round {r + 1}")
        for k in ("train_loss", "links_up", "devices_up"):
            assert gmet[k] == pytest.approx(wmet[k], rel=1e-5, abs=1e-6), (k, r + 1)


def test_device_blocks_give_the_same_round(data):
    """device_block=2 (lax.map over blocks of vmapped devices) equals the full vmap to 1e-6."""
    hp = simulation.make_hparams(LR, BETA, 0.3)
    params0 = random_params(5)
    runs = [library_run(dict(link_failures=True, local_epochs=2, device_block=b), data,
                        _adjacency(), hp, params0, 5)[0] for b in (0, 2, 4)]
    for other in runs[1:]:
        for (gp, gm, _), (wp, wm, _) in zip(other, runs[0]):
            assert_close(gp, wp, "params", rtol=1e-6, atol=1e-6)
            assert_close(gm, wm, "momentum", rtol=1e-6, atol=1e-6)
