"""The one host loop of runs and sweeps, with periodic hooks (like clu's `periodic_actions`).

A `Loop` advances a *program* (one compiled round over a state) and the *members* the state
holds: one for a run (`runner.run`), one per replica for a compiled sweep group (`sweep.py`,
state stacked on a leading replica axis). Each member owns a `recorder.Recorder` and its
workdir; the loop owns the round counter, the checkpoint of the whole state and the hooks.

After every round r the hooks run in this order (each member that is still live):

  evaluate    members whose Recorder.is_eval(r) (r % eval_every == 0, r == rounds, or a hold in
              progress): Recorder.record of `sim.eval_params` (a member whose hold completes,
              rounds_to_stable_target, with stop_at_target stops); the others: Recorder.keep
              (eval_backfill)
  finite      checkpoint rounds that were not evaluated: the round's losses and params_finite
  progress    one progress.Progress report (worst / mean accuracy over the members' records)
  stop        a stop request (SIGINT/SIGTERM, `StopRequest`) checks the parameters not yet
              checked, then ends the loop after this round; so does every member having stopped
              (a second signal ends the process at once: p2pl_jax.interrupts)
  checkpoint  every checkpoint_every rounds, at a stop and at the end: Recorder.settle(), then
              one orbax checkpoint of the whole state with every member's bookkeeping

A member that diverges (recorder.check_finite: a non-finite metric or parameter, or a loss above
its loss limit) stops with status 'diverged' (its records end at the last good evaluation) while
the others go on; a run raises its DivergenceError after the
loop (`Member.error`). Nothing is saved once no member is healthy. A stop request saves and then
raises KeyboardInterrupt, as does Ctrl-C (the second one interrupts at once). The summaries
(summary.json of each member) are written in every case.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from p2pl_jax import checkpoint, distributed, interrupts, stages, writers
from p2pl_jax import progress as progress_lib
from p2pl_jax.errors import ConfigError
from p2pl_jax.recorder import DivergenceError, Recorder, check_finite

RUNNING, TARGET, DIVERGED = "", "target", "diverged"   # Member.stopped
HOLD_KEYS = ("rounds_to_stable_target", "target_hold_start")   # checkpoint meta (None if absent)


class Program(Protocol):
    """One compiled round over a state holding the loop's members."""

    def prepare(self, state) -> float:
        """Compiles what `step` needs, if not done yet (called only when rounds are to run,
        before the clock starts); returns the seconds it took."""

    def step(self, state, *, return_local: bool) -> tuple[Any, Any, Any]:
        """(new state, round metrics, local params or None); donates `state`."""

    def take(self, tree, i: int):
        """Member i's part of a state-shaped or metrics-shaped tree."""

    def eval_params(self, state, i: int):
        """The [N, ...] parameters member i is evaluated with (its Simulator.eval_params)."""


class RunProgram:
    """A run: one Simulator, one member, no replica axis."""

    def __init__(self, sim, hp):
        self.sim, self.hp = sim, hp

    def prepare(self, state) -> float:
        return 0.0   # runner.run compiles the round (and the evaluator) itself

    def step(self, state, *, return_local: bool):
        if return_local:
            return self.sim.step(state, self.hp, return_local=True)
        return (*self.sim.step(state, self.hp), None)

    def take(self, tree, i: int):
        return tree

    def eval_params(self, state, i: int):
        return self.sim.eval_params(state)


@dataclasses.dataclass
class Member:
    """One run or sweep replica carried by a loop: its config, outputs and bookkeeping."""

    name: str
    config: ml_collections.ConfigDict
    workdir: str
    info: dict
    message_bytes: int = 0         # bytes of one message of its algorithm (Simulator's)
    loss_limit: float | None = None   # the divergence rule's loss limit (recorder.loss_limit)
    recorder: Recorder | None = None
    done: int = 0                  # last round fully processed
    checked: int = 0               # last round known to be finite
    stopped: str = RUNNING         # TARGET or DIVERGED once it no longer advances
    diverged_round: int | None = None
    error: DivergenceError | None = None
    status: str = "failed"         # summary.json's status


class StopRequest:
    """While installed, SIGINT and SIGTERM ask the loop to stop after the round in progress
    (checkpointing it) instead of interrupting it anywhere. A second signal stops at once: through
    `interrupts` when a CLI installed it (os._exit(130), even while the main thread is busy in
    XLA), else by raising KeyboardInterrupt. Only in the main thread (elsewhere signals cannot be
    caught and nothing changes)."""

    def __init__(self):
        self.signal = ""
        self._previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        interrupts.graceful(True)   # after the handlers: no signal goes unseen

    def _handle(self, signum, frame) -> None:
        if self.signal and not interrupts.installed():
            raise KeyboardInterrupt
        if self.signal:
            return   # the interrupts watcher stops the process at once
        self.signal = signal.Signals(signum).name
        logging.warning("%s: stopping after the current round (it will be checkpointed); "
                        "press Ctrl-C again to stop at once", self.signal)

    def restore(self) -> None:
        if self._previous:
            interrupts.graceful(False)
        for sig, handler in self._previous.items():
            if handler is not None:   # None: set outside Python, cannot be restored
                signal.signal(sig, handler)
        self._previous.clear()


def check_resumable(meta: dict, fingerprint: dict, rounds: int, where: str) -> None:
    """A checkpoint resumes only the config that wrote it (ConfigError naming the fields that
    differ) and only up to `rounds` >= its round."""
    checkpoint.check_fingerprint(meta["fingerprint"], fingerprint, where)
    if meta["round"] > rounds:
        raise ConfigError(f"rounds={rounds} is below the round of the checkpoint in {where} "
                          f"({meta['round']}); allowed: rounds >= {meta['round']}, or use a new "
                          "--workdir")


def params_finite(params) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(params)
               if jnp.issubdtype(leaf.dtype, jnp.floating))


def _alive(state) -> bool:
    """Whether none of the state's buffers has been donated away."""
    return not any(isinstance(leaf, jax.Array) and leaf.is_deleted()
                   for leaf in jax.tree.leaves(state))


def _state_round(state) -> int:
    return int(np.asarray(jax.device_get(state.round)).reshape(-1)[0])


def _floats(metrics) -> dict:
    return {k: float(v) for k, v in metrics.items()}


@dataclasses.dataclass
class Round:
    """What the hooks of one round see and decide."""

    index: int
    state: Any
    metrics: Any
    local: Any
    evaluated: bool             # some member evaluates this round
    checkpoint: bool
    members: list               # (i, member) live at the start of the round
    evaluating: frozenset = frozenset()   # the indices of the members that evaluate it
    records: list = dataclasses.field(default_factory=list)
    stop: str = ""               # "done" (no member live) or the stop request's signal


class Loop:
    """The host loop over `members` of `program` (see the module docstring).

    stacked: the state has a leading replica axis (a sweep group); its checkpoint meta then
      holds one list entry per member (and their names), a run's meta one member's fields.
    summary_extra: more summary.json fields for every member (e.g. replicas_in_program).
    count_diverged_round: a diverged member's rounds_run includes the round that diverged
      (sweeps); otherwise it is the last round processed without error (runs).
    """

    def __init__(self, program: Program, members: list[Member], evaluate,
                 ckpt: checkpoint.Checkpointer, fingerprint: dict, *, stacked: bool,
                 summary_extra: dict | None = None, count_diverged_round: bool = False):
        assert stacked or len(members) == 1
        self.program, self.members, self.evaluate = program, members, evaluate
        self.ckpt, self.fingerprint, self.stacked = ckpt, fingerprint, stacked
        self.summary_extra = dict(summary_extra or {})
        self.count_diverged_round = count_diverged_round
        c = members[0].config   # the schedule: fields a sweep cannot vary
        self.rounds, self.checkpoint_every = c.rounds, c.checkpoint_every
        self.eval_after_local, self.stop_at_target = c.eval_after_local, c.stop_at_target
        self.progress_enabled = c.progress
        self.signal = ""         # after `run`: the stop request's signal, if one came
        self.hooks = [self._evaluate, self._check_finite, self._report, self._stop,
                      self._checkpoint]

    # --- members --------------------------------------------------------------------------

    def _live(self) -> list[tuple[int, Member]]:
        return [(i, m) for i, m in enumerate(self.members) if m.stopped == RUNNING]

    def _healthy(self) -> bool:
        return any(m.stopped != DIVERGED for m in self.members)

    def _diverge(self, m: Member, error: DivergenceError, round_index: int) -> None:
        m.stopped, m.error, m.diverged_round = DIVERGED, error, round_index
        if self.stacked:
            logging.warning("sweep replica %s: %s", m.name, error)

    def _observe(self, i: int, m: Member, rnd: Round, metrics, local=None):
        """Member i's record of an evaluated round (Recorder.record), else Recorder.keep: the
        one place the loop hands a round to a recorder."""
        params = self.program.eval_params(rnd.state, i)
        round_metrics = self.program.take(metrics, i)
        comm = self.program.take(rnd.state.comm, i)   # cumulative message counters
        if i in rnd.evaluating:
            return m.recorder.record(rnd.index, params, round_metrics, local_params=local,
                                     last_good=m.checked, comm=comm)
        m.recorder.keep(rnd.index, params, round_metrics, comm=comm)
        return None

    # --- checkpoint meta ------------------------------------------------------------------

    def _meta(self, wall_s: float) -> dict:
        per = [{"records": m.recorder.records,
                "rounds_to_target": m.recorder.rounds_to_target,
                "rounds_to_stable_target": m.recorder.rounds_to_stable_target,
                "target_hold_start": m.recorder.target.hold_start,
                "backfill_pending": (m.recorder.pending_records if m.stopped == RUNNING
                                     else []),
                "status": m.stopped, "last_round": m.done,
                "diverged_round": m.diverged_round} for m in self.members]
        if not self.stacked:   # a run's meta (the format runs have always written)
            (one,) = per
            return {"fingerprint": self.fingerprint, "records": one["records"],
                    "rounds_to_target": one["rounds_to_target"],
                    "backfill_pending": one["backfill_pending"],
                    "rounds_to_stable_target": one["rounds_to_stable_target"],
                    "target_hold_start": one["target_hold_start"], "wall_s": wall_s}
        return {"fingerprint": self.fingerprint, "replicas": [m.name for m in self.members],
                **{k: [p[k] for p in per] for k in per[0]}, "wall_s": wall_s}

    def _restore_members(self, meta: dict, round_index: int) -> list[dict]:
        """Each member's bookkeeping from a checkpoint's meta; returns their Recorder args."""
        n = len(self.members)
        if not self.stacked:
            per = [{"records": meta["records"], "rounds_to_target": meta["rounds_to_target"],
                    "backfill_pending": meta.get("backfill_pending", []),
                    **{k: meta.get(k) for k in HOLD_KEYS}}]
        else:
            names = [m.name for m in self.members]
            if meta.get("replicas") != names:
                raise ConfigError(
                    f"the checkpoint in {self.ckpt.directory} holds the replicas "
                    f"{meta.get('replicas')}, this sweep group is {names}; use a new --workdir "
                    f"or delete {self.ckpt.directory} to start over")
            per = [{**{k: meta[k][i] for k in ("records", "rounds_to_target", "backfill_pending",
                                               "status", "last_round", "diverged_round")},
                    **{k: meta[k][i] if k in meta else None for k in HOLD_KEYS}}
                   for i in range(n)]
        args = []
        for m, p in zip(self.members, per):
            m.done = m.checked = p.get("last_round", round_index)
            m.stopped, m.diverged_round = p.get("status", RUNNING), p.get("diverged_round")
            if m.stopped != DIVERGED:   # a member behind the state cannot advance again
                m.stopped = TARGET if m.done < round_index else RUNNING
            args.append({"records": p["records"], "rounds_to_target": p["rounds_to_target"],
                         "pending": p["backfill_pending"],
                         "rounds_to_stable_target": p["rounds_to_stable_target"],
                         "hold_start": p["target_hold_start"]})
        return args

    # --- the loop -------------------------------------------------------------------------

    def run(self, state, restored: checkpoint.Restored | None, *, t0: float,
            compile_time: float) -> list[dict]:
        """Runs rounds (restored round + 1) .. rounds; returns the members' summaries (also
        written to each workdir/summary.json). Re-raises KeyboardInterrupt after checkpointing."""
        self.start_round, prior_wall = 0, 0.0
        self.resumed = restored is not None
        args = [{} for _ in self.members]
        if restored is not None:
            state = checkpoint.into_state(state, restored.arrays, restored.meta["leaves"],
                                          self.ckpt.directory)
            self.start_round, prior_wall = restored.round, restored.meta["wall_s"]
            args = self._restore_members(restored.meta, restored.round)
            logging.info("resuming from the checkpoint of round %d in %s", self.start_round,
                         self.ckpt.directory)
        for m, a in zip(self.members, args):
            if (m.stopped == RUNNING and self.stop_at_target
                    and a.get("rounds_to_stable_target") is not None):
                m.stopped = TARGET
        if self._live() and self.start_round < self.rounds:
            compile_time += self.program.prepare(state)
        jax.block_until_ready(state)
        self.state, self.round = state, self.start_round
        self.progress = progress_lib.Progress(self.rounds, self.start_round,
                                              enabled=self.progress_enabled
                                              and writers.primary())
        start = time.perf_counter()
        self.wall = lambda: prior_wall + time.perf_counter() - start
        for m, a in zip(self.members, args):
            m.recorder = Recorder(m.config, m.workdir, self.evaluate, self.wall,
                                  message_bytes=m.message_bytes, loss_limit=m.loss_limit, **a)
        self.checkpoint_time = 0.0
        self.saved = self.start_round if restored is not None else None
        self.progress.start()
        stop_request = StopRequest()
        outcome = "failed"
        try:
            stop_request.install()
            self._rounds(stop_request)
            outcome = "completed"
        except KeyboardInterrupt:
            outcome = "interrupted"
            self.progress.clear()
            self._save_on_interrupt()
            if self.saved is None:
                logging.warning("interrupted after round %d; no checkpoint was written",
                                self.round)
            else:
                logging.warning("interrupted after round %d; the checkpoint of round %d is kept "
                                "in %s. Rerun the same command to resume.", self.round,
                                self.saved, self.ckpt.directory)
            self._finish(stop_request, outcome, t0, compile_time, raising=True)
            raise
        except BaseException:
            self._finish(stop_request, outcome, t0, compile_time, raising=True)
            raise
        return self._finish(stop_request, outcome, t0, compile_time, raising=False)

    def _finish(self, stop_request: StopRequest, outcome: str, t0: float, compile_time: float,
                *, raising: bool) -> list[dict]:
        """Restores the signal handlers, closes the recorders and writes the summaries. While
        an error propagates (e.g. a full disk), a failure to write them is logged, not raised:
        it must not hide the error."""
        stop_request.restore()
        stages.after_loop()
        self.signal = stop_request.signal
        self.progress.clear()
        try:
            for m in self.members:
                if m.recorder is not None:
                    m.recorder.close()
            return self._summaries(outcome, t0, compile_time)
        except OSError as e:
            if not raising:
                raise
            logging.warning("could not write the summaries: %s", e)
            return []

    def _rounds(self, stop_request: StopRequest) -> None:
        self.stop_request = stop_request
        for r in range(self.start_round + 1, self.rounds + 1):
            live = self._live()
            if not live:
                break
            evaluating = frozenset(i for i, m in live if m.recorder.is_eval(r))
            is_eval = bool(evaluating)
            want_local = is_eval and self.eval_after_local
            interrupts.set_round(r)
            self.state, metrics, local = self.program.step(self.state, return_local=want_local)
            stages.reached("round")
            rnd = Round(r, self.state, metrics, local, is_eval,
                        self.checkpoint_every > 0 and r % self.checkpoint_every == 0, live,
                        evaluating)
            for hook in self.hooks:
                hook(rnd)
            if rnd.stop == "done":
                break
            if rnd.stop:
                raise KeyboardInterrupt(f"{rnd.stop} after round {r}")
        for _, m in self._live():   # the last round is evaluated; this only guards the rule
            if m.checked != self.round:
                self._check_params(m, self.round)
        self._save(self.round)

    # --- hooks, in order ------------------------------------------------------------------

    def _evaluate(self, rnd: Round) -> None:
        """The record of each live member that evaluates the round; the others keep it for
        eval_backfill (a member in a hold evaluates rounds the others do not)."""
        for i, m in rnd.members:
            if i not in rnd.evaluating and m.recorder.keeps_rounds:
                self._observe(i, m, rnd, rnd.metrics)
        if not rnd.evaluating:
            return
        jax.block_until_ready(rnd.state)
        metrics = jax.device_get(rnd.metrics)   # one transfer for every member
        for i, m in rnd.members:
            if i not in rnd.evaluating:
                continue
            local = (self.program.take(rnd.local, i) if rnd.local is not None
                     and m.config.eval_after_local else None)
            try:
                rnd.records.append(self._observe(i, m, rnd, metrics, local))
            except DivergenceError as e:
                self._diverge(m, e, rnd.index)
                continue
            if self.stop_at_target and m.recorder.rounds_to_stable_target is not None:
                m.stopped = TARGET   # the hold is complete

    def _check_finite(self, rnd: Round) -> None:
        """Checkpoint rounds, for the members that did not evaluate them: the round's losses and
        params_finite (so nothing non-finite is saved). Marks the round processed for the members
        that passed."""
        unchecked = [(i, m) for i, m in rnd.members if i not in rnd.evaluating]
        if rnd.checkpoint and unchecked:
            metrics = jax.device_get(rnd.metrics)
            for i, m in unchecked:
                try:
                    check_finite(_floats(self.program.take(metrics, i)), rnd.index,
                                 m.config.learning_rate, m.checked, m.loss_limit)
                except DivergenceError as e:
                    self._diverge(m, e, rnd.index)
        elif not rnd.evaluated and self.progress.due():
            jax.block_until_ready(rnd.metrics)   # report the real rate
        for i, m in rnd.members:
            if m.stopped != DIVERGED:
                m.done = rnd.index
                if i in rnd.evaluating or rnd.checkpoint:
                    m.checked = rnd.index
        self.round = rnd.index

    def _report(self, rnd: Round) -> None:
        """One progress report; with several members, the worst device and the mean of means."""
        recs = [r for r in rnd.records if r is not None]
        record = None
        if recs:
            record = {"acc_min": min(r["acc_min"] for r in recs),
                      "acc_mean": sum(r["acc_mean"] for r in recs) / len(recs),
                      "test_loss": sum(r["test_loss"] for r in recs) / len(recs),
                      "consensus_distance": max(r["consensus_distance"] for r in recs)}
        self.progress.update(rnd.index, record)

    def _stop(self, rnd: Round) -> None:
        """A stop request first checks the parameters of members not checked this round. In a
        multi-process run a signal to any process stops every process after this round."""
        signal_ = distributed.agree(self.stop_request.signal)
        if signal_ and not self.stop_request.signal:
            logging.warning("another process of this run was sent %s: stopping after this "
                            "round (it will be checkpointed)", signal_)
            self.stop_request.signal = signal_
        if self.stop_request.signal:
            for _, m in self._live():
                if m.checked != rnd.index:
                    self._check_params(m, rnd.index)
                    m.checked = rnd.index
        if not self._live():
            rnd.stop = "done"
        elif self.stop_request.signal:
            rnd.stop = self.stop_request.signal

    def _checkpoint(self, rnd: Round) -> None:
        if rnd.checkpoint or rnd.stop:
            self._save(rnd.index)

    # --- helpers --------------------------------------------------------------------------

    def _check_params(self, m: Member, round_index: int) -> None:
        i = self.members.index(m)
        if not params_finite(self.program.take(self.state.params, i)):
            try:
                check_finite({"params_finite": 0.0}, round_index, m.config.learning_rate,
                             m.checked)
            except DivergenceError as e:
                self._diverge(m, e, round_index)

    def _save(self, round_index: int) -> None:
        """Checkpoints the state of `round_index` with every member's bookkeeping (once)."""
        if self.saved == round_index or not self._healthy():
            return
        for _, m in self._live():
            m.recorder.settle()   # the open window's kept rounds go in as records
        tc = time.perf_counter()   # (their evaluation counts as eval time, not checkpoint time)
        stages.reached("save")
        self.ckpt.save(round_index, self.state, self._meta(self.wall()))
        self.checkpoint_time += time.perf_counter() - tc
        self.saved = round_index

    def _save_on_interrupt(self) -> None:
        """The state of the last completed round, if it was not donated to the next one."""
        try:
            live = self._live()
            if (self.saved != self.round and live and _alive(self.state)
                    and _state_round(self.state) == self.round
                    and all(params_finite(self.program.take(self.state.params, i))
                            for i, _ in live)):
                self._save(self.round)
        except Exception as e:  # noqa: BLE001 - never mask the interrupt
            logging.warning("could not checkpoint round %d on interrupt: %s", self.round, e)

    def _summaries(self, outcome: str, t0: float, compile_time: float) -> list[dict]:
        out = []
        for m in self.members:
            if m.stopped == DIVERGED:
                m.status = "diverged"
            else:
                m.status = "completed" if m.stopped == TARGET else outcome
            rounds_run = (m.diverged_round if m.stopped == DIVERGED and self.count_diverged_round
                          else m.done)
            if m.recorder is None:
                continue
            summary = m.recorder.summary(
                m.status, rounds_run, m.info,
                resumed_from_round=self.start_round if self.resumed else None,
                checkpoint_round=self.saved,
                wall_time_s=time.perf_counter() - t0,
                train_wall_s=self.wall(),
                compile_time_s=compile_time,
                checkpoint_time_s=self.checkpoint_time,
                **self.summary_extra)
            writers.write_json(os.path.join(m.workdir, "summary.json"), summary)
            out.append(summary)
        return out
