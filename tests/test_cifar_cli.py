"""The CIFAR-10 path end to end through the real CLI (experiments.train), on tiny synthetic files
in the official binary format (tests/cifar_files.py): the reader, the per-channel normalisation,
augmentation, weight decay, Nesterov momentum and a cosine schedule on slim resnet20 and vgg11
(bfloat16) rounds; a pickle-version folder and a memory need above the limit, which exit with
status 2 and one message, no traceback (the reader's other errors, truncated and malformed
files, are tested in-process in test_cifar_data.py; the CLI's exit 2 for them is
test_cli_errors.py's "corrupt data").

The four runs are separate processes started together when the module's first test asks for
one (like test_cli_errors.py); each test waits for its own. Compile time dominates the two
training runs, so they compile with reference.FAST_COMPILE's XLA options (LLVM at -O0, no
fusion emitters; the same programs, compiled faster).
"""

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cifar_files import write_cifar
from reference import FAST_COMPILE
from test_cli import RECORD_KEYS, SUMMARY_KEYS

REPO = Path(__file__).resolve().parents[1]
URL10 = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
LR = 0.05
BASE = ["--config=configs/mnist.py", "--config.dataset=cifar10", "--config.num_devices=4",
        "--config.topology=cycle", "--config.samples_per_device=24", "--config.batch_size=8",
        "--config.rounds=2", f"--config.learning_rate={LR}", "--config.width_multiplier=0.125",
        "--config.augment=True", "--config.weight_decay=5e-4", "--config.nesterov=True",
        "--config.lr_schedule=cosine", "--config.stop_at_target=False",
        "--config.eval_example_chunk=16", "--config.eval_device_chunk=4",
        "--config.checkpoint_every=0", "--config.progress=False", "--config.tensorboard=False"]
# id -> (data folder, extra overrides). vgg11 trains on 8 samples per device, one local step per
# round: its steps are slow at LLVM -O0 (about 3 s of CPU each, resnet20's well under 1 s).
CASES = {
    "resnet20": ("cifar", ["--config.model=resnet20"]),
    "vgg11_bf16": ("cifar", ["--config.model=vgg11", "--config.compute_dtype=bfloat16",
                             "--config.samples_per_device=8"]),
    "pickle": ("pickle", ["--config.model=resnet20"]),
    "memory": ("cifar", ["--config.model=lenet_gn", "--config.memory_limit_gb=1e-6"]),
}


def _xla_flags() -> str:
    own = " ".join(f"--{k}={str(v).lower() if isinstance(v, bool) else v}"
                   for k, v in FAST_COMPILE.items())
    return f"{os.environ.get('XLA_FLAGS', '')} {own}".strip()


def _train(workdir: Path, data_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, P2PL_NO_TFDS="1", JAX_PLATFORMS="cpu", XLA_FLAGS=_xla_flags())
    env.pop("P2PL_TEST_SIGNAL", None)
    cmd = [sys.executable, "-m", "experiments.train", *BASE, f"--workdir={workdir}",
           f"--config.data_dir={data_dir}", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _folders(root: Path) -> dict[str, Path]:
    """The data folders: 100 training images (25 per device) and 16 test images; the pickle
    version's folder."""
    folders = {"cifar": root / "cifar", "pickle": root / "pickle"}
    write_cifar(folders["cifar"], n_train=20, n_test=16)
    pickled = folders["pickle"] / "cifar-10-batches-py"
    pickled.mkdir(parents=True)
    for f in ("batches.meta", "data_batch_1", "data_batch_2", "test_batch"):
        (pickled / f).write_bytes(b"\x80\x04pickle")
    return folders


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{case: (future of its process, workdir, data folder)}, all started at once."""
    root = tmp_path_factory.mktemp("cifar_cli")
    folders = _folders(root)
    with ThreadPoolExecutor(len(CASES)) as pool:
        yield {name: (pool.submit(_train, root / f"run_{name}", folders[folder], *extra),
                      root / f"run_{name}", folders[folder])
               for name, (folder, extra) in CASES.items()}


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name,model,dtype", [("resnet20", "resnet20", "float32"),
                                              ("vgg11_bf16", "vgg11", "bfloat16")])
def test_training_run(runs, name, model, dtype):
    future, workdir, data_dir = runs[name]
    proc = future.result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((workdir / "config.json").read_text())
    assert (config["model"], config["compute_dtype"], config["dataset"]) == (model, dtype,
                                                                             "cifar10")
    assert config["augment"] and config["nesterov"] and config["weight_decay"] == 5e-4
    summary = json.loads((workdir / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["status"] == "completed" and summary["rounds_run"] == 2
    assert summary["data_source"] == str(data_dir.resolve())
    records = _records(workdir)
    assert [r["round"] for r in records] == [1, 2]
    for rec in records:
        assert RECORD_KEYS | {"learning_rate", "train_loss"} <= set(rec)
        assert 0.0 <= rec["acc_min"] <= rec["acc_mean"] <= rec["acc_max"] <= 1.0
        assert math.isfinite(rec["test_loss"]) and math.isfinite(rec["train_loss"])
        assert rec["params_finite"] == 1.0
    # cosine over 2 rounds: the factor of round index r is (1 + cos(pi r / 2)) / 2
    assert [r["learning_rate"] for r in records] == pytest.approx([LR, LR / 2], rel=1e-6)
    assert summary["final_acc_min"] == records[-1]["acc_min"]


def _user_error(proc: subprocess.CompletedProcess) -> str:
    """Asserts status 2 and exactly one `error:` line without a traceback; returns stderr."""
    err = proc.stderr
    assert proc.returncode == 2, f"status {proc.returncode}:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert len([x for x in err.splitlines() if x.startswith("error: ")]) == 1, err[-3000:]
    return err


def test_pickle_version_refused(runs):
    future, workdir, data_dir = runs["pickle"]
    err = _user_error(future.result())
    assert f"{data_dir / 'cifar-10-batches-py'} is the Python-pickle version of cifar10" in err
    assert "Use the binary version instead" in err and URL10 in err, err[-3000:]
    assert not (workdir / "metrics.jsonl").exists()


def test_memory_above_the_limit_is_refused_before_the_first_round(runs):
    future, workdir, _ = runs["memory"]
    err = _user_error(future.result())
    assert "not enough memory" in err and "Ways out:" in err, err[-3000:]
    assert not workdir.exists()   # a new workdir, removed as for any set-up error
