"""The device axis sharded over accelerators with jax.sharding (no pmap).

Every [N, ...] leaf of the simulation state (and of the per-device arrays: offsets, sizes,
neighbour lists, weights) is split along N over a 1-D mesh of all local accelerators (all hosts'
after `jax.distributed.initialize()`), so each accelerator holds N / devices simulated devices.
The data x, y and the small global arrays are replicated. Consensus reads other shards' rows;
XLA inserts the collectives (all-gather) inside the compiled round, no host copies.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from p2pl_jax.errors import ConfigError

AXIS = "devices"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'devices' over `devices` (default: every accelerator of the job)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


def check_divisible(num_devices: int, mesh: Mesh) -> None:
    """The device axis must split evenly over the mesh."""
    if num_devices % mesh.size:
        raise ConfigError(f"num_devices={num_devices} must be a multiple of the number of "
                          f"accelerators ({mesh.size}) to shard the device axis; allowed: "
                          f"multiples of {mesh.size}, or shard=False")


def device_axis_sharding(tree, num_devices: int, mesh: Mesh, *, axis_of=None):
    """NamedShardings for `tree`: leaves with a device axis of size N are split along it.

    By default the device axis is the leading one; `axis_of(leaf)` may name another (e.g. 1 for
    the delay history [D + 1, N, ...]). Everything else is replicated.
    """

    def one(leaf):
        ax = 0 if axis_of is None else axis_of(leaf)
        shape = getattr(leaf, "shape", ())
        if ax is not None and len(shape) > ax and shape[ax] == num_devices:
            spec = [None] * len(shape)
            spec[ax] = AXIS
            return NamedSharding(mesh, PartitionSpec(*spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, tree)


def shard_shapes(tree) -> list[tuple]:
    """The shape of the first addressable shard of every leaf (for checks and logs)."""
    return [tuple(leaf.addressable_shards[0].data.shape) for leaf in jax.tree.leaves(tree)]
