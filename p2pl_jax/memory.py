"""The memory check before the first round: XLA's figures for the compiled round and evaluation.

Right after the round and the evaluator are compiled (`runner._run`; a sweep group: after its
vmapped round, `sweep._GroupProgram.prepare`), `compiled.memory_analysis()` gives, for every
compiled program, the bytes of its arguments, outputs, outputs aliased into donated arguments,
temporaries and generated code, per accelerator (per shard when the device axis is sharded).
Reading them costs microseconds. From them the run's peak is estimated as (docs/memory.md)

    peak = A_round + T_test + code + max(W_round, W_eval) + K

  A_round  the round's arguments: the state (parameters, optimizer state, the algorithm's aux
           state, the delay history, the message counters: "state", counted from the pytree)
           and the data, graph and hyperparameter arrays ("data": the rest of the arguments;
           a sweep group also holds each replica's own arrays that it does not pass on).
           Resident for the whole run.
  T_test   the evaluator's test set (its arguments minus the parameters it is given), resident.
  code     the programs' generated code (0 on CPU).
  W_round  the largest, over the compiled rounds (with eval_after_local also the round that
           returns the local models), of temp + output - alias: the activations, gradients and
           other temporaries of the round, and its outputs not written into the donated state.
  W_eval   the evaluation's temp + output, plus the copies made to evaluate: the parameters the
           algorithm evaluates when they are not the state's own (push_sum's x / w), a sweep
           member's slice of the stacked state (`_GroupProgram.take`), and with
           eval_after_local the local models the round returned (alive while evaluated).
  K        eval_backfill copies (eval_every > 1 and eval_backfill): up to eval_every - 1 rounds
           of every member's evaluated parameters and message counters, kept until the next
           evaluation (`recorder.Recorder.keep`); they outlive rounds and evaluations alike.

A round and an evaluation never run at the same time, hence the max. Not counted: the host's
numpy copy of the dataset, Python and the XLA runtime; the round metrics kept for backfill
(a few numbers per device); the initialisation (phase 0 synchronisation), which ran before the
check; checkpoint saves (orbax copies the state to the host); the allocator's fragmentation
(XLA's temp is its own buffer assignment, the allocator may need somewhat more).

The limit (config memory_limit_gb, GB = 1e9 bytes): > 0 that; 0 the accelerator's memory
(`memory_stats()["bytes_limit"]`), on CPU the host's MemAvailable (else os.sysconf's free pages)
plus the resident buffers the estimate counts, which are already allocated when the check runs;
< 0 no check (the figures are still recorded). On CPU with a sharded device axis every shard
lives in the one host memory, so the per-shard peak times the number of shards is compared.
If XLA gives no figures (memory_analysis missing, None or failing) the check is skipped with a
logged note.
"""

from __future__ import annotations

import math
import os

import jax
import ml_collections
from absl import logging

from p2pl_jax.algorithms.base import identity_params
from p2pl_jax.errors import ConfigError

GB = 1e9
FIELDS = ("argument", "output", "alias", "temp", "generated_code")


def analysis(compiled) -> dict | None:
    """A compiled program's memory_analysis as {field: bytes} (FIELDS), or None where the
    backend gives none."""
    if compiled is None:
        return None
    try:
        m = compiled.memory_analysis()
        if m is None:
            return None
        return {k: int(getattr(m, f"{k}_size_in_bytes")) for k in FIELDS}
    except Exception as e:  # noqa: BLE001 - backends without it, or with other fields
        logging.info("memory: no memory_analysis from XLA here (%s: %s)", type(e).__name__, e)
        return None


def tree_bytes(tree) -> int:
    """Bytes of a pytree's leaves on one accelerator: a sharded leaf counts its shard."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = tuple(getattr(leaf, "shape", ()))
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None and hasattr(sharding, "shard_shape"):
            shape = tuple(sharding.shard_shape(shape))
        total += math.prod(shape) * jax.numpy.dtype(leaf.dtype).itemsize
    return int(total)


def _shards(tree) -> int:
    """How many of this process's accelerators the tree's leaves are spread over (1 unless
    sharded; a multi-process run's other processes check their own memory)."""
    devices = set()
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None:
            devices |= {d for d in sharding.device_set if d.process_index == jax.process_index()}
    return max(len(devices), 1)


def estimate(rounds: list[dict], evaluation: dict, *, state_bytes: int, test_bytes: int,
             eval_copy_bytes: int = 0, local_bytes: int = 0, backfill_bytes: int = 0,
             extra_data_bytes: int = 0) -> dict:
    """The figures of the module docstring from XLA's analyses (`analysis`) of the compiled
    rounds and evaluator and the byte counts XLA does not see; every value in bytes."""
    argument = max(r["argument"] for r in rounds)
    round_work = max(r["temp"] + r["output"] - r["alias"] for r in rounds)
    eval_work = (evaluation["temp"] + evaluation["output"] + eval_copy_bytes + local_bytes)
    code = max(r["generated_code"] for r in rounds) + evaluation["generated_code"]
    data = max(argument - state_bytes, 0) + extra_data_bytes
    out = {"state_bytes": int(state_bytes), "data_bytes": int(data),
           "round_work_bytes": int(round_work), "test_set_bytes": int(test_bytes),
           "eval_work_bytes": int(eval_work), "backfill_bytes": int(backfill_bytes),
           "code_bytes": int(code)}
    out["resident_bytes"] = state_bytes + data + test_bytes + code
    out["peak_bytes"] = int(out["resident_bytes"] + max(round_work, eval_work) + backfill_bytes)
    out["xla"] = {"round": rounds[0], **({"round_with_local": rounds[1]} if len(rounds) > 1
                                         else {}), "evaluation": evaluation}
    return out


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def limit(memory_limit_gb: float, resident_bytes: int) -> tuple[int | None, str]:
    """(bytes the run may use per accelerator or None for no check, where it came from)."""
    if memory_limit_gb < 0:
        return None, "memory_limit_gb < 0: no check"
    if memory_limit_gb > 0:
        return int(memory_limit_gb * GB), f"memory_limit_gb={memory_limit_gb}"
    device = jax.devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]), (f"memory_limit_gb=0: the accelerator's memory "
                                           f"({device.device_kind} bytes_limit)")
    if device.platform != "cpu":
        return None, f"memory_limit_gb=0: {device.platform} gives no bytes_limit: no check"
    available = _meminfo_available()
    if available is None:
        return None, "memory_limit_gb=0: the host's available memory is unknown: no check"
    return available + resident_bytes, (
        f"memory_limit_gb=0: the host's available memory {_gb(available)} GB plus the run's "
        f"buffers already allocated {_gb(resident_bytes)} GB")


def _gb(n: float) -> str:
    return f"{n / GB:.3g}"


def _ways_out(c: ml_collections.ConfigDict, f: dict, *, sweep_replicas: int,
              device_block: int) -> list[str]:
    """The config changes that lower the figures that matter, in the order worth trying."""
    round_bound = f["round_work_bytes"] >= f["eval_work_bytes"]
    ways = []
    if sweep_replicas > 1:
        ways.append(f"fewer sweep values (this group holds {sweep_replicas} replicas)")
    ways.append(f"fewer devices (num_devices={c.num_devices}: the state and the round's work "
                "grow with it)")
    n_acc = jax.device_count()
    if not c.shard:
        ways.append(f"shard=True over several accelerators (each then holds num_devices / "
                    f"accelerators of the devices; this machine has {n_acc})")
    else:
        ways.append(f"more accelerators for shard=True ({n_acc} now)")
    if round_bound and c.compute_dtype == "float32":
        ways.append("compute_dtype=bfloat16 (the local steps' activations in half the bytes)")
    if round_bound and device_block == 0 and c.num_devices > 1:
        ways.append("device_block=k (the local phase in blocks of k devices, so the "
                    "activations of k devices at a time)")
    if not round_bound:
        ways.append(f"smaller evaluation chunks (eval_device_chunk={c.eval_device_chunk}, "
                    f"eval_example_chunk={c.eval_example_chunk})")
    ways.append(f"a slimmer model (width_multiplier={c.width_multiplier} scales every hidden "
                "width)")
    if f["backfill_bytes"] > 0:
        ways.append(f"eval_backfill=False or a smaller eval_every (eval_every={c.eval_every}: "
                    "up to eval_every - 1 kept copies of the models)")
    if c.delay_rounds > 0:
        ways.append(f"fewer delay_rounds ({c.delay_rounds}: delay_rounds + 1 copies of every "
                    "message)")
    return ways


def check(c: ml_collections.ConfigDict, figures: dict, *, sweep_replicas: int = 1,
          device_block: int = 0, shards: int = 1) -> dict:
    """Adds the limit to `figures` and raises ConfigError (the figures, the limit, the ways out)
    when the estimated peak exceeds it; returns the figures (for summary.json's `memory`).
    shards: accelerators the state is spread over (the figures are per shard)."""
    on_cpu = jax.default_backend() == "cpu"
    copies = shards if on_cpu else 1   # CPU shards share the host's memory
    lim, source = limit(float(c.memory_limit_gb), figures["resident_bytes"] * copies)
    figures.update({"limit_bytes": lim, "limit_source": source, "checked": lim is not None,
                    "shards": shards})
    per = "of host memory" if on_cpu else "per accelerator"
    if shards > 1:
        per += (f" ({shards} shards sharing it, the figures below per shard)" if on_cpu
                else f" (one of {shards} shards)")
    logging.info("memory: peak about %s GB %s (state %s, data %s, round %s, test set %s, "
                 "evaluation %s, backfill %s GB); limit %s (%s)", _gb(figures["peak_bytes"]),
                 per, _gb(figures["state_bytes"]), _gb(figures["data_bytes"]),
                 _gb(figures["round_work_bytes"]), _gb(figures["test_set_bytes"]),
                 _gb(figures["eval_work_bytes"]), _gb(figures["backfill_bytes"]),
                 "none" if lim is None else f"{_gb(lim)} GB", source)
    need = figures["peak_bytes"] * copies
    if lim is None or need <= lim:
        return figures
    f = figures
    code = f", generated code {_gb(f['code_bytes'])} GB" if f["code_bytes"] else ""
    ways = "; ".join(_ways_out(c, f, sweep_replicas=sweep_replicas,
                                 device_block=device_block))
    raise ConfigError(
        f"not enough memory: the run needs about {_gb(need)} GB {per}, more than the limit of "
        f"{_gb(lim)} GB ({source}). XLA's figures for the compiled round and evaluation: "
        f"parameters and optimizer/algorithm state {_gb(f['state_bytes'])} GB, data "
        f"{_gb(f['data_bytes'])} GB, activations/temporaries of the round "
        f"{_gb(f['round_work_bytes'])} GB, evaluation {_gb(f['eval_work_bytes'])} GB (and its "
        f"test set {_gb(f['test_set_bytes'])} GB), backfill copies {_gb(f['backfill_bytes'])} "
        f"GB{code}; peak = state + data + test set + code + max(round, evaluation) + backfill "
        f"(docs/memory.md). Ways out: {ways}; or memory_limit_gb=-1 to skip this check")


def _skip(why: str) -> dict:
    logging.warning("memory: the check before the first round is skipped: %s", why)
    return {"checked": False, "note": why}


def _backfill_copies(c: ml_collections.ConfigDict) -> int:
    return c.eval_every - 1 if c.eval_backfill and c.eval_every > 1 else 0


def _analyses(compiled_rounds, evaluate) -> tuple[list[dict], dict] | None:
    """XLA's analyses of the compiled rounds and evaluator, or None if any is missing."""
    rounds = [analysis(r) for r in compiled_rounds if r is not None]
    evaluation = analysis(evaluate.compiled)
    if not rounds or None in rounds or evaluation is None:
        return None
    return rounds, evaluation


def _no_analysis() -> dict:
    return _skip("XLA gives no memory_analysis for the compiled programs on "
                 f"{jax.default_backend()}")


def check_run(c: ml_collections.ConfigDict, sim, evaluate, state) -> dict:
    """The check for a run: `sim` and `evaluate` compiled (Simulator.compile, Evaluator.compile)
    for `state`. Returns summary.json's `memory` entry; ConfigError when it does not fit."""
    found = _analyses(sim.compiled_rounds, evaluate)
    if found is None:
        return _no_analysis()
    rounds, evaluation = found
    params = tree_bytes(state.params)
    own = sim.algorithm_record.eval_params is identity_params
    figures = estimate(
        rounds, evaluation, state_bytes=tree_bytes(state),
        test_bytes=tree_bytes(evaluate.test_arrays),
        eval_copy_bytes=0 if own else params,
        local_bytes=params if c.eval_after_local else 0,
        backfill_bytes=_backfill_copies(c) * (params + tree_bytes(state.comm)))
    return check(c, figures, device_block=sim.spec.device_block, shards=_shards(state))


def check_group(c: ml_collections.ConfigDict, sims: list, compiled_rounds: list, evaluate,
                state, arrays) -> dict:
    """The check for a sweep group: `compiled_rounds` of its vmapped round over the stacked
    `state` [S, ...] and `arrays` (every replica counted), `evaluate` compiled for one member.
    Returns the figures (each replica's summary.json `memory`); ConfigError when they do not
    fit."""
    found = _analyses(compiled_rounds, evaluate)
    if found is None:
        return _no_analysis()
    rounds, evaluation = found
    s = len(sims)
    params = tree_bytes(state.params)   # every replica's
    own = all(sim.algorithm_record.eval_params is identity_params
              for sim in sims)
    passed = {id(leaf) for leaf in jax.tree.leaves(arrays)}
    extra = sum(tree_bytes(leaf) for sim in sims for leaf in jax.tree.leaves(sim.arrays)
                if id(leaf) not in passed)
    figures = estimate(
        rounds, evaluation, state_bytes=tree_bytes(state),
        test_bytes=tree_bytes(evaluate.test_arrays),
        # a member's evaluation slices its whole state out of the stack first
        eval_copy_bytes=tree_bytes(state) // s + (0 if own else params // s),
        local_bytes=params + params // s if c.eval_after_local else 0,
        backfill_bytes=_backfill_copies(c) * (params + tree_bytes(state.comm)),
        extra_data_bytes=extra)
    figures["replicas"] = s
    return check(c, figures, sweep_replicas=s, device_block=sims[0].spec.device_block,
                 shards=_shards(state))
