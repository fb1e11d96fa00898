"""Run by tests/test_sharding.py in a subprocess with 8 forced CPU devices."""

import json
import sys

import jax
import numpy as np

from p2pl_jax import graphs, sharding, simulation
from p2pl_jax.models import MLP


def make_sim(**kw):
    gen = np.random.default_rng(0)
    n = 16
    x = gen.normal(size=(n * 12, 4, 4, 1)).astype(np.float32)
    y = gen.integers(0, 10, size=n * 12)
    parts = [np.arange(i * 12, i * 12 + 6 + i % 5) for i in range(n)]   # unequal sizes
    adj = graphs.adjacency(graphs.make_graph("random_regular", n, degree=3, seed=1))
    return simulation.Simulator(model=MLP(hidden_sizes=(8,)), x=x, y=y, parts=parts, adj=adj,
                                batch_size=4, device_block=0, **kw)


def main():
    assert jax.device_count() == 8, jax.device_count()
    out = {}
    for backend in ("dense", "gather"):
        kw = dict(backend=backend, link_failures=True, dropouts=True, max_delay=1,
                  momentum_after_consensus="mix")
        hp = simulation.make_hparams(0.1, 0.9, 0.3, dropout_prob=0.2)
        plain = make_sim(**kw)
        state = plain.init(0)
        for _ in range(2):
            state, _ = plain.step(state, hp)
        sharded = make_sim(**kw)
        mesh = sharding.make_mesh()
        sharded.shard(mesh)
        s2 = sharded.init(0)
        for _ in range(2):
            s2, _ = sharded.step(s2, hp)
        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(s2)))
        hlo = sharded._round.lower(s2, sharded.arrays, hp).compile().as_text()
        out[backend] = {
            "max_abs_diff": diff,
            "param_shard_shapes": sharding.shard_shapes(s2.params),
            "param_shapes": [list(leaf.shape) for leaf in jax.tree.leaves(s2.params)],
            "history_shard_shapes": sharding.shard_shapes(s2.history),
            "collectives": any(op in hlo for op in ("all-gather", "all-to-all",
                                                    "collective-permute", "all-reduce")),
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
