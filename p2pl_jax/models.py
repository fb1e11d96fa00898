"""Flax models. Written for one device and one batch; the simulator vmaps them over devices."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

MODELS = ("mlp", "cnn")


class MLP(nn.Module):
    """Multilayer perceptron on flattened inputs: x [B, ...] -> logits [B, num_classes].

    The paper's MNIST model is MLP(hidden_sizes=(200, 200)): 784-200-200-10, ReLU.
    """

    hidden_sizes: Sequence[int] = (200, 200)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden_sizes:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class CNN(nn.Module):
    """Small LeNet-style CNN: x [B, H, W, C] -> logits [B, num_classes]."""

    features: Sequence[int] = (32, 64)
    dense: int = 128
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for f in self.features:
            x = nn.relu(nn.Conv(f, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.dense)(x))
        return nn.Dense(self.num_classes)(x)


def make_model(name: str, *, hidden_sizes: Sequence[int] = (200, 200),
               num_classes: int = 10) -> nn.Module:
    """Builds a model by name ("mlp" or "cnn")."""
    from p2pl_jax.errors import check_choice

    check_choice("model", name, MODELS)
    if name == "mlp":
        return MLP(hidden_sizes=tuple(hidden_sizes), num_classes=num_classes)
    return CNN(num_classes=num_classes)


def init_params(model: nn.Module, key: jax.Array, input_shape: Sequence[int]):
    """Parameters of one device's model for inputs of shape `input_shape` (no batch axis)."""
    return model.init(key, jnp.zeros((1, *input_shape), jnp.float32))["params"]
