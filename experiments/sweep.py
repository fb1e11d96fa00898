"""Runs a sweep as one compiled program (replicas on a leading batch axis).

  python -m experiments.sweep --config=configs/mnist.py --workdir=runs/sweep \
      --sweep.seed=0,1,2 --sweep.learning_rate=0.02,0.05 [--config.FIELD=VALUE ...]

Sweepable fields: seed, learning_rate, momentum, link_failure_prob, dropout_prob, mixing.
Each replica writes workdir/<field=value,...>/ with the files of a separate run.
"""

import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from p2pl_jax.errors import ConfigError
from p2pl_jax.sweep import SWEEPABLE, parse_values, run_sweep

_CONFIG = config_flags.DEFINE_config_file("config", "configs/mnist.py", "Experiment config.")
_SWEEP = config_flags.DEFINE_config_dict(
    "sweep", ml_collections.ConfigDict({f: "" for f in SWEEPABLE}),
    "Comma-separated values per swept field, e.g. --sweep.seed=0,1,2")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs.", required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    base = _CONFIG.value
    try:
        values = {f: parse_values(f, v, base[f]) for f, v in _SWEEP.value.items() if v}
        summaries = run_sweep(base, values, _WORKDIR.value)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for s in summaries:
        print(f"rounds_to_target={s['rounds_to_target']} final_acc_mean={s['final_acc_mean']}")


if __name__ == "__main__":
    app.run(main)
