"""metrics.jsonl / metrics.csv / TensorBoard writers and the progress line."""

import csv
import io
import logging
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from p2pl_jax import progress, writers
from p2pl_jax.writers import MetricsWriter, read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _record(r: int, **extra) -> dict:
    return {"round": r, "acc_min": 0.5 + r / 100, "acc_mean": 0.6, "test_loss": 1.0 / r,
            "consensus_distance": 0.1, "wall_s": 0.25 * r, **extra}


def _events(logdir, files=None) -> list:
    """Every Event in the TensorBoard files of `logdir` (TFRecord framing, Event protos)."""
    writers._import_summary_writer()   # imports tensorboardX without torch
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in files or sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(Event.FromString(data[pos + 12:pos + 12 + length]))
            pos += 12 + length + 4
    return events


def _scalars(events) -> dict:
    out = {}
    for e in events:
        for v in e.summary.value:
            out.setdefault(v.tag, {})[e.step] = v.simple_value
    return out


def test_jsonl_csv_and_tensorboard(tmp_path):
    w = MetricsWriter(str(tmp_path), tensorboard=True)
    w.write(_record(1))
    w.write(_record(2))
    w.write(_record(3, local_acc_min=0.4))   # a new column rewrites the CSV with it
    w.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [_record(1), _record(2),
                                                      _record(3, local_acc_min=0.4)]
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["round"]) for r in rows] == [1, 2, 3]
    assert rows[0]["local_acc_min"] == "" and rows[2]["local_acc_min"] == "0.4"
    assert float(rows[1]["test_loss"]) == 0.5
    scalars = _scalars(_events(tmp_path / "tensorboard"))
    assert scalars["acc_min"] == pytest.approx({1: 0.51, 2: 0.52, 3: 0.53})
    assert "round" not in scalars and scalars["local_acc_min"] == pytest.approx({3: 0.4})


def test_resume_rewrites_to_the_checkpoint_records_and_purges_tensorboard(tmp_path):
    w = MetricsWriter(str(tmp_path))
    for r in (1, 2, 3, 4):   # a run killed after round 4, checkpointed at round 2
        w.write(_record(r))
    w.close()
    w = MetricsWriter(str(tmp_path), [_record(1), _record(2)])
    w.write(_record(3, wall_s=9.0))
    w.close()
    assert [r["round"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert read_jsonl(tmp_path / "metrics.jsonl")[2]["wall_s"] == 9.0
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("round,") and [x.split(",")[0] for x in lines[1:]] == ["1", "2",
                                                                                      "3"]
    files = sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*"),
                   key=lambda f: len(_events(None, [f])))   # the resumed run's file first
    assert len(files) == 2
    # TensorBoard discards the first run's events from the purge step (3) on
    assert [e.step for e in _events(None, [files[0]]) if e.HasField("session_log")] == [3]
    # a fresh run (no records) removes old event files
    MetricsWriter(str(tmp_path), tensorboard=True).close()
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_tensorboard_import_does_not_load_torch():
    code = ("import sys; from p2pl_jax.writers import _import_summary_writer; "
            "_import_summary_writer(); assert 'tensorboardX' in sys.modules; "
            "assert 'torch' not in sys.modules")   # neither imported nor left blocked
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


# --- progress --------------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_format_duration():
    assert progress.format_duration(5) == "0:05"
    assert progress.format_duration(125) == "2:05"
    assert progress.format_duration(3725) == "1:02:05"
    assert progress.format_duration(float("nan")) == "?"


def test_live_line_on_a_terminal(caplog):
    clock, tty = FakeClock(), Tty()
    p = progress.Progress(100, start_round=20, stream=tty, refresh_s=1.0, clock=clock)
    p.start()
    clock.t += 2.0
    p.update(21)          # 1 round in 2 s
    assert tty.getvalue() == "\rround 21/100  0.5 rounds/s  ETA 2:38\033[K"
    clock.t += 0.5
    p.update(22)          # within refresh_s: not redrawn
    assert tty.getvalue().count("\r") == 1
    clock.t += 0.5
    with caplog.at_level(logging.INFO):
        p.update(23, {"acc_min": 0.81, "acc_mean": 0.85, "test_loss": 0.5,
                      "consensus_distance": 0.01})
    assert "round 23/100  acc min 0.8100 mean 0.8500  1 rounds/s  ETA 1:17" in caplog.text
    assert tty.getvalue().endswith("\rround 23/100  acc min 0.8100 mean 0.8500  1 rounds/s  "
                                   "ETA 1:17\033[K")
    p.clear()
    assert tty.getvalue().endswith("\r\033[K")


def test_log_lines_without_a_terminal_and_quiet(caplog):
    clock, out = FakeClock(), io.StringIO()
    p = progress.Progress(10, stream=out, log_every_s=30.0, clock=clock)
    p.start()
    with caplog.at_level(logging.INFO):
        clock.t += 10
        p.update(1)
        assert caplog.text == ""       # not yet due
        clock.t += 30
        p.update(2)
        assert "round 2/10  0.05 rounds/s  ETA 2:40" in caplog.text
    assert out.getvalue() == ""        # never a live line into a file
    caplog.clear()
    quiet = progress.Progress(10, enabled=False, stream=Tty(), clock=clock)
    with caplog.at_level(logging.INFO):
        quiet.update(1, _record(1))
        quiet.update(2)
    assert caplog.text == "" and quiet.stream.getvalue() == ""
