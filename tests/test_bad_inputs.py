"""Bad inputs: every user error is a ConfigError whose message names the field (or file) and what
is allowed; through the CLI it is one line on stderr, exit status 2, no traceback."""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import smoke
from p2pl_jax import checkpoint, runner
from p2pl_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _config(**overrides) -> ml_collections.ConfigDict:
    """The smoke config with `overrides`, which may change a field's type (as a config file
    could), so validation itself must catch wrong types."""
    d = smoke.get_config().to_dict()
    unknown = set(overrides) - set(d)
    assert not unknown, unknown
    d.update(overrides)
    return ml_collections.ConfigDict(d)


def _error(workdir, **overrides) -> str:
    with pytest.raises(ConfigError) as e:
        runner.run(_config(**overrides), str(workdir))
    return str(e.value)


# (overrides, substrings the message must contain: the field and what is allowed)
CONFIG_CASES = {
    "unknown dataset": ({"dataset": "imagenet"}, ["dataset='imagenet'", "'mnist'",
                                                  "'fashion_mnist'", "'cifar10'"]),
    "unknown partition": ({"partition": "noniid"}, ["partition='noniid'", "'dirichlet'"]),
    "unknown topology": ({"topology": "ring"}, ["topology='ring'", "'cycle'"]),
    "unknown mixing": ({"mixing": "metropolis_hastings"}, ["mixing=", "'metropolis'"]),
    "unknown algorithm": ({"algorithm": "fedprox"}, ["algorithm='fedprox'", "'fedavg'"]),
    "unknown model": ({"model": "resnet"}, ["model='resnet'", "'mlp'", "'cnn'"]),
    "unknown backend": ({"consensus_backend": "sparse"}, ["consensus_backend=", "'gather'"]),
    "zero devices": ({"num_devices": 0}, ["num_devices=0", "[1, inf)"]),
    "devices as text": ({"num_devices": "100"}, ["num_devices='100'", "must be a number"]),
    "zero learning rate": ({"learning_rate": 0.0}, ["learning_rate=0.0", "(0.0, inf)"]),
    "momentum of one": ({"momentum": 1.0}, ["momentum=1.0", "[0.0, 1.0)"]),
    "probability above one": ({"link_failure_prob": 1.5}, ["link_failure_prob=1.5",
                                                           "[0.0, 1.0]"]),
    "fractional batch": ({"batch_size": 2.5}, ["batch_size=2.5", "must be an integer"]),
    "negative rounds": ({"rounds": -1}, ["rounds=-1", "[0, inf)"]),
    "eval_every zero": ({"eval_every": 0}, ["eval_every=0", "[1, inf)"]),
    "local_buckets zero": ({"local_buckets": 0}, ["local_buckets=0", "-1 (auto)", ">= 1"]),
    "local_buckets float": ({"local_buckets": 2.5}, ["local_buckets=2.5", "-1 (auto)"]),
    "local_buckets bool": ({"local_buckets": True}, ["local_buckets=True", "-1 (auto)"]),
    "target in percent": ({"target_accuracy": 97}, ["target_accuracy=97", "[0.0, 1.0]"]),
    "negative seed": ({"seed": -1}, ["seed=-1", "[0, inf)"]),
    "zero samples": ({"samples_per_device": 0}, ["samples_per_device=0", "[1, inf)"]),
    "zero width": ({"hidden_sizes": (200, 0)}, ["hidden_sizes=(200, 0)", "positive integers"]),
    "width as text": ({"hidden_sizes": "200"}, ["hidden_sizes=", "positive integers"]),
    "negative checkpoint_every": ({"checkpoint_every": -1}, ["checkpoint_every=-1", "[0, inf)"]),
    "progress as text": ({"progress": "yes"}, ["progress='yes'", "True or False"]),
    "tensorboard as number": ({"tensorboard": 1}, ["tensorboard=1", "True or False"]),
    "link failures with fedavg": ({"algorithm": "fedavg", "link_failure_prob": 0.3},
                                  ["link_failure_prob=0.3", "algorithm=fedavg",
                                   "algorithm=p2pl", "dropout_prob"]),
    "delays with mixing fedavg": ({"mixing": "fedavg", "delay_rounds": 2},
                                  ["delay_rounds=2", "mixing=fedavg"]),
    "time-varying local": ({"algorithm": "local", "time_varying": True,
                            "topology": "random_geometric"},
                           ["time_varying=True", "algorithm=local"]),
    "dropouts centralized": ({"algorithm": "centralized", "dropout_prob": 0.2},
                             ["dropout_prob=0.2", "algorithm=centralized", "fedavg"]),
    # the algorithms of p2pl_jax/algorithms and their options
    "unknown compressor": ({"algorithm": "choco", "compressor": "gzip"},
                           ["compressor='gzip'", "'none'", "'top_k'", "'random_k'", "'qsgd'",
                            "'sign'"]),
    "compress_ratio zero": ({"algorithm": "choco", "compressor": "top_k", "compress_ratio": 0.0},
                            ["compress_ratio=0.0", "(0.0, 1.0]"]),
    "compress_ratio above one": ({"algorithm": "choco", "compressor": "top_k",
                                  "compress_ratio": 1.5}, ["compress_ratio=1.5", "(0.0, 1.0]"]),
    "qsgd_bits zero": ({"algorithm": "choco", "compressor": "qsgd", "qsgd_bits": 0},
                       ["qsgd_bits=0", "[1, 16]"]),
    "consensus_step zero": ({"algorithm": "choco", "consensus_step": 0.0},
                            ["consensus_step=0.0", "(0.0, 1.0]"]),
    "consensus_step above one": ({"algorithm": "choco", "consensus_step": 1.5},
                                 ["consensus_step=1.5", "(0.0, 1.0]"]),
    "negative local_steps": ({"local_steps": -1}, ["local_steps=-1", "[0, inf)"]),
    "data_size with gradient_tracking": ({"algorithm": "gradient_tracking",
                                          "mixing": "data_size"},
                                         ["mixing=data_size", "algorithm=gradient_tracking",
                                          "doubly stochastic", "metropolis", "max_degree"]),
    "data_size with choco": ({"algorithm": "choco", "mixing": "data_size"},
                             ["mixing=data_size", "algorithm=choco", "metropolis",
                              "max_degree"]),
    "link failures with choco": ({"algorithm": "choco", "link_failure_prob": 0.3},
                                 ["link_failure_prob=0.3", "algorithm=choco",
                                  "algorithm=p2pl, dpsgd, gradient_tracking, push_sum"]),
    "asymmetric with gradient_tracking": ({"algorithm": "gradient_tracking",
                                           "link_failure_prob": 0.2,
                                           "link_failure_mode": "asymmetric"},
                                          ["link_failure_mode=asymmetric",
                                           "algorithm=gradient_tracking",
                                           "algorithm=p2pl, dpsgd, push_sum"]),
    "delays with push_sum": ({"algorithm": "push_sum", "delay_rounds": 2},
                             ["delay_rounds=2", "algorithm=push_sum", "algorithm=p2pl, dpsgd"]),
    "exponential with dpsgd": ({"algorithm": "dpsgd", "topology": "exponential"},
                               ["topology=exponential", "algorithm=dpsgd",
                                "algorithm=p2pl, push_sum"]),
    "exponential with gradient_tracking": ({"algorithm": "gradient_tracking",
                                            "topology": "exponential"},
                                           ["topology=exponential", "algorithm=gradient_tracking",
                                            "algorithm=p2pl, push_sum"]),
    "exponential with choco": ({"algorithm": "choco", "topology": "exponential"},
                               ["topology=exponential", "algorithm=choco",
                                "algorithm=p2pl, push_sum"]),
    "directed without an edge list": ({"directed": True},
                                      ["directed=True", "topology=edgelist", "topology=cycle"]),
    "directed edge list with dpsgd": ({"algorithm": "dpsgd", "directed": True,
                                       "topology": "edgelist"},
                                      ["directed=True", "algorithm=dpsgd",
                                       "algorithm=p2pl, push_sum"]),
    "compressor with p2pl": ({"compressor": "top_k"},
                             ["compressor=top_k", "algorithm=p2pl", "algorithm=choco",
                              "compressor=none"]),
    "momentum mix with push_sum": ({"algorithm": "push_sum", "momentum_after_consensus": "mix"},
                                   ["momentum_after_consensus=mix", "algorithm=push_sum",
                                    "allowed: keep, reset"]),
    "momentum mix with choco": ({"algorithm": "choco", "momentum_after_consensus": "mix"},
                                ["momentum_after_consensus=mix", "algorithm=choco",
                                 "allowed: keep, reset"]),
    # issue #12 part 3: group skew, graph resampling, data_size_mh
    "skew_fractions not summing to 1": ({"partition": "skew", "skew_fractions": (0.3, 0.3)},
                                        ["skew_fractions=(0.3, 0.3)", "sum 0.6",
                                         "summing to 1 within 1e-6"]),
    "skew_fractions with a zero": ({"partition": "skew", "skew_fractions": (0.0, 1.0)},
                                   ["skew_fractions=(0.0, 1.0)", "positive numbers"]),
    "skew_fractions as text": ({"partition": "skew", "skew_fractions": "0.5,0.5"},
                               ["skew_fractions='0.5,0.5'", "a tuple of G positive numbers"]),
    "skew_fractions of text": ({"partition": "skew", "skew_fractions": ("(a,b)",)},
                               ["skew_fractions=('(a,b)',)", "a tuple of G positive numbers"]),
    "skew_fractions more groups than devices": ({"partition": "skew",
                                                 "skew_fractions": (0.2,) * 5},
                                                ["5 groups but num_devices=4"]),
    "skew_fractions without partition skew": ({"skew_fractions": (0.5, 0.5)},
                                              ["skew_fractions=(0.5, 0.5)", "partition=iid",
                                               "allowed: partition=skew"]),
    "skew_fractions with skew_top_fraction": ({"partition": "skew", "skew_fractions": (0.5, 0.5),
                                               "skew_top_fraction": 0.9},
                                              ["skew_fractions=(0.5, 0.5)",
                                               "skew_top_fraction=0.9", "one of them"]),
    "graph_resample as text": ({"graph_resample": "yes"},
                               ["graph_resample='yes'", "True or False"]),
    "graph_resample on a cycle": ({"graph_resample": True},
                                  ["graph_resample=True", "topology=cycle",
                                   "random_geometric, erdos_renyi"]),
    "graph_resample with allow_disconnected": ({"graph_resample": True,
                                                "allow_disconnected": True,
                                                "topology": "erdos_renyi"},
                                               ["graph_resample=True", "allow_disconnected=True"]),
    "graph_resample never connected": ({"graph_resample": True, "topology": "random_geometric",
                                        "graph_radius": 0.01},
                                       ["graph_resample=True", "num_devices=4",
                                        "100 graph seeds", "a larger graph_radius"]),
    "data_size_mh with push_sum": ({"algorithm": "push_sum", "mixing": "data_size_mh"},
                                   ["mixing=data_size_mh", "algorithm=push_sum",
                                    "plain average", "allowed: auto (uniform)"]),
    "data_size_mh with gradient_tracking": ({"algorithm": "gradient_tracking",
                                             "mixing": "data_size_mh"},
                                            ["mixing=data_size_mh", "metropolis, max_degree"]),
    "data_size_mh with asymmetric failures": ({"mixing": "data_size_mh",
                                               "link_failure_prob": 0.2,
                                               "link_failure_mode": "asymmetric"},
                                              ["mixing=data_size_mh", "two-way links",
                                               "link_failure_mode=asymmetric"]),
    "data_size_mh on the exponential graph": ({"mixing": "data_size_mh",
                                               "topology": "exponential"},
                                              ["mixing=data_size_mh", "topology=exponential",
                                               "mixing=data_size"]),
    "data_size_mh on a directed edge list": ({"mixing": "data_size_mh", "directed": True,
                                              "topology": "edgelist"},
                                             ["mixing=data_size_mh", "directed=True"]),
}


@pytest.mark.parametrize("overrides,expected", CONFIG_CASES.values(), ids=CONFIG_CASES.keys())
def test_bad_config_value(tmp_path, overrides, expected):
    msg = _error(tmp_path, **overrides)
    for part in expected:
        assert part in msg, (part, msg)
    assert not (tmp_path / "config.json").exists()   # rejected before anything is written


# --- files -----------------------------------------------------------------------------------

EDGELIST_CASES = {
    "no path": (None, ["edgelist_path", "one 'u v' per line"]),
    "missing file": ("missing", ["edgelist_path=", "file not found"]),
    "empty file": ("", ["edgelist_path=", "holds no edges"]),
    "malformed line": ("0 1\n1 two\n", ["edgelist_path=", "line 2", "two integer node ids"]),
    "node out of range": ("0 1\n1 9\n", ["edgelist_path=", "line 2", "allowed: 0..3"]),
    "self loop": ("0 0\n", ["edgelist_path=", "self loop"]),
}


@pytest.mark.parametrize("text,expected", EDGELIST_CASES.values(), ids=EDGELIST_CASES.keys())
def test_bad_edgelist_file(tmp_path, mnist_dir, text, expected):
    path = ""
    if text is not None:
        path = str(tmp_path / "edges.txt")
        if text != "missing":
            Path(path).write_text(text)
    msg = _error(tmp_path / "run", topology="edgelist", edgelist_path=path)
    for part in expected:
        assert part in msg, (part, msg)


def test_disconnected_graph_names_the_way_out(tmp_path, mnist_dir):
    msg = _error(tmp_path, topology="random_geometric", graph_radius=0.01)
    assert "disconnected" in msg and "allow_disconnected" in msg


def _idx(dims, fill: int = 0) -> bytes:
    header = bytes([0, 0, 8, len(dims)]) + np.asarray(dims, ">u4").tobytes()
    return header + bytes([fill]) * int(np.prod(dims))


def test_data_dir_with_truncated_idx_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train-images-idx3-ubyte").write_bytes(_idx([20, 28, 28])[:-100])   # cut short
    (data / "train-labels-idx1-ubyte").write_bytes(_idx([20]))
    with gzip.open(data / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(_idx([5, 28, 28]))
    (data / "t10k-labels-idx1-ubyte").write_bytes(_idx([5]))
    msg = _error(tmp_path / "run", data_dir=str(data))
    assert "train-images-idx3-ubyte is truncated or corrupt" in msg
    assert "expected 15680 bytes of data, found 15580" in msg


def test_data_dir_without_the_files(tmp_path):
    msg = _error(tmp_path / "run", data_dir=str(tmp_path))
    assert "data_dir=" in msg and "train-images-idx3-ubyte" in msg


def test_workdir_not_writable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    msg = _error(blocker / "run")
    assert "workdir=" in msg and "not a writable directory" in msg


# --- checkpoints -----------------------------------------------------------------------------

def _write_checkpoint(workdir: Path, config: ml_collections.ConfigDict, round_index: int = 2):
    ck = checkpoint.Checkpointer(str(workdir / runner.CHECKPOINT_DIR))
    ck.save(round_index, {"w": jnp.ones((2, 3))},
            {"fingerprint": checkpoint.fingerprint(config.to_dict()), "records": [],
             "rounds_to_target": None, "wall_s": 0.0})
    ck.close()
    return workdir / runner.CHECKPOINT_DIR / str(round_index)


def test_corrupt_checkpoint(tmp_path):
    step = _write_checkpoint(tmp_path, _config())
    for f in (step / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    msg = _error(tmp_path)
    assert f"checkpoint {step} is corrupt (unreadable" in msg
    assert "delete" in msg and "--workdir" in msg


def test_checkpoint_with_missing_meta(tmp_path):
    step = _write_checkpoint(tmp_path, _config())
    for f in (step / "meta").iterdir():
        f.unlink()
    assert "is corrupt (unreadable" in _error(tmp_path)


def test_checkpoint_of_another_config(tmp_path):
    _write_checkpoint(tmp_path, _config(learning_rate=0.1, num_devices=8))
    msg = _error(tmp_path)
    assert "learning_rate: 0.1 in the checkpoint, now 0.05" in msg
    assert "num_devices: 8 in the checkpoint, now 4" in msg
    assert "rounds" in msg   # says which fields may change


def test_checkpoint_beyond_rounds(tmp_path):
    _write_checkpoint(tmp_path, _config(), round_index=5)
    msg = _error(tmp_path, rounds=3)
    assert "rounds=3" in msg and "rounds >= 5" in msg


# --- through the real CLI: exit status 2, one message, no traceback -------------------------

CLI_CASES = {
    "unknown field": (["--config.lerning_rate=0.1"], "unknown config field 'lerning_rate'"),
    "out of range": (["--config.num_devices=0"], "num_devices=0 is out of range"),
    "not a number": (["--config.batch_size=ten"], "--config.batch_size=ten"),
    "algorithm refuses a fault": (["--config.algorithm=choco", "--config.link_failure_prob=0.3"],
                                  "link_failure_prob=0.3 does not apply to algorithm=choco"),
}


@pytest.mark.parametrize("flags,expected", CLI_CASES.values(), ids=CLI_CASES.keys())
def test_cli_user_error_exit_2_without_traceback(tmp_path, flags, expected):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=configs/smoke.py",
         f"--workdir={tmp_path}", *flags], cwd=REPO, capture_output=True, text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert expected in proc.stderr
