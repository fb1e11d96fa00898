"""experiments.reproduce: verdicts follow the numbers, finished runs are reused, the report holds
every claim with its verdict and figures, and the real path runs end to end at --quick scale.
The command line exits 2 with one message on a bad flag or workdir (before any run) and 3 when
runs fail (the report is still written).

Most settings are faked (run directories written here, with the exact config the driver asks
for), so only two tiny real runs are compiled; a full --quick pass compiles 18 programs.
"""

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import reproduce as spec
from experiments import reproduce as rep
from experiments import reproduce_jobs as jobs  # where run_or_reuse calls runner.run

# rounds_to_target per setting that makes every claim come out "reproduced" (cap 100).
GOOD = {"complete": 20, "fedavg": 19, "centralized": 3, "rgg": 30, "torus": 40, "cycle": 80,
        "rgg_fail0.3": 34, "rgg_fail0.5": 40, "complete_fail0.5": 24, "shards2": 60,
        "dirichlet0.5": 30, "rgg_sync_none": 44, "rgg_sync_shared": 28, "rgg_metropolis": 32,
        "rgg_skew_data_size": 30, "rgg_skew_metropolis": 50, "rgg_skew_uniform": 40,
        "local": None}
DIAMETER = {"complete": 1, "rgg": 7, "torus": 10, "cycle": 50}
REPO = Path(__file__).resolve().parents[1]


def fake_run(root, setting, seed, base, eval_every, rounds_to_target, *, final_mean=None):
    """Writes a finished run directory exactly where and as reproduce expects it."""
    c = spec.make_config(base, setting, seed, eval_every)
    d = root / "runs" / setting.name / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(c.to_dict()))
    last = rounds_to_target or c.rounds
    rows = []
    for r in range(c.eval_every, last + 1, c.eval_every):
        if rounds_to_target:
            acc = 0.97 * min(1.0, 0.8 + 0.2 * r / rounds_to_target)
        else:   # flat at final_mean
            acc = final_mean - 0.05 * math.exp(-r / 3)
        rows.append({"round": r, "acc_min": acc - 0.005 * (rounds_to_target is None),
                     "acc_mean": acc, "acc_max": acc + 0.005, "test_loss": 0.1,
                     "consensus_distance": 0.0 if not setting.distinct else 1.0 / r,
                     "train_loss": 0.1, "links_up": 1.0, "wall_s": float(r)})
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    hist = [[6] * 10 for _ in range(c.num_devices)]
    (d / "partition.json").write_text(json.dumps({"sizes": [60] * c.num_devices,
                                                  "label_histograms": hist}))
    topo = c.topology if c.algorithm == "p2pl" else "complete"
    diameter = DIAMETER.get(setting.name, DIAMETER.get(topo.split("_")[0], 7))
    summary = {"status": "completed", "rounds_to_target": rounds_to_target,
               "rounds_to_target_resolution": c.eval_every,
               # (faked: the target held from 5 rounds after the first crossing)
               "rounds_to_stable_target": rounds_to_target and rounds_to_target + 5,
               "target_hold_rounds": c.target_hold_rounds,
               "target_accuracy": c.target_accuracy,
               "final_acc_min": rows[-1]["acc_min"], "final_acc_mean": rows[-1]["acc_mean"],
               "final_acc_max": rows[-1]["acc_max"], "rounds_run": last, "wall_time_s": 1.0,
               "compile_time_s": 0.5, "eval_time_s": 0.1, "backend": "cpu",
               "diameter": diameter, "spectral_gap": 1.0 / diameter, "slem": 0.0,
               "num_edges": 10}
    (d / "summary.json").write_text(json.dumps(summary))


def fake_all(root, base, seeds, eval_every=2, skip=()):
    for name, setting in spec.settings(quick=True).items():
        if name in skip:
            continue
        for seed in seeds:
            fake_run(root, setting, seed, base, eval_every, GOOD[name], final_mean=0.88)


@pytest.fixture
def no_runs(monkeypatch):
    def fail(config, workdir):
        raise AssertionError(f"unexpected run into {workdir}")
    monkeypatch.setattr(jobs, "run", fail)


def test_report_from_existing_runs(tmp_path, no_runs):
    base = spec.base_config(quick=True, rounds=100, target=0.97)
    fake_all(tmp_path, base, range(2))
    verdicts = rep.reproduce(str(tmp_path), seeds=2, quick=True, rounds=100, target=0.97)
    assert {n: v for n, (v, _) in verdicts.items()} == {n: "reproduced" for n in range(1, 9)}
    report = (tmp_path / "report.md").read_text()
    for claim in spec.CLAIMS:
        assert f"## Claim {claim.number}: {claim.title}" in report
        assert f"{claim.number}. {claim.title} | **reproduced**" in report
    for link in re.findall(r"\]\((figures/[^)]+)\)", report):
        assert (tmp_path / link).stat().st_size > 5_000, link
    assert (tmp_path / "figures" / "claim3_accuracy.png").exists()
    assert (tmp_path / "figures" / "claim3_rounds.png").exists()
    assert (tmp_path / "figures" / "partition_shards2.png").exists()
    assert "20.0 ± 0.0" in report and "not reached in 100 rounds" in report
    # Both numbers, with the resolution: complete graph 20 (every round) and held from 25.
    assert "| P2PL complete | 2/2 | 20.0 ± 0.0 | 25.0 ± 0.0 |" in report
    assert "not held for 10 rounds in 100" in report and "rounds to stable target" in report
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(spec.settings(quick=True))
    assert {r["status"] for r in rows} == {"ok"}
    complete = next(r for r in rows if r["setting"] == "complete")
    assert (complete["rounds_to_target"], complete["rounds_to_stable_target"],
            complete["rounds_to_target_resolution"]) == ("20", "25", "1")


def test_runs_from_before_the_stable_target(tmp_path, no_runs):
    """A run written before rounds_to_stable_target that stopped at its first crossing
    (stop_at_target) never checked a hold: it is rerun, but --report_only still reports it, with
    its stable target as not recorded."""
    base = spec.base_config(quick=True, rounds=100, target=0.97)
    setting = spec.settings(quick=True)["complete"]
    fake_run(tmp_path, setting, 0, base, 2, 20)
    d = tmp_path / "runs" / "complete" / "seed0"
    summary = json.loads((d / "summary.json").read_text())
    del summary["rounds_to_stable_target"]
    (d / "summary.json").write_text(json.dumps(summary))
    c = spec.make_config(base, setting, 0, 2)
    assert rep._plan(str(d), c.to_dict())[0] == "fresh"
    assert rep._plan(str(d), c.to_dict(), report_only=True)[0] == "reuse"
    stat = rep.make_stat(setting, [rep.run_or_reuse(c, str(d), report_only=True) | {"seed": 0}])
    assert stat.rounds_text() == "20.0 ± 0.0"
    assert stat.stable_text().startswith("not recorded")


def test_changed_config_is_rerun_and_missing_is_reported(tmp_path, monkeypatch):
    base = spec.base_config(quick=True, rounds=100)
    fake_all(tmp_path, base, [0], skip=("fedavg",))
    calls = []

    def fake(config, workdir):
        calls.append((config.algorithm, config.eval_every, workdir))
        raise rep.ConfigError("not today")
    monkeypatch.setattr(jobs, "run", fake)
    # eval_every=3 changes every sparse setting's config: those are rerun (and fail here).
    verdicts = rep.reproduce(str(tmp_path), seeds=1, quick=True, rounds=100, eval_every=3,
                             claim_numbers=[2, 6])
    ran = sorted(w.split("/runs/")[1] for _, _, w in calls)
    assert ran == ["fedavg/seed0", "rgg/seed0", "rgg_sync_none/seed0", "rgg_sync_shared/seed0"]
    assert verdicts[2][0] == "not run" and verdicts[6][0] == "not run"
    report = (tmp_path / "report.md").read_text()
    assert "seed 0: error: not today" in report and "## Claim 3" not in report
    # --report_only runs nothing and marks what is absent.
    calls.clear()
    rep.reproduce(str(tmp_path), seeds=1, quick=True, rounds=100, report_only=True,
                  claim_numbers=[2])
    assert calls == []
    assert "| FedAvg | – | not run |" in (tmp_path / "report.md").read_text()


def _stat(name, rounds, *, cap=100, final=0.97, diameter=None, curves=()):
    return rep.Stat(name=name, label=name, algorithm="p2pl", rounds=list(rounds), cap=cap,
                    eval_every=2, final_min=[final] * len(rounds),
                    final_mean=[final] * len(rounds), diameter=[diameter] * len(rounds),
                    spectral_gap=[0.1] * len(rounds), wall=[1.0] * len(rounds), errors=[],
                    curves=list(curves), workdirs=[])


def test_verdict_rules():
    st = {"complete": _stat("complete", [20, 22]), "fedavg": _stat("fedavg", [20, 20])}
    assert rep.verdict_2(st, 0.97)[0] == "reproduced"
    st["complete"] = _stat("complete", [30, 30])       # +50%
    assert rep.verdict_2(st, 0.97)[0] == "not reproduced"
    st["complete"] = _stat("complete", [2, 2])
    st["fedavg"] = _stat("fedavg", [1, 1])             # 1 round apart: within the 1-round floor
    assert rep.verdict_2(st, 0.97)[0] == "reproduced"

    g = {"complete": _stat("c", [20], diameter=1), "rgg": _stat("r", [30], diameter=7),
         "torus": _stat("t", [40], diameter=10), "cycle": _stat("y", [None], diameter=50)}
    verdict, why = rep.verdict_3(g, 0.97)
    assert verdict == "partly reproduced" and "not reached in 100" in why
    g["torus"] = _stat("t", [25], diameter=10)         # faster than a smaller-diameter graph
    g["cycle"] = _stat("y", [90], diameter=50)
    assert rep.verdict_3(g, 0.97)[0] == "partly reproduced"
    g["torus"] = _stat("t", [35], diameter=10)
    assert rep.verdict_3(g, 0.97)[0] == "reproduced"

    s = {"rgg": _stat("r", [30]), "rgg_sync_none": _stat("n", [None]),
         "rgg_sync_shared": _stat("s", [28])}
    assert rep.verdict_6(s, 0.97)[0] == "reproduced"
    s["rgg_sync_none"] = _stat("n", [28])
    assert rep.verdict_6(s, 0.97)[0] == "not reproduced"

    w = {"rgg": _stat("d", [30]), "rgg_metropolis": _stat("m", [45]),
         "rgg_skew_data_size": _stat("ds", [30]), "rgg_skew_metropolis": _stat("sm", [50]),
         "rgg_skew_uniform": _stat("su", [40])}
    assert rep.verdict_7(w, 0.97)[0] == "partly reproduced"   # faster under skew, also equal
    w["rgg_skew_data_size"] = _stat("ds", [60])
    assert rep.verdict_7(w, 0.97)[0] == "not reproduced"

    r = np.arange(5, 101, 5)
    flat = (r, 0.88 - 0.05 * np.exp(-r / 3.0))
    rising = (r, 0.80 + 0.001 * r)
    assert rep.verdict_8({"local": _stat("l", [None], final=0.88, curves=[flat])},
                         0.97)[0] == "reproduced"
    assert rep.verdict_8({"local": _stat("l", [None], final=0.90, curves=[rising])},
                         0.97)[0] == "partly reproduced"
    assert rep.verdict_8({"local": _stat("l", [None], final=0.97, curves=[rising])},
                         0.97)[0] == "not reproduced"


def test_quick_end_to_end(tmp_path, mnist_dir):
    """P2PL on the complete graph runs for real through runner.run at --quick scale; the other
    settings are faked. A second call reuses everything."""
    base = spec.base_config(quick=True)
    fake_all(tmp_path, base, [0], skip=("complete",))
    verdicts = rep.reproduce(str(tmp_path), seeds=1, quick=True, claim_numbers=[1, 2])
    assert set(verdicts) == {1, 2}
    assert all(v in rep.VERDICTS for v, _ in verdicts.values())
    summary = json.loads((tmp_path / "runs" / "complete" / "seed0" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final_acc_mean"] > 0.2
    report = (tmp_path / "report.md").read_text()
    assert "--quick" in report and report.count("**Verdict:") == 2
    mtime = (tmp_path / "runs" / "complete" / "seed0" / "summary.json").stat().st_mtime
    rep.reproduce(str(tmp_path), seeds=1, quick=True, claim_numbers=[1, 2])  # nothing to run
    assert (tmp_path / "runs" / "complete" / "seed0" / "summary.json").stat().st_mtime == mtime


def test_plan_reuse_resume_fresh(tmp_path):
    base = spec.base_config(quick=True, rounds=100, target=0.97)
    setting = spec.settings(quick=True)["rgg"]
    fake_run(tmp_path, setting, 0, base, 2, 30)
    d = str(tmp_path / "runs" / "rgg" / "seed0")
    c = spec.make_config(base, setting, 0, 2)
    assert rep._plan(d, c.to_dict())[0] == "reuse"
    c.rounds = 150                      # reached at 30: a larger cap changes nothing
    assert rep._plan(d, c.to_dict())[0] == "reuse"
    c.rounds = 20                       # the cap now cuts before the target: start again
    assert rep._plan(d, c.to_dict())[0] == "fresh"
    c.rounds = 100
    c.learning_rate = 0.01              # another trajectory
    assert rep._plan(d, c.to_dict())[0] == "fresh"
    c.learning_rate = base.learning_rate
    summary = json.loads((tmp_path / "runs" / "rgg" / "seed0" / "summary.json").read_text())
    summary.update(status="interrupted", rounds_to_target=None, checkpoint_round=10)
    (tmp_path / "runs" / "rgg" / "seed0" / "summary.json").write_text(json.dumps(summary))
    assert rep._plan(d, c.to_dict())[0] == "fresh"       # no checkpoint to resume from
    (tmp_path / "runs" / "rgg" / "seed0" / "checkpoints").mkdir()
    assert rep._plan(d, c.to_dict())[0] == "resume"


def test_compare_mixing_table(tmp_path, monkeypatch, capsys):
    """benchmarks.compare_mixing builds one row per graph × sizes × scheme (runs faked)."""
    from benchmarks import compare_mixing

    def fake(config, workdir):
        rtt = {"data_size": 2, "metropolis": 3}.get(config.mixing)
        summary = {"status": "completed", "rounds_to_target": rtt, "final_acc_min": 0.6,
                   "final_acc_mean": 0.7, "rounds_run": rtt or config.rounds,
                   "wall_time_s": 2.0, "train_wall_s": 1.0, "compile_time_s": 1.0,
                   "eval_time_s": 0.1, "spectral_gap": 0.5, "diameter": 2}
        os.makedirs(workdir, exist_ok=True)
        for name, obj in (("config.json", config.to_dict()), ("summary.json", summary)):
            with open(os.path.join(workdir, name), "w") as f:
                json.dump(obj, f)
        return summary

    monkeypatch.setattr(jobs, "run", fake)
    records = compare_mixing.main(["--quick", "--seeds=2", f"--workdir={tmp_path}",
                                   "--graphs=random_geometric,torus"])
    n_schemes = len(compare_mixing.SCHEMES)
    assert len(records) == 2 * 2 * n_schemes * 2
    out = capsys.readouterr().out
    assert "# machine:" in out
    table = (tmp_path / "compare_mixing.md").read_text()
    assert table.count("| random_geometric |") == table.count("| torus |") == 2 * n_schemes
    assert "| torus | skewed | data_size | 2.0 ± 0.0 | 2/2 |" in table
    assert "| torus | equal | uniform | not reached in 3 | 0/2 |" in table
    with open(tmp_path / "compare_mixing.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 * 2 * n_schemes * 2
    compare_mixing.main(["--quick", "--seeds=2", f"--workdir={tmp_path}", "--graphs=torus"])


def test_plan_counts_fields_added_since_as_their_default(tmp_path):
    base = spec.base_config(quick=True, rounds=100, target=0.97)
    setting = spec.settings(quick=True)["local"]      # never reaches: reuse needs equal configs
    fake_run(tmp_path, setting, 0, base, 2, None, final_mean=0.85)
    d = tmp_path / "runs" / "local" / "seed0"
    stored = json.loads((d / "config.json").read_text())
    del stored["eval_backfill"]                       # written before the field existed
    (d / "config.json").write_text(json.dumps(stored))
    c = spec.make_config(base, setting, 0, 2)
    assert rep._plan(str(d), c.to_dict())[0] == "reuse"
    c.eval_backfill = not c.eval_backfill             # not the default: not the same run
    assert rep._plan(str(d), c.to_dict())[0] != "reuse"


def test_claim_is_exclusive_and_stale_claims_are_taken_over(tmp_path):
    with rep.claim(str(tmp_path), "rgg", 0) as mine:
        assert mine
        path = tmp_path / "claims" / "rgg.seed0"
        assert path.read_text() == str(os.getpid())
    assert not path.exists()
    # Held by a live other process: skipped. Left by a dead one: taken over.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        path.write_text(str(other.pid))
        with rep.claim(str(tmp_path), "rgg", 0) as mine:
            assert not mine
    finally:
        other.kill()
        other.wait()
    with rep.claim(str(tmp_path), "rgg", 0) as mine:
        assert mine
    assert not path.exists()


# ----------------------------------------------------------------------------- command line


def _cli(args, *, code=None, timeout=120):
    """experiments.reproduce as a real process (`code`: a python -c script instead of -m)."""
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "experiments.reproduce"]
    return subprocess.run([*cmd, *args], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=timeout)


def _one_error(proc, *names):
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for name in names:
        assert name in proc.stderr, proc.stderr


QUICK = ["--quick", "--seeds=1", "--claims=8"]


@pytest.mark.parametrize("flag, named, allowed", [
    ("--target=1.5", "--target", "(0.0, 1.0]"),
    ("--target=0", "--target", "(0.0, 1.0]"),
    ("--seeds=0", "--seeds", "[1, inf)"),
    ("--eval_every=0", "--eval_every", "[1, inf)"),
    ("--rounds=0", "--rounds", "[1, inf)"),
    ("--skew_sigma=0", "--skew_sigma", "(0.0, 10.0]"),
    ("--claims=9", "--claims", "1, 2, 3, 4, 5, 6, 7, 8"),
    ("--seeds=abc", "--seeds", "Usage:"),
])
def test_bad_flag_exits_2_before_any_run(tmp_path, flag, named, allowed):
    proc = _cli([*QUICK, f"--workdir={tmp_path / 'w'}", flag])
    assert proc.returncode == 2, proc.stderr
    _one_error(proc, named, allowed)
    assert not (tmp_path / "w" / "runs").exists()


@pytest.mark.parametrize("options, message", [
    ({"target": 1.0000001}, "--target"), ({"target": -0.5}, "--target"),
    ({"seeds": 2.5}, "--seeds=2.5 must be an integer"), ({"rounds": -3}, "--rounds"),
    ({"skew_sigma": float("nan")}, "--skew_sigma=nan must be a finite number"),
    ({"skew_sigma": float("inf")}, "--skew_sigma"), ({"skew_sigma": -1.0}, "--skew_sigma"),
    ({"eval_every": 0}, "--eval_every"), ({"claim_numbers": [0, 3]}, "no claim 0"),
])
def test_check_options_names_the_flag(options, message):
    """In process, the rest of the table the command line above checks end to end."""
    full = {"seeds": 1, "rounds": None, "target": None, "eval_every": 2, "skew_sigma": 1.0,
            **options}
    with pytest.raises(rep.ConfigError, match=re.escape(message)):
        rep.check_options(**full)
    assert rep.parse_claims(["1", " 3"]) == [1, 3] and rep.parse_claims([]) is None
    with pytest.raises(rep.ConfigError, match="--claims=x must be claim numbers"):
        rep.parse_claims(["x"])


@pytest.mark.parametrize("where", ["file", "under_file", "unwritable"])
def test_bad_workdir_exits_2_before_any_run(tmp_path, where):
    (tmp_path / "f").write_text("not a directory")
    workdir = {"file": tmp_path / "f", "under_file": tmp_path / "f" / "sub",
               "unwritable": tmp_path / "ro" / "w"}[where]
    if where == "unwritable":
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        (tmp_path / "ro").mkdir(mode=0o500)
    proc = _cli([*QUICK, f"--workdir={workdir}"])
    assert proc.returncode == 2, proc.stderr
    _one_error(proc, f"--workdir={workdir}")
    assert (tmp_path / "f").read_text() == "not a directory"


# Replaces runner.run before experiments.reproduce is loaded, then runs it as __main__.
_FAILING = """
import runpy
from p2pl_jax import runner
from p2pl_jax.errors import ConfigError

def run(config, workdir):
    kind = {kind!r}
    if kind == "diverged":
        raise runner.DivergenceError("train_loss=nan at round 2")
    if kind == "config":
        raise ConfigError("MNIST not found in /nowhere")
    raise RuntimeError("XLA ran out of memory")

runner.run = run
runpy.run_module("experiments.reproduce", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("kind, status, reason", [
    ("diverged", 3, "train_loss=nan at round 2"),
    ("raised", 3, "RuntimeError: XLA ran out of memory"),
    ("config", 2, "MNIST not found in /nowhere"),   # every failure a user error: status 2
])
def test_failed_runs_exit_nonzero_with_one_message(tmp_path, kind, status, reason):
    proc = _cli([*QUICK, f"--workdir={tmp_path}"], code=_FAILING.format(kind=kind))
    assert proc.returncode == status, proc.stdout + proc.stderr
    run_dir = tmp_path / "runs" / "local" / "seed0"
    _one_error(proc, "1 of 1 runs failed", reason, str(run_dir), "error.txt",
               str(tmp_path / "report.md"))
    assert "claim 8: not run" in proc.stdout
    assert "seed 0: error:" in (tmp_path / "report.md").read_text()
    error = (run_dir / "error.txt").read_text()
    assert reason.split(": ")[-1] in error
    assert ("Traceback" in error) == (kind == "raised")   # the traceback goes to the file only
    with open(tmp_path / "results.csv") as f:
        assert [r["status"].startswith("error:") for r in csv.DictReader(f)] == [True]


def test_reused_diverged_run_exits_3(tmp_path):
    """A run that diverged earlier is reused as failed: --report_only exits 3 too."""
    base = spec.base_config(quick=True)
    fake_run(tmp_path, spec.settings(quick=True)["local"], 0, base, 2, None, final_mean=0.5)
    summary = tmp_path / "runs" / "local" / "seed0" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "diverged"}))
    proc = _cli([*QUICK, f"--workdir={tmp_path}", "--report_only"])
    assert proc.returncode == 3, proc.stdout + proc.stderr
    _one_error(proc, "1 of 1 runs failed (1 diverged)", "summary.json", "metrics.jsonl")


def test_outcome_lists_failed_runs_only(tmp_path, monkeypatch):
    """In process: failed runs are listed, missing ones (--report_only) are not failures."""
    base = spec.base_config(quick=True, rounds=100)
    fake_all(tmp_path, base, [0], skip=("fedavg", "rgg"))

    def fake(config, workdir):
        if config.algorithm == "fedavg":
            raise rep.DivergenceError("loss above the limit")
        raise rep.ConfigError("missing data")
    monkeypatch.setattr(jobs, "run", fake)
    out = rep.run_reproduction(str(tmp_path), seeds=1, quick=True, rounds=100,
                               claim_numbers=[2, 6])
    assert sorted(r["setting"] for r in out.failed) == ["fedavg", "rgg"]
    assert out.exit_status() == 3 and out.pending == []
    assert "2 of 5 runs failed (1 diverged, 1 user error)" in out.failure_message()
    only = rep.run_reproduction(str(tmp_path), seeds=1, quick=True, rounds=100,
                                claim_numbers=[6], report_only=True)
    # rgg raised (no summary.json): on disk it is just not there
    assert only.failed == [] and [r["setting"] for r in only.pending] == ["rgg"]
    assert only.exit_status() == 0
    again = rep.run_reproduction(str(tmp_path), seeds=1, quick=True, rounds=100,
                                 claim_numbers=[6])
    assert [r["failure"] for r in again.failed] == ["config"] and again.exit_status() == 2
    with pytest.raises(rep.ConfigError, match="--target"):
        rep.run_reproduction(str(tmp_path), seeds=1, quick=True, target=1.5)
