"""Command-line and config input (issue #11): user errors of experiments.sweep and
experiments.train exit with status 2 and one `error: ...` message naming the flag, field or
file, never a traceback; a field given twice takes its last value (experiments/argv_check.py);
the CNN's dense head follows hidden_sizes.

CLIs run as real subprocesses on configs/smoke.py with rounds=0 (a few seconds each).
"""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from experiments import argv_check
from p2pl_jax import models
from p2pl_jax.errors import ConfigError
from p2pl_jax.sweep import SWEEPABLE

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--config=configs/smoke.py", "--config.rounds=0", "--config.tensorboard=False"]


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                          text=True, timeout=120)


def _user_error(result: subprocess.CompletedProcess, *parts: str) -> str:
    """Asserts exit status 2 and one `error:` message without a traceback that holds `parts`."""
    err = result.stderr
    assert result.returncode == 2, (result.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert err.count("error: ") == 1 and err.lstrip().startswith("error: "), err[-3000:]
    for part in parts:
        assert part in err, (part, err[-3000:])
    return err


# ------------------------------------------------------------------------- sweep: bad flags


def test_sweep_field_that_cannot_be_swept_lists_the_sweepable_ones(tmp_path):
    _user_error(_cli("experiments.sweep", *SMOKE, f"--workdir={tmp_path}", "--sweep.seed=0,1",
                     "--sweep.foo=1"), "--sweep.foo", ", ".join(SWEEPABLE))
    assert not any(tmp_path.iterdir())   # rejected before anything is written


@pytest.mark.parametrize("with_config", [True, False], ids=["--config given", "default config"])
def test_sweep_unknown_config_field_is_named(tmp_path, with_config):
    """Without --config=, ml_collections parses the overrides while the flag is defined, at
    import (argv_check.define_time_errors)."""
    head = SMOKE if with_config else []
    _user_error(_cli("experiments.sweep", *head, f"--workdir={tmp_path}", "--sweep.seed=0,1",
                     "--config.learnin_rate=0.1"), "'learnin_rate'", "learning_rate")


@pytest.mark.parametrize("blocker", ["workdir", "under workdir", "replica", "sweep.json"])
def test_sweep_workdir_blocked_by_a_file_names_the_path(tmp_path, blocker):
    afile = tmp_path / "afile"
    afile.write_text("a file")
    workdir = {"workdir": afile, "under workdir": afile / "sub"}.get(blocker, tmp_path / "w")
    if blocker == "replica":
        workdir.mkdir()
        (workdir / "seed=1").write_text("a file")
    elif blocker == "sweep.json":
        (workdir / "sweep.json").mkdir(parents=True)
    _user_error(_cli("experiments.sweep", *SMOKE, f"--workdir={workdir}", "--sweep.seed=0,1"),
                f"workdir={str(workdir)!r}")


BAD_VALUES = {
    "not a number": ("--sweep.learning_rate=a,b", ["sweep.learning_rate='a,b'", "a number"]),
    "negative seed": ("--sweep.seed=-1", ["seed=-1", "[0, inf)"]),
    "unknown mixing": ("--sweep.mixing=nope", ["mixing='nope'", "'metropolis'"]),
    "repeated value": ("--sweep.seed=0,0", ["sweep.seed='0,0'", "more than once"]),
    "empty": ("--sweep.seed=", ["sweep.seed=''", "empty"]),   # more in test_sweep.py
}


@pytest.mark.parametrize("flag,parts", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_sweep_bad_swept_value_is_named(tmp_path, flag, parts):
    _user_error(_cli("experiments.sweep", *SMOKE, f"--workdir={tmp_path}", flag), *parts)


def test_sweep_field_given_twice_takes_the_last_value(tmp_path):
    """Every field given twice takes its last value: a tuple field (which ml_collections
    concatenated), a scalar one, a swept one."""
    proc = _cli("experiments.sweep", *SMOKE, f"--workdir={tmp_path}", "--sweep.seed=0,1",
                "--config.hidden_sizes=(16,)", "--config.learning_rate=0.1",
                "--sweep.seed=2", "--config.hidden_sizes", "(8, 4)",
                "--config.learning_rate=0.2", "--sweep.momentum=0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # replica folders name the swept fields in sorted order (as when --sweep was a ConfigDict)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["momentum=0.5,seed=2", "sweep.json"]
    config = json.loads((tmp_path / "momentum=0.5,seed=2" / "config.json").read_text())
    assert (config["hidden_sizes"], config["learning_rate"]) == ([8, 4], 0.2)


# ----------------------------------------------------------------------------- train


def test_train_hidden_sizes_given_twice_takes_the_last_not_the_concatenation(tmp_path):
    proc = _cli("experiments.train", *SMOKE, f"--workdir={tmp_path}",
                "--config.hidden_sizes=(16,)", "--config.hidden_sizes=(8,)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "config.json").read_text())["hidden_sizes"] == [8]


def test_train_unknown_config_field_without_config_flag(tmp_path):
    _user_error(_cli("experiments.train", f"--workdir={tmp_path}", "--config.foo=1"), "'foo'")


def test_train_gzip_edgelist_names_the_file(tmp_path):
    path = tmp_path / "edges.txt.gz"
    path.write_bytes(gzip.compress(b"0 1\n1 2\n2 3\n3 0\n"))
    _user_error(_cli("experiments.train", *SMOKE, f"--workdir={tmp_path / 'run'}",
                     "--config.topology=edgelist", f"--config.edgelist_path={path}"),
                f"edgelist_path={str(path)!r}", "not a text file", "gzip")


# ----------------------------------------------------------------- argv_check, directly


def test_repeated_fields_finds_every_spelling_of_a_field(tmp_path):
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text("--config.rounds=3\n")
    argv = ["prog", "--config=c.py", "--config.hidden_sizes=(16,)", "--config.seed", "1",
            "--noconfig.progress", "-config.progress=True", f"--flagfile={flagfile}",
            "--config.rounds=4", "--sweep.seed=0", "--workdir=a", "--workdir=b",
            "--", "--config.seed=2"]
    assert argv_check.override_fields(argv, "config") == [
        "hidden_sizes", "seed", "progress", "progress", "rounds", "rounds"]
    # --workdir is no PREFIX.FIELD; after '--' nothing is a flag
    assert argv_check.repeated_fields(argv, ["config", "sweep"]) == [
        "config.progress", "config.rounds"]


@pytest.mark.parametrize("spelling", ["=", " "])
def test_last_one_wins_for_a_tuple_field(spelling):
    """The bug: ml_collections made hidden_sizes an absl multi flag, so a second value was
    appended to the first; scalars already kept the last."""
    def arg(name, value):
        return [f"--cfg.{name}={value}"] if spelling == "=" else [f"--cfg.{name}", value]

    argv = ["prog", *arg("hs", "(16,)"), *arg("lr", "0.1"), *arg("hs", "(8, 4)"),
            *arg("lr", "0.2"), *arg("other", "(1,)")]
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_dict(
        "cfg", ml_collections.ConfigDict({"hs": (200, 200), "lr": 0.05, "other": (2,)}),
        flag_values=fv, sys_argv=argv)
    fv(argv)
    assert holder.value.hs == (16, 8, 4) and holder.value.lr == 0.2   # what absl does
    assert argv_check.last_one_wins(argv, ["cfg"], fv) == ["cfg.hs", "cfg.lr"]
    assert (holder.value.hs, holder.value.lr, holder.value.other) == ((8, 4), 0.2, (1,))


def test_check_known_names_the_field_and_the_allowed_ones():
    argv_check.check_known(["prog", "--sweep.seed=1", "--config.foo=1"], "sweep", SWEEPABLE,
                           "sweepable fields")
    with pytest.raises(ConfigError, match="--sweep.foo is not supported; sweepable fields: "
                       "seed, learning_rate"):
        argv_check.check_known(["prog", "--sweep.foo=1"], "sweep", SWEEPABLE, "sweepable fields")


def test_define_time_errors_become_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"unknown config field 'foo' \(--config.foo\)"):
        with argv_check.define_time_errors("config"):
            raise AttributeError("\"'foo'\"")
    with pytest.raises(ConfigError, match="cannot load --config"):
        with argv_check.define_time_errors("config"):
            raise OSError("Failed loading config file\n  configs/x.py")


# ----------------------------------------------------------------------------- the CNN

MNIST = (28, 28, 1)


def _count(params) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def _shapes(model, input_shape=MNIST):
    """The parameters' shapes and the logits' shape for a batch of 5 (nothing computed)."""
    params = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0), input_shape))
    logits = jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((5, *input_shape))),
                            params)
    return params, logits


@pytest.mark.parametrize("hidden,dense_shapes", [
    ((200, 200), [(3136, 200), (200, 200), (200, 10)]),
    ((16,), [(3136, 16), (16, 10)]),
    ((), [(3136, 10)]),
])
def test_cnn_dense_head_follows_hidden_sizes(hidden, dense_shapes):
    """conv 3x3x1->32, pool, conv 3x3x32->64, pool: 7x7x64 = 3136 features, then the dense
    layers of hidden_sizes and the 10 logits (as the MLP reads hidden_sizes)."""
    params, logits = _shapes(models.make_model("cnn", hidden_sizes=hidden, num_classes=10))
    convs = 3 * 3 * 1 * 32 + 32 + 3 * 3 * 32 * 64 + 64
    assert _count(params) == convs + sum(a * b + b for a, b in dense_shapes)
    assert [params[f"Dense_{i}"]["kernel"].shape for i in range(len(dense_shapes))] == \
        dense_shapes
    assert logits.shape == (5, 10) and logits.dtype == jnp.float32


def test_cnn_dense_is_one_hidden_layer():
    """CNN(dense=w), for older callers, is CNN(hidden_sizes=(w,))."""
    a, _ = _shapes(models.CNN(features=(4,), dense=8))
    b, _ = _shapes(models.CNN(features=(4,), hidden_sizes=(8,)))
    assert jax.tree.map(jnp.shape, a) == jax.tree.map(jnp.shape, b)
    assert a["Dense_0"]["kernel"].shape == (14 * 14 * 4, 8)


def test_cnn_one_sgd_step_lowers_the_loss():
    """On a tiny batch (8 images of 12x12), a step against the gradient lowers the loss; every
    parameter gets a finite, non-zero gradient. (One jitted program: one compilation.)"""
    model = models.make_model("cnn", hidden_sizes=(16,), num_classes=10)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(size=(8, 12, 12, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=8))

    def loss(p):
        logp = jax.nn.log_softmax(model.apply({"params": p}, x))
        return -jnp.mean(logp[jnp.arange(len(y)), y])

    @jax.jit
    def step(key):
        params = models.init_params(model, key, x.shape[1:])
        before, grads = jax.value_and_grad(loss)(params)
        after = loss(jax.tree.map(lambda p, g: p - 0.05 * g, params, grads))
        ok = [jnp.all(jnp.isfinite(g)) & jnp.any(g != 0) for g in jax.tree.leaves(grads)]
        return before, after, jnp.stack(ok)

    before, after, ok = step(jax.random.key(0))
    assert bool(ok.all()) and ok.shape == (8,)   # 2 conv, 1 hidden, 1 output: kernel, bias
    assert float(after) < float(before) - 1e-3, (float(before), float(after))


def test_depth_and_cifar_configs_are_valid():
    """configs/depth.py's 16 settings and configs/cifar10.py pass validation and say what their
    names say (the depth study, issue #16, runs them)."""
    from configs import cifar10, depth
    from p2pl_jax import runner

    assert len(depth.SETTINGS) == 16
    for name in depth.SETTINGS:
        c = depth.get_config(name)
        runner.validate(c)
        model, graph, sync = name.split("-")
        layers = {"mlp1": 1, "mlp2": 2, "mlp4": 4, "cnn": 2}[model]
        assert (c.model, len(c.hidden_sizes), c.sync) == (
            "cnn" if model == "cnn" else "mlp", layers, sync)
        assert c.topology == ("complete" if graph == "complete" else "random_geometric")
    c = cifar10.get_config()
    runner.validate(c)
    assert (c.dataset, c.model, c.augment, c.nesterov, c.lr_schedule) == (
        "cifar10", "resnet20", True, True, "step")
    assert runner.lr_schedule(c).milestones == (150, 225)
