"""Per-run bookkeeping shared by `runner.run` and sweeps: what happens at an evaluated round.

A `Recorder` turns a round's parameters and round metrics into a metrics record (test accuracy of
every device summarised, optionally also before consensus), checks it for divergence, finds
rounds_to_target and rounds_to_stable_target (`TargetState`), writes it (metrics.jsonl,
metrics.csv, TensorBoard) and assembles summary.json's common fields. A run and every replica of
a sweep each own one, so both write the same files with the same fields.

Which rounds are evaluated (`Recorder.is_eval`): every `eval_every`-th round and the last; every
round of a hold (from an evaluated round at the target until the hold is complete or broken); and,
with `eval_backfill` (eval_every > 1), the rounds of a window (previous evaluation, r] once the
evaluation of round r meets the target, in order, while the stable target is not yet found.

  rounds_to_target         the first evaluated round at which every device is at or above
                           target_accuracy. Resolution eval_every: exact (the first such round
                           of the run) when every round is evaluated; with eval_every > 1 a
                           crossing that dips back below before its window's evaluation is not
                           seen (eval_backfill finds the first round of the window at the target,
                           given the window's last round meets it too).
  rounds_to_stable_target  the first round s from which every device stays at or above the target
                           for target_hold_rounds = H rounds, s .. s + H - 1, every one of them
                           evaluated (a hold). Exact when eval_every = 1, or with eval_backfill
                           when H >= eval_every (a run of H rounds at the target then always
                           reaches its window's evaluation). Without eval_backfill s is on the
                           evaluation grid; with it and H < eval_every, a run of H rounds at the
                           target in a window whose last round is below it is not seen.
                           None when no hold completed (`stable_target_reason` says why, e.g.
                           the run ended during the hold).
"""

import dataclasses
import itertools
import math
import platform
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from p2pl_jax import distributed, writers
from p2pl_jax.metrics import Evaluator, summarize


class DivergenceError(RuntimeError):
    """Training blew up: a non-finite metric or parameter, or a loss above the loss limit."""


LOSSES = ("train_loss", "test_loss")


def loss_limit(factor: float, num_classes: int) -> float | None:
    """The divergence rule's loss limit: `factor` x ln(num_classes), or None when factor is 0.

    ln(C) is the cross-entropy of a uniform guess over C classes, which is also about the loss
    of a freshly initialised model. A training or test loss `factor` times above it means the
    models are confidently wrong, which learning does not do; a blown-up run does (the issue's
    lr=1e6 example: test loss ~1e6 at every round, train loss 3e22 already in round 1, so a
    reference taken from the run's first round would itself be blown up). The reference depends
    only on the task, so a resumed run judges exactly as the run that wrote its checkpoint.
    """
    return float(factor) * math.log(num_classes) if factor > 0 else None


def check_finite(record: dict, round_index: int, lr: float, last_good: int = -1,
                 limit: float | None = None) -> None:
    """Raises DivergenceError if the round in `record` diverged: a float in it is NaN or
    infinite (a loss, the consensus distance, any metric), its parameters are not finite
    (`params_finite` = 0), or, with a `limit` (see `loss_limit`), train_loss or test_loss is
    above it.

    `last_good`: the last round known to be finite (names the interval the divergence lies in).
    """
    bad = [f"{k} is not finite" for k, v in record.items()
           if isinstance(v, float) and not math.isfinite(v)]
    if record.get("params_finite", 1.0) != 1.0:
        bad.append("a parameter is not finite")
    if limit is not None:
        bad += [f"{k}={record[k]:.4g} is above the divergence limit {limit:.4g} "
                f"(divergence_loss_factor x ln(number of classes))"
                for k in LOSSES if k in record and math.isfinite(record[k])
                and record[k] > limit]
    if bad:
        when = (f"at round {round_index}" if last_good in (-1, round_index - 1)
                else f"between round {last_good + 1} and round {round_index} (checked at "
                     f"evaluated and checkpointed rounds)")
        raise DivergenceError(
            f"training diverged {when}: {'; '.join(bad)}. "
            f"The likely cause is a learning rate too large for this setting "
            f"(learning_rate={lr}); try a smaller one. Metrics up to the previous evaluated "
            f"round are kept in metrics.jsonl, and the last good checkpoint is kept.")


def _floats(round_metrics) -> dict:
    return {k: float(v) for k, v in jax.device_get(round_metrics).items()}


def communication(round_metrics: dict, comm, message_bytes: int) -> dict:
    """A record's byte counts (exact integers): this round's bytes_sent (every device, and for
    FedAvg the server's broadcasts), bytes_sent_max (the busiest device), bytes_delivered;
    with the state's cumulative counters `comm`, also bytes_cum, bytes_cum_max (the busiest
    device since round 1) and bytes_delivered_cum. Bytes = messages x message_bytes."""
    out = {"bytes_sent": int(round_metrics["messages_sent"]) * message_bytes,
           "bytes_sent_max": int(round_metrics["messages_sent_max"]) * message_bytes,
           "bytes_delivered": int(round_metrics["messages_delivered"]) * message_bytes}
    if comm is not None:
        comm = distributed.host(comm)
        sent, got, server = (np.asarray(comm[k], np.int64)
                             for k in ("sent", "delivered", "server"))
        got_server = np.asarray(comm.get("server_delivered", server), np.int64)
        out.update({"bytes_cum": int(sent.sum() + server) * message_bytes,
                    "bytes_cum_max": int(sent.max(initial=0)) * message_bytes,
                    "bytes_delivered_cum": int(got.sum() + got_server) * message_bytes})
        if "energy" in comm:   # channel=wireless: the bill since round 1
            energy = np.asarray(comm["energy"], np.float64)
            out.update({"energy_cum_j": float(energy.sum()),
                        "energy_cum_max_device_j": float(energy.max(initial=0.0)),
                        "sim_time_cum_s": float(comm["time"]),
                        "air_time_cum_s": float(comm["air"]),
                        "energy_station_cum_j": float(comm["station"])})
    return out


@dataclasses.dataclass(frozen=True)
class TargetState:
    """What the evaluated rounds so far say about the target (see the module docstring).

    hold_start: the first round of the current streak of consecutive evaluated rounds at the
    target (None when the last evaluated round was below it); last_round: the last evaluated
    round. A checkpoint stores rounds_to_target, rounds_to_stable_target and hold_start; the
    last round is that of the last record.
    """

    rounds_to_target: int | None = None
    rounds_to_stable_target: int | None = None
    hold_start: int | None = None
    last_round: int = 0

    def advance(self, round_index: int, acc_min: float, target: float,
                hold: int) -> "TargetState":
        """The state after evaluated round `round_index` (rounds in increasing order) whose worst
        device has accuracy `acc_min`. A streak needs consecutive rounds: after a gap (rounds
        not evaluated) it starts again at `round_index`."""
        if acc_min < target:
            return dataclasses.replace(self, hold_start=None, last_round=round_index)
        start = self.hold_start
        if start is None or round_index != self.last_round + 1:
            start = round_index
        stable = self.rounds_to_stable_target
        if stable is None and round_index - start + 1 >= hold:
            stable = start
        rtt = round_index if self.rounds_to_target is None else self.rounds_to_target
        return TargetState(rtt, stable, start, round_index)

    @property
    def holding(self) -> bool:
        """A hold is in progress: every round is evaluated until it completes or breaks."""
        return self.hold_start is not None and self.rounds_to_stable_target is None


def stable_target_reason(state: TargetState, hold: int) -> str | None:
    """Why rounds_to_stable_target is None (None when it is not)."""
    if state.rounds_to_stable_target is not None:
        return None
    if state.hold_start is not None:
        held = state.last_round - state.hold_start + 1
        return (f"the run ended during the hold: every device at or above the target from "
                f"round {state.hold_start} to round {state.last_round} ({held} of "
                f"target_hold_rounds={hold} rounds)")
    if state.rounds_to_target is None:
        return "no evaluated round had every device at or above the target"
    return (f"every device was at or above the target at round {state.rounds_to_target}, but "
            f"not for target_hold_rounds={hold} consecutive evaluated rounds before the run "
            f"ended")


def stable_target_exact(c: ml_collections.ConfigDict) -> bool:
    """Whether rounds_to_stable_target equals what evaluating every round would give: eval_every
    = 1, or eval_backfill with target_hold_rounds >= eval_every (see the module docstring)."""
    return c.eval_every == 1 or (bool(c.eval_backfill) and c.target_hold_rounds >= c.eval_every)


class Recorder:
    """Evaluation records, divergence checks and rounds_to_target of one run.

    evaluate: the jitted evaluator of the run's model and test set.
    clock: returns the run's wall time so far in seconds (written as each record's wall_s).
    records, rounds_to_target, rounds_to_stable_target, hold_start: what a resumed run had
      already recorded (its TargetState).
    pending: a resumed run's `pending_records` (rounds of the open evaluation window, already
      evaluated when the checkpoint was written, that eval_backfill may still need).
    message_bytes: bytes of one message of the run's algorithm (records count bytes with it).
    loss_limit: the divergence rule's loss limit (`loss_limit`), or None.
    """

    def __init__(self, c: ml_collections.ConfigDict, workdir: str, evaluate: Evaluator,
                 clock: Callable[[], float], *, records: list | None = None,
                 rounds_to_target: int | None = None, pending: list | None = None,
                 rounds_to_stable_target: int | None = None, hold_start: int | None = None,
                 message_bytes: int = 0, loss_limit: float | None = None):
        self.config = c
        self.loss_limit = loss_limit
        self.message_bytes = int(message_bytes)
        self.evaluate = evaluate
        self.clock = clock
        self.writer = writers.MetricsWriter(workdir, list(records or []),
                                            tensorboard=c.tensorboard)
        self.target = TargetState(rounds_to_target, rounds_to_stable_target, hold_start,
                                  self.records[-1]["round"] if self.records else 0)
        self.eval_time = 0.0
        self._backfill = c.eval_backfill and c.eval_every > 1
        self._pending: list[tuple] = []   # (round, params, round metrics, comm counters)
        self._settled: list[dict] = [dict(r) for r in pending or []]   # evaluated, unwritten

    @property
    def records(self) -> list[dict]:
        return self.writer.records

    @property
    def rounds_to_target(self) -> int | None:
        return self.target.rounds_to_target

    @property
    def rounds_to_stable_target(self) -> int | None:
        return self.target.rounds_to_stable_target

    def is_eval(self, round_index: int) -> bool:
        """Every eval_every-th round, the last, and every round of a hold in progress."""
        return (round_index % self.config.eval_every == 0 or round_index == self.config.rounds
                or self.target.holding)

    @property
    def keeps_rounds(self) -> bool:
        """Whether `keep` wants the parameters of rounds that are not evaluated."""
        return self._backfill and self.rounds_to_stable_target is None

    def _advance(self, record: dict) -> None:
        c = self.config
        self.target = self.target.advance(record["round"], record["acc_min"],
                                          c.target_accuracy, c.target_hold_rounds)

    def keep(self, round_index: int, params, round_metrics, comm=None) -> None:
        """Holds a copy of an unevaluated round's parameters until the next evaluation, which
        evaluates them if it is the first to meet the target (eval_backfill)."""
        if self.keeps_rounds:
            self._pending.append((round_index, jax.tree.map(jnp.copy, params), round_metrics,
                                  None if comm is None else jax.tree.map(jnp.copy, comm)))

    def settle(self) -> None:
        """Evaluates the kept rounds of the open window now (before a checkpoint), so that the
        checkpoint carries their records instead of their parameters: a run resumed in the
        middle of a window backfills exactly as an uninterrupted one (evaluation is a pure
        function of the parameters, so evaluating earlier changes no number)."""
        t0 = self.clock()
        self._settled.extend(self._kept_records())
        self._pending.clear()
        self.eval_time += self.clock() - t0

    def _kept_records(self):
        """The backfill records of the kept rounds, evaluated one at a time (a generator)."""
        for r, params, round_metrics, comm in self._pending:
            metrics = _floats(round_metrics)
            yield {"round": r, **summarize(self.evaluate(params)), **metrics,
                   **self._bytes(metrics, comm), "backfilled": 1.0}

    def _bytes(self, metrics: dict, comm) -> dict:
        if "messages_sent" not in metrics:
            return {}
        return communication(metrics, comm, self.message_bytes)

    @property
    def pending_records(self) -> list[dict]:
        """The settled records of the open window (for the checkpoint; call `settle` first)."""
        assert not self._pending, "settle() before reading pending_records"
        return [dict(r) for r in self._settled]

    def record(self, round_index: int, params, round_metrics, *, local_params=None,
               last_good: int = -1, comm=None) -> dict:
        """Evaluates and writes round `round_index`; raises DivergenceError if it diverged.

        If it meets the target and rounds are kept (eval_backfill, stable target not found yet),
        the rounds kept since the previous evaluation are evaluated and written first, in order,
        until the stable target is found (each such record carries backfilled = 1): the first of
        them at the target can be rounds_to_target, and the streak at the target that runs into
        this round starts the hold.
        """
        c = self.config
        t0 = self.clock()
        record = {"round": round_index, **summarize(self.evaluate(params))}
        if local_params is not None:
            local = summarize(self.evaluate(local_params))
            record.update({f"local_{k}": v for k, v in local.items()
                           if k != "consensus_distance"})
        metrics = _floats(round_metrics)
        record.update(metrics)
        record.update(self._bytes(metrics, comm))
        check_finite(record, round_index, c.learning_rate, last_good, self.loss_limit)
        reached = record["acc_min"] >= c.target_accuracy
        if self.keeps_rounds and reached:
            # In round order; the kept rounds are evaluated lazily, until the stable target is
            # found (with target_hold_rounds=1: up to the first that meets the target).
            for back in itertools.chain(self._settled, self._kept_records()):
                back = {**back, "wall_s": self.clock()}
                self.writer.write(back)
                self._advance(back)
                if self.rounds_to_stable_target is not None:
                    break
        self._pending.clear()
        self._settled.clear()
        record["wall_s"] = self.clock()
        self.eval_time += record["wall_s"] - t0
        self.writer.write(record)
        self._advance(record)
        return record

    def summary(self, status: str, rounds_run: int, info: dict, **extra) -> dict:
        """summary.json's fields common to runs and sweep replicas, then `extra`, then `info`
        (graph and data facts from runner.build)."""
        last = self.records[-1] if self.records else {}
        at_target = next((r for r in self.records if r["round"] == self.rounds_to_target), {})
        c = self.config
        return {
            "status": status,
            "rounds_to_target": self.rounds_to_target,
            "rounds_to_target_resolution": c.eval_every,
            "rounds_to_stable_target": self.rounds_to_stable_target,
            "rounds_to_stable_target_reason": stable_target_reason(self.target,
                                                                   c.target_hold_rounds),
            "rounds_to_stable_target_exact": stable_target_exact(c),
            "target_hold_rounds": c.target_hold_rounds,
            "target_hold_start": self.target.hold_start,
            "target_accuracy": c.target_accuracy,
            "final_acc_min": last.get("acc_min"),
            "final_acc_mean": last.get("acc_mean"),
            "final_acc_max": last.get("acc_max"),
            "rounds_run": rounds_run,
            "message_bytes": self.message_bytes,
            "bytes_total": last.get("bytes_cum"),
            "bytes_to_target": at_target.get("bytes_cum"),
            "bytes_per_device_to_target": at_target.get("bytes_cum_max"),
            **({"energy_to_target_j": at_target.get("energy_cum_j"),
                "energy_max_device_to_target_j": at_target.get("energy_cum_max_device_j"),
                "sim_time_to_target_s": at_target.get("sim_time_cum_s"),
                "energy_station_to_target_j": at_target.get("energy_station_cum_j"),
                "energy_total_j": last.get("energy_cum_j"),
                "sim_time_total_s": last.get("sim_time_cum_s")}
               if "energy_cum_j" in last else {}),
            "eval_time_s": self.eval_time,
            **extra,
            "backend": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind,
            "jax_version": jax.__version__,
            "host": platform.node(),
            **info,
        }

    def close(self) -> None:
        self.writer.close()
