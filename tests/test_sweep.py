"""Sweeps as a batch axis equal separate runs with the same settings, for every sweepable field.

Three sweeps on configs/smoke.py cover sweep.SWEEPABLE:

  seed_lr          seed x learning_rate                      4 replicas, one program
  momentum_mixing  momentum x mixing (data_size, metropolis) 4 replicas, one program; the
                   topology is a path, on which the two schemes give different weights
  faults           link_failure_prob (0.0, 0.3) x dropout_prob (0.0, 0.3, 0.6): 6 replicas in
                   4 programs (a probability 0 compiles no sampling), of 1, 1, 2 and 2 replicas

Replicas compared with a separate `runner.run` are chosen to be a lone replica and replicas
that are not the first of their program (a replica that silently ran with the first one's
settings would then differ), and every pair of replicas of a sweep must differ (a field the
sweep silently ignored would make them equal, and the comparison vacuous).
"""

import itertools
import json
import os

import pytest

from configs import smoke
from p2pl_jax import runner, sweep
from p2pl_jax.errors import ConfigError

SWEEPS = {
    "seed_lr": ({"seed": [0, 1], "learning_rate": [0.05, 0.1]}, {}),
    "momentum_mixing": ({"momentum": [0.5, 0.9], "mixing": ["data_size", "metropolis"]},
                        {"topology": "path"}),
    "faults": ({"link_failure_prob": [0.0, 0.3], "dropout_prob": [0.0, 0.3, 0.6]}, {}),
    "choco_step": ({"consensus_step": [0.5, 1.0], "weight_decay": [0.0, 0.05]},
                   {"algorithm": "choco", "topology": "path"}),
    "algorithms": ({"algorithm": ["dpsgd", "push_sum", "gradient_tracking"]},
                   {"topology": "path"}),
}
COMPARED = [
    ("choco_step", {"consensus_step": 0.5, "weight_decay": 0.05}),
    ("algorithms", {"algorithm": "push_sum"}),
    ("seed_lr", {"seed": 0, "learning_rate": 0.05}),
    ("seed_lr", {"seed": 1, "learning_rate": 0.1}),
    ("momentum_mixing", {"momentum": 0.5, "mixing": "metropolis"}),
    ("momentum_mixing", {"momentum": 0.9, "mixing": "data_size"}),
    ("faults", {"link_failure_prob": 0.0, "dropout_prob": 0.0}),      # alone in its program
    ("faults", {"link_failure_prob": 0.0, "dropout_prob": 0.6}),      # 2nd of 2 (dropouts)
    ("faults", {"link_failure_prob": 0.3, "dropout_prob": 0.0}),      # alone (links)
    ("faults", {"link_failure_prob": 0.3, "dropout_prob": 0.6}),      # 2nd of 2 (both)
]
ACC = ("acc_min", "acc_mean", "acc_max")


def _config(overrides: dict):
    c = smoke.get_config()
    c.tensorboard = False
    for k, v in overrides.items():
        c[k] = v
    return c


def _name(override: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in override.items())


def _records(path):
    with open(os.path.join(path, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "wall_s"} for line in f]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Runs each sweep once (lazily); returns {sweep: (out dir, summaries)}."""
    done = {}

    def get(key):
        if key not in done:
            values, base_overrides = SWEEPS[key]
            out = str(tmp_path_factory.mktemp(key))
            done[key] = out, sweep.run_sweep(_config(base_overrides), values, out)
        return done[key]

    return get


def _assert_same(separate, replica):
    assert len(separate) == len(replica) == smoke.get_config().rounds
    for a, b in zip(separate, replica):
        assert a.keys() == b.keys()
        assert a["round"] == b["round"]
        for k in a:
            if k in ACC:
                assert a[k] == pytest.approx(b[k], abs=2e-4), k   # at most 2 of 10k images
            else:
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k


def _differ(ra, rb) -> bool:
    return any(abs(a[k] - b[k]) > 1e-4 for a, b in zip(ra, rb)
               for k in ("train_loss", "test_loss", "consensus_distance"))


def test_sweep_runs_all_replicas_in_one_program(swept):
    out, summaries = swept("seed_lr")
    assert len(summaries) == 4
    assert all(s["replicas_in_program"] == 4 for s in summaries)
    names = sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d)))
    assert names == sorted(f"seed={s},learning_rate={lr}" for s in (0, 1) for lr in (0.05, 0.1))


@pytest.mark.parametrize("key,expected", [
    ("momentum_mixing", {"momentum=0.5,mixing=data_size": 4}),
    ("faults", {"link_failure_prob=0.0,dropout_prob=0.0": 1,
                "link_failure_prob=0.0,dropout_prob=0.3": 2,
                "link_failure_prob=0.3,dropout_prob=0.0": 1,
                "link_failure_prob=0.3,dropout_prob=0.6": 2}),
])
def test_replicas_group_by_compiled_round(swept, key, expected):
    """Hyperparameters and mixing weights are arrays (one program); a fault probability of 0
    compiles no sampling, so it runs in a program of its own."""
    out, summaries = swept(key)
    values, _ = SWEEPS[key]
    assert len(summaries) == len(list(itertools.product(*values.values())))
    with open(os.path.join(out, "sweep.json")) as f:
        by_name = {s["name"]: s for s in json.load(f)}
    assert all(s["status"] == "completed" for s in by_name.values())
    in_program = {n: s["replicas_in_program"] for n, s in by_name.items()}
    for name, count in expected.items():
        assert in_program[name] == count, in_program
    if key == "faults":
        for name, count in in_program.items():
            drops = float(name.split("dropout_prob=")[1])
            assert count == (2 if drops > 0 else 1), in_program   # the 2 dropout values


@pytest.mark.parametrize("key,override", COMPARED,
                         ids=[f"{k}:{_name(o)}" for k, o in COMPARED])
def test_replica_equals_separate_run(swept, tmp_path, key, override):
    out, _ = swept(key)
    _, base_overrides = SWEEPS[key]
    runner.run(_config({**base_overrides, **override}), str(tmp_path))
    _assert_same(_records(str(tmp_path)), _records(os.path.join(out, _name(override))))


@pytest.mark.parametrize("key", list(SWEEPS))
def test_every_swept_value_changes_the_run(swept, key):
    """No two replicas of a sweep record the same run, and the faults show in the round
    metrics of exactly the replicas that have them."""
    out, _ = swept(key)
    values, _ = SWEEPS[key]
    runs = {}
    for combo in itertools.product(*values.values()):
        override = dict(zip(values, combo))
        runs[_name(override)] = (override, _records(os.path.join(out, _name(override))))
    for (na, (_, ra)), (nb, (_, rb)) in itertools.combinations(runs.items(), 2):
        assert _differ(ra, rb), (na, nb)
    for override, records in runs.values():
        links = min(r["links_up"] for r in records)
        devices = min(r["devices_up"] for r in records)
        assert (links < 1) == (override.get("link_failure_prob", 0) > 0
                               or override.get("dropout_prob", 0) > 0), override
        assert (devices < 1) == (override.get("dropout_prob", 0) > 0), override


def test_sweep_rejects_bad_fields():
    base = smoke.get_config()
    with pytest.raises(ConfigError, match="allowed"):
        sweep.parse_values("hidden_sizes", "1,2", base.hidden_sizes)
    with pytest.raises(ConfigError, match="learning_rate"):
        sweep.parse_values("learning_rate", "0.1,abc", base.learning_rate)
    assert sweep.parse_values("mixing", "data_size, metropolis", base.mixing) == [
        "data_size", "metropolis"]


def test_every_sweepable_field_is_covered():
    covered = {f for values, _ in SWEEPS.values() for f in values}
    assert covered == set(sweep.SWEEPABLE)


def test_diverging_replica_stops_alone(tmp_path):
    base = smoke.get_config()
    base.rounds, base.tensorboard = 3, False
    summaries = sweep.run_sweep(base, {"learning_rate": [0.05, 1e30]}, str(tmp_path))
    by_lr = {json.loads(open(os.path.join(tmp_path, d, "config.json")).read())["learning_rate"]:
             json.loads(open(os.path.join(tmp_path, d, "summary.json")).read())
             for d in os.listdir(tmp_path) if os.path.isdir(os.path.join(tmp_path, d))}
    assert len(summaries) == 2
    assert by_lr[0.05]["status"] == "completed" and by_lr[0.05]["rounds_run"] == 3
    assert by_lr[1e30]["status"] == "diverged" and by_lr[1e30]["rounds_run"] == 1
    assert len(_records(os.path.join(tmp_path, "learning_rate=0.05"))) == 3


def test_sweep_rejects_repeated_and_non_finite_values():
    """A value listed twice would give two replicas one folder; inf/nan are not rates."""
    base = smoke.get_config()
    with pytest.raises(ConfigError, match=r"sweep.seed='0,1,0' lists 0 more than once"):
        sweep.parse_values("seed", "0,1,0", base.seed)
    with pytest.raises(ConfigError, match=r"sweep.learning_rate='0.1,1e-1' lists 0.1 more"):
        sweep.parse_values("learning_rate", "0.1,1e-1", base.learning_rate)
    for text in ("inf", "0.1,nan"):
        with pytest.raises(ConfigError, match="must be a finite number"):
            sweep.parse_values("learning_rate", text, base.learning_rate)
    with pytest.raises(ConfigError, match=r"sweep.seed='1.5': each value must be an integer"):
        sweep.parse_values("seed", "1.5", base.seed)


@pytest.mark.parametrize("blocker", ["seed=1", "sweep.json"])
def test_sweep_output_path_taken_by_another_kind_is_a_config_error(tmp_path, blocker):
    """A replica folder that is a file, or a sweep.json that is a folder, is found before
    anything is built, and named."""
    if blocker == "sweep.json":
        (tmp_path / blocker).mkdir()
    else:
        (tmp_path / blocker).write_text("not a folder")
    with pytest.raises(ConfigError) as e:
        sweep.run_sweep(smoke.get_config(), {"seed": [0, 1]}, str(tmp_path))
    assert f"workdir={str(tmp_path)!r}" in str(e.value)
    assert repr(str(tmp_path / blocker)) in str(e.value), str(e.value)
    assert not (tmp_path / "seed=0" / "config.json").exists()   # nothing built
