"""What the study commands share: a run plan (reuse, resume or start afresh), running the
training CLI in subprocesses, copying the small run files into a report folder, the machine.

A run is a name and its config overrides of configs/mnist.py; it runs as
`python -m experiments.train --config=configs/mnist.py --workdir=WORKDIR/NAME --config.K=V ...`.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time

from configs import mnist
from p2pl_jax import checkpoint, plotting, writers

COPIED = ("config.json", "summary.json", "metrics.jsonl")
read_json = writers.read_json_or_none


def requested_config(overrides: dict) -> dict:
    """The full config (plain JSON) the CLI builds from configs/mnist.py and `overrides`."""
    c = mnist.get_config()
    for key, value in overrides.items():
        c[key] = value
    return json.loads(json.dumps(c.to_dict()))


def cli_command(run_dir: str, overrides: dict) -> list[str]:
    args = [sys.executable, "-m", "experiments.train", "--config=configs/mnist.py",
            f"--workdir={run_dir}"]
    return args + [f"--config.{k}={v}" for k, v in overrides.items()]


def plan(run_dir: str, config: dict) -> str:
    """'reuse' (finished, same config: all its rounds, or stopped at the target), 'run' (no
    config.json yet, or the same config unfinished or with a higher round cap: the CLI
    resumes) or 'fresh' (a run of another config: the directory must be
    cleared first). Fields that change neither the trajectory nor the bookkeeping
    (checkpoint.RESUMABLE_FIELDS) do not count; a field added to the config since the run was
    written counts as its default."""
    stored = read_json(os.path.join(run_dir, "config.json"))
    if stored is None:
        return "run"
    defaults = json.loads(json.dumps(mnist.get_config().to_dict()))
    stored = {**{k: v for k, v in defaults.items() if k not in stored}, **stored}
    if checkpoint.fingerprint(stored) != checkpoint.fingerprint(config):
        return "fresh"
    summary = read_json(os.path.join(run_dir, "summary.json"))
    if summary is None or summary.get("status", "completed") != "completed":
        return "run"
    # the round cap is not in the fingerprint (a finished run may be extended)
    at_target = config.get("stop_at_target") and summary.get("rounds_to_stable_target")
    return "reuse" if summary.get("rounds_run") == config["rounds"] or at_target else "run"


def run_all(workdir: str, runs: dict[str, dict], jobs: int) -> tuple[dict, dict, list[str]]:
    """Runs (or reuses) every run {name: overrides}, `jobs` at a time; returns ({name: the CLI
    command}, {name: its plan}, [failed names]). Each run's log is WORKDIR/NAME.log."""
    os.makedirs(workdir, exist_ok=True)
    commands, plans, pending, failed = {}, {}, [], []
    for name, overrides in runs.items():
        run_dir = os.path.join(workdir, name)
        commands[name] = cli_command(run_dir, overrides)
        what = plans[name] = plan(run_dir, requested_config(overrides))
        print(f"{name}: {what} ({run_dir})", flush=True)
        if what == "reuse":
            continue
        if what == "fresh":
            shutil.rmtree(run_dir)
        pending.append(name)
    running: dict[str, tuple[subprocess.Popen, object]] = {}
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            log = open(os.path.join(workdir, f"{name}.log"), "a")
            print(f"{name}: {shlex.join(commands[name])}", flush=True)
            running[name] = (subprocess.Popen(commands[name], stdout=log,
                                              stderr=subprocess.STDOUT), log)
        time.sleep(1)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[name]
                print(f"{name}: exit status {proc.returncode}", flush=True)
                if proc.returncode != 0:
                    failed.append(name)
    return commands, plans, failed


def copy_runs(workdir: str, out: str, names, files=COPIED) -> None:
    """Copies each run's small files to OUT/runs/NAME/ (the report is rebuilt from them)."""
    for name in names:
        src, dst = os.path.join(workdir, name), os.path.join(out, "runs", name)
        if not os.path.exists(os.path.join(src, "metrics.jsonl")):
            continue
        os.makedirs(dst, exist_ok=True)
        for f in files:
            if os.path.exists(os.path.join(src, f)):
                shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))


def load_runs(out: str) -> dict[str, plotting.Run]:
    """{name: run} of the copied run files OUT/runs/NAME/ (those with a metrics.jsonl)."""
    root = os.path.join(out, "runs")
    names = sorted(os.listdir(root)) if os.path.isdir(root) else []
    return {n: plotting.load_run(os.path.join(root, n)) for n in names
            if os.path.exists(os.path.join(root, n, "metrics.jsonl"))}


def provenance(study: dict, rows) -> list[str]:
    """The report's command / machine / JAX / date lines, from study.json and the rows'
    'jax_version' and 'backend' (what the runs' summaries recorded)."""
    rows = list(rows)
    mach = study.get("machine", {})
    versions = sorted({str(r["jax_version"]) for r in rows if r.get("jax_version")})
    backends = sorted({str(r["backend"]) for r in rows if r.get("backend")})
    return [f"Command: `{study.get('command', '?')}`  ",
            f"Machine: {mach.get('cpu', '?')}, {mach.get('cores', '?')} cores; JAX "
            f"{', '.join(versions) or '?'}, backend {', '.join(backends) or '?'}; "
            f"{study.get('date', '?')}."]


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.platform(),
            "python": platform.python_version()}


def strict(obj) -> str:
    """Strict JSON text (no NaN or Infinity)."""
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"


def write_study(out: str, module: str, commands: dict, plans: dict) -> None:
    """OUT/study.json: the command, each run's command and plan, the machine and the date (the
    fields of an older study.json that these do not replace are kept)."""
    old = read_json(os.path.join(out, "study.json")) or {}
    study = {**old,
             "command": shlex.join(["python", "-m", module, *sys.argv[1:]]),
             "run_commands": {n: ["python", *c[1:]] for n, c in commands.items()},
             "plans": plans, "machine": machine(),
             "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    with open(os.path.join(out, "study.json"), "w") as f:
        f.write(strict(study))


def report_and_exit(out: str, write_report, failed: list[str], workdir: str) -> None:
    """Writes the report from OUT (exit 2 on missing files), then exits 3 if runs failed."""
    from experiments import cli
    from p2pl_jax.errors import ConfigError

    try:
        write_report(out)
    except (ConfigError, FileNotFoundError) as e:
        cli.fail(str(e), cli.EXIT_USER_ERROR)
    print(f"wrote {os.path.join(out, 'README.md')}")
    if failed:
        cli.fail(f"runs failed: {', '.join(failed)} (logs: {workdir}/NAME.log)",
                 cli.EXIT_DIVERGED)
