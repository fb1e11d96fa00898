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

import dataclasses
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
from absl import app, flags, logging

from configs import reproduce as spec
from experiments import cli
from experiments.cli import EXIT_DIVERGED, EXIT_USER_ERROR
# Re-exported: the rest of the code and the tests use these as experiments.reproduce.<name>.
from experiments.reproduce_jobs import (  # noqa: F401
    CPU_EVAL_EVERY, ERROR_FILE, MAX_SKEW_SIGMA, _pid_alive, _plan, _read_json, check_options,
    check_workdir, claim, parse_claims, resolve_eval_every, run_dir, run_job, run_or_reuse,
    write_error)
from experiments.reproduce_report import (  # noqa: F401
    _CSV_FIELDS, _settings_table, claim_figures, partition_figures, write_csv, write_report)
from experiments.reproduce_verdicts import (  # noqa: F401
    MISSING, VERDICT_FNS, VERDICTS, Stat, _converges, _load_curve, _mean, _missing, _monotone,
    _rounds, make_stat, verdict_1, verdict_2, verdict_3, verdict_4, verdict_5, verdict_6,
    verdict_7, verdict_8)
from p2pl_jax import interrupts
from p2pl_jax.errors import ConfigError
from p2pl_jax.runner import DivergenceError, validate  # noqa: F401

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

USAGE = ("python -m experiments.reproduce --workdir=DIR [--seeds=3] [--rounds=100] [--quick] "
         "[--claims=1,3] [--eval_every=2] [--skew_sigma=1.0] [--target=0.97] [--report_only]")
parse_flags = cli.flags_parser(USAGE)


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
