"""Sharding the device axis over 8 (forced CPU) devices gives the unsharded result."""

import json
import os
import subprocess
import sys

import pytest

from p2pl_jax import sharding
from p2pl_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "sharded_check.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("backend", ["dense", "gather"])
def test_sharded_equals_unsharded(result, backend):
    assert result[backend]["max_abs_diff"] < 1e-5


@pytest.mark.parametrize("backend", ["dense", "gather"])
def test_each_shard_holds_an_eighth(result, backend):
    r = result[backend]
    for full, shard in zip(r["param_shapes"], r["param_shard_shapes"]):
        assert shard[0] * 8 == full[0] == 16
        assert shard[1:] == full[1:]
    for shard in r["history_shard_shapes"]:
        assert shard[0] == 2 and shard[1] == 2      # [D + 1, N / 8, ...]


@pytest.mark.parametrize("backend", ["dense", "gather"])
def test_consensus_uses_xla_collectives(result, backend):
    assert result[backend]["collectives"]


def test_indivisible_device_count_is_a_clear_error():
    import jax

    mesh = sharding.make_mesh(jax.devices()[:1] * 1)
    sharding.check_divisible(7, mesh)          # one accelerator: anything goes
    fake = type("M", (), {"size": 8})()
    with pytest.raises(ConfigError, match="num_devices=100 must be a multiple"):
        sharding.check_divisible(100, fake)
