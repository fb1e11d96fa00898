"""User-facing errors.

`ConfigError` is raised for every bad input a user can fix (a config field, a file, missing data).
Entry points catch it and print its message without a traceback.
"""


class ConfigError(ValueError):
    """A user input is invalid. The message names the field and what is allowed."""


def check_choice(field: str, value, allowed) -> None:
    """Raises ConfigError unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ConfigError(f"{field}={value!r} is not supported; allowed values: "
                                            f"{', '.join(repr(a) for a in allowed)}")


def check_range(field: str, value, lo=None, hi=None, *, integer: bool = False,
                                lo_open: bool = False, hi_open: bool = False) -> None:
    """Raises ConfigError unless lo <= value <= hi (open ends where asked) and of the right type."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{field}={value!r} must be a number")
    if integer and int(value) != value:
        raise ConfigError(f"{field}={value!r} must be an integer")
    if value != value:  # NaN
        raise ConfigError(f"{field}={value!r} must be a finite number")
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        lo_s = "-inf" if lo is None else repr(lo)
        hi_s = "inf" if hi is None else repr(hi)
        lb = "(" if lo_open or lo is None else "["
        rb = ")" if hi_open or hi is None else "]"
        raise ConfigError(f"{field}={value!r} is out of range; allowed: {lb}{lo_s}, {hi_s}{rb}")
