"""experiments.fashion_study: the "rounds to within 1 point" definition and the report builder,
on hand-made run files (nothing is trained)."""

import json
import os

import numpy as np
import pytest

from experiments import fashion_study as fs

F32 = lambda x: float(np.float32(x))  # noqa: E731 - accuracies as the runner writes them

# The centralized model ends at 0.8001 (round 6): "within 1 point" means >= 0.7901. As float32,
# 0.7901 lies just below float32(0.8001) - 0.01, so only the tolerance lets it count.
CENTRALIZED = [0.70, 0.75, 0.77, 0.78, 0.795, 0.8001]
# Round 3 is 1 test image (1e-4) short of 0.7901, round 4 exactly 0.7901, round 5 drops out
# again, round 6 is back in.
P2PL_MEAN = [0.60, 0.70, 0.7900, 0.7901, 0.785, 0.793]
P2PL_WORST = [0.50, 0.60, 0.70, 0.75, 0.7901, 0.791]
FEDAVG = [0.40, 0.50, 0.60, 0.65, 0.70, 0.7900]


def test_within_is_at_or_above_the_reference_minus_one_point():
    assert fs.within(0.49, 0.5)             # exactly 1 point below counts (>=, not >)
    c = F32(0.8001)
    assert F32(0.7901) < c - 0.01           # float32 rounding puts it a hair below ...
    assert fs.within(F32(0.7901), c)        # ... but it is 1 point below: within
    assert fs.within(F32(0.95), c)          # above the centralized model counts
    assert not fs.within(F32(0.7900), c)    # one test image (of 10000) short
    assert not fs.within(None, c)


def test_first_and_held_rounds_on_a_hand_made_sequence():
    rounds = list(range(1, 7))
    c = F32(CENTRALIZED[-1])
    mean = [F32(a) for a in P2PL_MEAN]
    worst = [F32(a) for a in P2PL_WORST]
    assert fs.first_within(rounds, mean, c) == 4       # not 3 (index), not 3 (1e-4 short)
    assert fs.held_within(rounds, mean, c) == 6        # round 5 drops out again
    assert fs.first_within(rounds, worst, c) == 5
    assert fs.held_within(rounds, worst, c) == 5
    assert fs.first_within(rounds, [F32(a) for a in FEDAVG], c) is None
    assert fs.held_within(rounds, [F32(a) for a in FEDAVG], c) is None
    # Evaluated every 2 rounds: the answer is a round number, not a position.
    assert fs.first_within([2, 4, 6], mean[1::2], c) == 4
    assert fs.held_within([2, 4, 6], [mean[1], mean[3], None], c) is None
    drop, at = fs.largest_drop([1, 2, 3, 4], [0.80, 0.70, 0.75, 0.72])
    assert (drop, at) == (pytest.approx(0.10), 2)
    assert fs.largest_drop([1, 2], [0.5, 0.6]) == (0.0, 1)


def _write_run(root, name, mean, worst, best, algorithm):
    d = os.path.join(root, "runs", name)
    os.makedirs(d)
    config = {"dataset": "fashion_mnist", "model": "lenet_gn", "num_devices": 100,
              "samples_per_device": 600, "partition": "iid", "batch_size": 10,
              "local_epochs": 1, "learning_rate": 0.05, "momentum": 0.9, "seed": 0,
              "topology": "complete", "algorithm": algorithm, "eval_every": 1}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump({"status": "completed", "rounds_run": len(mean), "wall_time_s": 60.0,
                   "jax_version": "0.0.test"}, f)
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        for r, (m, w, b) in enumerate(zip(mean, worst, best), start=1):
            f.write(json.dumps({"round": r, "acc_mean": F32(m), "acc_min": F32(w),
                                "acc_max": F32(b), "consensus_distance": 0.0 if w == b
                                else 0.5, "test_loss": 0.5}) + "\n")


def test_report_from_hand_made_run_files(tmp_path):
    out = str(tmp_path)
    _write_run(out, "centralized", CENTRALIZED, CENTRALIZED, CENTRALIZED, "centralized")
    _write_run(out, "p2pl", P2PL_MEAN, P2PL_WORST, [a + 0.01 for a in P2PL_MEAN], "p2pl")
    _write_run(out, "fedavg", FEDAVG, FEDAVG, FEDAVG, "fedavg")
    res = fs.write_report(out)

    with open(os.path.join(out, "results.json")) as f:
        text = f.read()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == json.loads(json.dumps(res))
    rows = res["rows"]
    assert res["centralized_final"] == pytest.approx(0.8001)
    assert res["centralized_final_round"] == 6
    p = rows["p2pl"]
    assert (p["first_mean_within"], p["held_mean_within"]) == (4, 6)
    assert (p["first_worst_within"], p["held_worst_within"]) == (5, 5)
    assert p["best_mean"] == pytest.approx(0.793) and p["best_mean_round"] == 6
    assert p["final_worst"] == pytest.approx(0.791)
    assert p["centralized_same_round"] == pytest.approx(0.8001)
    assert p["eval_resolution"] == 1
    assert rows["fedavg"]["first_mean_within"] is None
    assert rows["fedavg"]["max_device_spread"] == 0
    assert rows["centralized"]["first_mean_within"] == 5

    with open(os.path.join(out, "README.md")) as f:
        readme = f.read()
    assert "| P2PL | 6 | 79.30% | 79.30% (6) | 79.10% | 80.01% | 4 | 5 | 6 / 5 |" in readme
    assert "| FedAvg | 6 | 79.00% | 79.00% (6) | 79.00% | 80.01% | not within 6 rounds |" \
        in readme
    assert "first came within 1 point at round 4 and stayed within from round 6 on" in readme
    assert "the worst device first at round 5" in readme
    assert "so the worst device equals the mean device" in readme      # FedAvg: spread 0
    assert "≥ c − 0.01" in readme
    assert os.path.getsize(os.path.join(out, fs.FIGURE)) > 0


def test_report_without_the_centralized_run_is_a_clear_error(tmp_path):
    _write_run(str(tmp_path), "p2pl", P2PL_MEAN, P2PL_WORST, P2PL_MEAN, "p2pl")
    with pytest.raises(fs.ConfigError, match="centralized"):
        fs.write_report(str(tmp_path))


def test_a_finished_run_of_the_same_config_is_reused(tmp_path):
    run_dir = str(tmp_path / "p2pl")
    os.makedirs(run_dir)
    assert fs.plan(run_dir, fs.requested_config("p2pl", 3, 0)) == "run"     # nothing there
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(fs.requested_config("p2pl", 3, 0), f)
    assert fs.plan(run_dir, fs.requested_config("p2pl", 3, 0)) == "run"     # no summary: resume
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump({"status": "completed", "rounds_run": 3}, f)
    assert fs.plan(run_dir, fs.requested_config("p2pl", 3, 0)) == "reuse"
    assert fs.plan(run_dir, fs.requested_config("p2pl", 5, 0)) == "run"     # extend to 5
    assert fs.plan(run_dir, fs.requested_config("p2pl", 3, 1)) == "fresh"   # another seed
    assert fs.plan(run_dir, fs.requested_config("fedavg", 3, 0)) == "fresh"
    assert "--config.algorithm=fedavg" in fs.cli_command("fedavg", run_dir, 3, 0)
