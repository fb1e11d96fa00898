import gzip
import time
from pathlib import Path

import numpy as np
import pytest

from p2pl_jax import data
from p2pl_jax.data import DATASETS, load_dataset, read_idx
from p2pl_jax.errors import ConfigError

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(a: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, a.ndim]) + np.array(a.shape, dtype=">u4").tobytes()
    return header + a.astype(np.uint8).tobytes()


def write_idx(path: Path, a: np.ndarray) -> Path:
    raw = idx_bytes(a)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_dataset(folder: Path, n_train=6, n_test=4, sep="-", ext=".gz", seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels": rng.integers(0, 10, n_train),
        "t10k-images": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels": rng.integers(0, 10, n_test),
    }
    for stem, a in arrays.items():
        write_idx(folder / f"{stem}{sep}idx{a.ndim}-ubyte{ext}", a)
    return arrays


def test_real_mnist(mnist_dir):
    ds = load_dataset("mnist", str(mnist_dir))
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32   # decoded per batch
    assert ds.y_test.shape == (10000,) and ds.num_classes == 10
    x = ds.decoded("train")
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() == 1.0
    assert np.bincount(ds.y_train).tolist() == TRAIN_COUNTS
    assert np.bincount(ds.y_test).tolist() == TEST_COUNTS
    assert ds.y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert round(float(x.mean()), 3) == 0.131
    assert round(float(x.std()), 3) == 0.308
    assert load_dataset("mnist", str(mnist_dir)) is ds  # cached in-process
    assert load_dataset("mnist", str(mnist_dir.parent)) is ds  # DIR/<name> also accepted
    assert not ds.x_train.flags.writeable


def test_real_fashion_mnist_from_the_debian_package(monkeypatch, tmp_path):
    """The Debian package's files (`.ci/run` installs dataset-fashion-mnist) through the lookup,
    against Fashion-MNIST's published facts: 6000 / 1000 images per class, the first labels,
    pixel mean 0.2860 and std 0.3530."""
    folder = data.DEBIAN_DIRS["fashion_mnist"]
    if not (folder / "train-labels-idx1-ubyte.gz").exists():
        pytest.skip(f"{folder} absent: apt-get install dataset-fashion-mnist (.ci/run does)")
    monkeypatch.setenv("P2PL_DATA_DIR", str(tmp_path))       # nothing there: the package is used
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ds = load_dataset("fashion_mnist")
    assert ds.source == str(folder)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    x = ds.decoded("train")
    assert round(float(x.mean()), 3) == 0.286
    assert round(float(x.std()), 3) == 0.353


def test_real_mnist_via_env(mnist_dir, monkeypatch):
    monkeypatch.setenv("P2PL_DATA_DIR", str(mnist_dir.parent))
    assert load_dataset("mnist").source == str(mnist_dir.resolve())


@pytest.mark.parametrize("sep", ["-", "."])
@pytest.mark.parametrize("ext", ["", ".gz"])
def test_idx_round_trip(tmp_path, sep, ext):
    arrays = write_dataset(tmp_path / "d", sep=sep, ext=ext)
    a = arrays["train-images"]
    assert np.array_equal(read_idx(tmp_path / "d" / f"train-images{sep}idx3-ubyte{ext}"), a)
    ds = load_dataset("mnist", str(tmp_path / "d"))
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.y_test.shape == (4,)
    np.testing.assert_array_equal(ds.x_train[..., 0], a)       # stored as read
    np.testing.assert_allclose(ds.decoded("train")[..., 0], a / 255.0, rtol=1e-6)
    assert ds.y_train.tolist() == arrays["train-labels"].tolist()


def test_lookup_order_cache_dir(no_data_env):
    write_dataset(no_data_env / "cache" / "p2pl_jax" / "fashion_mnist", seed=3)
    ds = load_dataset("fashion_mnist")
    assert "cache" in ds.source and ds.x_train.shape == (6, 28, 28, 1)


@pytest.mark.parametrize("ext", ["", ".gz"])
def test_truncated_file(tmp_path, ext):
    raw = idx_bytes(np.zeros((10, 28, 28)))[:1000]
    path = tmp_path / f"x-idx3-ubyte{ext}"
    path.write_bytes(gzip.compress(raw) if ext else raw)
    with pytest.raises(ConfigError, match="expected 7840 bytes of data, found 984") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_bad_gzip_and_magic(tmp_path):
    bad_gz = tmp_path / "a.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(ConfigError, match=str(bad_gz)):
        read_idx(bad_gz)
    cut_gz = tmp_path / "c.gz"
    cut_gz.write_bytes(gzip.compress(idx_bytes(np.zeros((100, 28, 28))))[:50])
    with pytest.raises(ConfigError, match=str(cut_gz)):
        read_idx(cut_gz)
    bad_magic = tmp_path / "b"
    bad_magic.write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ConfigError, match="magic") as e:
        read_idx(bad_magic)
    assert str(bad_magic) in str(e.value)


def test_mismatched_counts_and_bad_labels(tmp_path):
    write_dataset(tmp_path / "d")
    write_idx(tmp_path / "d" / "train-labels-idx1-ubyte.gz", np.zeros(5))
    with pytest.raises(ConfigError, match="6 images but 5 labels"):
        load_dataset("mnist", str(tmp_path / "d"))
    write_dataset(tmp_path / "e")
    write_idx(tmp_path / "e" / "t10k-labels-idx1-ubyte.gz", np.full(4, 10))
    with pytest.raises(ConfigError, match=r"labels must lie in \[0, 10\)"):
        load_dataset("mnist", str(tmp_path / "e"))


def test_missing_everywhere(no_data_env):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_dataset("fashion_mnist")
    assert time.perf_counter() - t0 < 2.0
    msg = str(e.value)
    for needle in ("data_dir", "P2PL_DATA_DIR", str(no_data_env / "cache" / "p2pl_jax"),
                   "dataset-fashion-mnist", "p2pl-jax[tfds]", str(no_data_env / "env"),
                   "P2PL_NO_TFDS"):
        assert needle in msg, needle


def test_explicit_data_dir_does_not_fall_through(tmp_path, mnist_dir, monkeypatch):
    monkeypatch.setenv("P2PL_DATA_DIR", str(mnist_dir.parent))  # would succeed on its own
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(ConfigError, match="data_dir=.*t10k-labels-idx1-ubyte"):
        load_dataset("mnist", str(tmp_path / "d"))


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="'mnist', 'fashion_mnist', 'cifar10', 'cifar100'") as e:
        load_dataset("imagenet")
    assert "dataset" in str(e.value)
    assert DATASETS == ("mnist", "fashion_mnist", "cifar10", "cifar100")
