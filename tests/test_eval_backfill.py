"""eval_backfill: with eval_every > 1, rounds_to_target is found inside the window.

One reference run evaluates every round; runs evaluating every 4th round must report the first
round of the window (previous evaluation, first evaluation meeting the target] that meets it,
with the same metrics as the reference at the rounds they evaluate (training never depends on
evaluation). That is the every-round value only when no earlier crossing dipped back below the
target before its window's evaluation (tests/test_targets.py checks that case, and holds).
These tests use target_hold_rounds=1, so stop_at_target stops at the first evaluated crossing.
"""

import json

import pytest

from configs import smoke
from p2pl_jax import runner, sweep
from p2pl_jax.writers import read_jsonl

ROUNDS, EVERY = 10, 4
KEYS = ("acc_min", "acc_mean", "acc_max", "test_loss", "consensus_distance")


def _config(**overrides):
    c = smoke.get_config()
    c.rounds, c.progress, c.tensorboard, c.checkpoint_every = ROUNDS, False, False, 0
    c.learning_rate = 0.02
    c.target_hold_rounds = 1   # rounds_to_stable_target = the first evaluated crossing
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


@pytest.fixture
def reference(tmp_path, mnist_dir):
    workdir = tmp_path / "every_round"
    runner.run(_config(eval_every=1, stop_at_target=False), str(workdir))
    return {r["round"]: r for r in read_jsonl(str(workdir / "metrics.jsonl"))}


def _expected(reference: dict, target: float, every: int) -> int | None:
    """First round meeting the target within the first window whose end meets it."""
    ends = [r for r in range(1, ROUNDS + 1) if r % every == 0 or r == ROUNDS]
    for i, end in enumerate(ends):
        if reference[end]["acc_min"] >= target:
            start = ends[i - 1] + 1 if i else 1
            return next(r for r in range(start, end + 1) if reference[r]["acc_min"] >= target)
    return None


def _run(c, workdir, via: str) -> dict:
    """A run through runner.run, or as the single replica of a sweep (its own code path)."""
    if via == "runner":
        return runner.run(c, str(workdir))
    (summary,) = sweep.run_sweep(c, {"seed": [c.seed]}, str(workdir))
    return summary


@pytest.mark.parametrize("via", ["runner", "sweep"])
def test_backfill_finds_the_first_round_in_the_window(tmp_path, reference, via):
    # Targets: the min accuracy of a round between evaluations that is the first to reach it
    # and whose window's end reaches it too.
    targets = []
    for r in range(1, ROUNDS + 1):
        acc = reference[r]["acc_min"]
        if r % EVERY and r != ROUNDS and _expected(reference, acc, EVERY) == r:
            targets.append((acc, r))   # (the last round is always evaluated: not a candidate)
    assert targets, "no round between evaluations is a first crossing; change the seed"
    # The latest position in its window: the kept rounds before it are scanned (and written)
    # first, in order, and fall short of the target.
    acc, expected = min(targets, key=lambda t: (-(t[1] % EVERY), -t[1]))
    assert expected % EVERY != 0 and expected != ROUNDS
    workdir = tmp_path / "backfill"
    summary = _run(_config(eval_every=EVERY, target_accuracy=acc, stop_at_target=True), workdir,
                   via)
    if via == "sweep":
        workdir = workdir / f"seed={_config().seed}"
    assert summary["rounds_to_target"] == expected
    records = read_jsonl(str(workdir / "metrics.jsonl"))
    rounds = [r["round"] for r in records]
    assert rounds == sorted(rounds) and expected in rounds
    assert all(r.get("backfilled") == 1.0 for r in records
               if r["round"] % EVERY and r["round"] != ROUNDS)
    for r in records:   # same params as the every-round run, so the same metrics
        assert {k: r[k] for k in KEYS} == {k: reference[r["round"]][k] for k in KEYS}
    # It stopped at the evaluation that met the target (stop_at_target).
    assert summary["rounds_run"] == min(EVERY * -(-expected // EVERY), ROUNDS)

    if via == "sweep":
        return
    off = tmp_path / "no_backfill"
    summary = runner.run(_config(eval_every=EVERY, target_accuracy=acc, eval_backfill=False),
                         str(off))
    assert summary["rounds_to_target"] == min(EVERY * -(-expected // EVERY), ROUNDS)
    assert all(r["round"] % EVERY == 0 or r["round"] == ROUNDS
               for r in read_jsonl(str(off / "metrics.jsonl")))
    assert json.loads((off / "config.json").read_text())["eval_backfill"] is False


def test_resume_in_the_middle_of_a_window_backfills_like_an_uninterrupted_run(
        tmp_path, reference, monkeypatch):
    """A run stopped (SIGTERM, checkpointed) after round s inside an evaluation window and then
    resumed reports the same rounds_to_target and the same metrics as an uninterrupted run, when
    the first crossing r <= s lies in the part of the window before the stop."""
    import os
    import signal

    from p2pl_jax import recorder as recorder_lib

    cases = []
    for s in range(1, ROUNDS):
        if s % EVERY == 0:
            continue
        for r in range(EVERY * (s // EVERY) + 1, s + 1):
            if _expected(reference, reference[r]["acc_min"], EVERY) == r:
                cases.append((s, r))
    assert cases, "no first crossing before a mid-window stop; change the seed"
    stop, expected = cases[-1]
    acc = reference[expected]["acc_min"]
    c = _config(eval_every=EVERY, target_accuracy=acc, stop_at_target=False)
    whole = runner.run(c, str(tmp_path / "whole"))
    assert whole["rounds_to_target"] == expected

    keep = recorder_lib.Recorder.keep

    def keep_then_stop(self, round_index, params, round_metrics, **kw):
        keep(self, round_index, params, round_metrics, **kw)
        if round_index == stop:
            os.kill(os.getpid(), signal.SIGTERM)   # the run stops after this round

    workdir = str(tmp_path / "stopped")
    with monkeypatch.context() as m:
        m.setattr(recorder_lib.Recorder, "keep", keep_then_stop)
        with pytest.raises(KeyboardInterrupt):
            runner.run(c, workdir)
    summary = runner.run(c, workdir)
    assert summary["resumed_from_round"] == stop
    assert summary["rounds_to_target"] == expected
    strip = lambda recs: [{k: v for k, v in r.items() if k != "wall_s"} for r in recs]
    assert strip(read_jsonl(workdir + "/metrics.jsonl")) == strip(
        read_jsonl(str(tmp_path / "whole" / "metrics.jsonl")))


def test_a_target_equal_to_an_accuracy_is_met_at_that_round(tmp_path, reference):
    """rounds_to_target is the first round whose acc_min >= target (equality counts), with
    every round evaluated."""
    r = next(r for r in range(2, ROUNDS + 1)
             if reference[r]["acc_min"] > max(reference[q]["acc_min"] for q in range(1, r)))
    c = _config(eval_every=1, target_accuracy=reference[r]["acc_min"], stop_at_target=True)
    summary = runner.run(c, str(tmp_path / "exact"))
    assert summary["rounds_to_target"] == r and summary["rounds_run"] == r
