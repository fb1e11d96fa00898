"""Fires SIGINT or SIGTERM at random moments of real runs, many times, and tallies the outcomes.

  python -m benchmarks.signal_stress [--trials=40] [--second=0.25] [--seed=0] [--out=FILE.json]

Each trial starts the issue's run (8 devices on MNIST, 50 samples each, 40 rounds on a cycle,
checkpoint every 5 rounds), sends SIGINT or SIGTERM (alternating) at a time drawn uniformly
from [0, T] where T is the measured duration of an uninterrupted run, and with probability
--second a second signal 0.05-0.5 s later. A trial is good when:
  - the process ended with status 130 (or 0 if it had already finished before the signal);
  - no segfault, no "Traceback", no "Exception ignored" in its output;
  - the one `error:` line is true: "no checkpoint exists" when the folder holds none, else the
    round it names is the newest checkpoint in the folder;
  - (status 0) the run's summary says completed.
Then each interrupted workdir is rerun to completion; its metrics must equal the uninterrupted
run's (resume is exact). Prints the machine, the JAX version and the tally.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from absl import app, flags

from benchmarks.common import machine_info

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/mnist.py", "--config.num_devices=8", "--config.samples_per_device=50",
        "--config.hidden_sizes=(16,)", "--config.topology=cycle", "--config.rounds=40",
        "--config.stop_at_target=False", "--config.checkpoint_every=5",
        "--config.progress=False", "--config.tensorboard=False"]

_TRIALS = flags.DEFINE_integer("trials", 40, "Interrupted runs.")
_SECOND = flags.DEFINE_float("second", 0.25, "Probability of a second signal.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the signal times.")
_OUT = flags.DEFINE_string("out", None, "Also write the tally as JSON here.")


def _start(workdir: Path) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("P2PL_TEST_SIGNAL", None)
    return subprocess.Popen([sys.executable, "-m", "experiments.train", *ARGS,
                             f"--workdir={workdir}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _steps(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) \
        if folder.is_dir() else []


def _records(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    return [{k: v for k, v in json.loads(x).items() if k != "wall_s"}
            for x in path.read_text().splitlines() if x.strip()]


def _judge(rc: int, err: str, workdir: Path) -> str:
    """'ok-interrupted', 'ok-finished' or what is wrong."""
    if rc < 0 or rc == 139:
        return f"crash (status {rc})"
    if "Traceback" in err or "Exception ignored" in err:
        return "traceback"
    if rc == 0:
        summary = json.loads((workdir / "summary.json").read_text())
        return "ok-finished" if summary["status"] == "completed" else "finished-not-completed"
    if rc != 130:
        return f"status {rc}"
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    if len(lines) != 1:
        return f"{len(lines)} error lines"
    steps = _steps(workdir)
    if "no checkpoint exists" in lines[0]:
        return "ok-interrupted" if not steps else "false message (checkpoint exists)"
    m = re.search(r"checkpoint of round (\d+) in", lines[0])
    if not m:
        return "message names no checkpoint"
    return "ok-interrupted" if steps and int(m.group(1)) == max(steps) else \
        f"false message (round {m.group(1)}, folder {steps})"


def main(argv):
    del argv
    rng = random.Random(_SEED.value)
    root = Path(tempfile.mkdtemp(prefix="signal_stress_"))
    print(machine_info())
    t0 = time.perf_counter()
    ref = _start(root / "reference")
    _, err = ref.communicate()
    duration = time.perf_counter() - t0
    assert ref.returncode == 0, err[-2000:]
    reference = _records(root / "reference")
    print(f"uninterrupted run: {duration:.1f} s; signals drawn from [0, {duration:.1f}] s")
    tally, moments, resumed = Counter(), [], Counter()
    for trial in range(_TRIALS.value):
        workdir = root / f"t{trial}"
        sig = (signal.SIGINT, signal.SIGTERM)[trial % 2]
        at = rng.uniform(0.0, duration)
        second = rng.random() < _SECOND.value
        proc = _start(workdir)
        time.sleep(at)
        if proc.poll() is None:
            proc.send_signal(sig)
            if second:
                time.sleep(rng.uniform(0.05, 0.5))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
        verdict = _judge(proc.returncode, err, workdir)
        tally[verdict] += 1
        moments.append({"trial": trial, "signal": sig.name, "at_s": round(at, 2),
                        "second": second, "status": proc.returncode, "verdict": verdict,
                        "checkpoints": _steps(workdir)})
        print(f"trial {trial:3d} {sig.name:7s} at {at:5.1f}s second={second!s:5} "
              f"-> status {proc.returncode:4d} {verdict}  checkpoints {_steps(workdir)}",
              flush=True)
        if proc.returncode == 130:
            again = _start(workdir)
            _, err2 = again.communicate(timeout=600)
            same = again.returncode == 0 and _records(workdir) == reference
            resumed["equal" if same else f"differs (status {again.returncode})"] += 1
        shutil.rmtree(workdir, ignore_errors=True)
    print("\ntally:", dict(tally))
    print("resumed to the end:", dict(resumed))
    if _OUT.value:
        Path(_OUT.value).write_text(json.dumps({"machine": machine_info(), "duration_s":
                                                duration, "tally": tally, "resumed": resumed,
                                                "trials": moments}, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    bad = sum(n for v, n in tally.items() if not v.startswith("ok"))
    bad += sum(n for v, n in resumed.items() if v != "equal")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    app.run(main)
