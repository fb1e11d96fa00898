"""Flax models. Written for one device and one batch; the simulator vmaps them over devices.

Every model is a pure function of its parameters: `model.init(key, x)` has one collection,
"params" (no BatchNorm, no "batch_stats"; docs/models.md says why), and
`model.apply({"params": p}, x)` maps x [B, H, W, C] float32 to logits [B, num_classes].
Normalised models use GroupNorm (Wu & He 2018) with `norm_groups` groups per layer, reduced to
the largest divisor of the layer's channels when a width multiplier makes them indivisible
(`group_count`). Architectures and parameter counts: docs/models.md.
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from p2pl_jax.errors import ConfigError, check_choice, check_range

MODELS = ("mlp", "cnn", "lenet_gn", "resnet20", "resnet18", "vgg11")

# Two groups per GroupNorm layer: the setting Hsieh et al. (ICML 2020, "The Non-IID Data
# Quagmire of Decentralized Machine Learning") use for ResNet-20 in place of BatchNorm.
DEFAULT_NORM_GROUPS = 2

# VGG configuration A (Simonyan & Zisserman 2015, Table 1): channels, "M" = 2x2 max pool.
VGG11_LAYERS = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def scaled(channels: int, width_multiplier: float) -> int:
    """A layer's width under the width multiplier w: max(1, round(channels * w))."""
    return max(1, round(channels * width_multiplier))


def group_count(channels: int, norm_groups: int) -> int:
    """Groups of a GroupNorm over `channels`: the largest g <= norm_groups dividing channels
    (norm_groups itself whenever it divides; 1 for a prime channel count below it)."""
    return max(g for g in range(1, min(norm_groups, channels) + 1) if channels % g == 0)


def check_width_multiplier(width_multiplier: float) -> None:
    """Raises ConfigError naming the field unless 0 < width_multiplier < inf."""
    check_range("width_multiplier", width_multiplier, 0.0, math.inf, lo_open=True,
                hi_open=True)


def _norm(channels: int, norm_groups: int, name: str | None = None) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=group_count(channels, norm_groups), epsilon=1e-5, name=name)


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


class LeNetGN(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with GroupNorm: x [B, H, W, C] -> logits [B, num_classes].

    conv 5x5 6 ('VALID', no bias) -> GN -> ReLU -> 2x2 max pool -> conv 5x5 16 -> GN -> ReLU
    -> pool -> flatten -> dense 120 -> ReLU -> dense 84 -> ReLU -> dense num_classes.
    32x32x3: 28x28x6 -> 14x14x6 -> 10x10x16 -> 5x5x16 (400); 28x28x1: 4x4x16 (256). Needs
    H, W >= 16 (ConfigError otherwise). Every width except the logits is scaled by
    `width_multiplier`; the convolutions have no bias (the GroupNorm shift replaces it).
    """

    num_classes: int = 10
    width_multiplier: float = 1.0
    norm_groups: int = DEFAULT_NORM_GROUPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if min(x.shape[1:3]) < 16:
            raise ConfigError(f"model=lenet_gn needs inputs of at least 16x16 (two 5x5 'VALID' "
                              f"convolutions and two 2x2 pools); got input shape "
                              f"{tuple(x.shape[1:])}")
        w = self.width_multiplier
        for c in (6, 16):
            c = scaled(c, w)
            x = nn.Conv(c, (5, 5), padding="VALID", use_bias=False)(x)
            x = nn.max_pool(nn.relu(_norm(c, self.norm_groups)(x)), (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        for width in (120, 84):
            x = nn.relu(nn.Dense(scaled(width, w))(x))
        return nn.Dense(self.num_classes)(x)


class BasicBlock(nn.Module):
    """He et al. (2016) basic block with GroupNorm: x [B, H, W, C_in] -> [B, H', W', features].

    y = relu(GN(conv3x3(relu(GN(conv3x3_stride(x))))) + shortcut(x)); H' = ceil(H / stride).
    shortcut: identity when shape is kept; otherwise option "A" (x subsampled by `strides`,
    zero channels appended: no parameters) or option "B" (1x1 conv, stride, no bias, + GN).
    """

    features: int
    strides: int = 1
    shortcut: str = "A"
    norm_groups: int = DEFAULT_NORM_GROUPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = (self.strides, self.strides)
        y = nn.Conv(self.features, (3, 3), strides=s, use_bias=False, name="conv1")(x)
        y = nn.relu(_norm(self.features, self.norm_groups, "norm1")(y))
        y = nn.Conv(self.features, (3, 3), use_bias=False, name="conv2")(y)
        y = _norm(self.features, self.norm_groups, "norm2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            if self.shortcut == "A":
                x = x[:, ::self.strides, ::self.strides, :]
                pad = self.features - x.shape[-1]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))
            else:
                x = nn.Conv(self.features, (1, 1), strides=s, use_bias=False,
                            name="shortcut_conv")(x)
                x = _norm(self.features, self.norm_groups, "shortcut_norm")(x)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """CIFAR-style ResNet with GroupNorm: x [B, H, W, C] -> logits [B, num_classes].

    stem: conv 3x3 stride 1 (no bias) -> GN -> ReLU (no max pool); then for each stage i,
    `blocks[i]` BasicBlocks of stage_channels[i] channels, the first with stride 2 (stride 1 in
    stage 0); global average pool; dense num_classes. Any H, W >= 1 (the pool makes it
    shape-agnostic). resnet20 (He et al. 2016, Sec. 4.2): stage_channels (16, 32, 64),
    blocks (3, 3, 3), shortcut A; resnet18 (the CIFAR variant of He et al.'s ImageNet
    ResNet-18): (64, 128, 256, 512), (2, 2, 2, 2), shortcut B.
    """

    stage_channels: Sequence[int] = (16, 32, 64)
    blocks: Sequence[int] = (3, 3, 3)
    shortcut: str = "A"
    num_classes: int = 10
    width_multiplier: float = 1.0
    norm_groups: int = DEFAULT_NORM_GROUPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        chans = [scaled(c, self.width_multiplier) for c in self.stage_channels]
        x = nn.Conv(chans[0], (3, 3), use_bias=False, name="stem_conv")(x)
        x = nn.relu(_norm(chans[0], self.norm_groups, "stem_norm")(x))
        for i, (c, n) in enumerate(zip(chans, self.blocks)):
            for j in range(n):
                x = BasicBlock(c, strides=2 if i > 0 and j == 0 else 1, shortcut=self.shortcut,
                               norm_groups=self.norm_groups, name=f"stage{i + 1}_block{j}")(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


class VGG(nn.Module):
    """VGG without BatchNorm: x [B, H, W, C] -> logits [B, num_classes].

    `layers`: an int is a 3x3 conv ('SAME', with bias) of that many channels + ReLU; "M" a 2x2
    max pool, stride 2, 'SAME' padding (ceil(H / 2): identical to 'VALID' on 32x32, and keeps
    28x28 inputs at 28 -> 14 -> 7 -> 4 -> 2 -> 1 instead of vanishing). Then flatten and one
    dense layer to num_classes (the CIFAR classifier 512 -> 10, e.g. Zhang et al. 2017 /
    kuangliu pytorch-cifar; on 32x32 inputs the feature map is 1x1x512, so ImageNet's
    4096-4096 head would add ~19M parameters to a 9.2M-parameter network).
    """

    layers: Sequence[int | str] = VGG11_LAYERS
    num_classes: int = 10
    width_multiplier: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            if layer == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
            else:
                x = nn.relu(nn.Conv(scaled(layer, self.width_multiplier), (3, 3))(x))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes)(x)


def make_model(name: str, *, hidden_sizes: Sequence[int] = (200, 200), num_classes: int = 10,
               width_multiplier: float = 1.0,
               norm_groups: int = DEFAULT_NORM_GROUPS) -> nn.Module:
    """Builds a model by name (one of MODELS).

    mlp / cnn: `hidden_sizes` are the widths of their hidden dense layers (for the CNN, after
    the convolutions); the other models have fixed heads and ignore it. `width_multiplier` w
    scales every hidden width (conv channels and hidden dense layers, not the logits) to
    max(1, round(c * w)); 1.0 is the published model. `norm_groups`: GroupNorm groups per
    layer (lenet_gn, resnet20, resnet18), see group_count.
    """
    check_choice("model", name, MODELS)
    check_width_multiplier(width_multiplier)
    check_range("norm_groups", norm_groups, 1, integer=True)
    w = width_multiplier
    if name == "mlp":
        return MLP(hidden_sizes=tuple(scaled(h, w) for h in hidden_sizes),
                   num_classes=num_classes)
    if name == "cnn":
        return CNN(features=tuple(scaled(f, w) for f in CNN.features),
                   hidden_sizes=tuple(scaled(h, w) for h in hidden_sizes),
                   num_classes=num_classes)
    if name == "lenet_gn":
        return LeNetGN(num_classes=num_classes, width_multiplier=w, norm_groups=norm_groups)
    if name == "vgg11":
        return VGG(num_classes=num_classes, width_multiplier=w)
    arch = {"resnet20": ((16, 32, 64), (3, 3, 3), "A"),
            "resnet18": ((64, 128, 256, 512), (2, 2, 2, 2), "B")}[name]
    return ResNet(*arch, num_classes=num_classes, width_multiplier=w, norm_groups=norm_groups)


def init_params(model: nn.Module, key: jax.Array, input_shape: Sequence[int]):
    """Parameters of one device's model for inputs of shape `input_shape` (no batch axis)."""
    return model.init(key, jnp.zeros((1, *input_shape), jnp.float32))["params"]


def param_count(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Number of parameters of `model` for inputs `input_shape` (no batch axis); shapes only,
    nothing is computed."""
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0), input_shape))
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
