"""One table over every command-line tool and every class of user error: each case exits with
status 2, prints exactly one `error:` line naming the field, flag or file, and no traceback.

Classes: a wrong type, a value out of range, an unknown name, a file or folder in the way, corrupt
data, a corrupt checkpoint, a combination of fields. The tool-specific tests (test_bad_inputs,
test_plot, test_reproduce, test_mixing_analysis_cli, test_sweep, test_faults) cover more
variants; this table makes sure no tool misses a class. The cases run four at a time.
"""

import gzip
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--config=configs/smoke.py", "--config.progress=False", "--config.tensorboard=False",
         "--config.rounds=1"]


def _files(root: Path) -> dict[str, Path]:
    """The bad files and folders the cases point at."""
    f = {"file": root / "a_file", "binary": root / "edges.bin", "empty_run": root / "empty_run",
         "bad_mnist": root / "bad_mnist", "bad_ckpt": root / "bad_ckpt"}
    f["file"].write_text("not a folder")
    f["binary"].write_bytes(gzip.compress(b"0 1\n1 2\n") + bytes(range(256)))
    f["empty_run"].mkdir()
    (f["empty_run"] / "metrics.jsonl").write_text("")
    (f["empty_run"] / "config.json").write_text("{}")
    mnist = f["bad_mnist"] / "mnist"
    mnist.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (mnist / name).write_bytes(b"\x00\x00\x08\x03\x00\x00")   # truncated idx header
    step = f["bad_ckpt"] / "checkpoints" / "1"
    (step / "state").mkdir(parents=True)
    (step / "meta").mkdir()
    (step / "state" / "garbage").write_bytes(b"\xff" * 64)
    return f


# id -> (module, args (format keys: files above, {work} a fresh folder), text the message has)
CASES = {
    # experiments.train
    "train: type": ("train", [*SMOKE, "--config.batch_size=ten"], "--config.batch_size=ten"),
    "train: range": ("train", [*SMOKE, "--config.num_devices=0"], "num_devices=0"),
    "train: unknown field": ("train", [*SMOKE, "--config.lerning_rate=0.1"], "lerning_rate"),
    "train: unknown value": ("train", [*SMOKE, "--config.topology=ring"], "topology='ring'"),
    "train: unknown config setting": ("train", ["--config=configs/depth.py:mlp3-complete-none",
                                                "--workdir={work}"], "is not a setting"),
    "train: combination": ("train", [*SMOKE, "--config.algorithm=choco",
                                     "--config.link_failure_prob=0.3"], "algorithm=choco"),
    "train: tuple field": ("train", [*SMOKE, "--config.partition=skew",
                                     "--config.skew_fractions=(0.3, 0.3)"],
                           "skew_fractions=(0.3, 0.3)"),
    "train: workdir is a file": ("train", [*SMOKE, "--workdir={file}"], "is a file"),
    "train: binary edge list": ("train", [*SMOKE, "--config.topology=edgelist",
                                          "--config.edgelist_path={binary}"], "edges.bin"),
    "train: corrupt data": ("train", [*SMOKE, "--config.data_dir={bad_mnist}"], "idx"),
    "train: corrupt checkpoint": ("train", [*SMOKE, "--workdir={bad_ckpt}"], "is corrupt"),
    # experiments.sweep
    "sweep: unknown sweep field": ("sweep", [*SMOKE, "--sweep.foo=1"], "foo"),
    "sweep: unknown config field": ("sweep", [*SMOKE, "--sweep.seed=0,1",
                                              "--config.lerning_rate=0.1"], "lerning_rate"),
    "sweep: bad value": ("sweep", [*SMOKE, "--sweep.learning_rate=a,b"], "learning_rate"),
    "sweep: workdir is a file": ("sweep", [*SMOKE, "--sweep.seed=0,1", "--workdir={file}"],
                                 "a_file"),
    # experiments.plot
    "plot: empty metrics": ("plot", ["{empty_run}", "--out={work}/f.png"], "no records"),
    "plot: out under a file": ("plot", ["{empty_run}", "--out={file}/f.png"], "--out"),
    "plot: unknown flag": ("plot", ["{empty_run}", "--out={work}/f.png", "--colour=red"],
                           "colour"),
    # experiments.reproduce
    "reproduce: range": ("reproduce", ["--quick", "--target=1.5"], "--target=1.5"),
    "reproduce: type": ("reproduce", ["--quick", "--seeds=abc"], "seeds"),
    "reproduce: workdir is a file": ("reproduce", ["--quick", "--workdir={file}"], "--workdir"),
    # experiments.mixing_analysis
    "mixing_analysis: malformed skew": ("mixing_analysis", ["--skews=lognormal:abc"],
                                        "--skews"),
    "mixing_analysis: range": ("mixing_analysis", ["--seeds=0"], "--seeds"),
    "mixing_analysis: unknown scheme": ("mixing_analysis", ["--schemes=nope"], "nope"),
}
NEEDS_WORKDIR = ("train", "sweep", "reproduce")


def _run(module: str, args: list[str], files: dict, work: Path) -> subprocess.CompletedProcess:
    args = [a.format(work=work, **files) for a in args]
    if module in NEEDS_WORKDIR and not any(a.startswith("--workdir=") for a in args):
        args.append(f"--workdir={work}")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("P2PL_TEST_SIGNAL", None)
    return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    files = _files(root)
    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(_run, module, args, files, root / f"work{i}")
                   for i, (name, (module, args, _)) in enumerate(CASES.items())}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", CASES)
def test_user_error_exits_2_with_one_message(outcomes, name):
    proc = outcomes[name]
    err = proc.stderr
    assert proc.returncode == 2, f"status {proc.returncode}:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    assert CASES[name][2] in err, err[-3000:]
