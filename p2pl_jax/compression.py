"""Compressors for compressed gossip (CHOCO-SGD), applied per tensor and per device.

Every function takes a pytree of leaves [N, ...] (one row per device) and compresses each
device's copy of each leaf (a vector v of d entries) on its own:

  none      Q(v) = v
  top_k     the k = ceil(ratio d) entries of largest |v|, the rest 0
  random_k  k = ceil(ratio d) entries chosen uniformly without replacement, the rest 0
            (unscaled, as in CHOCO: E Q(v) = (k / d) v)
  qsgd      QSGD with s = 2^bits - 1 levels (Alistarh et al. 2017), scaled by 1 / tau,
            tau = 1 + min(d / s^2, sqrt(d) / s), so that Q is a contraction (CHOCO, Sec. 3):
            Q(v) = ||v||_2 sign(v) xi / (s tau), xi = floor(s |v| / ||v|| + u), u ~ U[0, 1)
  sign      scaled sign, Q(v) = (||v||_1 / d) sign(v) (Karimireddy et al. 2019)

Message sizes (`message_bytes`, summed over leaves): none 4 d; top_k and random_k k (4 + 4)
(a float32 value and an int32 index per entry); qsgd 4 + ceil(d (bits + 1) / 8) (the norm,
then a sign and `bits` level bits per entry); sign 4 + ceil(d / 8) (the scale and one bit per
entry).
"""

import math

import jax
import jax.numpy as jnp

COMPRESSORS = ("none", "top_k", "random_k", "qsgd", "sign")


def num_kept(d: int, ratio: float) -> int:
    """k = ceil(ratio d), at least 1 and at most d."""
    return min(d, max(1, math.ceil(ratio * d - 1e-9)))


def _one(key, v, kind: str, ratio: float, bits: int):
    """Compresses one device's flat vector v [d]."""
    d = v.shape[0]
    if kind == "none":
        return v
    if kind in ("top_k", "random_k"):
        k = num_kept(d, ratio)
        score = jnp.abs(v) if kind == "top_k" else jax.random.uniform(key, (d,))
        _, idx = jax.lax.top_k(score, k)
        return jnp.zeros_like(v).at[idx].set(v[idx])
    if kind == "qsgd":
        s = 2 ** bits - 1
        tau = 1.0 + min(d / s ** 2, math.sqrt(d) / s)
        norm = jnp.sqrt(jnp.sum(jnp.square(v)))
        safe = jnp.where(norm > 0, norm, 1.0)
        level = jnp.floor(s * jnp.abs(v) / safe + jax.random.uniform(key, (d,)))
        return jnp.where(norm > 0, norm * jnp.sign(v) * level / (s * tau), 0.0)
    if kind == "sign":
        return jnp.sum(jnp.abs(v)) / d * jnp.sign(v)
    raise ValueError(f"unknown compressor {kind!r}; allowed: {COMPRESSORS}")


def compress(key: jax.Array, tree, kind: str, *, ratio: float = 1.0, bits: int = 8):
    """Q applied to every device's copy of every leaf of a [N, ...] pytree (traceable)."""
    if kind == "none":
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for i, leaf in enumerate(leaves):
        n = leaf.shape[0]
        keys = jax.random.split(jax.random.fold_in(key, i), n)
        flat = leaf.reshape(n, -1)
        q = jax.vmap(lambda k, v: _one(k, v, kind, ratio, bits))(keys, flat)
        out.append(q.reshape(leaf.shape).astype(leaf.dtype))
    return jax.tree.unflatten(treedef, out)


def message_bytes(leaf_sizes, kind: str, *, ratio: float = 1.0, bits: int = 8) -> int:
    """Bytes of one compressed message of a model with these leaf sizes (see module doc)."""
    total = 0
    for d in leaf_sizes:
        if kind == "none":
            total += 4 * d
        elif kind in ("top_k", "random_k"):
            total += 8 * num_kept(d, ratio)
        elif kind == "qsgd":
            total += 4 + math.ceil(d * (bits + 1) / 8)
        elif kind == "sign":
            total += 4 + math.ceil(d / 8)
        else:
            raise ValueError(f"unknown compressor {kind!r}; allowed: {COMPRESSORS}")
    return total
