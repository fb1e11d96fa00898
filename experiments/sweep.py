"""Runs a sweep as one compiled program per group (replicas on a leading batch axis).

  python -m experiments.sweep --config=configs/mnist.py --workdir=runs/sweep \
      --sweep.seed=0,1,2 --sweep.learning_rate=0.02,0.05 [--config.FIELD=VALUE ...]

Sweepable fields: seed, learning_rate, momentum, link_failure_prob, dropout_prob, mixing,
consensus_step, algorithm.
A --sweep.FIELD of another field is a user error; a --config.FIELD or --sweep.FIELD given more
than once takes its last value, like any absl flag (see experiments/argv_check.py).
Each replica writes workdir/<field=value,...>/ with the files of a separate run. Each compiled
group checkpoints into its first replica's folder (sweep_checkpoints/); rerunning the same
command resumes.

Exit status as experiments.train: 0 done (also when some replicas diverged: see their
summary.json); 2 a user error, one message without a traceback; 130 interrupted (Ctrl-C or
SIGTERM: the group in progress is checkpointed after its current round; rerun to resume).
"""

from experiments import early_signals  # noqa: F401 - first: the signal watcher (see there)

from absl import app, flags
from ml_collections import config_flags

from experiments import argv_check, cli
from p2pl_jax import interrupts
from p2pl_jax.errors import ConfigError
from p2pl_jax.sweep import SWEEPABLE, parse_values, run_sweep

USAGE = ("python -m experiments.sweep --config=CONFIG.py --workdir=DIR --sweep.FIELD=V1,V2,... "
         f"[--config.FIELD=VALUE ...]; sweepable fields: {', '.join(SWEEPABLE)}")

try:   # ml_collections parses --config.FIELD here when --config= is not given
    with argv_check.define_time_errors("config"):
        _CONFIG = config_flags.DEFINE_config_file("config", "configs/mnist.py",
                                                  "Experiment config.")
except ConfigError as err:
    cli.fail(f"{err}\nUsage: {USAGE}", cli.EXIT_USER_ERROR)
# One plain string flag per sweepable field: another --sweep.FIELD is an unknown flag.
_SWEEP = {f: flags.DEFINE_string(f"sweep.{f}", "", f"Comma-separated values of {f} to sweep, "
                                 f"e.g. --sweep.{f}=V1,V2") for f in SWEEPABLE}
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs.", required=True)

_parse = cli.flags_parser(USAGE, _CONFIG)


def parse_flags(argv: list[str]) -> list[str]:
    """cli.flags_parser's parsing, with the checks of argv_check: a --sweep.FIELD of a field
    that cannot be swept prints one message naming it and exits with status 2; a --config.FIELD
    or --sweep.FIELD given more than once takes its last value (a tuple field too)."""
    try:
        argv_check.check_known(argv, "sweep", SWEEPABLE, "sweepable fields")
    except ConfigError as e:
        cli.fail(f"{e}\nUsage: {USAGE}", cli.EXIT_USER_ERROR)
    return _parse(argv)   # --sweep.FIELD are plain flags: the last value wins, absl's rule


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {argv[1:]}; pass config fields as --config.FIELD=VALUE "
                 "and swept values as --sweep.FIELD=V1,V2", cli.EXIT_USER_ERROR)
    early_signals.install("experiments.sweep", _WORKDIR.value)
    base = _CONFIG.value
    try:
        # Fields in sorted order (replica folders are named field=value,... in this order);
        # a field given empty is an error of parse_values.
        values = {f: parse_values(f, h.value, base[f]) for f, h in sorted(_SWEEP.items())
                  if h.present}
        summaries = run_sweep(base, values, _WORKDIR.value)
    except ConfigError as e:
        cli.fail(str(e), cli.EXIT_USER_ERROR)
    except KeyboardInterrupt as e:   # the group in progress stopped on a signal and checkpointed
        cli.interrupted(e)
    interrupts.finished()   # everything is written: the sweep ends with status 0
    for s in summaries:
        print(f"rounds_to_target={s['rounds_to_target']} (resolution "
              f"{s['rounds_to_target_resolution']} rounds) rounds_to_stable_target="
              f"{s['rounds_to_stable_target']} final_acc_mean={s['final_acc_mean']}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
