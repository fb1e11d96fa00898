"""Key derivation: the one place that decides which PRNG key drives what.

Every random choice of the simulation is a pure function of the root key (from `seed`) and the
round number, so a run is reproducible and a resumed run draws exactly what an uninterrupted one
would have drawn:

  init keys        split(fold_in(root, INIT), N)            one per device, independent inits
  round key        fold_in(fold_in(root, ROUND), k)          round k = 0, 1, ...
  local keys       split(fold_in(round key, LOCAL), N)       data shuffling of device n
  link key         fold_in(round key, LINK)                  link failures of round k
  dropout / graph / delay / burst / compress / channel (wireless fading) keys:
                   fold_in(round key, TAG), likewise
  augment keys     fold_in(fold_in(fold_in(local key, AUGMENT), epoch), batch)
                                                             crops and flips of one batch

The random bits are pinned to JAX's partitionable threefry (`jax_threefry_partitionable`,
JAX's default since 0.5): element i of a draw depends only on the key and i, so
uniform(key, (m,))[:k] == uniform(key, (k,)). A device's shuffle therefore does not depend on
how many devices it is vmapped with or how long their scan is (the bucketed local phase, the
device-sharded layout); importing this module sets it.
"""

import jax

jax.config.update("jax_threefry_partitionable", True)

_INIT, _ROUND, _LOCAL, _LINK, _DROP, _GRAPH, _DELAY, _BURST, _COMPRESS = 1, 2, 3, 4, 5, 6, 7, 8, 9
_CHANNEL = 10
# A device's local key is also folded with epoch indices 0, 1, ... (its batch orders,
# local_update.batch_order); the augmentation tag lies above any epoch count.
_AUGMENT = 2**31 - 1


def root_key(seed: int) -> jax.Array:
    """The root key (a raw uint32[2] key, so it checkpoints as a plain array)."""
    return jax.random.PRNGKey(seed)


def init_keys(root: jax.Array, num_devices: int) -> jax.Array:
    """[N, 2] keys for the independent model initialisations."""
    return jax.random.split(jax.random.fold_in(root, _INIT), num_devices)


def round_key(root: jax.Array, round_index: jax.Array) -> jax.Array:
    """The key of round `round_index` (0-based); traceable."""
    return jax.random.fold_in(jax.random.fold_in(root, _ROUND), round_index)


def local_keys(key_of_round: jax.Array, num_devices: int) -> jax.Array:
    """[N, 2] per-device keys for the local phase of one round."""
    return jax.random.split(jax.random.fold_in(key_of_round, _LOCAL), num_devices)


def link_key(key_of_round: jax.Array) -> jax.Array:
    """The key for the round's link failures."""
    return jax.random.fold_in(key_of_round, _LINK)


def dropout_key(key_of_round: jax.Array) -> jax.Array:
    """The key for the round's device dropouts."""
    return jax.random.fold_in(key_of_round, _DROP)


def graph_key(key_of_round: jax.Array) -> jax.Array:
    """The key for the round's freshly drawn graph (time-varying graphs)."""
    return jax.random.fold_in(key_of_round, _GRAPH)


def delay_key(key_of_round: jax.Array) -> jax.Array:
    """The key for the round's message delays."""
    return jax.random.fold_in(key_of_round, _DELAY)


def burst_key(key_of_round: jax.Array) -> jax.Array:
    """The key deciding whether the round is a link-failure burst."""
    return jax.random.fold_in(key_of_round, _BURST)


def compress_key(key_of_round: jax.Array) -> jax.Array:
    """The key for the round's randomized compression (random_k, qsgd)."""
    return jax.random.fold_in(key_of_round, _COMPRESS)


def augment_key(device_key: jax.Array, epoch: jax.Array, batch: jax.Array) -> jax.Array:
    """The key of the random crops and flips of one batch (batch `batch` of epoch `epoch` of
    a device's local phase): a function of the position in the device's own epochs only, so
    it is the same in a scan of any length (buckets, local_steps)."""
    k = jax.random.fold_in(jax.random.fold_in(device_key, _AUGMENT), epoch)
    return jax.random.fold_in(k, batch)


def channel_key(key_of_round: jax.Array) -> jax.Array:
    """The wireless channel's fading of round k (wireless.py)."""
    return jax.random.fold_in(key_of_round, _CHANNEL)
