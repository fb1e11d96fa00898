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
