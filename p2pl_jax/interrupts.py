"""Ctrl-C and SIGTERM at any moment of a command-line run: exit 130 with a true message.

Python runs a signal handler only between bytecodes of the main thread, and a
KeyboardInterrupt raised there can land inside JAX or XLA (a compile, a garbage-collection
callback), where it is swallowed ("Exception ignored in ...") or leaves C++ state half torn down
(segfaults at exit). So nothing here raises from a handler. `install` (called first thing by
the CLIs) sets Python handlers that do nothing themselves and points the interpreter's wakeup
file descriptor (`signal.set_wakeup_fd`, written by the C-level handler the moment a signal
arrives, even while the main thread is inside a long XLA call) at a socket read by a watcher
thread. The watcher acts:

  outside the round loop (start-up: data, graph, simulator, compile, restore; between sweep
    groups; writing the summaries): prints one message naming the signal, the stage and the
    checkpoints that exist on disk (`describe`), and ends the process at once with os._exit(130).
    Nothing computed is lost: no round has run since the last checkpoint was written (or the
    run's files are complete), and every file is written atomically.
  inside the round loop (`graceful()`, entered by loop.StopRequest): the first signal is left to
    the loop's own handler, which finishes the round in progress, checkpoints it and stops (the
    CLI then exits 130); a second signal ends the process at once as above (the round in
    progress is lost; the newest checkpoint on disk, written atomically by orbax, is kept).

Without `install` (a library user, a notebook, the tests calling `runner.run`) nothing changes:
the loop's StopRequest handles signals itself and a second Ctrl-C raises KeyboardInterrupt.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable

from p2pl_jax import stages

EXIT_INTERRUPTED = 130
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    installed = False
    graceful = False      # the round loop's StopRequest is installed
    signals_in_loop = 0   # signals received while graceful
    loop_round = 0        # the round in progress (set by the loop)
    describe: Callable[[], str] = staticmethod(lambda: "")
    sockets: tuple = ()   # held so the wakeup socket stays open for the process


def installed() -> bool:
    return _State.installed


def _ignore(signum, frame) -> None:
    """The Python-level handler: the watcher thread acts on the signal."""


def install(describe: Callable[[], str]) -> None:
    """Makes SIGINT and SIGTERM end this process with status 130 and a true message, at any
    moment (see the module docstring). `describe()` returns what exists on disk, e.g. "the
    checkpoint of round 5 in runs/x/checkpoints is kept; rerun the same command to resume"; it
    runs in the watcher thread, so it must only read files. Main thread only; idempotent."""
    _State.describe = staticmethod(describe)
    if _State.installed or threading.current_thread() is not threading.main_thread():
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    for sig in _SIGNALS:
        signal.signal(sig, _ignore)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    _State.sockets = (reader, writer)
    _State.installed = True
    threading.Thread(target=_watch, args=(reader,), name="p2pl-signals", daemon=True).start()


def graceful(on: bool) -> None:
    """Called by the round loop: while on, the first signal is the loop's to handle."""
    _State.graceful, _State.signals_in_loop = on, 0


def set_round(round_index: int) -> None:
    """The round in progress (named by the message of a second signal)."""
    _State.loop_round = round_index


def finished() -> None:
    """The command's work is done and written: SIGINT and SIGTERM are ignored from now on, so
    the process ends with the status of what it did (a signal in the last milliseconds, during
    interpreter teardown, would otherwise kill it: Python restores the default action of every
    signal it handled, but leaves ignored ones ignored). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _watch(reader: socket.socket) -> None:
    while True:
        data = reader.recv(64)
        for signum in data:
            if signum not in _SIGNALS:
                continue
            if _State.graceful:
                _State.signals_in_loop += 1
                if _State.signals_in_loop == 1:
                    continue   # the loop finishes the round, checkpoints it and stops
                where = (f"a second time during round {_State.loop_round}: stopped at once "
                         f"(the round in progress is lost)")
            else:
                where = f"during {stages.describe()}"
            hard_exit(f"interrupted by {signal.Signals(signum).name} {where}")


def hard_exit(message: str) -> None:
    """Prints `message` and what exists on disk, then ends the process with status 130 without
    running interpreter teardown (no Python code of the main thread runs again)."""
    try:
        detail = _State.describe()
    except Exception as e:  # noqa: BLE001 - the exit must happen whatever describe does
        detail = f"(could not list the checkpoints: {e})"
    text = f"error: {message}; {detail}\n" if detail else f"error: {message}\n"
    try:
        os.write(2, text.encode())
    finally:
        os._exit(EXIT_INTERRUPTED)
