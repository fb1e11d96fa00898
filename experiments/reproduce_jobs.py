"""Run planning for experiments.reproduce: the option and workdir checks, run reuse and resume
(`_plan`, `run_or_reuse`), the claim files that let several processes share the runs, and
running one (setting, seed) job (`run_job`)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import traceback
from collections.abc import Sequence

import jax

from configs import mnist
from configs import reproduce as spec
from experiments.reproduce_verdicts import VERDICT_FNS
from p2pl_jax import checkpoint, writers
from p2pl_jax.errors import ConfigError, check_range
from p2pl_jax.runner import CHECKPOINT_DIR, DivergenceError, run

ERROR_FILE = "error.txt"     # in a run directory: why its last attempt failed
MAX_SKEW_SIGMA = 10.0        # beyond it one device holds all the data (and exp() overflows)


# ----------------------------------------------------------------------------- arguments


def parse_claims(values: Sequence[str] | None) -> list[int] | None:
    """--claims as claim numbers (None: all); raises ConfigError naming the flag."""
    if not values:
        return None
    allowed = ", ".join(str(n) for n in sorted(VERDICT_FNS))
    try:
        numbers = [int(str(v).strip()) for v in values]
    except ValueError:
        raise ConfigError(f"--claims={','.join(map(str, values))} must be claim numbers; "
                          f"allowed: {allowed} (comma-separated, e.g. --claims=1,3)") from None
    bad = [n for n in numbers if n not in VERDICT_FNS]
    if bad:
        raise ConfigError(f"--claims={','.join(map(str, values))}: no claim "
                          f"{', '.join(map(str, bad))}; allowed: {allowed}")
    return numbers


CPU_EVAL_EVERY = 2   # --eval_every=-1 on CPU: an evaluation of 100 distinct models costs more
#                      than a round there (README, Reproducing the paper)


def resolve_eval_every(eval_every: int) -> int:
    """--eval_every: -1 (auto) is 1 on GPU/TPU and CPU_EVAL_EVERY on CPU."""
    if eval_every != -1:
        return eval_every
    return CPU_EVAL_EVERY if jax.default_backend() == "cpu" else 1


def check_options(*, seeds: int, rounds: int | None, target: float | None, eval_every: int,
                  skew_sigma: float, claim_numbers: Sequence[int] | None = None) -> None:
    """Raises ConfigError naming the flag and its allowed range for a bad option."""
    check_range("--seeds", seeds, 1, integer=True)
    if rounds is not None:
        check_range("--rounds", rounds, 1, integer=True)
    if target is not None:
        check_range("--target", target, 0.0, 1.0, lo_open=True)
    check_range("--eval_every", eval_every, 1, integer=True)
    check_range("--skew_sigma", skew_sigma, 0.0, MAX_SKEW_SIGMA, lo_open=True)
    if claim_numbers:
        parse_claims([str(n) for n in claim_numbers])


def check_workdir(workdir: str) -> None:
    """Creates `workdir` if needed; raises ConfigError unless it is a writable directory."""
    if not workdir:
        raise ConfigError("--workdir is empty; give the output directory (created if missing)")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir={workdir} is a file, not a directory; give a directory "
                          f"(created if missing)")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--workdir={workdir} is not a writable directory: "
                          f"{e.strerror or e}") from None


# ----------------------------------------------------------------------------- running


_read_json = writers.read_json_or_none


def _plan(workdir: str, config: dict, *, report_only: bool = False) -> tuple[str, dict | None]:
    """What to do with a run directory: ('reuse', summary), ('resume', None) or ('fresh', None).

    reuse: a finished run of the same config; also one that differs only in fields that do not
    change the trajectory (checkpoint.RESUMABLE_FIELDS, e.g. the round cap) if it stopped at
    the stable target (its hold complete) within the requested cap. resume: same trajectory,
    unfinished or with a larger cap; runner.run continues from its checkpoint. fresh: anything
    else (the directory is cleared first: it was written by another config), including a run
    written before rounds_to_stable_target that stopped at its first crossing with
    stop_at_target (its hold was never checked); `report_only` still reuses such a run (its
    stable target is then reported as not recorded).
    """
    stored = _read_json(os.path.join(workdir, "config.json"))
    summary = _read_json(os.path.join(workdir, "summary.json"))
    if stored is None:
        return "fresh", None
    requested = json.loads(json.dumps(config))
    # A field added to the config since the run was written counts as its default value.
    defaults = json.loads(json.dumps(mnist.get_config().to_dict()))
    stored = {**{k: v for k, v in defaults.items() if k not in stored}, **stored}
    if checkpoint.fingerprint(stored) != checkpoint.fingerprint(requested):
        return "fresh", None
    if summary is not None:
        status = summary.get("status", "completed")
        stable = summary.get("rounds_to_stable_target")
        if (not report_only and stored.get("stop_at_target") and "rounds_to_stable_target"
                not in summary and summary.get("rounds_to_target") is not None):
            return "fresh", None   # stopped at the first crossing: no hold was checked
        if stored == requested and status in ("completed", "diverged"):
            return "reuse", summary
        if (status == "completed" and requested.get("stop_at_target") and stable is not None
                and summary.get("rounds_run", math.inf) <= requested["rounds"]):
            return "reuse", summary
    if os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)) and (
            summary is None or (summary.get("checkpoint_round") or 0) <= requested["rounds"]):
        return "resume", None
    return "fresh", None


def run_or_reuse(c, workdir: str, *, report_only: bool = False, name: str = "") -> dict:
    """Runs config `c` into `workdir` unless a usable result is there (see `_plan`).

    Returns a record: 'workdir', 'config', 'status' ('ok', 'missing', 'error: ...'),
    'reused' and the summary fields; a failed one also 'failure' ('config' for a ConfigError,
    'diverged'), and its reason is written to workdir/error.txt. A run that reached the stable
    target has its checkpoints deleted (it can never need more rounds); one that did not keeps
    them, so a larger round cap continues it.
    """
    name = name or workdir
    record = {"workdir": workdir, "config": c.to_dict()}
    action, summary = _plan(workdir, c.to_dict(), report_only=report_only)
    if action == "reuse":
        record.update(summary, reused=True)
        if summary.get("status", "completed") == "completed":
            record["status"] = "ok"
        else:
            record.update(status=f"error: {summary['status']}", failure=summary["status"])
        return record
    if report_only:
        record["status"] = "missing"
        return record
    if action == "fresh" and os.path.isdir(workdir):
        print(f"[run] {workdir} holds nothing to reuse or resume (a run of another config, or "
              f"one stopped before its first checkpoint): starting over", flush=True)
        shutil.rmtree(workdir)
    print(f"[run] {name} ({action}) -> {workdir}", flush=True)
    t0 = time.perf_counter()
    with contextlib.suppress(OSError):
        os.remove(os.path.join(workdir, ERROR_FILE))
    try:
        record.update(run(c, workdir), reused=False)
        record["status"] = "ok"
    except (ConfigError, DivergenceError) as e:
        record.update(status=f"error: {e}",
                      failure="config" if isinstance(e, ConfigError) else "diverged")
        write_error(workdir, f"{type(e).__name__}: {e}\n")
        print(f"[run] {name} failed: {e}", flush=True)
    print(f"[run] {name} done in {time.perf_counter() - t0:.0f}s: rounds_to_target="
          f"{record.get('rounds_to_target')} rounds_to_stable_target="
          f"{record.get('rounds_to_stable_target')}", flush=True)
    if record["status"] == "ok" and record.get("rounds_to_stable_target") is not None:
        shutil.rmtree(os.path.join(workdir, CHECKPOINT_DIR), ignore_errors=True)
    return record


def write_error(workdir: str, text: str) -> None:
    """workdir/error.txt (best effort: the directory may be what failed)."""
    with contextlib.suppress(OSError):
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, ERROR_FILE), "w") as f:
            f.write(text)


def run_dir(root: str, name: str, seed: int) -> str:
    return os.path.join(root, "runs", name, f"seed{seed}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def claim(root: str, name: str, seed: int):
    """Yields True if this process may run (name, seed): it holds root/claims/<name>.seed<k>
    (created exclusively, holding the pid) until the block ends. Yields False while another
    live process holds it; a claim left by a dead process is taken over. This lets several
    processes started with the same flags share the runs (e.g. one per CPU core)."""
    os.makedirs(os.path.join(root, "claims"), exist_ok=True)
    path = os.path.join(root, "claims", f"{name}.seed{seed}")
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as f:
                    owner = int(f.read().strip() or 0)
            except (OSError, ValueError):
                owner = 0
            if owner and owner != os.getpid() and _pid_alive(owner):
                yield False
                return
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)        # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        try:
            yield True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return
    yield False


def run_job(setting: spec.Setting, base, seed: int, root: str, eval_every: int,
            *, report_only: bool = False) -> dict:
    """`run_or_reuse` of one (setting, seed) into root/runs/<setting>/seed<k>; a run that
    another live process is working on is recorded as 'missing'. A run that raises anything
    else than ConfigError / DivergenceError is recorded as failed too ('failure': 'exception',
    the traceback in its error.txt), so the other runs and the report still happen."""
    c = spec.make_config(base, setting, seed, eval_every)
    workdir = run_dir(root, setting.name, seed)
    name = f"{setting.name} seed {seed}"
    if report_only:
        record = run_or_reuse(c, workdir, report_only=True)
    else:
        with claim(root, setting.name, seed) as mine:
            try:
                record = (run_or_reuse(c, workdir, name=name) if mine
                          else {"workdir": workdir, "config": c.to_dict(), "status": "missing"})
            except Exception as e:  # noqa: BLE001 - recorded; the exit status reports it
                write_error(workdir, traceback.format_exc())
                print(f"[run] {name} failed: {type(e).__name__}: {e} (traceback in "
                      f"{os.path.join(workdir, ERROR_FILE)})", flush=True)
                record = {"workdir": workdir, "config": c.to_dict(), "failure": "exception",
                          "status": f"error: {type(e).__name__}: {e}"}
    return {"setting": setting.name, "seed": seed, **record}
