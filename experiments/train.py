"""Runs one P2PL simulation.

  python -m experiments.train --config=configs/mnist.py --workdir=runs/mnist \
      [--config.FIELD=VALUE ...]

Rerunning the same command on the same workdir resumes from the newest checkpoint.

Exit status: 0 done; 2 a user error (bad flag or config value, missing or malformed data or
file, unwritable workdir, corrupt or mismatched checkpoint), printed as one message without a
traceback; 3 training diverged; 130 interrupted (Ctrl-C or SIGTERM; rerun to resume); 1 a
process of a multi-process run (distributed=True) failed, e.g. another process died (rerun
every process to resume).
"""

from experiments import early_signals  # noqa: F401 - first: the signal watcher (see there)

import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import argv_check, cli
from experiments.cli import EXIT_DIVERGED, EXIT_USER_ERROR
from p2pl_jax import distributed, interrupts
from p2pl_jax.errors import ConfigError
from p2pl_jax.runner import DivergenceError, run

try:   # ml_collections parses --config.FIELD here when --config= is not given
    with argv_check.define_time_errors("config"):
        _CONFIG = config_flags.DEFINE_config_file("config", "configs/mnist.py",
                                                  "Experiment config.")
except ConfigError as err:
    cli.fail(str(err), EXIT_USER_ERROR)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs.", required=True)

_fail = cli.fail
parse_flags = cli.flags_parser(
    "python -m experiments.train --config=CONFIG.py --workdir=DIR [--config.FIELD=VALUE ...]; "
    "the fields are listed in docs/config_reference.md", _CONFIG)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {argv[1:]}; pass config fields as --config.FIELD=VALUE",
              EXIT_USER_ERROR)
    early_signals.install("experiments.train", _WORKDIR.value)
    try:
        config = _CONFIG.value
        summary = run(config, _WORKDIR.value)
    except ConfigError as e:
        _fail(str(e), EXIT_USER_ERROR, agreed=isinstance(e, distributed.AgreedError))
    except DivergenceError as e:
        _fail(str(e), EXIT_DIVERGED)
    except KeyboardInterrupt as e:   # the round loop stopped on a signal and checkpointed
        cli.interrupted(e)
    except Exception as e:  # noqa: BLE001 - one process of a multi-process run failed
        if not distributed.joined():
            raise
        traceback.print_exc()
        cause = (str(e).strip().splitlines() or [""])[0][:200]
        _fail(f"this process of the distributed run failed ({type(e).__name__}: {cause}); "
              "when another process died first, its output names the cause. The checkpoints "
              "written so far are kept: rerun the same command on every process to resume", 1)
    interrupts.finished()   # everything is written: the run ends with status 0
    rtt = summary["rounds_to_target"]
    logging.info("done: %d rounds, rounds_to_target=%s, final acc min %.4f mean %.4f, %.1fs",
                 summary["rounds_run"], rtt, summary["final_acc_min"] or 0.0,
                 summary["final_acc_mean"] or 0.0, summary["wall_time_s"])
    print(f"rounds_to_target={rtt} (resolution {summary['rounds_to_target_resolution']} "
          f"rounds) rounds_to_stable_target={summary['rounds_to_stable_target']} "
          f"final_acc_min={summary['final_acc_min']} "
          f"final_acc_mean={summary['final_acc_mean']} wall_time_s={summary['wall_time_s']:.1f} "
          f"outputs in {_WORKDIR.value}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
