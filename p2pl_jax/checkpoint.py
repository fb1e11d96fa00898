"""Checkpoints of the whole simulation, with orbax, and exact resume.

A checkpoint of round k (`workdir/checkpoints/<k>/`) holds two orbax items:
  state  every leaf of `SimState` (params and momentum of every device, round, root key,
         fault-model state such as the delay history) as host numpy arrays, named leaf_0000...;
  meta   JSON: the round, the config fingerprint, the leaves' tree paths, shapes and dtypes,
         every metrics record written so far, rounds_to_target and the training wall time.
Orbax writes a step into a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact (the partial folder is ignored and cleaned up).

The simulation is a pure function of (state, round): every random draw derives from
`rng.round_key(root, round)`. Restoring the state and the metrics so far therefore resumes a run
exactly where an uninterrupted one would have been.

A checkpoint is only resumed by the config that wrote it: `fingerprint` is the config minus
`RESUMABLE_FIELDS` (fields that change neither the trajectory nor the bookkeeping), and
`check_fingerprint` names every field that differs.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging as pylogging
import os
import shutil
import sys
from typing import Any

import jax
import numpy as np

from p2pl_jax import distributed
from p2pl_jax.errors import ConfigError

FORMAT = 3   # 2: SimState gained the algorithm's `aux` and the message counters `comm`;
#              3: SHA-256 checksums of every array and of the meta
# Config fields that may differ between the run that wrote a checkpoint and the run resuming it.
RESUMABLE_FIELDS = ("rounds", "checkpoint_every", "progress", "tensorboard", "data_dir",
                    "eval_device_chunk", "eval_example_chunk", "device_block", "stop_at_target",
                    "eval_backfill", "coordinator_address", "num_processes", "process_id",
                    "distributed_timeout_s")
_STATE, _META = "state", "meta"


class _OldFormat(Exception):
    """A checkpoint of an earlier format (args: the format)."""


class _Corrupt(Exception):
    """A checkpoint that fails a check (args: what is wrong)."""


_FORMATS = ("1 (before the algorithm interface), 2 (before checksums), 3 (SHA-256 checksums "
            "of every array and of the meta)")


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()


def _meta_digest(meta: dict) -> str:
    """SHA-256 of the meta's canonical JSON, without its own `meta_sha256` entry."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_meta(meta: dict, step: int) -> None:
    """Raises _OldFormat or _Corrupt unless `meta` is a complete, unedited format-3 meta of
    checkpoint `step`."""
    if meta.get("format") in (1, 2):
        raise _OldFormat(meta["format"])
    if meta.get("meta_sha256") != _meta_digest(meta):
        raise _Corrupt("its meta (checkpoint metadata) does not match the checksum written with "
                       "it: edited or damaged" if "meta_sha256" in meta
                       else "its meta has no checksum")
    if meta.get("format") != FORMAT or meta.get("round") != step:
        raise _Corrupt(f"meta format {meta.get('format')} / round {meta.get('round')} do not "
                       f"match format {FORMAT} / step {step}")
    for key in ("fingerprint", "records", "leaves", "checksums"):
        if key not in meta:
            raise _Corrupt(f"its meta lacks {key!r}")


def fingerprint(config: dict) -> dict:
    """The config (as a plain dict) minus RESUMABLE_FIELDS, JSON-normalised (tuples -> lists).
    With a cosine or step learning-rate schedule `rounds` stays in: it is the schedule's
    horizon, so it shapes the trajectory (schedules.py)."""
    scheduled = config.get("lr_schedule", "constant") != "constant"
    return json.loads(json.dumps({k: v for k, v in config.items()
                                  if k not in RESUMABLE_FIELDS
                                  or (k == "rounds" and scheduled)}, sort_keys=True))


def check_fingerprint(saved: dict, current: dict, where: str) -> None:
    """Raises ConfigError listing every field whose value differs between `saved` and `current`."""
    diffs = []
    for field in sorted(set(saved) | set(current)):
        if field not in saved:
            diffs.append(f"{field}: not in the checkpoint, now {current[field]!r}")
        elif field not in current:
            diffs.append(f"{field}: {saved[field]!r} in the checkpoint, absent from the config")
        elif saved[field] != current[field]:
            diffs.append(f"{field}: {saved[field]!r} in the checkpoint, now {current[field]!r}")
    if diffs:
        raise ConfigError(
            f"the checkpoint in {where} was written by a different config; these fields differ:\n"
            + "\n".join(f"  - {d}" for d in diffs)
            + "\nRerun with the checkpoint's values to resume, or use a new --workdir (or delete "
              f"{where}) to start over. Fields that may change on resume: "
            + ", ".join(RESUMABLE_FIELDS) + " (rounds not with lr_schedule=cosine or step).")


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _key_data_like(leaf):
    """Shape and dtype of a leaf as stored (typed PRNG keys as their raw key data)."""
    if _is_key(leaf):
        return jax.eval_shape(jax.random.key_data, leaf)
    return leaf


def describe(state) -> list[dict]:
    """[{path, shape, dtype}] for every leaf of `state`, as `state_leaves` stores them."""
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    return [{"path": jax.tree_util.keystr(path), "shape": list(np.shape(_key_data_like(leaf))),
             "dtype": str(np.dtype(_key_data_like(leaf).dtype))} for path, leaf in flat]


def state_leaves(state) -> tuple[dict[str, np.ndarray], list[dict]]:
    """The state's leaves as host arrays {leaf_0000: ...} and their description (`describe`);
    typed PRNG keys are stored as their key data."""
    leaves = [jax.random.key_data(leaf) if _is_key(leaf) else leaf
              for leaf in jax.tree.leaves(state)]
    host = distributed.host(leaves)   # sharded leaves gathered (in every process)
    return {f"leaf_{i:04d}": a for i, a in enumerate(host)}, describe(state)


def into_state(template, arrays: dict[str, np.ndarray], spec: list[dict], where: str):
    """Puts restored host arrays into the structure (and device placement) of `template`.

    Raises ConfigError when the checkpoint's leaves do not match the template's paths, shapes or
    dtypes (a checkpoint from another version of the code).
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    want = describe(template)
    if spec != want:
        have = {s["path"]: (tuple(s["shape"]), s["dtype"]) for s in spec}
        need = {w["path"]: (tuple(w["shape"]), w["dtype"]) for w in want}
        diffs = [f"{p}: checkpoint {have.get(p, 'absent')}, expected {need.get(p, 'absent')}"
                 for p in sorted(set(have) | set(need)) if have.get(p) != need.get(p)]
        raise ConfigError(f"the checkpoint in {where} does not match the simulation state this "
                          "config builds (written by another version of p2pl_jax?):\n  - "
                          + "\n  - ".join(diffs[:10] or ["leaf order differs"])
                          + f"\nUse a new --workdir or delete {where} to start over.")
    leaves = []
    for i, (_, like) in enumerate(flat):
        arr = arrays[f"leaf_{i:04d}"]
        if _is_key(like):
            leaf = jax.random.wrap_key_data(jax.device_put(arr, like.sharding),
                                            impl=jax.random.key_impl(like))
        elif isinstance(like, jax.Array):
            leaf = jax.device_put(arr, like.sharding)
        else:
            leaf = arr
        leaves.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, leaves)


@dataclasses.dataclass
class Restored:
    """A checkpoint read back: host arrays (see `state_leaves`) and its meta dict."""

    round: int
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


def _quiet_orbax() -> None:
    """Drops orbax's INFO chatter (dozens of lines per save) from the absl log; keeps warnings."""
    from absl import logging as absl_logging

    logger = absl_logging.get_absl_logger()
    if not any(isinstance(f, _OrbaxInfoFilter) for f in logger.filters):
        logger.addFilter(_OrbaxInfoFilter())


class _OrbaxInfoFilter(pylogging.Filter):
    """Drops orbax's INFO records, and its records of exceptions (with their tracebacks): those
    exceptions reach `Checkpointer`, which reports them in one message."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        if f"{os.sep}orbax{os.sep}" not in (record.pathname or ""):
            return True
        return record.levelno >= pylogging.WARNING and not record.exc_info


def _closed_loop(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _quiet_closed_loop() -> None:
    """When a save fails (e.g. a full disk), orbax's background writers (tensorstore callbacks)
    still try to reach their closed asyncio loop; Python prints each such
    RuntimeError("Event loop is closed") with a traceback (through sys.excepthook from native
    code, or as an unraisable exception). Those reports, and only those, are dropped (installed
    with the checkpoint manager): the failure itself is reported in one message."""
    if getattr(sys.excepthook, "_p2pl_quiet", False):
        return
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def quiet_excepthook(kind, value, tb) -> None:
        if not _closed_loop(value):
            excepthook(kind, value, tb)

    def quiet_unraisablehook(unraisable) -> None:
        if not _closed_loop(unraisable.exc_value):
            unraisablehook(unraisable)

    quiet_excepthook._p2pl_quiet = True   # type: ignore[attr-defined]
    sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook


def _no_space(error: BaseException) -> bool:
    """Whether `error` (or an exception it was raised from) is a full disk or quota."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left" in str(error) or "ENOSPC" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


class Checkpointer:
    """Saves and restores checkpoints in `directory` (one sub-folder per round), keeping the
    newest `max_to_keep`. Orbax is imported on first use."""

    def __init__(self, directory: str, *, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._max_to_keep = max_to_keep
        self._mgr = None

    def _manager(self):
        if self._mgr is None:
            import orbax.checkpoint as ocp

            _quiet_orbax()
            _quiet_closed_loop()
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self._max_to_keep, enable_async_checkpointing=False,
                cleanup_tmp_directories=True, create=True)
            self._mgr = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=(_STATE, _META))
        return self._mgr

    def exists(self) -> bool:
        """Whether the folder holds any finished checkpoint (cheap: no orbax import)."""
        return bool(self.steps_on_disk())

    def steps_on_disk(self) -> list[int]:
        """The rounds of the checkpoint folders on disk, ascending (no orbax import)."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())

    def latest_round(self) -> int | None:
        """The round of the newest complete checkpoint, or None."""
        if not self.exists():
            return None
        return self._manager().latest_step()

    def save(self, round_index: int, state, meta: dict) -> None:
        """Saves `state` (a pytree of arrays) and `meta` (JSON) as the checkpoint of a round.

        Copies the state to host first, so the caller may donate its buffers afterwards.
        """
        import orbax.checkpoint as ocp

        arrays, spec = state_leaves(state)
        meta = json.loads(json.dumps({
            **meta, "format": FORMAT, "round": int(round_index), "leaves": spec,
            "checksums": {name: _sha256(a) for name, a in arrays.items()}}))
        meta["meta_sha256"] = _meta_digest(meta)
        mgr = self._manager()
        if mgr.latest_step() == round_index:
            return
        try:
            mgr.save(int(round_index), args=ocp.args.Composite(
                state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)), force=True)
            mgr.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - translated into a message naming the cause
            self._failed_save(round_index, e)

    def read_meta(self) -> dict | None:
        """The newest checkpoint's meta item only (cheap: no arrays, checksum of the meta
        verified), or None when there is none.

        Raises ConfigError, as `restore` does, when the checkpoint cannot be resumed.
        """
        import orbax.checkpoint as ocp

        step = self.latest_round()
        if step is None:
            return None
        try:
            meta = dict(self._manager().restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))[_META])
            _check_meta(meta, step)
            return meta
        except Exception:  # noqa: BLE001, S110 - `restore` below names what is wrong
            pass
        return self.restore().meta

    def _read(self, step: int) -> Restored:
        """Checkpoint `step`, verified: raises _OldFormat, or _Corrupt naming what is wrong."""
        import orbax.checkpoint as ocp

        try:
            out = self._manager().restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
            arrays, meta = dict(out[_STATE]), dict(out[_META])
        except Exception as e:  # noqa: BLE001 - any failure to read means a corrupt checkpoint
            raise _Corrupt(f"unreadable: {type(e).__name__}: {str(e)[:300]}") from e
        _check_meta(meta, step)
        spec = meta["leaves"]
        if sorted(arrays) != [f"leaf_{i:04d}" for i in range(len(spec))]:
            raise _Corrupt(f"{len(arrays)} arrays stored for {len(spec)} described leaves")
        for i, s in enumerate(spec):
            name = f"leaf_{i:04d}"
            a = arrays[name] = np.asarray(arrays[name])
            if list(a.shape) != s["shape"] or str(a.dtype) != s["dtype"]:
                raise _Corrupt(f"leaf {s['path']} has shape {list(a.shape)} {a.dtype}, "
                               f"described as {s['shape']} {s['dtype']}")
            if _sha256(a) != meta["checksums"].get(name):
                raise _Corrupt(f"the array of {s['path']} ({name}) does not match the "
                               "checksum written with it")
        return Restored(round=step, arrays=arrays, meta=meta)

    def newest_good(self, below: int) -> int | None:
        """The newest checkpoint older than `below` that passes every check, or None."""
        for step in sorted(self._manager().all_steps(), reverse=True):
            if step < below:
                try:
                    self._read(step)
                    return step
                except (_Corrupt, _OldFormat):
                    continue
        return None

    def restore(self) -> Restored | None:
        """Reads and verifies the newest checkpoint, or returns None when there is none.

        Raises ConfigError naming the checkpoint folder when it cannot be resumed: written by
        an older version, or corrupt (unreadable, or an array or the meta not matching the
        SHA-256 checksums written at save). A corrupt checkpoint is never skipped silently: the
        error names the newest good checkpoint and how to resume from it.
        """
        step = self.latest_round()
        if step is None:
            return None
        where = os.path.join(self.directory, str(step))
        try:
            return self._read(step)
        except _OldFormat as e:
            raise ConfigError(
                f"the checkpoint {where} was written by an older p2pl-jax (checkpoint format "
                f"{e.args[0]}; this version writes format {FORMAT}: {_FORMATS}) and cannot be "
                f"resumed by this version; use a new --workdir (or delete {self.directory}) to "
                "start over") from None
        except _Corrupt as e:
            good = self.newest_good(step)
            if good is None:
                hint = (f"no earlier checkpoint in {self.directory} passes the checks: delete "
                        f"{self.directory} to start over, or use a new --workdir")
            else:
                hint = (f"the newest good checkpoint is round {good} "
                        f"({os.path.join(self.directory, str(good))}): move {where} out of "
                        f"{self.directory} (or delete it) and rerun the same command to resume "
                        f"from round {good}")
            raise ConfigError(f"the checkpoint {where} is corrupt ({e.args[0]}); {hint}") \
                from None

    def _failed_save(self, round_index: int, error: Exception) -> None:
        """Removes the partial folder of a failed save and raises ConfigError saying why and
        what is kept (the previous checkpoint is untouched: orbax renames a step into place
        only once it is complete)."""
        self.close()
        for name in os.listdir(self.directory) if os.path.isdir(self.directory) else ():
            if not name.isdigit() and name.split(".")[0] == str(round_index):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        kept = [int(n) for n in os.listdir(self.directory) if n.isdigit()] \
            if os.path.isdir(self.directory) else []
        what = (f"the checkpoint of round {max(kept)} is kept" if kept
                else "no earlier checkpoint exists")
        cause = ("no space left on device" if _no_space(error)
                 else f"{type(error).__name__}: {str(error)[:300]}")
        raise ConfigError(
            f"could not save the checkpoint of round {round_index} in {self.directory}: "
            f"{cause}. {what[0].upper()}{what[1:]}, and metrics.jsonl keeps every evaluated "
            f"round; free some space (or fix the folder) and rerun the same command to "
            f"resume") from None

    def close(self) -> None:
        if self._mgr is not None:
            self._mgr.close()
            self._mgr = None
