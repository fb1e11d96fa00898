"""Evaluation of every device's model, consensus distance and rounds-to-target.

Evaluation runs every device's model on the full test set. Two things keep it cheap without
changing what it measures:
  * models are evaluated in groups of `device_chunk` (lax.map over groups, vmap inside) and the
    test set in chunks of `example_chunk`, which bounds memory at
    device_chunk x example_chunk x width activations;
  * if every device holds bit-identical parameters (complete graph, FedAvg, centralized), the
    model is evaluated once and its result broadcast: identical models give identical metrics.
"""

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from p2pl_jax import distributed


def _all_identical(tree) -> jax.Array:
    """True iff every device's parameters equal device 0's exactly."""
    same = [jnp.all(leaf == leaf[:1]) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(same))


def consensus_distance(tree) -> jax.Array:
    """sqrt( (1/N) sum_n ||theta_n - theta_bar||^2 ), theta_bar the uniform device average."""
    sq = 0.0
    for leaf in jax.tree.leaves(tree):
        # Deviations from device 0 first, so identical models give exactly 0 (no rounding).
        dev = leaf.reshape(leaf.shape[0], -1) - leaf.reshape(leaf.shape[0], -1)[:1]
        sq = sq + jnp.sum(jnp.square(dev - dev.mean(axis=0, keepdims=True)))
    return jnp.sqrt(sq / jax.tree.leaves(tree)[0].shape[0])


def make_evaluator(apply_fn: Callable, x_test: jax.Array, y_test: jax.Array, *,
                   device_chunk: int = 10, example_chunk: int = 2000) -> "Evaluator":
    """Returns a jitted `evaluate(params [N, ...]) -> dict` of device-level test metrics.

    The dict holds acc [N], loss [N] (mean test cross-entropy of each device's model),
    consensus_distance (scalar) and identical (bool: all models were identical).
    x_test [T, ...], y_test [T] are bound as device arrays (passed as arguments, not constants).
    """
    n_test = x_test.shape[0]
    example_chunk = min(example_chunk, n_test)
    n_chunks = -(-n_test // example_chunk)
    pad = n_chunks * example_chunk - n_test
    xs = jnp.concatenate([x_test, jnp.zeros((pad, *x_test.shape[1:]), x_test.dtype)])
    ys = jnp.concatenate([y_test, jnp.zeros((pad,), y_test.dtype)])
    ms = jnp.arange(n_chunks * example_chunk) < n_test
    xs = xs.reshape(n_chunks, example_chunk, *x_test.shape[1:])
    ys = ys.reshape(n_chunks, example_chunk)
    ms = ms.reshape(n_chunks, example_chunk)

    def one_model(params, xs, ys, ms):
        def chunk(carry, batch):
            x, y, m = batch
            logits = apply_fn({"params": params}, x)
            correct = jnp.sum((jnp.argmax(logits, -1) == y) & m)
            loss = jnp.sum(jnp.where(m, optax.softmax_cross_entropy_with_integer_labels(
                logits, y), 0.0))
            return (carry[0] + correct, carry[1] + loss), None

        (correct, loss), _ = jax.lax.scan(chunk, (0, 0.0), (xs, ys, ms))
        return correct / n_test, loss / n_test

    def evaluate_all(params, xs, ys, ms):
        return jax.lax.map(lambda p: one_model(p, xs, ys, ms), params,
                           batch_size=device_chunk)

    def evaluate_first(params, xs, ys, ms):
        first = jax.tree.map(lambda leaf: leaf[0], params)
        acc, loss = one_model(first, xs, ys, ms)
        n = jax.tree.leaves(params)[0].shape[0]
        return jnp.full((n,), acc), jnp.full((n,), loss)

    @jax.jit
    def evaluate(params, xs, ys, ms):
        identical = _all_identical(params)
        acc, loss = jax.lax.cond(identical, evaluate_first, evaluate_all, params, xs, ys, ms)
        return {"acc": acc, "loss": loss, "consensus_distance": consensus_distance(params),
                "identical": identical}

    return Evaluator(evaluate, (xs, ys, ms))


def _signature(params) -> tuple:
    leaves, treedef = jax.tree.flatten(params)
    return treedef, tuple((tuple(leaf.shape), str(leaf.dtype)) for leaf in leaves)


class Evaluator:
    """`evaluator(params)` -> device metrics; `evaluator.compile(params)` compiles ahead.

    Parameters of other shapes than those compiled for (a sweep whose groups differ in the
    number of models) go through the jitted function, which compiles for them on first use."""

    def __init__(self, fn: Callable, test_arrays: tuple):
        self._jit = self._fn = fn
        self._test = test_arrays
        self._signature = None

    def compile(self, params) -> float:
        """Compiles for `params`' shapes (arrays or jax.ShapeDtypeStruct); returns the compile
        time in seconds."""
        t0 = time.perf_counter()
        self._fn = self._jit.lower(params, *self._test).compile()
        self._signature = _signature(params)
        return time.perf_counter() - t0

    def compiled_for(self, params) -> bool:
        """Whether `compile` compiled for `params`' shapes."""
        return self._signature == _signature(params)

    @property
    def compiled(self):
        """The compiled evaluation (jax.stages.Compiled) after `compile`, else None (memory.py
        reads its memory_analysis)."""
        return None if self._signature is None else self._fn

    @property
    def test_arrays(self) -> tuple:
        """The test set as bound: inputs, labels and mask in chunks (padded)."""
        return self._test

    def __call__(self, params) -> dict:
        if self._signature is not None and _signature(params) != self._signature:
            return self._jit(params, *self._test)
        return self._fn(params, *self._test)


def summarize(device_metrics: dict) -> dict:
    """Host-side summary of `evaluate`'s output: acc_min/mean/max, test_loss, consensus_distance."""
    acc = distributed.host(device_metrics["acc"])
    return {
        "acc_min": float(acc.min()),
        "acc_mean": float(acc.mean()),
        "acc_max": float(acc.max()),
        "test_loss": float(distributed.host(device_metrics["loss"]).mean()),
        "consensus_distance": float(device_metrics["consensus_distance"]),
    }
