"""The work-proportional local phase (buckets.py, simulation._local_phase).

  - the plan is the cheapest grouping: against a brute force over every set partition of the
    devices (epochs mode) or every contiguous one (local_steps mode), cost by an independent
    formula; it covers every device once; equal sizes give one scan (today's program);
  - a device's batches do not depend on its bucket (the PRNG pinned to partitionable threefry);
  - the bucketed round equals one padded scan for every algorithm, with the faults each takes,
    device_block 0 and 2, local epochs and local_steps, over two rounds;
  - a sweep group with skewed sizes equals a separate padded run; summary.json reports the
    scans and device-steps.

The per-device reference tests (test_reference_round.py, test_algorithms.py) run on unequal
sizes, so they check the bucketed path against an independent numpy loop as well.
"""

import itertools
import json
import os

import jax
import numpy as np
import pytest
from reference import BATCH, EDGES, FAST_COMPILE, MODEL, SIZES, adjacency, make_data

from configs import smoke
from p2pl_jax import algorithms, buckets, runner, simulation, sweep
from p2pl_jax.local_update import batch_order


def _ceil(a, b):
    return -(-a // b)


def _cost(groups, sizes, *, batch, epochs=1, steps=0, overhead=1.0):
    """The plan's cost of a grouping, written out from buckets.py's docstring."""
    total = 0.0
    for g in groups:
        s = [sizes[i] for i in g]
        if steps:
            ep = _ceil(steps, _ceil(max(min(s), 1), batch))
            total += (len(g) + overhead) * steps + len(g) * ep * _ceil(max(s), batch) / 16
        else:
            total += (len(g) + overhead) * epochs * _ceil(max(s), batch)
    return total


def _set_partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1:]
        yield [[first]] + part


def _contiguous(order, k_max):
    n = len(order)
    for k in range(1, min(k_max, n) + 1):
        for cuts in itertools.combinations(range(1, n), k - 1):
            bounds = (0,) + cuts + (n,)
            yield [list(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _plan_groups(plan, order, n):
    if not plan:
        return [list(range(n))]
    return [list(order[b.start:b.start + b.count]) for b in plan]


@pytest.mark.parametrize("seed", range(12))
def test_plan_is_the_cheapest_grouping(seed):
    g = np.random.default_rng(seed)
    n = int(g.integers(2, 7))
    sizes = [int(v) for v in np.exp(g.normal(2.5, 1.2, n)).astype(int) + 1]
    batch, overhead = int(g.integers(1, 5)), float(g.choice([0.0, 1.0, 4.0]))
    k_max = int(g.integers(1, 5))
    for steps in (0, 3):
        plan, order = buckets.plan(sizes, batch_size=batch, local_steps=steps,
                                   max_buckets=k_max, overhead=overhead)
        assert sorted(order.tolist()) == list(range(n))
        groups = _plan_groups(plan, order, n)
        assert len(groups) <= k_max
        assert sorted(i for grp in groups for i in grp) == list(range(n))
        for b, grp in zip(plan, groups):
            assert (b.min_size, b.max_size) == (min(sizes[i] for i in grp),
                                                max(sizes[i] for i in grp))
        candidates = (_set_partitions(list(range(n))) if not steps
                      else _contiguous(np.argsort(sizes, kind="stable"), k_max))
        best = min(_cost(p, sizes, batch=batch, steps=steps, overhead=overhead)
                   for p in candidates if len(p) <= k_max)
        got = _cost(groups, sizes, batch=batch, steps=steps, overhead=overhead)
        assert got == pytest.approx(best), (sizes, batch, overhead, k_max, steps, plan)


def test_equal_sizes_and_one_bucket_keep_the_padded_scan():
    assert buckets.plan([600] * 100, batch_size=10)[0] == ()
    assert buckets.plan([599, 600, 601] * 30, batch_size=10)[0] == ()   # overhead > saving
    assert buckets.plan([3, 300], batch_size=10, max_buckets=1)[0] == ()
    plan = buckets.plan([3000] + [30] * 99, batch_size=10)[0]
    assert [(b.count, b.max_size) for b in plan] == [(99, 30), (1, 3000)]
    needed, padded, run = buckets.device_steps([3000] + [30] * 99, plan, batch_size=10)
    assert (needed, padded, run) == (300 + 297, 30000, 597)


def test_batches_do_not_depend_on_the_bucket_length():
    """A device's shuffle in a scan of any length (its bucket's largest size) is the same."""
    assert jax.config.jax_threefry_partitionable   # pinned by p2pl_jax.rng
    key = jax.random.PRNGKey(7)
    for size in (1, 23):
        steps = _ceil(size, BATCH)
        ref = None
        for max_size in (size, 4 * size + 5, 97):
            idx, valid = batch_order(key, size, max_size, BATCH)
            got = (np.asarray(idx[:steps]), np.asarray(valid[:steps]))
            assert not np.asarray(valid[steps:]).any()
            if ref is None:
                ref = got
            assert np.array_equal(got[1], ref[1])
            assert np.array_equal(got[0][got[1]], ref[0][ref[1]]), (size, max_size)


def _faults(name):
    """The faults an algorithm accepts, switched on."""
    accepts = algorithms.get(name).faults
    kw = {}
    if "link_failures" in accepts:
        kw["link_failures"] = True
    if "dropouts" in accepts:
        kw["dropouts"] = True
    return kw


CASES = [(name, 0, 0) for name in algorithms.ALGORITHMS if name != "centralized"]
CASES += [("p2pl", 2, 0), ("p2pl", 0, 3), ("gradient_tracking", 2, 3)]


@pytest.mark.parametrize("name,block,steps", CASES,
                         ids=[f"{a}-block{b}-steps{s}" for a, b, s in CASES])
def test_bucketed_round_equals_the_padded_scan(name, block, steps):
    x, y, parts = make_data(SIZES)
    adj = adjacency(len(SIZES), EDGES)
    if name in ("push_sum",):
        adj = adj | np.roll(np.eye(len(SIZES), dtype=bool), 1, axis=1)
    hp = simulation.make_hparams(0.1, 0.9, 0.3, dropout_prob=0.3)
    runs = []
    for nb in (1, -1):
        sim = simulation.Simulator(model=MODEL, x=x, y=y, parts=parts, adj=adj, algorithm=name,
                                   batch_size=BATCH, local_epochs=2, local_steps=steps,
                                   device_block=block, local_buckets=nb, sync_mode="none",
                                   diameter=None, **_faults(name))
        sim._round = jax.jit(sim.round_fn, donate_argnums=0, compiler_options=FAST_COMPILE)
        assert bool(sim.buckets) == (nb == -1), sim.buckets
        state, out = sim.init(0), []
        for _ in range(2):
            state, metrics = sim.step(state, hp)
            out.append((jax.tree.map(np.asarray, (state.params, state.opt_state, state.aux)),
                        {k: float(v) for k, v in metrics.items()}))
        runs.append(out)
    for (tree_a, m_a), (tree_b, m_b) in zip(*runs):
        for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert m_a.keys() == m_b.keys()
        for k in m_a:
            assert m_a[k] == pytest.approx(m_b[k], rel=1e-5, abs=1e-6), k


def test_sweep_with_buckets_equals_a_separate_padded_run(tmp_path):
    base = smoke.get_config()
    base.tensorboard = False
    base.partition, base.skew_top_fraction = "skew", 0.5
    out = str(tmp_path / "sweep")
    sweep.run_sweep(base, {"learning_rate": [0.05, 0.1]}, out)
    base.learning_rate, base.local_buckets = 0.1, 1
    alone = str(tmp_path / "alone")
    runner.run(base, alone)

    def read(path, name):
        with open(os.path.join(path, name)) as f:
            return [json.loads(line) for line in f] if name.endswith("l") else json.load(f)

    replica = os.path.join(out, "learning_rate=0.1")
    s_rep, s_alone = read(replica, "summary.json"), read(alone, "summary.json")
    assert len(s_rep["local_scans"]) == 2 and len(s_alone["local_scans"]) == 1
    steps = s_rep["device_steps"]
    assert steps["run"] == steps["needed"] < steps["padded"] == s_alone["device_steps"]["run"]
    for a, b in zip(read(replica, "metrics.jsonl"), read(alone, "metrics.jsonl")):
        for k in ("train_loss", "test_loss", "acc_min", "acc_mean", "consensus_distance"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=2e-4), k
