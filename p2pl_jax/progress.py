"""Progress reporting: round, accuracy min/mean, rounds per second and ETA.

Follows absl logging: every evaluated round is one `logging.info` line (with the rate and ETA).
When stderr is a terminal, a live status line is also redrawn in place between log lines (at most
`refresh_s` apart; drawing waits for the round in flight, so the rate is real, not the dispatch
rate). Where stderr is not a terminal (files, CI) a status line is logged every `log_every_s`
seconds between evaluated rounds instead. `enabled=False` (`--config.progress=False`) keeps only
warnings and the start and end lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from absl import logging


def format_duration(seconds: float) -> str:
    """1:02:03 / 2:03 style; '?' when unknown."""
    if seconds != seconds or seconds == float("inf") or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Tracks a run of rounds `start_round + 1 .. total_rounds` and reports on it.

    Args:
      total_rounds: the round cap; start_round: rounds already done (resume).
      enabled: report at all (False: silent).
      stream: where the live line goes (default sys.stderr); live only if it is a terminal.
      refresh_s: minimum seconds between redraws of the live line.
      log_every_s: without a terminal, seconds between status lines on unevaluated rounds.
      clock: a monotonic clock (tests pass a fake).
    """

    def __init__(self, total_rounds: int, start_round: int = 0, *, enabled: bool = True,
                 stream: TextIO | None = None, refresh_s: float = 0.5, log_every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.total = total_rounds
        self.start_round = start_round
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.live = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.refresh_s = refresh_s
        self.log_every_s = log_every_s
        self._clock = clock
        self._t0 = clock()
        self._last_draw = -float("inf")
        self._last_log = self._t0
        self._acc: tuple[float, float] | None = None
        self._drawn = False

    def start(self) -> None:
        """Starts the clock (call after compilation, before the first round)."""
        self._t0 = self._last_log = self._clock()

    def rate(self, round_index: int) -> float:
        """Rounds per second since `start`."""
        dt = self._clock() - self._t0
        done = round_index - self.start_round
        return done / dt if dt > 0 and done > 0 else float("nan")

    def status(self, round_index: int) -> str:
        """'round 12/100  acc min 0.8123 mean 0.8456  3.21 rounds/s  ETA 0:27'."""
        rate = self.rate(round_index)
        eta = (self.total - round_index) / rate if rate == rate and rate > 0 else float("nan")
        acc = (f"  acc min {self._acc[0]:.4f} mean {self._acc[1]:.4f}"
               if self._acc is not None else "")
        rate_s = f"{rate:.3g}" if rate == rate else "?"
        return (f"round {round_index}/{self.total}{acc}  {rate_s} rounds/s  "
                f"ETA {format_duration(eta)}")

    def due(self) -> bool:
        """Whether `update` on an unevaluated round would report (so the caller may wait for the
        round in flight first)."""
        if not self.enabled:
            return False
        now = self._clock()
        if self.live:
            return now - self._last_draw >= self.refresh_s
        return now - self._last_log >= self.log_every_s

    def update(self, round_index: int, record: dict | None = None) -> None:
        """Reports a finished round; `record` is its metrics when it was evaluated."""
        if not self.enabled:
            return
        if record is not None:
            self._acc = (record["acc_min"], record["acc_mean"])
            self.log("%s  loss %.4f  consensus %.3g", self.status(round_index),
                     record["test_loss"], record["consensus_distance"])
        elif not self.due():
            return
        elif not self.live:
            self.log("%s", self.status(round_index))
        if self.live:
            self._draw(self.status(round_index))

    def log(self, msg: str, *args) -> None:
        """logging.info that first clears the live line (redrawn by the next update)."""
        self.clear()
        logging.info(msg, *args)
        self._last_log = self._clock()

    def _draw(self, line: str) -> None:
        self.stream.write("\r" + line + "\033[K")
        self.stream.flush()
        self._drawn = True
        self._last_draw = self._clock()

    def clear(self) -> None:
        """Erases the live line, if one is drawn."""
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False
