"""What the command lines share: exit statuses, one-message user errors, SIGTERM as Ctrl-C.

Exit status: 0 done; 2 a user error (bad flag or config value, missing or malformed data or
file, unwritable workdir, corrupt or mismatched checkpoint), printed as one message without a
traceback; 3 training diverged; 130 interrupted (Ctrl-C or SIGTERM; rerun to resume).
"""

import glob
import os
import re
import sys
from collections.abc import Callable

from absl import flags

from experiments import argv_check
from p2pl_jax import distributed, interrupts, stages
from p2pl_jax.errors import ConfigError

EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


def fail(message: str, status: int, *, agreed: bool = False):
    """Prints one error line and exits with `status`. In a multi-process run, `agreed` (every
    process fails here at once) leaves through JAX's shutdown barrier; otherwise the process
    ends at once (distributed.exit_if_joined)."""
    interrupts.finished()   # a signal now must not replace this message and status
    print(f"error: {message}", file=sys.stderr)
    if agreed:
        distributed.shutdown_together()
    distributed.exit_if_joined(status)
    sys.exit(status)


def flags_parser(usage: str, *config_flags) -> Callable[[list[str]], list[str]]:
    """absl's flag parsing, except that a bad flag, config file or config override prints one
    message (no traceback) ending with `usage` and exits with status 2."""

    def parse(argv: list[str]) -> list[str]:
        try:
            rest = flags.FLAGS(argv)
            # a tuple field given twice is concatenated by absl: keep the last, like any flag
            argv_check.last_one_wins(argv, [flag.name for flag in config_flags])
            for flag in config_flags:   # a config file that failed to load raises when read
                flag.value.to_dict()
            return rest
        except (flags.Error, ConfigError) as e:
            message = str(e)
        except (AttributeError, KeyError) as e:   # ml_collections: an unknown --config.FIELD
            text = str(e).replace("\\'", "'").replace("\\n", " ").replace("\n", " ")
            field = re.search(r"'(\w+)'", text)
            hint = (text[text.find("Did you mean"):].rstrip("'\" ") if "Did you mean" in text
                    else "")
            message = (f"unknown config field {field.group(1)!r}. {hint}" if field
                       else f"bad config override: {text}")
        except Exception as e:  # noqa: BLE001 - the config file itself failed to load
            message = f"cannot load --config: {e}"
        if "Traceback (most recent call last)" in message:   # config_flags embeds the trace
            lines = message.strip().splitlines()
            message = f"{lines[0].rstrip(':')}: {lines[-1]}"
        fail(f"{message}\nUsage: {usage}", EXIT_USER_ERROR)

    return parse


def checkpoints_on_disk(pattern: str) -> str:
    """What the checkpoint folders matching `pattern` (a glob) hold, in words, read from the
    folder names only (orbax renames a step's folder into place once it is complete)."""
    found = []
    for folder in sorted(glob.glob(pattern)):
        rounds = [int(n) for n in os.listdir(folder) if n.isdigit()] \
            if os.path.isdir(folder) else []
        if rounds:
            found.append(f"round {max(rounds)} in {folder}")
    if not found:
        return (f"no checkpoint exists ({pattern} holds none); rerun the same command to "
                "start again")
    return (f"the checkpoint{'s' if len(found) > 1 else ''} of {', '.join(found)} "
            f"{'are' if len(found) > 1 else 'is'} kept; rerun the same command to resume")


def install_interrupts(checkpoint_pattern: str) -> None:
    """Ctrl-C and SIGTERM at any moment end the command with status 130 and a true message
    (p2pl_jax.interrupts); `checkpoint_pattern` globs the checkpoint folders it describes."""
    interrupts.install(lambda: checkpoints_on_disk(checkpoint_pattern))
    stages.reached("start")


def interrupted(error: KeyboardInterrupt) -> None:
    """Ends the command after the round loop stopped on a signal (and checkpointed). In a
    multi-process run every process stopped after the same round (loop: distributed.agree),
    so they leave through JAX's shutdown barrier together."""
    distributed.shutdown_together()
    interrupts.hard_exit(f"interrupted ({error})" if str(error) else "interrupted")

