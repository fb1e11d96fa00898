"""Runs the settings behind the paper's 8 claims and writes a report with verdicts.

  python -m experiments.reproduce --workdir=DIR [--seeds=3] [--rounds=100] [--quick]
      [--claims=1,3] [--eval_every=2] [--skew_sigma=1.0] [--target=0.97] [--report_only]

For every claim in configs/reproduce.py, each of its settings is run once per seed through
p2pl_jax.runner.run into DIR/runs/<setting>/seed<k>/. A run whose summary.json exists and whose
config.json equals the requested config is reused; an interrupted run continues from its
checkpoint (runner.run resumes), so an interrupted reproduction picks up where it stopped. Then
  DIR/results.csv   one row per run (setting, seed, config fields, rounds_to_target and its
                    resolution, rounds_to_stable_target, accuracies, diameter, spectral gap,
                    timings);
  DIR/report.md     per claim: the settings, rounds-to-target (mean ± std over the seeds that
                    reached it, with its resolution; otherwise the final min / mean accuracy),
                    rounds-to-stable-target (the target held for target_hold_rounds evaluated
                    rounds), a verdict computed from the rounds-to-target numbers, and figures
                    (DIR/figures/*.png, linked relatively).
--report_only writes the report from the runs already on disk (missing settings: "not run").

Several processes started with the same flags share the runs: each claims a run through a file
in DIR/claims/ before starting it and skips runs another live process holds, then writes the
report from what is on disk (the last one to finish writes the complete report). On a CPU, one
process per core is faster than one process on all cores (small matmuls do not scale across
threads):  for c in 0 1; do taskset -c $c python -m experiments.reproduce ... & done; wait

Every flag is checked before anything runs (--target in (0, 1], --seeds, --eval_every and --rounds
≥ 1, --skew_sigma in (0, 10], --claims among 1..8, --workdir a writable directory), and so is
every run's config. A run that fails (diverges, or raises) is recorded and the others go on; its
reason goes to <run dir>/error.txt (with the traceback unless it is a ConfigError or a
DivergenceError); a diverged run also keeps its summary.json and metrics.jsonl and is reused as
failed. The report is written either way (--report_only sees diverged runs as failed, runs that
raised as "not run": they leave no summary.json).

Exit status: 0 every run finished (runs another live process still holds are not failures: the
last process writes the complete report); 2 a user error (a bad flag or config value, an unwritable
--workdir; also when every failed run failed on a user error, e.g. missing data), printed as one
message without a traceback; 3 some runs failed (diverged or raised): one message lists them and
where their logs are; 130 interrupted (Ctrl-C or SIGTERM at any moment: finished runs are
reused and an interrupted one continues from its checkpoint when the same command is rerun).
"""

from __future__ import annotations

from experiments import early_signals  # noqa: F401 - first: the signal watcher (see there)

import contextlib
import csv
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging

from configs import mnist
from configs import reproduce as spec
from experiments import cli
from experiments.cli import EXIT_DIVERGED, EXIT_USER_ERROR
from p2pl_jax import algorithms, checkpoint, interrupts, plotting, writers
from p2pl_jax.errors import ConfigError, check_range
from p2pl_jax.runner import CHECKPOINT_DIR, DivergenceError, run, validate

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per setting (0 .. seeds-1).")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny scale: checks the pipeline, not the claims.")
_ROUNDS = flags.DEFINE_integer("rounds", None, "Round cap (default 100; 3 with --quick).")
_TARGET = flags.DEFINE_float("target", None, "Target accuracy (default 0.97; 0.6 with --quick).")
_EVAL_EVERY = flags.DEFINE_integer(
    "eval_every", -1, "Evaluate every this many rounds where the devices' models differ (each "
    "evaluation runs all N models on the test set); identical-model settings evaluate every "
    "round. -1 = auto: 1 on GPU/TPU (an evaluation is cheap there), 2 on CPU. Rounds-to-target "
    "is resolved to eval_every (a crossing that dips back below before the next evaluation is "
    "not seen); rounds-to-stable-target evaluates every round of its hold and, with "
    "eval_backfill, is exact when target_hold_rounds >= eval_every.")
_SKEW_SIGMA = flags.DEFINE_float("skew_sigma", 1.0, "Claim 7: log-normal size skew σ (the "
                                 "local phase costs ∝ the largest device's size).")
_CLAIMS = flags.DEFINE_list("claims", None, "Only these claim numbers (default: all 8).")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Write the report from existing runs.")

VERDICTS = ("reproduced", "partly reproduced", "not reproduced", "not run")
USAGE = ("python -m experiments.reproduce --workdir=DIR [--seeds=3] [--rounds=100] [--quick] "
         "[--claims=1,3] [--eval_every=2] [--skew_sigma=1.0] [--target=0.97] [--report_only]")
parse_flags = cli.flags_parser(USAGE)
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


# ----------------------------------------------------------------------------- statistics


@dataclasses.dataclass
class Stat:
    """One setting over its seeds. rounds: rounds_to_target per finished seed (None = not
    reached within the cap); stable: rounds_to_stable_target per finished seed (None = no hold
    of `hold` rounds completed; MISSING = a run written before it was recorded)."""

    name: str
    label: str
    algorithm: str
    rounds: list
    cap: int
    eval_every: int
    final_min: list
    final_mean: list
    diameter: list
    spectral_gap: list
    wall: list
    errors: list
    curves: list        # per finished seed: (rounds array, acc_mean array) from metrics.jsonl
    workdirs: list
    resolution: int = 1  # of rounds-to-target: eval_every (1 = every round evaluated: exact)
    stable: list = dataclasses.field(default_factory=list)
    hold: int = 0        # target_hold_rounds
    stable_reasons: list = dataclasses.field(default_factory=list)   # why a seed's is None

    @property
    def n(self) -> int:
        return len(self.rounds)

    @property
    def reached(self) -> int:
        return sum(r is not None for r in self.rounds)

    @property
    def ran(self) -> bool:
        return self.n > 0

    @property
    def all_reached(self) -> bool:
        return self.n > 0 and self.reached == self.n

    def mean_rounds(self) -> float:
        vals = [r for r in self.rounds if r is not None]
        return float(np.mean(vals)) if vals else math.inf

    def std_rounds(self) -> float:
        vals = [r for r in self.rounds if r is not None]
        return float(np.std(vals)) if len(vals) > 1 else 0.0

    def censored(self) -> float:
        """Mean rounds with a seed that did not reach counted as cap + 1 (a lower bound);
        inf when no seed reached."""
        if not self.reached:
            return math.inf
        return float(np.mean([r if r is not None else self.cap + 1 for r in self.rounds]))

    def rounds_text(self) -> str:
        if not self.ran:
            return "not run"
        if not self.reached:
            return f"not reached in {self.cap} rounds"
        text = f"{self.mean_rounds():.1f} ± {self.std_rounds():.1f}"
        if self.reached < self.n:
            text += f" ({self.reached}/{self.n} seeds; the rest not reached in {self.cap})"
        return text

    def stable_text(self) -> str:
        """Rounds-to-stable-target as mean ± std over the seeds that held the target."""
        if not self.ran:
            return "not run"
        known = [r for r in self.stable if r is not MISSING]
        if not known:
            return "not recorded (runs older than rounds_to_stable_target: rerun them)"
        held = [r for r in known if r is not None]
        if not held:
            return f"not held for {self.hold} rounds in {self.cap}"
        text = f"{np.mean(held):.1f} ± {np.std(held) if len(held) > 1 else 0.0:.1f}"
        if len(held) < len(self.stable):
            text += f" ({len(held)}/{len(self.stable)} seeds)"
        return text

    def acc_text(self) -> str:
        if not self.ran:
            return "–"
        return f"{np.mean(self.final_min):.4f} / {np.mean(self.final_mean):.4f}"


def _load_curve(workdir: str):
    try:
        run_ = plotting.load_run(workdir)
    except FileNotFoundError:
        return None
    return run_.metrics["round"], run_.metrics["acc_mean"]


MISSING = "missing"   # Stat.stable of a run written before rounds_to_stable_target existed


def make_stat(setting: spec.Setting, records: list[dict]) -> Stat:
    ok = [r for r in records if r["status"] == "ok"]
    cap = records[0]["config"]["rounds"] if records else 0
    ev = records[0]["config"]["eval_every"] if records else 1
    hold = records[0]["config"].get("target_hold_rounds", 0) if records else 0
    return Stat(
        name=setting.name, label=setting.label,
        algorithm=records[0]["config"]["algorithm"] if records else "",
        rounds=[r["rounds_to_target"] for r in ok],
        cap=cap, eval_every=ev,
        final_min=[r["final_acc_min"] or 0.0 for r in ok],
        final_mean=[r["final_acc_mean"] or 0.0 for r in ok],
        diameter=[r.get("diameter") for r in ok], spectral_gap=[r.get("spectral_gap")
                                                               for r in ok],
        wall=[r.get("wall_time_s", 0.0) for r in ok],
        errors=[f"seed {r['seed']}: {r['status']}" for r in records
                if r["status"] not in ("ok", "missing")],
        curves=[c for c in (_load_curve(r["workdir"]) for r in ok) if c is not None],
        workdirs=[r["workdir"] for r in ok], resolution=ev,
        stable=[r.get("rounds_to_stable_target", MISSING) for r in ok], hold=hold,
        stable_reasons=[f"seed {r['seed']}: {r['rounds_to_stable_target_reason']}" for r in ok
                        if r.get("rounds_to_stable_target_reason")])


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


# ----------------------------------------------------------------------------- verdicts
# Each takes {setting name: Stat} and returns (verdict, one-paragraph reason from the numbers).


def _missing(stats: dict, names: Sequence[str]) -> list[str]:
    return [n for n in names if not stats[n].ran]


def _rounds(s: Stat) -> str:
    return f"{s.label}: {s.rounds_text()}"


def verdict_1(st: dict, target: float) -> tuple[str, str]:
    p, f, c = st["complete"], st["fedavg"], st["centralized"]
    if not p.ran:
        return "not run", "P2PL on the complete graph has not been run."
    refs = "; ".join(f"{s.label} final accuracy {np.mean(s.final_mean):.4f} "
                     f"({s.rounds_text()})" for s in (f, c) if s.ran)
    if p.all_reached:
        seeds = f"all {p.n} seeds" if p.n > 1 else "the one seed run"
        return "reproduced", (f"P2PL (complete graph) brought every device to ≥ {target:.0%} in "
                              f"{seeds} after {p.rounds_text()} rounds. {refs}.")
    if p.reached:
        return "partly reproduced", (f"every device reached {target:.0%} in only {p.reached} of "
                                     f"{p.n} seeds. {refs}.")
    return "not reproduced", (f"no seed brought every device to {target:.0%} within {p.cap} "
                              f"rounds (final min / mean accuracy {p.acc_text()}). {refs}.")


def verdict_2(st: dict, target: float, tolerance: float = 0.2) -> tuple[str, str]:
    p, f = st["complete"], st["fedavg"]
    if _missing(st, ["complete", "fedavg"]):
        return "not run", "needs both P2PL complete and FedAvg."
    if not p.reached or not f.reached:
        return "not reproduced", (f"cannot compare rounds: {_rounds(p)}; {_rounds(f)}.")
    mp, mf = p.censored(), f.censored()
    allowed = max(tolerance * mf, 1.0)
    diff = mp - mf
    text = (f"P2PL {mp:.1f} vs FedAvg {mf:.1f} rounds (mean over seeds), difference "
            f"{diff:+.1f} ({diff / mf:+.0%}); allowed ±{allowed:.1f} "
            f"(max({tolerance:.0%} of FedAvg, 1 round)).")
    if abs(diff) <= allowed:
        if p.all_reached and f.all_reached:
            return "reproduced", text
        return "partly reproduced", text + " Not every seed reached the target."
    return "not reproduced", text


def _monotone(values: Sequence[float]) -> bool:
    return all(b >= a for a, b in zip(values, values[1:]))


def verdict_3(st: dict, target: float) -> tuple[str, str]:
    sparse = ["rgg", "torus", "cycle"]
    if _missing(st, ["complete", *sparse]):
        return "not run", f"missing settings: {', '.join(_missing(st, ['complete', *sparse]))}."
    graphs = sorted(["complete", *sparse], key=lambda n: _mean(st[n].diameter) or 0)
    table = ", ".join(
        f"{st[n].label} (diameter {_mean(st[n].diameter):.3g}, spectral gap "
        f"{_mean(st[n].spectral_gap) or 0:.3g}): {st[n].rounds_text()}" for n in graphs)
    order = [st[n].censored() for n in graphs]
    monotone = _monotone(order) and order[-1] > order[0]
    all_reached = all(st[n].all_reached for n in sparse)
    some = [n for n in sparse if st[n].reached]
    slower = all(st[n].censored() >= st["complete"].censored() for n in sparse)
    if not some:
        return "not reproduced", f"no sparse graph reached {target:.0%}. {table}."
    trend = ("rounds do not decrease as the diameter grows" if monotone else
             "rounds are not ordered by diameter")
    if all_reached and monotone and slower:
        return "reproduced", f"every sparse graph reached {target:.0%}; {trend}. {table}."
    if some and (monotone or all_reached):
        missing = [st[n].label for n in sparse if not st[n].all_reached]
        extra = (f" Not reached in every seed: {', '.join(missing)}." if missing else "")
        return "partly reproduced", f"{trend}.{extra} {table}."
    return "not reproduced", f"{trend}. {table}."


def _converges(st: dict, references: dict[str, str], what: str,
               target: float) -> tuple[str, str]:
    """references: {setting: the setting it is compared with (same graph, ideal conditions)}."""
    names = list(references)
    if _missing(st, names):
        return "not run", f"missing settings: {', '.join(_missing(st, names))}."
    slow = []
    for n in names:
        s, ref = st[n], st[references[n]]
        if s.reached and ref.ran and ref.reached:
            slow.append(f"{s.label}: {s.rounds_text()} rounds "
                        f"(×{s.censored() / ref.censored():.2f} of {ref.label})")
        else:
            slow.append(f"{s.label}: {s.rounds_text()}, final min / mean accuracy "
                        f"{s.acc_text()}")
    detail = "; ".join(slow)
    if all(st[n].all_reached for n in names):
        return "reproduced", f"every {what} setting reached {target:.0%} in every seed. {detail}."
    if any(st[n].reached for n in names):
        return "partly reproduced", f"only some {what} settings / seeds reached {target:.0%}. " \
            f"{detail}."
    return "not reproduced", f"no {what} setting reached {target:.0%}. {detail}."


def verdict_4(st: dict, target: float) -> tuple[str, str]:
    return _converges(st, {"rgg_fail0.3": "rgg", "rgg_fail0.5": "rgg",
                           "complete_fail0.5": "complete"}, "link-failure", target)


def verdict_5(st: dict, target: float) -> tuple[str, str]:
    return _converges(st, {"shards2": "complete", "dirichlet0.5": "complete"}, "non-IID",
                      target)


def verdict_6(st: dict, target: float) -> tuple[str, str]:
    names = ["rgg", "rgg_sync_none", "rgg_sync_shared"]
    if _missing(st, names[:2]):
        return "not run", "needs RGG with sync=max_norm and sync=none."
    m, n, o = st["rgg"], st["rgg_sync_none"], st["rgg_sync_shared"]
    text = "; ".join(_rounds(s) for s in (m, n, o) if s.ran)
    if m.reached or n.reached:
        cm, cn = m.censored(), n.censored()
        if cm < cn:
            return "reproduced", (f"max norm sync needs fewer rounds than independent inits "
                                  f"({cm:.1f} vs {'not reached' if math.isinf(cn) else f'{cn:.1f}'}"
                                  f", unreached seeds counted as cap + 1). {text}.")
        return "not reproduced", (f"max norm sync does not need fewer rounds than independent "
                                  f"inits ({cm:.1f} vs {cn:.1f}). {text}.")
    fm, fn = np.mean(m.final_min), np.mean(n.final_min)
    if fm > fn:
        return "partly reproduced", (f"neither reached {target:.0%}; max norm ends with a higher "
                                     f"minimum accuracy ({fm:.4f} vs {fn:.4f}). {text}.")
    return "not reproduced", (f"neither reached {target:.0%} and max norm does not end higher "
                              f"({fm:.4f} vs {fn:.4f}). {text}.")


def verdict_7(st: dict, target: float, tolerance: float = 0.2) -> tuple[str, str]:
    names = ["rgg", "rgg_metropolis", "rgg_skew_data_size", "rgg_skew_metropolis"]
    if _missing(st, names):
        return "not run", f"missing settings: {', '.join(_missing(st, names))}."
    eq_d, eq_m = st["rgg"], st["rgg_metropolis"]
    sk_d, sk_m, sk_u = st["rgg_skew_data_size"], st["rgg_skew_metropolis"], st["rgg_skew_uniform"]
    faster = sk_d.reached > 0 and sk_d.censored() < sk_m.censored()
    if eq_d.reached and eq_m.reached:
        allowed = max(tolerance * eq_m.censored(), float(eq_m.resolution))
        similar = abs(eq_d.censored() - eq_m.censored()) <= allowed
        eq_text = (f"equal sizes: data_size {eq_d.censored():.1f} vs metropolis "
                   f"{eq_m.censored():.1f} rounds (similar if within ±{allowed:.1f})")
    else:
        similar = False
        eq_text = f"equal sizes: {_rounds(eq_d)}; {_rounds(eq_m)}"
    sk_text = "; ".join(_rounds(s) for s in (sk_d, sk_m, sk_u) if s.ran)
    text = (f"skewed sizes: data_size {'faster' if faster else 'not faster'} than metropolis "
            f"({sk_text}); {eq_text}.")
    if faster and similar:
        return "reproduced", text
    if faster or similar:
        return "partly reproduced", text
    return "not reproduced", text


def verdict_8(st: dict, target: float, margin: float = 0.02,
              flat: float = 0.01) -> tuple[str, str]:
    s = st["local"]
    if not s.ran:
        return "not run", "local-only has not been run."
    final = float(np.mean(s.final_mean))
    gains = []
    for rounds, acc in s.curves:
        if len(rounds) < 2:
            continue
        late = np.flatnonzero(rounds >= 0.75 * rounds[-1])
        first = late[0] if len(late) >= 2 else len(rounds) - 2   # at least two evaluations
        gains.append(float(acc[-1] - acc[first]))
    gain = float(np.mean(gains)) if gains else math.nan
    below = final < target - margin
    is_flat = bool(gains) and gain < flat
    text = (f"final mean accuracy {final:.4f} (paper: about 0.87), "
            f"{'below' if below else 'not clearly below'} the {target:.0%} target "
            f"(margin {margin:.0%}); gain over the last 25% of rounds "
            f"{gain * 100:+.2f} points ({'flat' if is_flat else 'still rising'}: threshold "
            f"{flat * 100:.0f} point).")
    if below and is_flat:
        return "reproduced", text
    if below or is_flat:
        return "partly reproduced", text
    return "not reproduced", text


VERDICT_FNS: dict[int, Callable] = {1: verdict_1, 2: verdict_2, 3: verdict_3, 4: verdict_4,
                                    5: verdict_5, 6: verdict_6, 7: verdict_7, 8: verdict_8}


# ----------------------------------------------------------------------------- outputs

_CSV_FIELDS = ("setting", "seed", "status", "algorithm", "topology", "mixing", "partition",
               "sync", "link_failure_prob", "num_devices", "samples_per_device", "rounds",
               "eval_every", "target_accuracy", "rounds_to_target",
               "rounds_to_target_resolution", "target_hold_rounds", "rounds_to_stable_target",
               "rounds_to_stable_target_reason", "final_acc_min",
               "final_acc_mean", "final_acc_max", "rounds_run", "diameter", "spectral_gap",
               "slem", "num_edges", "wall_time_s", "compile_time_s", "eval_time_s", "backend",
               "workdir")


def write_csv(path: str, records: Sequence[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
        w.writeheader()
        for r in records:
            row = {k: r.get(k, r["config"].get(k)) for k in _CSV_FIELDS}
            row["status"] = r["status"].splitlines()[0] if r["status"] else ""
            w.writerow(row)


def claim_figures(claim: spec.Claim, stats: dict, figdir: str, target: float) -> list[str]:
    """Accuracy-vs-round and rounds-to-target figures of one claim; returns file names."""
    names = []
    groups = [(stats[n].label, [plotting.load_run(w) for w in stats[n].workdirs])
              for n in claim.settings if stats[n].workdirs]
    if groups:
        acc = f"claim{claim.number}_accuracy.png"
        plotting.plot_runs(groups, os.path.join(figdir, acc), target=target,
                           title=f"Claim {claim.number}: {claim.title}")
        names.append(acc)
    entries = [{"label": stats[n].label, "rounds": stats[n].rounds}
               for n in claim.settings if stats[n].ran]
    if entries and claim.number != 8:
        bars = f"claim{claim.number}_rounds.png"
        cap = max(stats[n].cap for n in claim.settings if stats[n].ran)
        res = "/".join(str(r) for r in sorted({stats[n].resolution for n in claim.settings
                                                if stats[n].ran}))
        plotting.plot_rounds_to_target(entries, os.path.join(figdir, bars), cap=cap,
                                       target=target,
                                       title=f"Claim {claim.number}: rounds to target "
                                             f"(resolution {res} rounds)")
        names.append(bars)
    return names


def partition_figures(stats: dict, figdir: str) -> list[tuple[int, str, str]]:
    """Heat maps of seed 0's partition for each kind of split used; returns
    (claim number, caption, file name) triples."""
    out = []
    for claim, name, caption in ((5, "complete", "IID, equal sizes"),
                                 (5, "shards2", "2 label shards"),
                                 (5, "dirichlet0.5", "Dirichlet(0.5)"),
                                 (7, "rgg_skew_data_size", "log-normal size skew")):
        s = stats.get(name)
        if s is None or not s.workdirs:
            continue
        src = os.path.join(s.workdirs[0], "partition.json")
        if os.path.exists(src):
            fname = f"partition_{name}.png"
            plotting.plot_partition(src, os.path.join(figdir, fname),
                                    title=f"{caption}: samples per device and class shares")
            out.append((claim, caption, fname))
    return out


def _settings_table(claim: spec.Claim, stats: dict) -> list[str]:
    lines = ["| setting | seeds reached | rounds to target (mean ± std) | rounds to stable "
             "target (mean ± std) | final acc min / mean | diameter | spectral gap | eval every "
             "(= resolution) | wall time / run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in claim.settings:
        s = stats[n]
        if not s.ran:
            lines.append(f"| {s.label} | – | not run | not run | – | – | – | – | – |")
            continue
        d, g = _mean(s.diameter), _mean(s.spectral_gap)
        if not algorithms.get(s.algorithm).uses_graph:   # FedAvg, local: no graph
            d = g = None
        lines.append(
            f"| {s.label} | {s.reached}/{s.n} | {s.rounds_text()} | {s.stable_text()} | "
            f"{s.acc_text()} | "
            f"{'–' if d is None else f'{d:.3g}'} | {'–' if g is None else f'{g:.3g}'} | "
            f"{s.eval_every} | {np.mean(s.wall):.0f} s |")
    return lines


def write_report(path: str, claims: Sequence[spec.Claim], stats: dict, verdicts: dict,
                 figures: dict, partitions: list, header: dict) -> None:
    L = ["# Reproducing the P2PL claims", ""]
    L.append(f"Generated by `{header['command']}` on {header['date']}.")
    L.append("")
    L.append(f"Scale: {header['scale']}. Rounds-to-target = the first evaluated round at "
             f"which **every** device's test accuracy is ≥ {header['target']:.0%}; its "
             f"resolution is eval_every (exact where every round is evaluated; elsewhere a "
             f"crossing that dips back below before the next evaluation is not seen, and with "
             f"eval_backfill the rounds of the window closed by the first evaluation at the "
             f"target are evaluated to find the first of them at it). Rounds-to-stable-target = "
             f"the first round from which every device stays ≥ the target for "
             f"{header['hold']} rounds, every one of them evaluated (exact where every round is "
             f"evaluated, or with eval_backfill when the hold is at least eval_every rounds). "
             f"Both are mean ± std over the seeds that reached them; the verdicts use "
             f"rounds-to-target. Final accuracies are at the last evaluated round (a run stops "
             f"when the hold is complete). Machine: {header['machine']}.")
    L.append("")
    if header.get("quick"):
        L += ["> **--quick**: a tiny pipeline check (8 devices, 3 rounds, lowered target). "
              "The verdicts below say nothing about the paper.", ""]
    L += ["## Summary", "", "| claim | verdict | evidence |", "| --- | --- | --- |"]
    for c in claims:
        v, why = verdicts[c.number]
        L.append(f"| {c.number}. {c.title} | **{v}** | {why.split('. ')[0].rstrip('.')} |")
    L.append("")
    for c in claims:
        v, why = verdicts[c.number]
        L += [f"## Claim {c.number}: {c.title}", "", f"> {c.statement}", ""]
        L += _settings_table(c, stats)
        L.append("")
        errors = [e for n in c.settings for e in stats[n].errors]
        if errors:
            L += ["Failed runs:", ""] + [f"- {e}" for e in errors] + [""]
        L += [f"**Verdict: {v}.** {why}", ""]
        for fig in figures.get(c.number, []):
            L += [f"![claim {c.number}](figures/{fig})", ""]
        for claim_number, caption, fig in partitions:
            if claim_number == c.number:
                L += [f"Partition, {caption} (seed 0):", "", f"![{caption}](figures/{fig})", ""]
    L += ["## Verdict rules", "",
          "Computed in `experiments/reproduce.py` (`verdict_1` … `verdict_8`) from the "
          "numbers above; a seed that never reached the target counts as cap + 1 rounds when "
          "settings are compared.", "",
          "1. reproduced if P2PL on the complete graph brings every device to the target in "
          "every seed (partly: some seeds).",
          "2. reproduced if |rounds(P2PL complete) − rounds(FedAvg)| ≤ max(20% of FedAvg, 1).",
          "3. reproduced if every sparse graph reaches the target in every seed, no sparse graph "
          "is faster than the complete one and rounds never decrease as the diameter grows "
          "(partly: ordered but some not reached, or all reached but not ordered).",
          "4. reproduced if 30% and 50% link failures (random geometric) and 50% (complete) "
          "still reach the target in every seed (partly: some).",
          "5. reproduced if 2-shard and Dirichlet(0.5) partitions reach the target in every "
          "seed (partly: some).",
          "6. reproduced if max norm sync needs fewer rounds (mean over seeds) than sync=none "
          "on the random geometric graph.",
          "7. reproduced if under skewed sizes data_size needs fewer rounds than metropolis and "
          "under equal sizes the two differ by ≤ max(20%, the rounds-to-target resolution) "
          "(partly: one of the two).",
          "8. reproduced if local-only ends ≥ 2 points below the target and gains < 1 point "
          "over the last 25% of rounds (partly: one of the two).", "",
          "With equal sizes `data_size` weights equal `uniform` weights exactly "
          "(w_nm = 1/(d_n+1)), so claim 7 runs `uniform` only under skew.", ""]
    with open(path, "w") as f:
        f.write("\n".join(L))


# ----------------------------------------------------------------------------- driver


@dataclasses.dataclass
class Outcome:
    """What `run_reproduction` did: the verdicts and one record per (setting, seed)."""

    verdicts: dict
    records: list
    workdir: str

    @property
    def failed(self) -> list[dict]:
        """Runs that did not finish normally (diverged, raised, or another summary status)."""
        return [r for r in self.records if r["status"] not in ("ok", "missing")]

    @property
    def pending(self) -> list[dict]:
        """Runs not on disk: held by another live process, or absent with --report_only."""
        return [r for r in self.records if r["status"] == "missing"]

    def failure_message(self) -> str:
        """One message: how many runs failed, why, and where their logs are."""
        failed = self.failed
        kinds: dict[str, int] = {}
        for r in failed:
            kind = {"config": "user error", "diverged": "diverged"}.get(
                r.get("failure", ""), "raised")
            kinds[kind] = kinds.get(kind, 0) + 1
        lines = [f"{len(failed)} of {len(self.records)} runs failed ("
                 + ", ".join(f"{n} {k}" for k, n in kinds.items())
                 + f"); the report is still written: {os.path.join(self.workdir, 'report.md')}"]
        for r in failed:
            where = r["workdir"]
            files = [f for f in (ERROR_FILE, "summary.json", "metrics.jsonl")
                     if os.path.exists(os.path.join(where, f))]
            reason = r["status"].removeprefix("error: ").splitlines()[0]
            lines.append(f"  {r['setting']} seed {r['seed']}: {reason} -- see {where}/"
                         + (f" ({', '.join(files)})" if files else ""))
        return "\n".join(lines)

    def exit_status(self) -> int:
        """0 every run finished; 2 every failed run failed on a user error (ConfigError, e.g.
        missing data); 3 otherwise (a run diverged or raised)."""
        failed = self.failed
        if not failed:
            return 0
        if all(r.get("failure") == "config" for r in failed):
            return EXIT_USER_ERROR
        return EXIT_DIVERGED


def reproduce(workdir: str, **options: Any) -> dict:
    """`run_reproduction(workdir, **options)`'s verdicts: {claim number: (verdict, reason)}."""
    return run_reproduction(workdir, **options).verdicts


def run_reproduction(workdir: str, *, seeds: int = 3, quick: bool = False,
                     rounds: int | None = None, target: float | None = None,
                     eval_every: int = -1, skew_sigma: float = 1.0,
                     claim_numbers: Sequence[int] | None = None, report_only: bool = False,
                     command: str = "python -m experiments.reproduce") -> Outcome:
    """Runs what the chosen claims need and writes results.csv, report.md and figures.

    The options, the workdir and every run's config are checked before anything runs
    (ConfigError naming the flag). A run that fails is recorded (see `run_job`) and the rest go
    on; `Outcome.failed` lists them. eval_every -1: see `resolve_eval_every`."""
    eval_every = resolve_eval_every(eval_every)
    check_options(seeds=seeds, rounds=rounds, target=target, eval_every=eval_every,
                  skew_sigma=skew_sigma, claim_numbers=claim_numbers)
    check_workdir(workdir)
    base = spec.base_config(quick=quick, rounds=rounds, target=target)
    table = spec.settings(quick=quick, skew_sigma=skew_sigma)
    claims = [c for c in spec.CLAIMS if not claim_numbers or c.number in claim_numbers]
    needed = list(dict.fromkeys(n for c in claims for n in c.settings))
    t0 = time.perf_counter()
    # Seed-major order: an interrupted or partial reproduction has whole seeds first.
    jobs = [(name, seed) for seed in range(seeds) for name in needed]
    for name, seed in jobs:
        try:
            validate(spec.make_config(base, table[name], seed, eval_every))
        except ConfigError as e:
            raise ConfigError(f"setting {name} (seed {seed}): {e}") from None
    done = {job: run_job(table[job[0]], base, job[1], workdir, eval_every,
                         report_only=report_only) for job in jobs}
    # Runs other processes finished meanwhile (see `claim`) are read back from disk.
    done.update({job: run_job(table[job[0]], base, job[1], workdir, eval_every,
                              report_only=True)
                 for job, r in done.items() if r["status"] == "missing"})
    records = {name: [done[(name, seed)] for seed in range(seeds)] for name in needed}
    stats = {n: make_stat(table[n], records[n]) for n in needed}
    write_csv(os.path.join(workdir, "results.csv"), [r for n in needed for r in records[n]])
    tgt = base.target_accuracy
    verdicts = {}
    for c in claims:
        fn = VERDICT_FNS[c.number]
        verdicts[c.number] = fn(stats, tgt)
    figdir = os.path.join(workdir, "figures")
    figures = {c.number: claim_figures(c, stats, figdir, tgt) for c in claims}
    partitions = partition_figures(stats, figdir)
    finished = [r for rs in records.values() for r in rs if r["status"] == "ok"]
    hours = sum(r.get("wall_time_s", 0) for r in finished) / 3600
    header = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "quick": quick,
        "target": tgt,
        "hold": base.target_hold_rounds,
        "scale": (f"{base.num_devices} devices × {base.samples_per_device} samples, MLP "
                  f"784-{'-'.join(map(str, base.hidden_sizes))}-10, batch {base.batch_size}, "
                  f"lr {base.learning_rate}, momentum {base.momentum}, {base.local_epochs} local "
                  f"epoch(s) per round, round cap {base.rounds}, seeds 0..{seeds - 1}, "
                  f"sparse settings evaluated every {eval_every} rounds (the resolution of "
                  f"their rounds-to-target), every round during a hold of "
                  f"{base.target_hold_rounds} rounds; "
                  f"{len(finished)} runs, {hours:.2f} h of run time in total"),
        "machine": (f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), "
                    f"JAX {jax.__version__} on {jax.default_backend()}"),
    }
    write_report(os.path.join(workdir, "report.md"), claims, stats, verdicts, figures,
                 partitions, header)
    logging.info("reproduce: %.0fs", time.perf_counter() - t0)
    return Outcome(verdicts, [r for n in needed for r in records[n]], workdir)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {argv[1:]}\nUsage: {USAGE}", EXIT_USER_ERROR)
    early_signals.install("experiments.reproduce", _WORKDIR.value)
    try:
        outcome = run_reproduction(
            _WORKDIR.value, seeds=_SEEDS.value, quick=_QUICK.value, rounds=_ROUNDS.value,
            target=_TARGET.value, eval_every=_EVAL_EVERY.value, skew_sigma=_SKEW_SIGMA.value,
            claim_numbers=parse_claims(_CLAIMS.value), report_only=_REPORT_ONLY.value,
            command="python -m experiments.reproduce " + " ".join(sys.argv[1:]))
    except ConfigError as e:
        cli.fail(str(e), EXIT_USER_ERROR)
    except KeyboardInterrupt as e:   # a run's round loop stopped on a signal and checkpointed
        cli.interrupted(e)
    interrupts.finished()   # the report is written: the exit status is the outcome's
    for number, (v, _) in sorted(outcome.verdicts.items()):
        print(f"claim {number}: {v}")
    print(f"report: {os.path.join(_WORKDIR.value, 'report.md')}")
    pending = outcome.pending
    if pending and not _REPORT_ONLY.value:
        print(f"{len(pending)} runs are still held by other processes; the last process to "
              f"finish writes the complete report (or rerun with --report_only)")
    status = outcome.exit_status()
    if status:
        cli.fail(outcome.failure_message(), status)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
