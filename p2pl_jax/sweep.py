"""Sweeps as a batch axis: S replicas of the whole simulation in one compiled program.

A sweep is the cartesian product of values for a few config fields (seeds, learning rates,
momentum, link-failure or dropout probabilities, mixing schemes). Every replica is built exactly
as a separate run would be (its own partition, graph and initialisation from its own seed);
replicas whose compiled round would be the same (same static Spec and array shapes) are stacked
on a leading replica axis and advanced together by one jitted, vmapped round:

  state [S, N, ...]  --vmap_S(round_step)-->  state [S, N, ...]

Arrays that are identical in every replica of a group (the data when only hyperparameters vary)
are passed once (in_axes=None) instead of S times. Each replica records its rounds through its
own recorder.Recorder, as a separate run does, and writes the same files in its own workdir
(config.json, partition.json, metrics.jsonl/.csv, TensorBoard if enabled, summary.json), so
results can be compared to separate runs record by record. A replica that diverges stops with
status 'diverged' while the others go on. Sweeps do not checkpoint: an interrupted sweep
starts over.
"""

import dataclasses
import functools
import itertools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from p2pl_jax import runner, writers
from p2pl_jax.errors import ConfigError
from p2pl_jax.metrics import make_evaluator
from p2pl_jax.recorder import DivergenceError, Recorder

SWEEPABLE = ("seed", "learning_rate", "momentum", "link_failure_prob", "dropout_prob",
             "mixing")


def parse_values(field: str, text: str, base) -> list:
    """Comma-separated values for `field`, converted to the type of the base config's value."""
    if field not in SWEEPABLE:
        raise ConfigError(f"sweep.{field} cannot be swept; allowed: {', '.join(SWEEPABLE)}")
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ConfigError(f"sweep.{field}={text!r} is empty; give comma-separated values")
    kind = type(base)
    try:
        return [kind(t) for t in items]
    except ValueError as e:
        raise ConfigError(f"sweep.{field}={text!r}: each value must be a {kind.__name__}") from e


def expand(base: ml_collections.ConfigDict, values: dict[str, list]) -> list[tuple[str, dict]]:
    """The replicas of a sweep: [(name, {field: value})] in cartesian-product order."""
    fields = list(values)
    out = []
    for combo in itertools.product(*(values[f] for f in fields)):
        override = dict(zip(fields, combo))
        name = ",".join(f"{k}={v}" for k, v in override.items()) or "base"
        out.append((name, override))
    return out


@dataclasses.dataclass
class _Replica:
    name: str
    config: ml_collections.ConfigDict
    sim: object
    info: dict
    workdir: str
    done: bool = False


def _signature(sim) -> tuple:
    """Replicas with equal signatures can share one compiled round."""
    spec = sim.spec
    if not spec.dynamic:   # the scheme only shapes the static weights, which are arrays
        spec = dataclasses.replace(spec, scheme="")
    shapes = tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(sim.arrays))
    return (spec, shapes, sim.sync_mode, sim.diameter, sim.local_update_key)


def _stack_arrays(arrays_list):
    """Stacks per-replica Arrays; fields equal in every replica are shared (axis None)."""
    first = arrays_list[0]
    fields, axes = {}, {}
    for f in dataclasses.fields(first):
        vals = [getattr(a, f.name) for a in arrays_list]
        same = all(v is vals[0] or (v.shape == vals[0].shape and bool(jnp.all(v == vals[0])))
                   for v in vals[1:])
        fields[f.name] = vals[0] if same else jnp.stack(vals)
        axes[f.name] = None if same else 0
    return type(first)(**fields), type(first)(**axes)


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def run_sweep(base: ml_collections.ConfigDict, values: dict[str, list], workdir: str) -> list:
    """Runs every replica of the sweep; returns their summaries (also in workdir/sweep.json)."""
    os.makedirs(workdir, exist_ok=True)
    replicas = []
    for name, override in expand(base, values):
        c = ml_collections.ConfigDict(base.to_dict())
        for k, v in override.items():
            c[k] = v
        runner.validate(c)
        sim, ds, info = runner.build(c)
        rdir = os.path.join(workdir, name)
        os.makedirs(rdir, exist_ok=True)
        writers.write_json(os.path.join(rdir, "config.json"), c.to_dict())
        writers.write_json(os.path.join(rdir, "partition.json"), info.pop("partition"))
        replicas.append(_Replica(name, c, sim, info, rdir))
    groups: dict[tuple, list[_Replica]] = {}
    for rep in replicas:
        groups.setdefault(_signature(rep.sim), []).append(rep)
    logging.info("sweep: %d replicas in %d compiled group(s)", len(replicas), len(groups))
    evaluate = make_evaluator(replicas[0].sim.model.apply, jnp.asarray(ds.x_test),
                              jnp.asarray(ds.y_test, jnp.int32),
                              device_chunk=base.eval_device_chunk,
                              example_chunk=base.eval_example_chunk)
    summaries = []
    for reps in groups.values():
        summaries += _run_group(reps, evaluate)
    with open(os.path.join(workdir, "sweep.json"), "w") as f:
        json.dump([{"name": r.name, **s} for r, s in zip(
            [r for reps in groups.values() for r in reps], summaries)], f, indent=2)
    return summaries


def _run_group(reps: list[_Replica], evaluate) -> list[dict]:
    """Advances a group's replicas together; each replica's evaluations, divergence check,
    rounds_to_target (with eval_backfill) and files go through its own recorder.Recorder,
    exactly as in a separate run. A replica that diverges stops (status 'diverged'); the others
    go on."""
    sim0 = reps[0].sim
    arrays, arrays_axes = _stack_arrays([r.sim.arrays for r in reps])
    hp = _stack([runner.hparams(r.config) for r in reps])
    t0 = time.perf_counter()
    state = _stack([r.sim.init(r.config.seed) for r in reps])
    with_local = any(r.config.eval_after_local for r in reps)

    def compiled(return_local: bool):
        fn = functools.partial(sim0.round_fn, return_local=return_local)
        vmapped = jax.vmap(fn, in_axes=(0, arrays_axes, 0))
        return jax.jit(vmapped, donate_argnums=0).lower(state, arrays, hp).compile()

    step = compiled(False)
    step_local = compiled(True) if with_local else None
    compile_time = time.perf_counter() - t0
    start = time.perf_counter()
    recorders = [Recorder(r.config, r.workdir, evaluate, lambda: time.perf_counter() - start,
                          message_bytes=r.sim.message_bytes)
                 for r in reps]
    status = ["completed"] * len(reps)
    rounds_run = [0] * len(reps)

    def take(tree, i):
        return jax.tree.map(lambda leaf: leaf[i], tree)

    rounds = max(r.config.rounds for r in reps)
    try:
        for rnd in range(1, rounds + 1):
            live = [i for i, r in enumerate(reps) if not r.done]
            evals = [i for i in live if recorders[i].is_eval(rnd)]
            local = None
            if step_local is not None and any(reps[i].config.eval_after_local for i in evals):
                state, metrics, local = step_local(state, arrays, hp)
            else:
                state, metrics = step(state, arrays, hp)
            if evals:   # one transfer of every replica's round metrics, not one per replica
                metrics = jax.device_get(metrics)
            for i in live:
                rep, rec = reps[i], recorders[i]
                rounds_run[i] = rnd
                if i not in evals:
                    if rec.keeps_rounds:
                        rec.keep(rnd, rep.sim.eval_params(take(state, i)), take(metrics, i),
                                 comm=take(state.comm, i))
                    continue
                local_i = (take(local, i) if local is not None and rep.config.eval_after_local
                           else None)
                try:
                    rec.record(rnd, rep.sim.eval_params(take(state, i)), take(metrics, i),
                               local_params=local_i, comm=take(state.comm, i))
                except DivergenceError as e:
                    logging.warning("sweep replica %s: %s", rep.name, e)
                    status[i], rep.done = "diverged", True
                    continue
                rep.done = ((rep.config.stop_at_target and rec.rounds_to_target is not None)
                            or rnd >= rep.config.rounds)
            if all(r.done for r in reps):
                break
    finally:
        for rec in recorders:
            rec.close()
    wall = time.perf_counter() - t0
    out = []
    for i, rep in enumerate(reps):
        summary = recorders[i].summary(status[i], rounds_run[i], rep.info, wall_time_s=wall,
                                       compile_time_s=compile_time,
                                       replicas_in_program=len(reps))
        writers.write_json(os.path.join(rep.workdir, "summary.json"), summary)
        out.append(summary)
    return out
