"""experiments.mixing_analysis as a command: a bad flag or --out exits 2 with one message naming
the flag and its allowed values (no traceback); a good one prints the table and writes --out."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from p2pl_jax import analysis
from p2pl_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--num_devices=10", "--radius=0.8", "--samples=200", "--seeds=1",
         "--skews=equal,top:0.5", "--schemes=data_size,metropolis"]


def _cli(args):
    return subprocess.run([sys.executable, "-m", "experiments.mixing_analysis", *SMALL, *args],
                          cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("flag, named, allowed", [
    ("--skews=lognormal:abc", "--skews='lognormal:abc'", "lognormal:SIGMA (0 < SIGMA <= 10)"),
    ("--skews=foo:1", "--skews='foo:1'", "top:FRACTION (0 < FRACTION < 1"),
    ("--skews=top:1.5", "--skews='top:1.5'", "top:FRACTION (0 < FRACTION < 1"),
    ("--seeds=0", "--seeds=0", "[1, inf)"),
    ("--num_devices=0", "--num_devices=0", "[2, inf)"),
    ("--radius=2", "--radius=2.0", "(0.0, 1.5]"),
    ("--samples=5", "--samples=5", ">= --num_devices=10"),
    ("--schemes=foo", "--schemes='foo'", "'max_degree'"),
    ("--radius=0.05", "radius=0.05", "--radius"),   # a disconnected graph
    ("--seeds=abc", "--seeds=abc", "Usage:"),
    ("--out=OUTDIR", "--out=", "is a directory"),
    ("--out=OUTDIR/missing/t.md", "--out=", "does not exist"),
])
def test_bad_flag_exits_2_with_one_message(tmp_path, flag, named, allowed):
    proc = _cli([flag.replace("OUTDIR", str(tmp_path))])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] \
        == [proc.stderr.splitlines()[0]], proc.stderr
    assert named in proc.stderr and allowed in proc.stderr, proc.stderr
    assert proc.stdout == ""        # nothing computed before the checks


def test_good_flags_print_and_write_the_table(tmp_path):
    out = tmp_path / "table.md"
    proc = _cli([f"--out={out}"])
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == proc.stdout and proc.stdout.count("| top:0.5 |") == 2


@pytest.mark.parametrize("skew", ["lognormal:0", "lognormal:11", "lognormal:inf", "top:0",
                                  "top:1", "top:nan", "equal:1", "lognormal", "skewed"])
def test_parse_skew_rejects(skew):
    with pytest.raises(ConfigError, match="skews="):
        analysis.parse_skew(skew, "skews")
    assert analysis.parse_skew("lognormal:1") == ("lognormal", 1.0)
    assert analysis.parse_skew("equal") == ("equal", None)
