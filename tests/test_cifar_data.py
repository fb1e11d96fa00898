"""CIFAR-10/100 from the official binary version: decoding, statistics, lookup, refusals, CLI."""

import sys
import tarfile
import time
import types
from pathlib import Path

import numpy as np
import pytest
from cifar_files import write_archive, write_cifar

from p2pl_jax import cifar, data
from p2pl_jax.data import load_dataset
from p2pl_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
URL10 = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
URL100 = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"


def reference_stats(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pixels = x_train.reshape(-1, 3) / 255.0
    return pixels.mean(0), pixels.std(0)


def check_dataset(ds: data.Dataset, arrays: dict, num_classes: int) -> None:
    mean, std = reference_stats(arrays["x_train"])
    np.testing.assert_allclose(ds.normalisation[0], mean, rtol=1e-6)
    np.testing.assert_allclose(ds.normalisation[1], std, rtol=1e-6)
    for split in ("train", "test"):
        stored = ds.__getattribute__(f"x_{split}")
        assert stored.shape == (len(arrays[f"y_{split}"]), 32, 32, 3)
        assert stored.dtype == np.uint8 and np.array_equal(stored, arrays[f"x_{split}"])
        x = ds.decoded(split)
        assert x.dtype == np.float32
        # the test split is standardised with the training statistics
        np.testing.assert_allclose(x, (arrays[f"x_{split}"] / 255.0 - mean) / std,
                                   rtol=1e-5, atol=1e-5)
        y = ds.__getattribute__(f"y_{split}")
        assert y.dtype == np.int32 and y.tolist() == arrays[f"y_{split}"].tolist()
    assert ds.num_classes == num_classes
    assert not ds.x_train.flags.writeable and not ds.normalisation[0].flags.writeable


def test_cifar10_round_trip(tmp_path):
    arrays = write_cifar(tmp_path / "d")
    ds = load_dataset("cifar10", str(tmp_path / "d"))
    check_dataset(ds, arrays, 10)
    assert ds.x_train.shape == (100, 32, 32, 3) and ds.x_test.shape == (10, 32, 32, 3)
    x = ds.decoded("train")
    assert abs(float(x.mean())) < 1e-5   # standardised: each channel mean 0, std 1
    np.testing.assert_allclose(x.reshape(-1, 3).std(0), 1.0, rtol=1e-4)
    assert ds.source == str((tmp_path / "d").resolve())
    assert load_dataset("cifar10", str(tmp_path / "d")) is ds  # cached in-process


def test_cifar100_fine_labels(tmp_path):
    arrays = write_cifar(tmp_path / "d", "cifar100", n_train=8, seed=1)
    assert arrays["coarse_train"].tolist() != arrays["y_train"].tolist()
    ds = load_dataset("cifar100", str(tmp_path / "d"))
    check_dataset(ds, arrays, 100)
    assert ds.y_train.max() >= 20  # fine labels, not the coarse first byte


def test_record_layout_bytes():
    """A hand-built record: label, then the red, green, blue planes, each row-major."""
    red = (np.arange(1024) % 251).astype(np.uint8)      # value of pixel (r, c): (32 r + c) % 251
    green = (255 - np.arange(1024) % 256).astype(np.uint8)
    blue = np.full(1024, 7, np.uint8)
    raw = bytes([3]) + red.tobytes() + green.tobytes() + blue.tobytes()
    planes, labels = cifar.read_records(raw, "cifar10", "x.bin")
    assert labels.tolist() == [3] and planes.shape == (1, 3, 32, 32)
    ds = cifar.from_planes(planes, labels, planes, labels, num_classes=10, source="t")
    mean, std = ds.normalisation
    hwc = ds.decoded("train")[0] * std + mean            # back on the pixel / 255 scale
    assert ds.x_train.shape == (1, 32, 32, 3)
    for r, c in [(0, 1), (1, 0), (5, 30), (31, 2)]:
        assert round(float(hwc[r, c, 0]) * 255) == (32 * r + c) % 251
        assert round(float(hwc[r, c, 1]) * 255) == 255 - (32 * r + c) % 256
    assert ds.normalisation[1][2] == 0  # a constant channel: x = 0, not NaN
    np.testing.assert_allclose(ds.decoded("train")[..., 2], 0.0, atol=1e-6)


LOCATIONS = {  # where the files go -> (data_dir argument or None, relative source path)
    "data_dir": ("d", "d"),
    "data_dir/cifar10": ("d", "d/cifar10"),
    "data_dir/batches-bin": ("d", "d/cifar-10-batches-bin"),
    "data_dir/cifar10/batches-bin": ("d", "d/cifar10/cifar-10-batches-bin"),
    "data_dir/archive": ("d", "d/cifar-10-binary.tar.gz"),
    "env": (None, "env/cifar10"),
    "env/batches-bin": (None, "env/cifar10/cifar-10-batches-bin"),
    "env/archive": (None, "env/cifar10/cifar-10-binary.tar.gz"),
    "cache": (None, "cache/p2pl_jax/cifar10"),
    "cache/archive": (None, "cache/p2pl_jax/cifar10/cifar-10-binary.tar.gz"),
}


@pytest.mark.parametrize("where", list(LOCATIONS))
def test_lookup_locations(no_data_env, where):
    data_dir, rel = LOCATIONS[where]
    target = no_data_env / rel
    if rel.endswith(".tar.gz"):
        target.parent.mkdir(parents=True, exist_ok=True)
        arrays = write_archive(target, seed=2)
    else:
        arrays = write_cifar(target, seed=2)
    ds = load_dataset("cifar10", str(no_data_env / data_dir) if data_dir else None)
    assert ds.source == str(target.resolve())
    check_dataset(ds, arrays, 10)


def test_lookup_order(no_data_env):
    write_cifar(no_data_env / "cache" / "p2pl_jax" / "cifar10", seed=4)
    write_archive(no_data_env / "env" / "cifar10" / "cifar-10-binary.tar.gz", seed=5)
    assert load_dataset("cifar10").source.endswith("cifar-10-binary.tar.gz")  # env before cache
    write_cifar(no_data_env / "env" / "cifar10" / "cifar-10-batches-bin", seed=6)
    assert load_dataset("cifar10").source.endswith("cifar-10-batches-bin")  # folder before .tar.gz


def test_archive_read_in_memory(tmp_path):
    """Members are matched by base name and read without writing anything to disk."""
    arrays = write_archive(tmp_path / "a" / "cifar-100-binary.tar.gz", "cifar100", n_train=4)
    before = sorted(p for p in tmp_path.rglob("*"))
    ds = load_dataset("cifar100", str(tmp_path / "a"))
    assert sorted(p for p in tmp_path.rglob("*")) == before
    check_dataset(ds, arrays, 100)


PICKLE_MARKS = {"cifar10": ["cifar-10-batches-py/", "cifar-10-python.tar.gz", "batches.meta",
                            "data_batch_1"],
                "cifar100": ["cifar-100-python/", "cifar-100-python.tar.gz", "meta"]}


@pytest.mark.parametrize("name,mark", [(n, m) for n, ms in PICKLE_MARKS.items() for m in ms])
@pytest.mark.parametrize("via_env", [False, True])
def test_pickle_version_refused(no_data_env, name, mark, via_env):
    folder = no_data_env / ("env" if via_env else "d") / name
    folder.mkdir(parents=True)
    if mark.endswith("/"):
        (folder / mark).mkdir()
        (folder / mark / "data_batch_1").write_bytes(b"\x80\x04pickle")
    else:
        (folder / mark).write_bytes(b"\x80\x04pickle")
    with pytest.raises(ConfigError) as e:
        load_dataset(name, None if via_env else str(folder.parent))
    msg = str(e.value)
    assert "pickle" in msg and "binary version" in msg and mark.rstrip("/") in msg
    assert (URL10 if name == "cifar10" else URL100) in msg


def test_binary_beside_pickle_is_used(tmp_path):
    (tmp_path / "d" / "cifar-10-batches-py").mkdir(parents=True)
    write_cifar(tmp_path / "d" / "cifar-10-batches-bin")
    assert load_dataset("cifar10", str(tmp_path / "d")).source.endswith("cifar-10-batches-bin")


@pytest.mark.parametrize("cut", [1, 3074, None])   # None: an empty file
def test_truncated_file_named(tmp_path, cut):
    write_cifar(tmp_path / "d")
    path = tmp_path / "d" / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-cut] if cut else b"")
    with pytest.raises(ConfigError, match="truncated") as e:
        load_dataset("cifar10", str(tmp_path / "d"))
    assert str(path.resolve()) in str(e.value) and "3073-byte record" in str(e.value)


def test_empty_and_truncated_in_archive(tmp_path):
    write_cifar(tmp_path / "src" / "cifar-100-binary", "cifar100", n_train=2)
    test_bin = tmp_path / "src" / "cifar-100-binary" / "test.bin"
    test_bin.write_bytes(test_bin.read_bytes()[:-10])
    with tarfile.open(tmp_path / "cifar-100-binary.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-100-binary", arcname="cifar-100-binary")
    with pytest.raises(ConfigError, match="3074-byte record") as e:
        load_dataset("cifar100", str(tmp_path))
    assert "cifar-100-binary.tar.gz:cifar-100-binary/test.bin" in str(e.value)
    cut = tmp_path / "cut" / "cifar-100-binary.tar.gz"
    cut.parent.mkdir()
    cut.write_bytes((tmp_path / "cifar-100-binary.tar.gz").read_bytes()[:200])
    with pytest.raises(ConfigError, match=f"cannot read archive {cut.resolve()}"):
        load_dataset("cifar100", str(cut.parent))


@pytest.mark.parametrize("name,byte,value,needle", [
    ("cifar10", 0, 10, r"label 10, outside \[0, 10\)"),
    ("cifar100", 0, 20, r"coarse label 20, outside \[0, 20\)"),
    ("cifar100", 1, 100, r"fine label 100, outside \[0, 100\)"),
])
def test_label_out_of_range(tmp_path, name, byte, value, needle):
    write_cifar(tmp_path / "d", name, n_train=2)
    path = tmp_path / "d" / ("test_batch.bin" if name == "cifar10" else "test.bin")
    raw = bytearray(path.read_bytes())
    record = 3072 + (1 if name == "cifar10" else 2)
    raw[4 * record + byte] = value
    path.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match=needle) as e:
        load_dataset(name, str(tmp_path / "d"))
    assert str(path.resolve()) in str(e.value) and "record 4" in str(e.value)


def test_partial_data_dir_no_fall_through(no_data_env):
    write_cifar(no_data_env / "env" / "cifar10")   # would succeed on its own
    write_cifar(no_data_env / "d")
    (no_data_env / "d" / "data_batch_5.bin").unlink()
    with pytest.raises(ConfigError, match="data_dir=.*lacks data_batch_5.bin") as e:
        load_dataset("cifar10", str(no_data_env / "d"))
    assert URL10 in str(e.value)


def test_missing_everywhere(no_data_env):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_dataset("cifar100")
    assert time.perf_counter() - t0 < 2.0
    msg = str(e.value)
    for needle in ("data_dir", "P2PL_DATA_DIR", str(no_data_env / "cache" / "p2pl_jax"),
                   str(no_data_env / "env" / "cifar100"), URL100, "cifar-100-binary/",
                   "train.bin", "p2pl-jax[tfds]", "P2PL_NO_TFDS", "never the Python-pickle"):
        assert needle in msg, needle


def test_tfds_cifar_standardised(monkeypatch):
    """The TFDS path (faked: TFDS is not installed here) gives the same layout and statistics."""
    rng = np.random.default_rng(7)
    split_arrays = {s: {"image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                        "label": rng.integers(0, 100, n)} for s, n in (("train", 6), ("test", 3))}
    fake = types.SimpleNamespace(load=lambda name, split, batch_size, download: split_arrays[split],
                                 as_numpy=lambda ds: ds)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    ds = data._load_tfds.__wrapped__("cifar100", download=False, build=cifar.from_tfds)
    arrays = {f"{k}_{s}": split_arrays[s][v] for s in ("train", "test")
              for k, v in (("x", "image"), ("y", "label"))}
    check_dataset(ds, arrays, 100)
    assert ds.source == "tfds"
