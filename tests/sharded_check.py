"""Run by tests/test_sharding.py in a subprocess with 8 forced CPU devices.

One case per fault or option (backends alternating between dense and gather where they apply),
and one per algorithm of p2pl_jax/algorithms beyond p2pl / fedavg / local.
For each case the same Simulator is built twice: once unsharded (the local phase in lax.map
blocks of 2 devices, as on CPU by default) and once sharded over an 8-device mesh
(`Simulator.shard`, which must switch to vmap). Both run ROUNDS rounds from the same initial
state: the sharded Simulator's own `init(0)` in the SHARDED_INIT cases (compared with the
unsharded one), elsewhere the unsharded init state put into shard()'s layout. The JSON on stdout
holds, per case:

  diff        max |sharded - unsharded| over the init state, params, momentum, history, the
              algorithm's state (aux) and the message counters (comm)
  metrics     train_loss / links_up / devices_up / messages of every round, unsharded and
              sharded
  effect      max |unsharded - unsharded run without the fault| over params (parity is only
              meaningful when the fault changes the result); `off` says what "without" was
  layout      per state leaf (params, momentum, history, aux): full shape, the shapes of all its
              shards and the number of distinct devices holding them
  array_collectives  result shapes of the cross-device collectives of the sharded round's HLO
              that move arrays (scalar all-reduces of the round metrics are left out)

Each compiled round is compiled exactly once (compile cost dominates on CPU).
"""

import json
import re
import sys
import time

import jax
import numpy as np

from p2pl_jax import graphs, sharding, simulation
from p2pl_jax.models import MLP

N = 16
ROUNDS = 3
HP = dict(learning_rate=0.1, momentum=0.9)

# name: (Simulator kwargs, HParams overrides, "without the fault": HParams overrides for the same
# compiled program, or None for the no-fault baseline program).
CASES = {
    "link_symmetric": (dict(backend="dense", link_failures=True),
                       dict(link_failure_prob=0.3), dict(link_failure_prob=0.0)),
    "link_asymmetric": (dict(backend="gather", link_failures=True, link_mode="asymmetric"),
                        dict(link_failure_prob=0.3), dict(link_failure_prob=0.0)),
    "link_bursts": (dict(backend="dense", link_bursts=True),
                    dict(link_failure_prob=0.1, link_burst_prob=0.5,
                         link_burst_failure_prob=0.9), dict(link_burst_prob=0.0)),
    "dropouts": (dict(backend="gather", dropouts=True), dict(dropout_prob=0.3),
                 dict(dropout_prob=0.0)),
    "delay_fixed": (dict(backend="dense", max_delay=2), {}, None),
    "delay_random": (dict(backend="gather", max_delay=2, delay_mode="random"), {}, None),
    "tv_random_geometric": (dict(backend="dense", time_varying="random_geometric"),
                            dict(graph_radius=0.4), None),
    "tv_erdos_renyi": (dict(backend="gather", time_varying="erdos_renyi"), dict(graph_p=0.3),
                       None),
    "momentum_reset": (dict(backend="dense", momentum_after_consensus="reset"), {}, None),
    "momentum_mix": (dict(backend="gather", momentum_after_consensus="mix"), {}, None),
    "fedavg_dropouts": (dict(algorithm="fedavg", dropouts=True), dict(dropout_prob=0.3),
                        dict(dropout_prob=0.0)),
    "local": (dict(algorithm="local"), {}, None),
    # The algorithms of p2pl_jax/algorithms, each with a fault it takes (and its own state).
    "dpsgd_links": (dict(algorithm="dpsgd", backend="dense", link_failures=True, local_steps=3),
                    dict(link_failure_prob=0.3), dict(link_failure_prob=0.0)),
    "gradient_tracking_links_dropouts": (
        dict(algorithm="gradient_tracking", backend="gather", link_failures=True,
             dropouts=True), dict(link_failure_prob=0.2, dropout_prob=0.3),
        dict(link_failure_prob=0.0, dropout_prob=0.0)),
    "push_sum_exponential_asym": (
        dict(algorithm="push_sum", graph="exponential", backend="gather", link_failures=True,
             link_mode="asymmetric"), dict(link_failure_prob=0.3), dict(link_failure_prob=0.0)),
    "choco_qsgd": (dict(algorithm="choco", backend="dense", compressor="qsgd"),
                   dict(consensus_step=0.5), dict(consensus_step=1.0)),
}
# The no-fault baseline: the link_symmetric program with link_failure_prob 0 (the same maths as
# the static graph's program, one compile fewer).
BASELINE = "link_symmetric"
# Cases whose sharded state comes from the sharded Simulator.init (one without, one with a delay
# history); the others put the unsharded init state into shard()'s layout (a compile fewer each).
SHARDED_INIT = ("link_symmetric", "delay_fixed", "push_sum_exponential_asym")

COLLECTIVE = re.compile(r"=\s*(\S.*?)\s+(all-gather|all-reduce|all-to-all|collective-permute|"
                        r"reduce-scatter)(-start)?\(")


def make_sim(graph="random_regular", **kw):
    gen = np.random.default_rng(0)
    x = gen.normal(size=(N * 12, 4, 4, 1)).astype(np.float32)
    y = gen.integers(0, 10, size=N * 12)
    parts = [np.arange(i * 12, i * 12 + 6 + i % 5) for i in range(N)]   # unequal sizes
    if graph == "exponential":   # directed
        adj = graphs.adjacency(graphs.make_graph("exponential", N))
    else:
        adj = graphs.adjacency(graphs.make_graph("random_regular", N, degree=3, seed=1))
    return simulation.Simulator(model=MLP(hidden_sizes=(8,)), x=x, y=y, parts=parts, adj=adj,
                                batch_size=4, device_block=2, **kw)


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _max_diff(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb), (len(la), len(lb))
    if not la:
        return None
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(la, lb))


def _run(sim, state, hp):
    """ROUNDS rounds; returns the host copy of the final state and every round's metrics."""
    metrics = []
    for _ in range(ROUNDS):
        state, m = sim.step(state, hp)
        m = jax.device_get(m)
        metrics.append({k: float(m[k]) for k in ("train_loss", "links_up", "devices_up",
                                                  "messages_sent", "messages_delivered",
                                                  "messages_sent_max")})
    return _host(state), metrics, state


def _layout(tree):
    out = []
    for leaf in jax.tree.leaves(tree):
        shards = leaf.addressable_shards
        out.append({"shape": list(leaf.shape),
                    "shard_shapes": sorted({tuple(s.data.shape) for s in shards}),
                    "num_devices": len({s.device for s in shards})})
    return out


def _array_collectives(hlo: str) -> list[str]:
    """Result shapes of cross-device collectives that carry arrays (not only scalars)."""
    found = []
    for line in hlo.splitlines():
        m = COLLECTIVE.search(line)
        if m and re.search(r"\[\d", m.group(1)):
            found.append(m.group(1))
    return found


def main():
    assert jax.device_count() == 8, jax.device_count()
    mesh = sharding.make_mesh()
    out, finals = {}, {}
    for name, (kw, hp_kw, off_kw) in CASES.items():
        t0 = time.perf_counter()
        hp = simulation.make_hparams(**{**HP, **hp_kw})
        plain = make_sim(**kw)
        init_plain = plain.init(0)
        init_host = _host(init_plain)
        plain.compile(init_plain, hp)
        final, metrics, _ = _run(plain, init_plain, hp)
        finals[name] = final
        effect_vs = None
        if off_kw is not None:
            off, _, _ = _run(plain, plain.init(0), simulation.make_hparams(
                **{**HP, **hp_kw, **off_kw}))
            effect_vs = off
            if name == BASELINE:
                finals["baseline"] = off

        sharded = make_sim(**kw)
        sharded.shard(mesh)
        if name in SHARDED_INIT:
            s2 = sharded.init(0)
            init_diff = _max_diff(init_host, _host(s2))
        else:   # the same state, laid out as shard() lays it out (saves a compile)
            s2, init_diff = jax.device_put(init_host, sharded._state_sharding), None
        sharded.compile(s2, hp)
        hlo = sharded._round.as_text()
        final2, metrics2, s2 = _run(sharded, s2, hp)
        out[name] = {
            "backend": sharded.backend,
            "device_block": {"plain": plain.spec.device_block,
                             "sharded": sharded.spec.device_block},
            "diff": {"init": init_diff,
                     "params": _max_diff(final.params, final2.params),
                     "opt_state": _max_diff(final.opt_state, final2.opt_state),
                     "history": _max_diff(final.history, final2.history),
                     "aux": _max_diff(final.aux, final2.aux),
                     "comm": _max_diff(final.comm, final2.comm)},
            "metrics": {"plain": metrics, "sharded": metrics2},
            "off": "hparams " + json.dumps(off_kw) if off_kw is not None else "baseline",
            "_effect_vs": effect_vs,
            "layout": {"params": _layout(s2.params), "opt_state": _layout(s2.opt_state),
                       "history": _layout(s2.history) if s2.history is not None else [],
                       "aux": _layout(s2.aux)},
            "array_collectives": _array_collectives(hlo),
            "seconds": time.perf_counter() - t0,
        }
        print(f"{name}: {out[name]['seconds']:.1f}s", file=sys.stderr)
    for name, r in out.items():
        vs = r.pop("_effect_vs")
        vs = finals["baseline"] if vs is None else vs
        r["effect"] = _max_diff(finals[name].params, vs.params)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
