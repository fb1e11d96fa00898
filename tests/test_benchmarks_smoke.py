"""Smoke test of the benchmark scripts: each runs end to end with --quick in a subprocess.

Benchmarks are scripts, not timed tests: only that they run, print their machine header and
(vs_loop) that the per-device jax loop matches the vectorized round. The two runs share a
persistent compilation cache, so the second reuses the first's compiled init and dense round.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory):
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jit_cache"))
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("XLA_FLAGS", None)   # one host device, whatever the caller fakes
    return env


def _run(module: str, args: list[str], env: dict) -> str:
    proc = subprocess.run([sys.executable, "-m", module, "--quick", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{module} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "# machine:" in proc.stdout and "jax " in proc.stdout
    return proc.stdout


def test_round_time_quick(bench_env, tmp_path):
    out = _run("benchmarks.round_time", ["--json", str(tmp_path / "r.json")], bench_env)
    assert "copy bandwidth" in out
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == {"dense", "gather"}
    for r in rows:
        assert "error" not in r, r
        assert r["round_s"] > 0 and r["consensus_s"] > 0 and r["floor_s"] > 0


def test_vs_loop_quick(bench_env, tmp_path):
    out = _run("benchmarks.vs_loop", ["--json", str(tmp_path / "v.json")], bench_env)
    assert "match: True" in out
    res = json.loads((tmp_path / "v.json").read_text())
    assert res["match"] is True and res["jax_loop"]["round_s"] > 0
    if res["torch_loop"] is not None:   # torch is optional
        assert res["torch_match"] is True


def test_setup_time_quick(bench_env, tmp_path):
    _run("benchmarks.setup_time", ["--json", str(tmp_path / "s.json")], bench_env)
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert [r["n"] for r in rows] == [30, 200]
    for r in rows:
        assert "error" not in r, r
        assert r["total_s"] > 0 and r["diameter"] >= 1 and r["baseline_diameter_equal"] is True


def test_skew_quick(bench_env, tmp_path):
    """Both layouts run; the bucketed one runs the device-steps needed; every case's sizes."""
    _run("benchmarks.skew", ["--json", str(tmp_path / "k.json")], bench_env)
    rows = json.loads((tmp_path / "k.json").read_text())["rows"]
    assert [r["case"] for r in rows] == ["equal", "top:0.5"]
    for r in rows:
        assert r["round_s_bucketed"] > 0 and r["round_s_padded"] > 0 and r["floor_s"] > 0
    assert rows[0]["run_steps"] == rows[0]["padded_steps"] == rows[0]["needed"]
    assert rows[1]["run_steps"] == rows[1]["needed"] < rows[1]["padded_steps"]
    from benchmarks.skew import case_sizes

    sizes = case_sizes("groups:0.01/0.99", 10, 6000, 0)
    assert sizes.tolist() == [12] * 5 + [1188] * 5
    top = case_sizes("top:0.9", 10, 6000, 0)
    assert top[0] == 5400 and top.sum() == 6000 and set(top[1:].tolist()) == {66, 67}
    lognormal = case_sizes("lognormal:1.5", 10, 6000, 0)
    assert lognormal.sum() == 6000 and lognormal.max() > 3 * lognormal.min()


def test_models_quick(bench_env, tmp_path):
    """benchmarks.models (issue #13): the vmapped round, the large-batch model and the floor."""
    out = _run("benchmarks.models", ["--json", str(tmp_path / "m.json")], bench_env)
    assert "matmul throughput" in out and "flop check (mlp)" in out
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["benchmark"] == "models" and res["matmul"]["flops_per_s"] > 0
    [r] = res["rows"]
    assert "error" not in r, r
    for key in ("model", "params", "n", "batch_size", "steps", "round_s", "single_s",
                "ratio_to_single", "flops", "bytes", "floor_s", "ratio_to_floor",
                "gflops_per_s", "compile_s", "peak_bytes", "loop_corrected"):
        assert key in r, key
    assert r["model"] == "mlp" and r["steps"] > 1
    assert 0 < r["floor_s"] < r["round_s"] and r["single_s"] > 0 and r["compile_s"] > 0
    assert r["peak_bytes"] > 0 and r["flops"] > 0
    # the loop correction happened where XLA counts a scan once (and kept the scan's loop), and
    # lands near the analytic matmul count (elementwise ops on top: above 1)
    assert r["loop_corrected"] == (res["loops_counted_once"] and r["steps"] in r["trip_counts"])
    assert 0.9 < r["flop_check"]["ratio"] < 1.5


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)


def test_wireless_quick(bench_env, tmp_path):
    """benchmarks.wireless (issue #14): the wireless and the ideal round of the same set-up."""
    out = _run("benchmarks.wireless", ["--json", str(tmp_path / "w.json")], bench_env)
    assert "wireless / ideal" in out
    [row] = json.loads((tmp_path / "w.json").read_text())["rows"]
    assert row["n"] == 4 and row["ideal_s"] > 0 and row["wireless_s"] > 0
    assert row["ratio"] == row["wireless_s"] / row["ideal_s"]
