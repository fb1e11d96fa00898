"""Checks of the command line that absl and ml_collections do not make.

A config field given more than once: the last value wins, for every field. absl keeps the last
value of a scalar flag, and so does ml_collections for a scalar config field, but a
tuple-valued field (hidden_sizes) is an absl multi flag, whose repeats ml_collections
concatenates: `--config.hidden_sizes="(16,)" --config.hidden_sizes="(8,)"` gave (16, 8).
`last_one_wins` re-reads such a field from its last value, so it gives (8,), as
`--config.learning_rate=0.1 --config.learning_rate=0.2` gives 0.2. Last-one-wins rather than
an error because appending an override to a base command is how this project's own commands are
varied (tests/test_loop.py reruns a sweep with `--sweep.seed=0,2` after the base command's
`--sweep.seed=0,1`; scripts/run_mnist.sh lets a user's --workdir replace its own), and a field
that behaved differently from every other flag is what surprised.

ml_collections also parses a config flag's overrides while the flag is *defined* (at import),
when `--NAME=` is not on the command line: always for a DEFINE_config_dict flag, and for a
DEFINE_config_file flag left at its default. An unknown field then raises there, before any
flags_parser runs; `define_time_errors` turns that into a ConfigError.

The checks raise ConfigError (the CLIs print its message and exit with status 2).
"""

import contextlib
import re
from collections.abc import Iterator, Sequence

from absl import flags

from p2pl_jax.errors import ConfigError


def _expanded(argv: Sequence[str]) -> list[str]:
    """argv with --flagfile=FILE expanded (as ml_collections does), up to a '--'."""
    try:
        argv = flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False)
    except flags.Error:
        pass   # a missing flagfile: absl reports it when it parses argv
    argv = list(argv)
    return argv[:argv.index("--")] if "--" in argv else argv


def override_fields(argv: Sequence[str], prefix: str) -> list[str]:
    """The FIELD of every `--PREFIX.FIELD[=VALUE]` (also `-PREFIX.FIELD`, `--noPREFIX.FIELD`)
    in argv (argv[0] is the program), in order, repeats included."""
    pattern = re.compile(rf"^--?(?:no)?{re.escape(prefix)}\.([^=]+)")
    return [m.group(1) for arg in _expanded(argv)[1:] if (m := pattern.match(arg))]


def repeated_fields(argv: Sequence[str], prefixes: Sequence[str]) -> list[str]:
    """`PREFIX.FIELD` for every override given more than once, in order of first appearance."""
    out = []
    for prefix in prefixes:
        seen: set[str] = set()
        for field in override_fields(argv, prefix):
            if field in seen and f"{prefix}.{field}" not in out:
                out.append(f"{prefix}.{field}")
            seen.add(field)
    return out


def _last_value(argv: Sequence[str], name: str) -> str | None:
    """The value of the last `--NAME=VALUE` or `--NAME VALUE` in argv (already expanded)."""
    pattern = re.compile(rf"^--?{re.escape(name)}(=(.*))?$", re.DOTALL)
    value = None
    for i, arg in enumerate(argv):
        m = pattern.match(arg)
        if m and m.group(1) is not None:
            value = m.group(2)
        elif m and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def last_one_wins(argv: Sequence[str], prefixes: Sequence[str],
                  flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """Call after `flag_values(argv)`: every `--PREFIX.FIELD` given more than once whose flag is
    a multi flag (a tuple-valued config field, which absl concatenated) is re-read from its
    last value, as a scalar field already is. Returns the `PREFIX.FIELD`s given more than
    once."""
    repeated = repeated_fields(argv, prefixes)
    expanded = _expanded(argv)
    for name in repeated:
        flag = flag_values[name] if name in flag_values else None
        value = _last_value(expanded, name)
        if isinstance(flag, flags.MultiFlag) and value is not None:
            flag.present = 0   # MultiFlag.parse appends to a present flag, else replaces
            flag.parse(value)
    return repeated


def check_known(argv: Sequence[str], prefix: str, allowed: Sequence[str], what: str) -> None:
    """Raises ConfigError naming the first `--PREFIX.FIELD` whose FIELD is not in `allowed`;
    `what` names the allowed fields in the message (e.g. "sweepable fields")."""
    unknown = [f for f in override_fields(argv, prefix) if f not in allowed]
    if unknown:
        raise ConfigError(f"--{prefix}.{unknown[0]} is not supported; {what}: "
                          f"{', '.join(allowed)}")


def override_error_message(e: BaseException, name: str = "config") -> str:
    """One line for what ml_collections raises about config flag `name`: an unknown field
    (KeyError/AttributeError, with its "Did you mean" hint), a config file that fails to load,
    or another bad override."""
    text = " ".join(str(e).replace("\\'", "'").replace("\\n", " ").split())
    if isinstance(e, (KeyError, AttributeError)):
        field = re.search(r"'(\w+)'", text)
        hint = (" " + text[text.find("Did you mean"):].rstrip("'\" ")
                if "Did you mean" in text else "")
        if field:
            return f"unknown {name} field {field.group(1)!r} (--{name}.{field.group(1)}).{hint}"
    if isinstance(e, OSError) or "Failed loading config file" in text:
        return f"cannot load --{name} (a path relative to the current directory): {text}"
    return f"bad --{name}.FIELD override: {text}"


@contextlib.contextmanager
def define_time_errors(name: str = "config") -> Iterator[None]:
    """Wraps a config_flags.DEFINE_config_* call of flag `name`: what ml_collections raises
    while defining it (an unknown `--NAME.FIELD`, a default config file that fails to load)
    becomes a ConfigError with one line. The DEFINE stays in the caller's module, so that
    absl's --help lists the flag there."""
    try:
        yield
    except flags.Error as e:
        raise ConfigError(str(e)) from e
    except Exception as e:  # noqa: BLE001 - ml_collections raises many kinds
        raise ConfigError(override_error_message(e, name)) from e
