"""No recompiles after the first round; no host<->device transfers inside the round loop."""

import jax
import numpy as np
import pytest

from configs import smoke
from p2pl_jax import graphs, runner, simulation
from p2pl_jax.models import MLP


def _sim(**kw):
    gen = np.random.default_rng(0)
    x = gen.normal(size=(60, 4, 4, 1)).astype(np.float32)
    y = gen.integers(0, 10, size=60)
    parts = [np.arange(0, 9), np.arange(10, 25), np.arange(30, 34), np.arange(40, 60)]
    adj = graphs.adjacency(graphs.make_graph("cycle", 4))
    return simulation.Simulator(model=MLP(hidden_sizes=(8,)), x=x, y=y, parts=parts, adj=adj,
                                batch_size=4, **kw)


@pytest.fixture
def traces(monkeypatch):
    """Counts the traces of simulation.round_step (each trace = one compile)."""
    calls = []
    real = simulation.round_step

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(simulation, "round_step", counting)
    return calls


def test_round_is_traced_once(traces):
    sim = _sim(link_failures=True, dropouts=True, max_delay=1)
    hp = simulation.make_hparams(0.1, 0.9, 0.5, dropout_prob=0.2)
    state = sim.init(0)
    for _ in range(4):
        state, _ = sim.step(state, hp)
    assert len(traces) == 1
    # New hyperparameter values are arrays of the same shape: still no retrace.
    state, _ = sim.step(state, simulation.make_hparams(0.05, 0.5, 0.1, dropout_prob=0.0))
    assert len(traces) == 1


def test_runner_loop_traces_round_once(traces, tmp_path):
    c = smoke.get_config()
    c.rounds = 4
    c.link_failure_prob = 0.3
    c.progress = False
    runner.run(c, str(tmp_path))
    assert len(traces) == 1


def test_round_loop_makes_no_transfers():
    sim = _sim(link_failures=True, backend="gather")
    hp = simulation.make_hparams(0.1, 0.9, 0.5)
    state = sim.init(0)
    state, metrics = sim.step(state, hp)          # compile outside the guard
    jax.block_until_ready(state)
    with jax.transfer_guard("disallow"):
        for _ in range(3):
            state, metrics = sim.step(state, hp)
        jax.block_until_ready(state)
    assert int(state.round) == 4                    # fetched after the loop, on purpose
