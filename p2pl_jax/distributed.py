"""Multi-process runs: one program on every process, through JAX's distributed runtime.

With `distributed=True` (and `shard=True`) every process (one per host, or one per GPU) runs the
same `experiments.train` command. `initialize` connects them before any JAX computation:
`coordinator_address`, `num_processes` and `process_id` name the cluster, or, left unset, JAX
detects it (SLURM, Open MPI, TPU pod slices, ...). The mesh then spans every process's
accelerators, and the device axis of the simulation is split over all of them.

What each process does (docs/multihost.md):
  - builds the same data, partition, graph and initial state from the config and seed;
    `check_same` compares a digest of them across processes and stops all with a ConfigError
    naming what differs (e.g. different configs or data on different hosts);
  - runs every round and every evaluation (one SPMD program; XLA moves the rows consensus needs
    between processes); `host` gathers sharded results to every process, so every process takes
    the same decisions (evaluate, stop at the target, diverge);
  - writes nothing to the workdir unless it is process 0 (`is_primary`; writers.py), except
    orbax checkpoints, which every process saves and restores together (checkpoint.py);
  - `agree` makes a signal to any one process stop them all after the same round.

On one machine several CPU processes can run this (scripts/multihost_local.sh), with CPU
collectives through gloo; the tests do exactly that (tests/test_multihost.py).
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
import time

import jax
import numpy as np

from p2pl_jax.errors import ConfigError


def active() -> bool:
    """Whether this program runs as one process of several."""
    return jax.process_count() > 1


def is_primary() -> bool:
    """Process 0: the one that writes the workdir's files."""
    return jax.process_index() == 0


def validate(c) -> None:
    """The cluster fields: set together or not at all, and only with distributed=True."""
    named = {"coordinator_address": bool(c.coordinator_address),
             "num_processes": c.num_processes != 0, "process_id": c.process_id != -1}
    if not c.distributed:
        set_ = [k for k, v in named.items() if v]
        if set_:
            raise ConfigError(f"{', '.join(set_)} name the processes of a multi-process run; "
                              "allowed: distributed=True with them, or leave them unset")
        return
    if not c.shard:
        raise ConfigError("distributed=True splits the device axis over every process's "
                          "accelerators; allowed: shard=True with it")
    if any(named.values()) and not all(named.values()):
        missing = [k for k, v in named.items() if not v]
        raise ConfigError(f"{', '.join(missing)} unset while the other cluster fields are set; "
                          "allowed: coordinator_address (host:port), num_processes (>= 1) and "
                          "process_id (0 .. num_processes - 1) together, or none of them (JAX "
                          "detects the cluster: SLURM, Open MPI, TPU pod slices)")
    if all(named.values()):
        host, _, port = str(c.coordinator_address).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"coordinator_address={c.coordinator_address!r}: allowed "
                              "host:port, e.g. 10.0.0.1:1234 (the port in 1 .. 65535)")
        if not isinstance(c.num_processes, int) or c.num_processes < 1:
            raise ConfigError(f"num_processes={c.num_processes}: allowed an integer >= 1")
        if not isinstance(c.process_id, int) or not 0 <= c.process_id < c.num_processes:
            raise ConfigError(f"process_id={c.process_id}: allowed 0 .. "
                              f"{c.num_processes - 1} (num_processes={c.num_processes})")
    if not isinstance(c.distributed_timeout_s, int) or c.distributed_timeout_s < 1:
        raise ConfigError(f"distributed_timeout_s={c.distributed_timeout_s}: allowed an integer "
                          ">= 1 (seconds to wait for every process to join)")


def initialize(c) -> None:
    """Joins the cluster (once per process; before anything touches a JAX backend).

    When the processes have not all joined within `distributed_timeout_s` (an unreachable
    coordinator, fewer processes started than num_processes, a process id used twice), the
    process prints one message saying which and exits with status 2, instead of waiting or
    aborting: JAX itself ends a process that misses its deadline with a fatal C++ error, so a
    watchdog thread acts first."""
    if not c.distributed or joined():
        return
    # CPU processes exchange arrays through gloo (only the CPU backend reads this option)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if c.coordinator_address:
        kwargs = dict(coordinator_address=c.coordinator_address, num_processes=c.num_processes,
                      process_id=c.process_id)
    timeout = int(c.distributed_timeout_s)
    joined_event = threading.Event()
    threading.Thread(target=_watchdog, args=(c, joined_event), name="p2pl-join-watchdog",
                     daemon=True).start()
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=timeout + _JAX_MARGIN_S)
    except Exception as e:  # noqa: BLE001 - reported as one message naming the cluster
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ConfigError(f"distributed=True: could not join the run's processes "
                          f"({_where(c)}): {first}. {_CHECK}") from None
    finally:
        joined_event.set()


_JAX_MARGIN_S = 60   # JAX's own deadline (a fatal abort) comes this long after the watchdog's
_CHECK = ("Start every process with the same coordinator_address and num_processes and a "
          "distinct process_id, and check that process 0 (the coordinator) is up and reachable "
          "from every host")


def _where(c) -> str:
    if not c.coordinator_address:
        return "the cluster JAX detected"
    return (f"coordinator {c.coordinator_address}, this process {c.process_id} of "
            f"{c.num_processes}")


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False


def _watchdog(c, done: threading.Event) -> None:
    """Waits distributed_timeout_s for `done` (every process joined), checking meanwhile whether
    the coordinator accepts connections; then prints why joining failed and ends the process
    (status 2: a set-up error, nothing has been computed)."""
    deadline = time.monotonic() + c.distributed_timeout_s
    probe = bool(c.coordinator_address) and c.process_id != 0
    reached = not probe
    while not done.wait(0.5):
        if not reached:
            reached = _reachable(c.coordinator_address)
        if time.monotonic() >= deadline:
            break
    if done.is_set():
        return
    if not reached:
        why = (f"the coordinator {c.coordinator_address} was never reachable (no process 0 "
               "listening there, a wrong host or port, or a firewall)")
    else:
        why = (f"not every process joined ({_where(c)}): fewer processes were started than "
               "num_processes, one of them cannot reach the coordinator, or two share a "
               "process_id")
    print(f"error: distributed=True: after distributed_timeout_s={c.distributed_timeout_s} s, "
          f"{why}. {_CHECK}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)


def joined() -> bool:
    """Whether this process has joined a multi-process run (no backend is started)."""
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client is not None


class AgreedError(ConfigError):
    """A user error raised in every process of the run at once (check_same): the processes can
    leave together through JAX's shutdown barrier."""


def shutdown_together() -> None:
    """Leaves the run through JAX's shutdown barrier, for exits every process takes at the same
    point (a stop all agreed on, an AgreedError). Ending one process without it makes the
    coordination service (hosted by process 0) abort the processes still running."""
    if joined():
        try:
            jax.distributed.shutdown()
        except Exception:  # noqa: BLE001, S110 - the exit goes on either way
            pass


def exit_if_joined(status: int) -> None:
    """Ends a process of a multi-process run at once with `status` after a failure (its output
    flushed). A normal exit would wait in JAX's shutdown barrier for processes that may be
    blocked in a collective waiting for this one (minutes, until a heartbeat times out); ending
    the process closes its connections, so the others fail at their next exchange instead."""
    if not joined():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def host(tree):
    """`tree` as numpy arrays, whole in every process: arrays sharded over other processes'
    devices are gathered (a collective: every process must call it)."""

    def one(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable \
                and not leaf.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(jax.device_get(leaf))

    return jax.tree.map(one, tree)


def _allgather_bytes(data: bytes, size: int) -> list[bytes]:
    """`data` (at most `size` bytes) of every process, in process order."""
    from jax.experimental import multihost_utils

    buf = np.zeros(size + 4, np.uint8)
    buf[:4] = np.frombuffer(np.uint32(len(data)).tobytes(), np.uint8)
    buf[4:4 + len(data)] = np.frombuffer(data, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(buf))
    return [bytes(r[4:4 + int(np.frombuffer(r[:4].tobytes(), np.uint32)[0])]) for r in rows]


def agree(signal: str) -> str:
    """The stop request of the first process that has one ("" if none): every process stops
    after the same round, so they checkpoint it together."""
    if not active():
        return signal
    for s in _allgather_bytes(signal.encode(), 16):
        if s:
            return s.decode()
    return ""


def digest(*arrays) -> str:
    """SHA-256 over numpy arrays (shape, dtype and bytes)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.data)
    return h.hexdigest()


_SAME_BUILD = ("Start every process with the same config, seed and data (the same files under "
               "data_dir on every host)")


def check_same(items: dict[str, str], hint: str = _SAME_BUILD,
               what: str = "do not build the same simulation") -> None:
    """Raises ConfigError in every process when the digests `items` (name -> hex digest)
    differ between processes, naming what differs and which processes disagree with 0."""
    if not active():
        return
    names = sorted(items)
    mine = "".join(items[k] for k in names).encode()
    every = _allgather_bytes(mine, len(mine))
    width = len(mine) // max(len(names), 1)
    differ = {}
    for p, theirs in enumerate(every):
        for j, k in enumerate(names):
            if theirs[j * width:(j + 1) * width] != every[0][j * width:(j + 1) * width]:
                differ.setdefault(k, []).append(p)
    if differ:
        raise AgreedError(
            f"the processes of this distributed run {what}: "
            + "; ".join(f"{k} differs from process 0's in process(es) {ps}"
                        for k, ps in sorted(differ.items())) + f". {hint}")
