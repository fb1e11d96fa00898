"""Flax models. Written for one device and one batch; the simulator vmaps them over devices."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from p2pl_jax.errors import check_choice

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
    """Small LeNet-style CNN: x [B, H, W, C] -> logits [B, num_classes].

    For each of `features`: a 3x3 convolution ('SAME' padding, stride 1) with that many output
    channels, ReLU, 2x2 max pooling (stride 2); then the feature map is flattened and goes
    through one ReLU dense layer per entry of `hidden_sizes` (the same field as the MLP's
    hidden layers) and a final dense layer to num_classes logits. model=cnn with the MNIST
    config's hidden_sizes=(200, 200): 28x28x1 -conv32-pool-> 14x14x32 -conv64-pool-> 7x7x64
    (3136) -> 200 -> 200 -> 10. `dense`, when given, is one hidden layer of that width instead
    of hidden_sizes (older callers).
    """

    features: Sequence[int] = (32, 64)
    hidden_sizes: Sequence[int] = (128,)
    num_classes: int = 10
    dense: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for f in self.features:
            x = nn.relu(nn.Conv(f, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        for width in (self.hidden_sizes if self.dense is None else (self.dense,)):
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


def make_model(name: str, *, hidden_sizes: Sequence[int] = (200, 200),
               num_classes: int = 10) -> nn.Module:
    """Builds a model by name: "mlp" (MLP) or "cnn" (CNN); `hidden_sizes` are the widths of
    the hidden dense layers of either (for the CNN, after the convolutions)."""
    check_choice("model", name, MODELS)
    if name == "mlp":
        return MLP(hidden_sizes=tuple(hidden_sizes), num_classes=num_classes)
    return CNN(hidden_sizes=tuple(hidden_sizes), num_classes=num_classes)


def init_params(model: nn.Module, key: jax.Array, input_shape: Sequence[int]):
    """Parameters of one device's model for inputs of shape `input_shape` (no batch axis)."""
    return model.init(key, jnp.zeros((1, *input_shape), jnp.float32))["params"]
