"""Runs one P2PL simulation.

  python -m experiments.train --config=configs/mnist.py --workdir=runs/mnist \
      [--config.FIELD=VALUE ...]

Rerunning the same command on the same workdir resumes from the newest checkpoint.

Exit status: 0 done; 2 a user error (bad flag or config value, missing or malformed data or
file, unwritable workdir, corrupt or mismatched checkpoint), printed as one message without a
traceback; 3 training diverged; 130 interrupted (Ctrl-C or SIGTERM; rerun to resume).
"""

import re
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from p2pl_jax.errors import ConfigError
from p2pl_jax.runner import DivergenceError, run

_CONFIG = config_flags.DEFINE_config_file("config", "configs/mnist.py", "Experiment config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs.", required=True)

EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


def _fail(message: str, status: int):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, except that a bad flag, config file or config override prints one
    message (no traceback) and exits with status 2."""
    try:
        rest = flags.FLAGS(argv)
        _CONFIG.value.to_dict()   # a config file that failed to load raises only when read
        return rest
    except flags.Error as e:
        message = str(e)
    except (AttributeError, KeyError) as e:   # ml_collections: an unknown --config.FIELD
        text = str(e).replace("\\'", "'").replace("\\n", " ").replace("\n", " ")
        field = re.search(r"'(\w+)'", text)
        hint = text[text.find("Did you mean"):].rstrip("'\" ") if "Did you mean" in text else ""
        message = (f"unknown config field {field.group(1)!r}. {hint}" if field
                   else f"bad config override: {text}")
    except Exception as e:  # noqa: BLE001 - the config file itself failed to load
        message = f"cannot load --config: {e}"
    _fail(f"{message}\nUsage: python -m experiments.train --config=CONFIG.py --workdir=DIR "
          "[--config.FIELD=VALUE ...]; the fields are listed in docs/config_reference.md",
          EXIT_USER_ERROR)


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {argv[1:]}; pass config fields as --config.FIELD=VALUE",
              EXIT_USER_ERROR)
    signal.signal(signal.SIGTERM, _sigterm)   # checkpoint and stop, like Ctrl-C
    try:
        config = _CONFIG.value
        summary = run(config, _WORKDIR.value)
    except ConfigError as e:
        _fail(str(e), EXIT_USER_ERROR)
    except DivergenceError as e:
        _fail(str(e), EXIT_DIVERGED)
    except KeyboardInterrupt:
        _fail(f"interrupted; rerun the same command to resume from the checkpoint in "
              f"{_WORKDIR.value}", EXIT_INTERRUPTED)
    rtt = summary["rounds_to_target"]
    logging.info("done: %d rounds, rounds_to_target=%s, final acc min %.4f mean %.4f, %.1fs",
                 summary["rounds_run"], rtt, summary["final_acc_min"] or 0.0,
                 summary["final_acc_mean"] or 0.0, summary["wall_time_s"])
    print(f"rounds_to_target={rtt} final_acc_min={summary['final_acc_min']} "
          f"final_acc_mean={summary['final_acc_mean']} wall_time_s={summary['wall_time_s']:.1f} "
          f"outputs in {_WORKDIR.value}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
