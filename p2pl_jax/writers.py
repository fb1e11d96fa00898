"""Metrics writers: metrics.jsonl and metrics.csv always, TensorBoard event files optionally.

`MetricsWriter(workdir, records)` starts from the records a run already has (none for a fresh
run, the checkpoint's for a resumed one): it rewrites metrics.jsonl and metrics.csv to hold exactly
those, so records written after the checkpoint by a killed run disappear, and appends from there.
A resumed run's files therefore equal an uninterrupted run's (up to `wall_s`).

TensorBoard events go to `workdir/tensorboard/` through tensorboardX (no TensorFlow needed), one
scalar per record field with the round as step. A fresh run deletes earlier event files; a resumed
run marks its first step as a purge step, so TensorBoard drops the killed run's later events.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from absl import logging

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"


_PRIMARY = [True]   # False in the processes other than 0 of a multi-process run


def set_primary(primary: bool) -> None:
    """Whether this process writes files: in a multi-process run (p2pl_jax/distributed.py) only
    process 0 does, and every write here is skipped in the others (they hold the same
    records)."""
    _PRIMARY[0] = bool(primary)


def primary() -> bool:
    return _PRIMARY[0]


def _atomic_write(path: str, text: str) -> None:
    if not _PRIMARY[0]:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


NONFINITE = "nonfinite"   # the key that lists the fields strict JSON wrote as null


def finite(obj: Any, path: str = "") -> tuple[Any, list[str]]:
    """A copy of `obj` with every NaN or infinite float replaced by None, and the paths of the
    replaced values ("consensus_distance", "runs[3].test_loss")."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [path or "."]
    if isinstance(obj, dict):
        out, bad = {}, []
        for k, v in obj.items():
            out[k], b = finite(v, f"{path}.{k}" if path else str(k))
            bad += b
        return out, bad
    if isinstance(obj, (list, tuple)):
        out, bad = [], []
        for i, v in enumerate(obj):
            item, b = finite(v, f"{path}[{i}]")
            out.append(item)
            bad += b
        return out, bad
    return obj, []


def dumps(obj: Any, *, indent: int | None = None) -> str:
    """Strict JSON (RFC 8259: no NaN or Infinity). A non-finite float is written as null; a
    dict then also gets the key `nonfinite` listing the paths of those values, so a reader can
    tell "not a number" from "not measured"."""
    clean, bad = finite(obj)
    if bad and isinstance(clean, dict):
        clean[NONFINITE] = sorted(set(clean.get(NONFINITE) or []) | set(bad))
    return json.dumps(clean, indent=indent, allow_nan=False)


def write_json(path: str, obj) -> None:
    """Writes `obj` as indented strict JSON (`dumps`) to `path` atomically (a reader never sees
    half a file)."""
    _atomic_write(path, dumps(obj, indent=2))


def _csv_text(records: Sequence[dict], header: list[str], with_header: bool = True) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
    if with_header:
        w.writeheader()
    w.writerows(records)
    return buf.getvalue()


def read_json_or_none(path: str) -> dict | None:
    """A JSON file's object, or None when it is missing or not valid JSON (a run not written
    yet, or cut short)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_jsonl(path: str) -> list[dict]:
    """The records of a metrics.jsonl file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _import_summary_writer():
    """tensorboardX.SummaryWriter, imported without torch.

    tensorboardX imports torch when it is installed (about 10 s) only to accept torch tensors;
    we write Python floats, so torch is hidden during the import unless already loaded.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Appends one record per evaluated round to metrics.jsonl, metrics.csv and TensorBoard.

    Args:
      workdir: the run's output folder.
      records: the records the run already has (written again, exactly).
      tensorboard: also write TensorBoard event files (needs tensorboardX).
    """

    def __init__(self, workdir: str, records: Sequence[dict] = (), *, tensorboard: bool = True):
        self.workdir = workdir
        self.records = [dict(r) for r in records]
        self._jsonl_path = os.path.join(workdir, METRICS_JSONL)
        self._csv_path = os.path.join(workdir, METRICS_CSV)
        self._header = self._columns(self.records)
        self._files = _PRIMARY[0]   # a multi-process run's other processes only keep records
        self._tb = None
        if not self._files:
            return
        _atomic_write(self._jsonl_path, "".join(dumps(r) + "\n" for r in self.records))
        _atomic_write(self._csv_path,
                      _csv_text(self.records, self._header) if self._header else "")
        self._jsonl = open(self._jsonl_path, "a")
        self._csv = open(self._csv_path, "a", newline="")
        self._tb = self._open_tensorboard() if tensorboard else None

    @staticmethod
    def _columns(records: Sequence[dict]) -> list[str]:
        cols: list[str] = []
        for r in records:
            cols += [k for k in r if k not in cols]
        return cols

    def _open_tensorboard(self):
        try:
            SummaryWriter = _import_summary_writer()
        except ImportError:
            logging.warning("tensorboardX is not installed: no TensorBoard event files "
                            "(pip install tensorboardX, or set --config.tensorboard=False)")
            return None
        logdir = os.path.join(self.workdir, TENSORBOARD_DIR)
        if self.records:
            purge_step = int(self.records[-1]["round"]) + 1
        else:
            purge_step = None
            for old in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
                os.remove(old)
        # a unique suffix: two writers started in the same second must not share a file
        return SummaryWriter(logdir=logdir, purge_step=purge_step, flush_secs=30,
                             filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}")

    def write(self, record: dict) -> None:
        """Appends one record (a flat dict with an int `round` and float values)."""
        record = dict(record)
        self.records.append(record)
        if not self._files:
            return
        self._jsonl.write(dumps(record) + "\n")
        self._jsonl.flush()
        if not self._header or any(k not in self._header for k in record):
            self._header = self._columns(self.records)   # new columns: rewrite the whole file
            self._csv.close()
            _atomic_write(self._csv_path, _csv_text(self.records, self._header))
            self._csv = open(self._csv_path, "a", newline="")
        else:
            self._csv.write(_csv_text([record], self._header, with_header=False))
            self._csv.flush()
        if self._tb is not None:
            step = int(record["round"])
            for key, value in record.items():
                if key != "round" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, global_step=step)
            self._tb.flush()

    def close(self) -> None:
        if not self._files:
            return
        self._jsonl.close()
        self._csv.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
