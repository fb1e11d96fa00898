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
status 'diverged' while the others go on.

A group runs through the same host loop as a run (`loop.Loop`: evaluation, finite checks,
progress, stop requests, checkpoints). Every `checkpoint_every` rounds, at a stop request
(SIGINT/SIGTERM: after the round in progress) and at its end, a group saves one orbax checkpoint
of its whole stacked state, with every replica's records, rounds_to_target, eval_backfill
pending records and status, to workdir/<its first replica>/sweep_checkpoints/<round>/.
Rerunning the same sweep command resumes every group where it stopped (a finished group does no
training), with the results of an uninterrupted sweep; a checkpoint resumes only the sweep that
wrote it (the base config up to checkpoint.RESUMABLE_FIELDS, and the swept fields and values):
anything else is a ConfigError naming the fields.
"""

import dataclasses
import functools
import itertools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from p2pl_jax import checkpoint, loop, memory, runner, stages, writers
from p2pl_jax.errors import ConfigError
from p2pl_jax.metrics import make_evaluator

# A group's checkpoints: in its first replica's folder (workdir holds only replica folders).
CHECKPOINT_DIR = "sweep_checkpoints"
SWEEPABLE = ("seed", "learning_rate", "momentum", "link_failure_prob", "dropout_prob",
             "mixing", "consensus_step", "algorithm", "weight_decay")


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string"}


def parse_values(field: str, text: str, base) -> list:
    """Comma-separated values for `field`, converted to the type of the base config's value;
    ConfigError for a field that cannot be swept, an empty list, a value of another type, a
    non-finite number or a value listed twice (two replicas would share one folder)."""
    if field not in SWEEPABLE:
        raise ConfigError(f"sweep.{field} cannot be swept; allowed: {', '.join(SWEEPABLE)}")
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ConfigError(f"sweep.{field}={text!r} is empty; give comma-separated values")
    kind = type(base)
    try:
        values = [kind(t) for t in items]
    except ValueError as e:
        raise ConfigError(f"sweep.{field}={text!r}: each value must be "
                          f"{_KIND_NAMES.get(kind, kind.__name__)}") from e
    if kind is float and not all(math.isfinite(v) for v in values):
        raise ConfigError(f"sweep.{field}={text!r}: each value must be a finite number")
    repeated = [v for i, v in enumerate(values) if v in values[:i]]
    if repeated:
        raise ConfigError(f"sweep.{field}={text!r} lists {repeated[0]!r} more than once; give "
                          "each value once")
    return values


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
    def equal(a, b) -> bool:   # a field may be a pytree (Arrays.channel) or None
        la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
        return (jax.tree.structure(a) == jax.tree.structure(b) and all(
            x is y or (x.shape == y.shape and bool(jnp.all(x == y))) for x, y in zip(la, lb)))

    for f in dataclasses.fields(first):
        vals = [getattr(a, f.name) for a in arrays_list]
        same = all(v is vals[0] or equal(v, vals[0]) for v in vals[1:])
        fields[f.name] = vals[0] if same else jax.tree.map(lambda *xs: jnp.stack(xs), *vals)
        axes[f.name] = None if same else 0
    return type(first)(**fields), type(first)(**axes)


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def fingerprint(base: ml_collections.ConfigDict, values: dict[str, list]) -> dict:
    """What a sweep's checkpoints must match: the base config minus RESUMABLE_FIELDS and the
    swept fields (their base values are not used), plus `sweep.<field>`: the values."""
    fp = {k: v for k, v in checkpoint.fingerprint(base.to_dict()).items() if k not in values}
    fp["sweep.fields"] = list(values)
    fp.update({f"sweep.{k}": list(v) for k, v in values.items()})
    return json.loads(json.dumps(fp, sort_keys=True))


def _check_checkpoints(dirs: list[str], fp: dict, rounds: int) -> None:
    """The group checkpoints among `dirs` were written by this sweep (checked before anything
    is built)."""
    for d in dirs:
        ck = checkpoint.Checkpointer(d)
        try:
            meta = ck.read_meta() if ck.exists() else None
        finally:
            ck.close()
        if meta is not None:
            loop.check_resumable(meta, fp, rounds, d)


def _check_outputs(workdir: str, names: list[str]) -> None:
    """Makes every replica's folder in `workdir` (a writable directory); ConfigError naming
    the path when one is a file (or under one) or sweep.json is not a file."""
    for name in names:
        rdir = os.path.join(workdir, name)
        try:
            os.makedirs(rdir, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"workdir={workdir!r}: cannot make the folder of replica {name!r} "
                              f"({rdir!r}, is it a file?): {e.strerror}") from e
    out = os.path.join(workdir, "sweep.json")
    if os.path.exists(out) and not os.path.isfile(out):
        raise ConfigError(f"workdir={workdir!r}: {out!r} (where the sweep writes its summaries) "
                          "is not a file; remove it or use another workdir")


def run_sweep(base: ml_collections.ConfigDict, values: dict[str, list], workdir: str) -> list:
    """Runs every replica of the sweep; returns their summaries (also in workdir/sweep.json).

    Resumes from workdir/checkpoints when the same sweep wrote them (anything else is a
    ConfigError naming the fields); re-raises KeyboardInterrupt after checkpointing the group in
    progress.
    """
    if base.distributed:
        raise ConfigError("distributed=True: a sweep runs in one process (its replicas share "
                          "one compiled program); allowed: distributed=False, or run each "
                          "setting as its own multi-process experiments.train run")
    runner.check_workdir(workdir)
    configs = []
    for name, override in expand(base, values):
        c = ml_collections.ConfigDict(base.to_dict())
        for k, v in override.items():
            c[k] = v
        runner.validate(c)
        configs.append((name, c))
    fp = fingerprint(base, values)
    _check_outputs(workdir, [name for name, _ in configs])
    _check_checkpoints([os.path.join(workdir, name, CHECKPOINT_DIR) for name, _ in configs], fp,
                       base.rounds)
    replicas = []
    stages.reached("data")
    for name, c in configs:
        sim, ds, info = runner.build(c)
        rdir = os.path.join(workdir, name)
        writers.write_json(os.path.join(rdir, "config.json"), c.to_dict())
        writers.write_json(os.path.join(rdir, "partition.json"), info.pop("partition"))
        replicas.append(_Replica(name, c, sim, info, rdir))
    groups: dict[tuple, list[_Replica]] = {}
    for rep in replicas:
        groups.setdefault(_signature(rep.sim), []).append(rep)
    logging.info("sweep: %d replicas in %d compiled group(s)", len(replicas), len(groups))
    evaluate = make_evaluator(replicas[0].sim.apply, jnp.asarray(ds.x_test),
                              jnp.asarray(ds.y_test, jnp.int32),
                              device_chunk=base.eval_device_chunk,
                              example_chunk=base.eval_example_chunk)
    summaries = []
    for g, reps in enumerate(groups.values()):
        logging.info("sweep group %d/%d: %d replica(s): %s", g + 1, len(groups), len(reps),
                     " ".join(r.name for r in reps))
        ckpt = checkpoint.Checkpointer(os.path.join(reps[0].workdir, CHECKPOINT_DIR))
        try:
            out, stopped_by = _run_group(reps, evaluate, ckpt, fp)
        finally:
            ckpt.close()
        summaries += out
        if stopped_by and g + 1 < len(groups):   # the request came as this group finished
            logging.warning("%s: the sweep stops before group %d/%d. Rerun the same command "
                            "to resume.", stopped_by, g + 2, len(groups))
            raise KeyboardInterrupt(f"{stopped_by} before sweep group {g + 2}")
    writers.write_json(os.path.join(workdir, "sweep.json"), [{"name": r.name, **s} for r, s in zip(
        [r for reps in groups.values() for r in reps], summaries)])
    return summaries


class _GroupProgram:
    """A sweep group's round: one jitted vmap of the round over the replica axis [S, ...];
    arrays equal in every replica are passed once (in_axes None). See loop.Program."""

    def __init__(self, reps: list[_Replica], evaluate=None):
        self.sims = [r.sim for r in reps]
        self.evaluate, self._config = evaluate, reps[0].config
        self._infos = [r.info for r in reps]
        self.arrays, self._axes = _stack_arrays([r.sim.arrays for r in reps])
        self.hp = _stack([runner.hparams(r.config) for r in reps])
        self._with_local = any(r.config.eval_after_local for r in reps)
        self._step = self._step_local = None

    def prepare(self, state) -> float:
        """Compiles the round for `state`'s shapes (only when there are rounds to run) and the
        evaluator for a member's, then checks the memory (memory.check_group: ConfigError when
        the group does not fit)."""
        t0 = time.perf_counter()
        stages.reached("compile")

        def compiled(return_local: bool):
            fn = functools.partial(self.sims[0].round_fn, return_local=return_local)
            vmapped = jax.vmap(fn, in_axes=(0, self._axes, 0))
            return jax.jit(vmapped, donate_argnums=0).lower(state, self.arrays,
                                                            self.hp).compile()

        self._step = compiled(False)
        self._step_local = compiled(True) if self._with_local else None
        if self.evaluate is not None:   # the memory check before round 1 (memory.py)
            one = jax.eval_shape(lambda st: self.eval_params(st, 0), state)
            if not self.evaluate.compiled_for(one):
                self.evaluate.compile(one)
            figures = memory.check_group(self._config, self.sims, [self._step, self._step_local],
                                         self.evaluate, state, self.arrays)
            for info in self._infos:
                info["memory"] = figures
        return time.perf_counter() - t0

    def step(self, state, *, return_local: bool):
        if return_local and self._step_local is not None:
            return self._step_local(state, self.arrays, self.hp)
        return (*self._step(state, self.arrays, self.hp), None)

    def take(self, tree, i: int):
        return jax.tree.map(lambda leaf: leaf[i], tree)

    def eval_params(self, state, i: int):
        return self.sims[i].eval_params(self.take(state, i))


def _run_group(reps: list[_Replica], evaluate, ckpt: checkpoint.Checkpointer,
               fp: dict) -> tuple[list[dict], str]:
    """Advances a group's replicas together through loop.Loop; each replica's evaluations,
    divergence checks, rounds_to_target (with eval_backfill) and files go through its own
    recorder.Recorder, exactly as in a separate run. A replica that diverges stops (status
    'diverged'); the others go on. Returns the summaries and the stop request's signal ("" if
    none) when the group finished anyway."""
    restored = ckpt.restore() if ckpt.exists() else None
    if restored is not None:
        loop.check_resumable({**restored.meta, "round": restored.round}, fp,
                             reps[0].config.rounds, ckpt.directory)
    t_init = time.perf_counter()
    state = jax.block_until_ready(_stack([r.sim.init(r.config.seed) for r in reps]))
    for r in reps:   # setup_time_s: the replica's own build + the group's initialisation
        r.info["setup_time_s"] += time.perf_counter() - t_init
    t0 = time.perf_counter()
    program = _GroupProgram(reps, evaluate)
    members = [loop.Member(r.name, r.config, r.workdir, r.info,
                           message_bytes=r.sim.message_bytes, loss_limit=r.info["loss_limit"])
               for r in reps]
    group = loop.Loop(program, members, evaluate, ckpt, fp, stacked=True,
                      summary_extra={"replicas_in_program": len(reps)},
                      count_diverged_round=True)
    summaries = group.run(state, restored, t0=t0, compile_time=0.0)
    return summaries, group.signal
