"""Runs a sweep as one compiled program per group (replicas on a leading batch axis).

  python -m experiments.sweep --config=configs/mnist.py --workdir=runs/sweep \
      --sweep.seed=0,1,2 --sweep.learning_rate=0.02,0.05 [--config.FIELD=VALUE ...]

Sweepable fields: seed, learning_rate, momentum, link_failure_prob, dropout_prob, mixing,
consensus_step, algorithm.
Each replica writes workdir/<field=value,...>/ with the files of a separate run. Each compiled
group checkpoints into its first replica's folder (sweep_checkpoints/); rerunning the same
command resumes.

Exit status as experiments.train: 0 done (also when some replicas diverged: see their
summary.json); 2 a user error, one message without a traceback; 130 interrupted (Ctrl-C or
SIGTERM: the group in progress is checkpointed after its current round; rerun to resume).
"""

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from p2pl_jax.errors import ConfigError
from p2pl_jax.sweep import SWEEPABLE, parse_values, run_sweep

_CONFIG = config_flags.DEFINE_config_file("config", "configs/mnist.py", "Experiment config.")
_SWEEP = config_flags.DEFINE_config_dict(
    "sweep", ml_collections.ConfigDict({f: "" for f in SWEEPABLE}),
    "Comma-separated values per swept field, e.g. --sweep.seed=0,1,2")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs.", required=True)

parse_flags = cli.flags_parser(
    "python -m experiments.sweep --config=CONFIG.py --workdir=DIR --sweep.FIELD=V1,V2,... "
    f"[--config.FIELD=VALUE ...]; sweepable fields: {', '.join(SWEEPABLE)}", _CONFIG, _SWEEP)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {argv[1:]}; pass config fields as --config.FIELD=VALUE "
                 "and swept values as --sweep.FIELD=V1,V2", cli.EXIT_USER_ERROR)
    cli.sigterm_as_interrupt()   # checkpoint and stop, like Ctrl-C
    base = _CONFIG.value
    try:
        values = {f: parse_values(f, v, base[f]) for f, v in _SWEEP.value.items() if v}
        summaries = run_sweep(base, values, _WORKDIR.value)
    except ConfigError as e:
        cli.fail(str(e), cli.EXIT_USER_ERROR)
    except KeyboardInterrupt:
        cli.fail(f"interrupted; rerun the same command to resume from the checkpoints in "
                 f"{_WORKDIR.value}/*/sweep_checkpoints", cli.EXIT_INTERRUPTED)
    for s in summaries:
        print(f"rounds_to_target={s['rounds_to_target']} final_acc_mean={s['final_acc_mean']}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
