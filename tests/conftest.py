"""Shared test setup: never reach TensorFlow Datasets, and find the shared real data."""

import os
from pathlib import Path

import pytest

os.environ["P2PL_NO_TFDS"] = "1"  # load_dataset must never try a download in tests

_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not os.environ.get("P2PL_DATA_DIR") and _SHARED.is_dir():
    os.environ["P2PL_DATA_DIR"] = str(_SHARED)


@pytest.fixture
def mnist_dir() -> Path:
    """The real MNIST folder ($P2PL_DATA_DIR/mnist, else ../shared/data/mnist); skips if absent."""
    folder = Path(os.environ.get("P2PL_DATA_DIR", str(_SHARED))) / "mnist"
    if not (folder / "train-labels-idx1-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found at {folder}; set P2PL_DATA_DIR to the shared data dir")
    return folder


@pytest.fixture
def no_data_env(tmp_path, monkeypatch) -> Path:
    """Points every lookup location of data.load_dataset at empty folders under tmp_path
    ($P2PL_DATA_DIR -> env/, the cache -> cache/p2pl_jax/, the Debian folder -> debian/; TFDS
    off); returns tmp_path."""
    from p2pl_jax import data

    monkeypatch.setenv("P2PL_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("P2PL_NO_TFDS", "1")
    monkeypatch.setattr(data, "DEBIAN_DIRS", {"fashion_mnist": tmp_path / "debian"})
    return tmp_path
