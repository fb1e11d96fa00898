"""p2pl_jax: a vectorized JAX/Flax simulator of peer-to-peer deep learning (P2PL)."""

__version__ = "0.1.0"
