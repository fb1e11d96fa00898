"""Tests for p2pl_jax.models: shapes, parameter counts against closed forms written here from the
published architectures, GroupNorm (never BatchNorm) and its groups, the vmapped forward, and
one simulator round through the new models at a slim width."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist
from p2pl_jax import graphs, models, runner, simulation
from p2pl_jax.errors import ConfigError

MNIST, CIFAR = (28, 28, 1), (32, 32, 3)
NEW = ("lenet_gn", "resnet20", "resnet18", "vgg11")
SLIM = {"mlp": 0.05, "cnn": 0.125, "lenet_gn": 0.5, "resnet20": 0.25, "resnet18": 0.0625,
        "vgg11": 0.0625}


@pytest.fixture
def fast_compile():
    """Most XLA optimisations off while the test compiles (4-5x faster compiles of these deep
    models on a 2-core CPU); the previous setting is restored afterwards."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def _model(name: str, width: float | None = None, **kw) -> nn.Module:
    return models.make_model(name, hidden_sizes=(200, 200), num_classes=10,
                             width_multiplier=SLIM[name] if width is None else width, **kw)


def _variables_shape(model: nn.Module, shape) -> dict:
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, *shape))))


# ----------------------------------------------------------------------------- closed forms


def conv(k: int, cin: int, cout: int, bias: bool = True) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def dense(i: int, o: int) -> int:
    return i * o + o


def gn(c: int) -> int:
    return 2 * c                         # GroupNorm scale and shift, one per channel


def resnet_count(cin: int, stages, blocks, shortcut_b: bool, classes: int = 10) -> int:
    """Stem conv3x3 + GN; basic blocks (two conv3x3 + GN each; a 1x1 conv + GN shortcut where
    shape changes with option B, nothing with option A); dense head on the pooled features."""
    total = conv(3, cin, stages[0], bias=False) + gn(stages[0])
    prev = stages[0]
    for c, n in zip(stages, blocks):
        for _ in range(n):
            total += conv(3, prev, c, bias=False) + gn(c) + conv(3, c, c, bias=False) + gn(c)
            if shortcut_b and prev != c:
                total += conv(1, prev, c, bias=False) + gn(c)
            prev = c
    return total + dense(stages[-1], classes)


def vgg11_count(cin: int, classes: int = 10) -> int:
    """Eight conv3x3 (with bias), 1x1x512 after five pools for 28x28 and 32x32, dense 512 ->
    classes."""
    chans = (cin, 64, 128, 256, 256, 512, 512, 512, 512)
    return sum(conv(3, a, b) for a, b in zip(chans, chans[1:])) + dense(512, classes)


def lenet_count(shape, classes: int = 10) -> int:
    h = ((shape[0] - 4) // 2 - 4) // 2   # two 'VALID' 5x5 convs, two 2x2 pools
    return (conv(5, shape[2], 6, bias=False) + gn(6) + conv(5, 6, 16, bias=False) + gn(16)
            + dense(h * h * 16, 120) + dense(120, 84) + dense(84, classes))


def cnn_count(shape, hidden=(200, 200), classes: int = 10) -> int:
    flat = (shape[0] // 4) * (shape[1] // 4) * 64
    widths = (flat, *hidden, classes)
    return (conv(3, shape[2], 32) + conv(3, 32, 64)
            + sum(dense(a, b) for a, b in zip(widths, widths[1:])))


CLOSED_FORM = {
    "lenet_gn": lenet_count,
    "resnet20": lambda s: resnet_count(s[2], (16, 32, 64), (3, 3, 3), shortcut_b=False),
    "resnet18": lambda s: resnet_count(s[2], (64, 128, 256, 512), (2, 2, 2, 2), shortcut_b=True),
    "vgg11": lambda s: vgg11_count(s[2]),
    "cnn": cnn_count,
}
# The same numbers, as published and written in docs/models.md (CIFAR, then MNIST input).
KNOWN = {"lenet_gn": (62028, 44448), "resnet20": (269722, 269434),
         "resnet18": (11173962, 11172810), "vgg11": (9225610, 9224458),
         "cnn": (881002, 688426)}


@pytest.mark.parametrize("name", sorted(CLOSED_FORM))
def test_parameter_count_at_width_one_equals_the_closed_form(name):
    model = _model(name, width=1.0)
    for shape, known in zip((CIFAR, MNIST), KNOWN[name]):
        count = models.param_count(model, shape)
        assert count == CLOSED_FORM[name](shape) == known, (name, shape)


@pytest.mark.parametrize("name", models.MODELS)
@pytest.mark.parametrize("shape", [MNIST, CIFAR])
def test_output_shape_and_only_params(name, shape):
    """Logits [B, 10] for MNIST and CIFAR inputs at a slim width; "params" is the only
    collection (no batch_stats: the models are pure functions of their parameters)."""
    model = _model(name)
    variables = _variables_shape(model, shape)
    assert set(variables) == {"params"}
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, *shape))), variables)
    assert out.shape == (2, 10)


def _norm_layers(model: nn.Module, shape) -> list[tuple[str, int, int]]:
    """(module type, groups, channels) of every normalisation layer the forward pass calls."""
    seen = []

    def record(next_fun, args, kwargs, context):
        m = context.module
        if isinstance(m, (nn.GroupNorm, nn.BatchNorm, nn.LayerNorm)) and context.method_name \
                == "__call__":
            seen.append((type(m).__name__, getattr(m, "num_groups", 0), args[0].shape[-1]))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        _variables_shape(model, shape)
    return seen


@pytest.mark.parametrize("name", ["lenet_gn", "resnet20", "resnet18"])
@pytest.mark.parametrize("width", [0.1, 0.3, 0.5, 0.75, 1.0])
def test_groupnorm_groups_divide_channels(name, width):
    layers = _norm_layers(_model(name, width=width), CIFAR)
    expected = {"lenet_gn": 2, "resnet20": 19, "resnet18": 17 + 3}[name]   # + 3 shortcuts (B)
    assert len(layers) == expected
    for kind, groups, channels in layers:
        assert kind == "GroupNorm"
        assert groups >= 1 and channels % groups == 0
        assert groups == (2 if channels % 2 == 0 else 1)   # norm_groups=2 wherever it divides


def test_group_count_and_no_batchnorm_in_any_model():
    assert [models.group_count(c, 2) for c in (1, 2, 3, 6, 7, 16)] == [1, 2, 1, 2, 1, 2]
    assert [models.group_count(c, 32) for c in (12, 48, 64, 31)] == [12, 24, 32, 31]
    assert models.group_count(9, 4) == 3
    assert not _norm_layers(_model("vgg11"), CIFAR)
    for name in models.MODELS:
        assert all(k == "GroupNorm" for k, _, _ in _norm_layers(_model(name), MNIST))
    layers = _norm_layers(_model("resnet20", width=1.0, norm_groups=16), CIFAR)
    assert {(g, c) for _, g, c in layers} == {(16, 16), (16, 32), (16, 64)}


def test_width_multiplier_scales_channels():
    """channels = max(1, round(c * w)): resnet20 at w=0.5 has 8/16/32 channels, at w=0.01 one."""
    for w, chans in ((0.5, (8, 16, 32)), (0.01, (1, 1, 1)), (0.3, (5, 10, 19))):
        p = _variables_shape(_model("resnet20", width=w), CIFAR)["params"]
        assert p["stem_conv"]["kernel"].shape == (3, 3, 3, chans[0])
        assert p["stage2_block0"]["conv1"]["kernel"].shape == (3, 3, chans[0], chans[1])
        assert p["head"]["kernel"].shape == (chans[2], 10)
    p = _variables_shape(_model("vgg11", width=0.25), MNIST)["params"]
    assert p["Dense_0"]["kernel"].shape == (128, 10)   # 28x28 pooled 'SAME' to 1x1x128
    p = _variables_shape(_model("mlp", width=0.5), MNIST)["params"]
    assert p["Dense_1"]["kernel"].shape == (100, 100)


def test_resnet20_option_a_shortcut(fast_compile):
    """With every block's second GroupNorm zeroed, a block outputs relu(shortcut(x)): identity,
    or (option A) x[::2, ::2] with zero channels appended. resnet20 is then the stem, two
    subsample-and-pad steps, the average pool and the head, computed here by hand."""
    model, shape = _model("resnet20", width=0.25), (8, 8, 3)   # 4 / 8 / 16 channels
    p = models.init_params(model, jax.random.PRNGKey(0), shape)
    p = {k: ({**v, "norm2": jax.tree.map(jnp.zeros_like, v["norm2"])} if "block" in k else v)
         for k, v in p.items()}
    x = jax.random.normal(jax.random.PRNGKey(1), (2, *shape))
    h = nn.Conv(4, (3, 3), use_bias=False).apply({"params": p["stem_conv"]}, x)
    h = jax.nn.relu(nn.GroupNorm(num_groups=2, epsilon=1e-5).apply({"params": p["stem_norm"]},
                                                                    h))
    for pad in (2, 4):                 # 4 -> 8 channels, then 8 -> 16: half the zeros each side
        h = jnp.pad(h[:, ::2, ::2], ((0, 0), (0, 0), (0, 0), (pad, pad)))
    expected = h.mean(axis=(1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]
    np.testing.assert_allclose(model.apply({"params": p}, x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", models.MODELS)
def test_vmapped_forward_equals_separate_forwards(name, fast_compile):
    shape = (16, 16, 3)
    model = _model(name)
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    stacked = jax.jit(jax.vmap(lambda k: models.init_params(model, k, shape)))(keys)
    params = [jax.tree.map(lambda leaf, n=n: leaf[n], stacked) for n in range(3)]
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 2, *shape))
    apply = lambda p, xb: model.apply({"params": p}, xb)
    together = jax.jit(jax.vmap(apply))(stacked, x)
    one = jax.jit(apply)
    apart = [one(p, xb) for p, xb in zip(params, x)]
    assert together.shape == (3, 2, 10) and np.all(np.isfinite(together))
    np.testing.assert_allclose(together, np.stack(apart), rtol=1e-4, atol=1e-5)
    assert not np.allclose(apart[0], apart[1])   # the devices' models differ


@pytest.mark.parametrize("name", ["resnet20", "vgg11"])
def test_one_simulator_round(name, fast_compile):
    """3 devices on a cycle, 16x16x3 random images, batch 2: the round runs, every parameter
    tensor moves and the training loss is finite."""
    g = np.random.default_rng(0)
    x = g.normal(size=(12, 16, 16, 3)).astype(np.float32)
    y = g.integers(0, 10, 12)
    parts = np.split(g.permutation(12), 3)
    adj = graphs.adjacency(graphs.make_graph("cycle", 3))
    sim = simulation.Simulator(model=_model(name), x=x, y=y, parts=parts, adj=adj, batch_size=2,
                               sync_mode="none", backend="gather")
    state = sim.init(0)
    before = jax.tree.map(np.array, state.params)
    state, metrics = sim.step(state, simulation.make_hparams(0.05, 0.9))
    assert np.isfinite(float(metrics["train_loss"])) and bool(metrics["params_finite"])
    moved = jax.tree.map(lambda a, b: not np.allclose(a, np.asarray(b)), before, state.params)
    assert all(jax.tree.leaves(moved)), moved


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("width", [0, 0.0, -0.5, math.inf, math.nan, "1"])
def test_bad_width_multiplier_names_the_field(width):
    with pytest.raises(ConfigError, match="width_multiplier"):
        models.make_model("resnet20", width_multiplier=width)
    c = mnist.get_config()
    c.width_multiplier = width if isinstance(width, float) else float("nan")
    with pytest.raises(ConfigError, match="width_multiplier"):
        runner.validate(c)


def test_unknown_model_and_too_small_lenet_input():
    with pytest.raises(ConfigError, match="model='resnet50'.*resnet20"):
        models.make_model("resnet50")
    c = mnist.get_config()
    c.model = "vgg16"
    with pytest.raises(ConfigError, match="model='vgg16'"):
        runner.validate(c)
    with pytest.raises(ConfigError, match=r"lenet_gn.*\(8, 8, 3\)"):
        _variables_shape(_model("lenet_gn"), (8, 8, 3))


def test_runner_build_passes_width_multiplier(mnist_dir):
    c = mnist.get_config()
    c.model, c.width_multiplier, c.num_devices, c.samples_per_device = "lenet_gn", 0.5, 3, 5
    c.topology = "cycle"
    runner.validate(c)
    sim, ds, _ = runner.build(c)
    assert sim.model == models.LeNetGN(num_classes=10, width_multiplier=0.5)
    assert sim.input_shape == ds.x_train.shape[1:] == MNIST
