"""The memory check before the first round (p2pl_jax/memory.py, docs/memory.md).

A forced small limit stops the run as a user error (exit 2, one message with the figures and
the ways out, no traceback, no files left in a new workdir); the figures agree with an
independent count of the state's bytes and scale with the number of devices; memory_limit_gb
< 0 skips the check and a generous limit passes, both recording summary.json's `memory`; bad
values of the field are user errors naming it; the formula itself is checked on made-up XLA
figures, and a backend without memory_analysis skips the check instead of crashing.
"""

import json
import math
from concurrent.futures import ThreadPoolExecutor

import jax
import ml_collections
import numpy as np
import pytest
from test_cli_errors import SMOKE, _run

from configs import smoke
from p2pl_jax import memory, rng, runner, sweep
from p2pl_jax.errors import ConfigError


def _config(**overrides) -> ml_collections.ConfigDict:
    c = smoke.get_config()
    c.tensorboard, c.progress, c.rounds = False, False, 1
    for k, v in overrides.items():
        c[k] = v
    return c


# --- the command line: a forced small limit and bad values ---------------------------------

CLI_CASES = {   # bad values (nan, a string) are exit 2 like every field: test_validate_names_...
    "small limit": ["--config.memory_limit_gb=1e-6"],
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory_cli")
    with ThreadPoolExecutor(3) as pool:
        futures = {name: pool.submit(_run, "train", [*SMOKE, *args], {}, root / name)
                   for name, args in CLI_CASES.items()}
        return root, {name: f.result() for name, f in futures.items()}


def _one_error(proc) -> str:
    err = proc.stderr
    assert proc.returncode == 2, f"status {proc.returncode}:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def test_forced_small_limit_exits_2_with_the_figures_and_the_ways_out(cli):
    root, outcomes = cli
    line = _one_error(outcomes["small limit"])
    for text in ("not enough memory", "limit of 1e-06 GB (memory_limit_gb=1e-06)",
                 "parameters and optimizer/algorithm state", "data ",
                 "activations/temporaries of the round", "evaluation", "backfill copies",
                 "Ways out:", "fewer devices (num_devices=4", "shard=True",
                 "eval_device_chunk=10", "width_multiplier", "memory_limit_gb=-1"):
        assert text in line, (text, line)
    assert float(line.split("the run needs about ")[1].split(" GB")[0]) > 1e-6
    assert not (root / "small limit").exists()   # a new workdir: nothing left, as for set-up


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "abc", None, True])
def test_validate_names_the_field(value):
    c = ml_collections.ConfigDict(dict(_config().to_dict(), memory_limit_gb=value))
    with pytest.raises(ConfigError, match="memory_limit_gb"):
        runner.validate(c)


# --- the figures of real runs ---------------------------------------------------------------

def _state_count(c) -> tuple[int, int]:
    """(parameters + optimizer state bytes, whole state bytes) of the initial state's pytree,
    counted from its shapes, not from XLA."""
    sim, _, _ = runner.build(c)
    state = jax.eval_shape(sim.init_state, rng.root_key(0))
    nbytes = lambda tree: sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize   # noqa: E731
                              for x in jax.tree.leaves(tree))
    return nbytes((state.params, state.opt_state)), nbytes(state)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """4 devices without a check, 8 devices with a generous limit: their summaries."""
    root = tmp_path_factory.mktemp("memory_runs")
    out = {}
    for n, gb in ((4, -1.0), (8, 1000.0)):
        work = root / f"n{n}"
        runner.run(_config(num_devices=n, memory_limit_gb=gb), str(work))
        out[n] = json.loads((work / "summary.json").read_text())
    return out


def test_no_check_and_a_generous_limit_record_the_figures(runs):
    off, on = runs[4]["memory"], runs[8]["memory"]
    assert off["checked"] is False and off["limit_bytes"] is None
    assert on["checked"] is True and on["limit_bytes"] == int(1000 * 1e9)
    assert "memory_limit_gb=1000.0" in on["limit_source"]
    for m in (off, on):
        assert m["peak_bytes"] > 0 and m["peak_bytes"] <= on["limit_bytes"]
        assert all(isinstance(v, (int, str, bool, dict, type(None))) for v in m.values())


def test_figures_agree_with_an_independent_count(runs):
    for n, summary in runs.items():
        m = summary["memory"]
        params_opt, whole = _state_count(_config(num_devices=n))
        assert params_opt <= whole == m["state_bytes"] <= m["xla"]["round"]["argument"]
        assert whole - params_opt < 1024 + 16 * n   # round, key, message counters
        # the formula, from the recorded XLA figures
        r, e = m["xla"]["round"], m["xla"]["evaluation"]
        assert m["round_work_bytes"] == r["temp"] + r["output"] - r["alias"] > 0
        assert m["eval_work_bytes"] == e["temp"] + e["output"]
        assert m["data_bytes"] == r["argument"] - m["state_bytes"] > 0
        assert m["test_set_bytes"] + params_opt // 2 == e["argument"]   # test set + params
        assert m["peak_bytes"] == (m["resident_bytes"] + max(m["round_work_bytes"],
                                                              m["eval_work_bytes"]))
    ratio = runs[8]["memory"]["state_bytes"] / runs[4]["memory"]["state_bytes"]
    assert 1.98 < ratio < 2.02, ratio


def test_the_check_compares_in_bytes_and_names_the_ways_out(runs):
    """memory.check against limits just above and below the recorded peak (GB = 1e9 bytes)."""
    m = runs[8]["memory"]
    figures = {k: v for k, v in m.items() if k not in ("limit_bytes", "limit_source", "checked",
                                                         "shards")}
    peak = m["peak_bytes"]
    memory.check(_config(num_devices=8, memory_limit_gb=peak * 1.001 / 1e9), dict(figures))
    c = _config(num_devices=8, memory_limit_gb=peak * 0.999 / 1e9, eval_every=3)
    with pytest.raises(ConfigError, match=r"Ways out: .*fewer devices \(num_devices=8") as e:
        memory.check(c, dict(figures, backfill_bytes=0))
    assert "eval_backfill" not in str(e.value)
    with pytest.raises(ConfigError, match="eval_backfill=False or a smaller eval_every"):
        memory.check(c, dict(figures, backfill_bytes=1))


def test_sweep_group_counts_every_replica(runs, tmp_path):
    """A group of 2 replicas: twice the state of a run; a forced small limit is refused."""
    c = _config(num_devices=4, memory_limit_gb=1000.0)
    summaries = sweep.run_sweep(c, {"seed": [0, 1]}, str(tmp_path / "ok"))
    single = runs[4]["memory"]
    for s in summaries:
        m = s["memory"]
        assert m["replicas"] == 2 and m["checked"] is True
        assert m["state_bytes"] == 2 * single["state_bytes"]
        assert m["peak_bytes"] > single["peak_bytes"]
    with pytest.raises(ConfigError, match=r"not enough memory.*fewer sweep values \(this group "
                                          r"holds 2 replicas\)"):
        sweep.run_sweep(_config(num_devices=4, memory_limit_gb=1e-6), {"seed": [0, 1]},
                        str(tmp_path / "small"))


# --- the formula and the limit, without compiling -------------------------------------------

def _xla(argument=0, output=0, alias=0, temp=0, generated_code=0) -> dict:
    return dict(argument=argument, output=output, alias=alias, temp=temp,
                generated_code=generated_code)


def test_estimate_formula():
    rounds = [_xla(argument=1000, output=610, alias=600, temp=300),
              _xla(argument=1000, output=710, alias=600, temp=200, generated_code=5)]
    f = memory.estimate(rounds, _xla(argument=450, output=1, temp=350, generated_code=2),
                        state_bytes=600, test_bytes=400, eval_copy_bytes=30, local_bytes=50,
                        backfill_bytes=70, extra_data_bytes=8)
    assert f["round_work_bytes"] == 310                    # max(300 + 10, 200 + 110)
    assert f["eval_work_bytes"] == 350 + 1 + 30 + 50
    assert f["data_bytes"] == 1000 - 600 + 8
    assert f["code_bytes"] == 5 + 2
    assert f["resident_bytes"] == 600 + 408 + 400 + 7
    assert f["peak_bytes"] == f["resident_bytes"] + 431 + 70


def test_limit_sources():
    assert memory.limit(-1.0, 0)[0] is None
    assert memory.limit(2.5, 0) == (2_500_000_000, "memory_limit_gb=2.5")
    if jax.default_backend() == "cpu":
        lim, source = memory.limit(0.0, 10**6)
        assert lim is not None and lim > 10**6 and "host's available memory" in source


class _NoAnalysis:
    def __init__(self, how):
        self.how = how

    def memory_analysis(self):
        if self.how == "raise":
            raise NotImplementedError("no memory analysis on this backend")
        return None


@pytest.mark.parametrize("how", ["raise", "none"])
def test_no_memory_analysis_skips_the_check(how):
    sim = type("Sim", (), {"compiled_rounds": [_NoAnalysis(how)]})()
    evaluate = type("Eval", (), {"compiled": _NoAnalysis(how)})()
    out = memory.check_run(_config(memory_limit_gb=1e-6), sim, evaluate, state=None)
    assert out["checked"] is False and "memory_analysis" in out["note"]
