"""Runs one P2PL simulation.

  python -m experiments.train --config=configs/mnist.py --workdir=runs/mnist \
      [--config.FIELD=VALUE ...]

User errors (bad config values, missing data, unreadable files) print one clear message and exit
with status 2, without a traceback.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from p2pl_jax.errors import ConfigError
from p2pl_jax.runner import DivergenceError, run

_CONFIG = config_flags.DEFINE_config_file("config", "configs/mnist.py", "Experiment config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs.", required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        summary = run(_CONFIG.value, _WORKDIR.value)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except DivergenceError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    rtt = summary["rounds_to_target"]
    logging.info("done: %d rounds, rounds_to_target=%s, final acc min %.4f mean %.4f, %.1fs",
                 summary["rounds_run"], rtt, summary["final_acc_min"] or 0.0,
                 summary["final_acc_mean"] or 0.0, summary["wall_time_s"])
    print(f"rounds_to_target={rtt} final_acc_min={summary['final_acc_min']} "
          f"final_acc_mean={summary['final_acc_mean']} wall_time_s={summary['wall_time_s']:.1f} "
          f"outputs in {_WORKDIR.value}")


if __name__ == "__main__":
    app.run(main)
