"""What the command lines share: exit statuses, one-message user errors, SIGTERM as Ctrl-C.

Exit status: 0 done; 2 a user error (bad flag or config value, missing or malformed data or
file, unwritable workdir, corrupt or mismatched checkpoint), printed as one message without a
traceback; 3 training diverged; 130 interrupted (Ctrl-C or SIGTERM; rerun to resume).
"""

import re
import signal
import sys
from collections.abc import Callable

from absl import flags

EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


def fail(message: str, status: int):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def flags_parser(usage: str, *config_flags) -> Callable[[list[str]], list[str]]:
    """absl's flag parsing, except that a bad flag, config file or config override prints one
    message (no traceback) ending with `usage` and exits with status 2."""

    def parse(argv: list[str]) -> list[str]:
        try:
            rest = flags.FLAGS(argv)
            for flag in config_flags:   # a config file that failed to load raises when read
                flag.value.to_dict()
            return rest
        except flags.Error as e:
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
        fail(f"{message}\nUsage: {usage}", EXIT_USER_ERROR)

    return parse


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def sigterm_as_interrupt() -> None:
    """SIGTERM outside the round loop stops like Ctrl-C (the loop itself checkpoints first)."""
    signal.signal(signal.SIGTERM, _sigterm)
