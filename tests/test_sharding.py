"""Sharding the device axis over 8 (forced CPU) devices gives the unsharded result, for every
fault and option and every algorithm (tests/sharded_check.py runs the cases in one subprocess)."""

import json
import os
import re
import subprocess
import sys

import pytest

from p2pl_jax import sharding
from p2pl_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One case per algorithm of p2pl_jax/algorithms beyond p2pl / fedavg / local, with the state
# it keeps in SimState.aux (None: no state).
ALGORITHM_CASES = {"dpsgd_links": None, "gradient_tracking_links_dropouts": "correction",
                   "push_sum_exponential_asym": "weight", "choco_qsgd": "public"}
CASES = ("link_symmetric", "link_asymmetric", "link_bursts", "dropouts", "delay_fixed",
         "delay_random", "tv_random_geometric", "tv_erdos_renyi", "momentum_reset",
         "momentum_mix", "fedavg_dropouts", "local", *ALGORITHM_CASES)
DELAYED = ("delay_fixed", "delay_random")
DROPOUTS = ("dropouts", "fedavg_dropouts", "gradient_tracking_links_dropouts")
# links_up < 1: failed links, a sparse graph of the round, or p2pl links of offline devices
LINKS_DOWN = ("link_symmetric", "link_asymmetric", "link_bursts", "tv_random_geometric",
              "tv_erdos_renyi", "dropouts", "dpsgd_links", "gradient_tracking_links_dropouts",
              "push_sum_exponential_asym")
BACKENDS = {"link_symmetric": "dense", "link_asymmetric": "gather", "link_bursts": "dense",
            "dropouts": "gather", "delay_fixed": "dense", "delay_random": "gather",
            "tv_random_geometric": "dense", "tv_erdos_renyi": "gather",
            "momentum_reset": "dense", "momentum_mix": "gather", "fedavg_dropouts": "global",
            "local": "none", "dpsgd_links": "dense", "gradient_tracking_links_dropouts": "gather",
            "push_sum_exponential_asym": "gather", "choco_qsgd": "dense"}
N, SHARDS, TOL = 16, 8, 1e-5


@pytest.fixture(scope="module")
def result():
    # LLVM at -O0 more than halves the compile time that dominates this check (the HLO passes,
    # the SPMD partitioner included, are unchanged); both sides are compiled alike.
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS="--xla_force_host_platform_device_count=8 "
                         "--xla_backend_optimization_level=0")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "sharded_check.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_every_case_ran_on_its_backend(result):
    assert sorted(result) == sorted(CASES)
    assert {c: r["backend"] for c, r in result.items()} == BACKENDS
    for r in result.values():   # shard() vmaps the local phase; the plain run uses blocks of 2
        assert r["device_block"] == {"plain": 2, "sharded": 0}


@pytest.mark.parametrize("case", CASES)
def test_sharded_equals_unsharded(result, case):
    r = result[case]
    d = r["diff"]
    assert d["params"] < TOL and d["opt_state"] < TOL
    if case in DELAYED:
        assert d["history"] < TOL
    else:
        assert d["history"] is None
    if d["init"] is not None:       # the cases that build the state with the sharded init
        assert d["init"] < TOL
    if ALGORITHM_CASES.get(case):   # the algorithm's own state
        assert d["aux"] is not None and d["aux"] < TOL
    else:
        assert d["aux"] is None
    assert d["comm"] == 0           # message counters: integers, exactly equal
    plain, sharded = r["metrics"]["plain"], r["metrics"]["sharded"]
    assert len(plain) == len(sharded) == 3
    for a, b in zip(plain, sharded):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=TOL)
        assert a["links_up"] == pytest.approx(b["links_up"], abs=1e-6)
        assert a["devices_up"] == pytest.approx(b["devices_up"], abs=1e-6)
        for k in ("messages_sent", "messages_delivered", "messages_sent_max"):
            assert a[k] == b[k], k


def test_sharded_init_was_checked(result):
    assert result["link_symmetric"]["diff"]["init"] is not None
    assert result["delay_fixed"]["diff"]["init"] is not None
    assert result["push_sum_exponential_asym"]["diff"]["init"] is not None   # with aux


@pytest.mark.parametrize("case", CASES)
def test_fault_has_an_effect(result, case):
    """Parity is not vacuous: the unsharded run differs from the same run without the fault
    (the same program with the fault's probability 0, or the no-fault baseline program), and
    the round metrics show the fault where it is sampled, and only there."""
    r = result[case]
    assert r["effect"] > 1e-3, r["off"]
    links = [m["links_up"] for m in r["metrics"]["plain"]]
    devices = [m["devices_up"] for m in r["metrics"]["plain"]]
    if case in LINKS_DOWN:
        assert min(links) < 0.9
    else:
        assert links == [1.0] * 3
    if case in DROPOUTS:
        assert min(devices) < 0.9
    else:
        assert devices == [1.0] * 3
    if case == "link_bursts":        # a burst round (0.9) and a normal round (0.1) both occur
        assert min(links) < 0.3 and max(links) > 0.7


@pytest.mark.parametrize("case", CASES)
def test_state_is_split_over_8_devices(result, case):
    layout = result[case]["layout"]
    for group in ("params", "opt_state"):
        assert layout[group]
        for leaf in layout[group]:
            full = leaf["shape"]
            assert full[0] == N
            assert leaf["num_devices"] == SHARDS
            assert leaf["shard_shapes"] == [[N // SHARDS] + full[1:]]
    if case in DELAYED:              # history [D + 1, N, ...] split along N
        assert layout["history"]
        for leaf in layout["history"]:
            full = leaf["shape"]
            assert full[:2] == [3, N]
            assert leaf["num_devices"] == SHARDS
            assert leaf["shard_shapes"] == [[3, N // SHARDS] + full[2:]]
    else:
        assert layout["history"] == []
    if ALGORITHM_CASES.get(case):    # aux leaves [N, ...] split along N like the parameters
        assert layout["aux"]
        for leaf in layout["aux"]:
            full = leaf["shape"]
            assert full[0] == N
            assert leaf["num_devices"] == SHARDS
            assert leaf["shard_shapes"] == [[N // SHARDS] + full[1:]]
    else:
        assert layout["aux"] == []


def _moves_floats(shapes):
    """Whether some collective's result holds a float array (f32[16,8], not f32[] or s32[..])."""
    return any(re.search(r"f(16|32|64)\[\d", s) for s in shapes)


@pytest.mark.parametrize("case", [c for c in CASES if c != "local"])
def test_consensus_moves_parameters_between_devices(result, case):
    """Consensus (every algorithm but local) reads other shards' parameters: the round has
    cross-device collectives of float arrays (not only the scalar metric all-reduces)."""
    assert _moves_floats(result[case]["array_collectives"]), result[case]["array_collectives"]


def test_local_round_moves_no_arrays_between_devices(result):
    """Without consensus every shard trains its own devices: the only collectives left are the
    scalar all-reduces of the round metrics. (Also catches a local phase that is not vmapped
    over the sharded axis, which would gather the parameters.)"""
    assert result["local"]["array_collectives"] == []


def test_indivisible_device_count_is_a_clear_error():
    import jax

    mesh = sharding.make_mesh(jax.devices()[:1] * 1)
    sharding.check_divisible(7, mesh)          # one accelerator: anything goes
    fake = type("M", (), {"size": 8})()
    with pytest.raises(ConfigError, match="num_devices=100 must be a multiple"):
        sharding.check_divisible(100, fake)
