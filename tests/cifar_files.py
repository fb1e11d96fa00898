"""Tiny CIFAR files in the official binary format, for test_cifar_data.py and test_cifar_cli.py."""

import tarfile
from pathlib import Path

import numpy as np

from p2pl_jax import cifar

BATCHES = [f"data_batch_{i}.bin" for i in range(1, 6)]


def record_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The official format, record by record: label byte(s), then the R, G, B planes row-major.

    images uint8 [n, 32, 32, 3] (HWC); labels [n] or [n, 2] (CIFAR-100: coarse, fine).
    """
    labels = labels.reshape(len(images), -1)
    return b"".join(bytes(lab.astype(np.uint8).tolist())
                    + b"".join(img[:, :, c].tobytes() for c in range(3))
                    for img, lab in zip(images.astype(np.uint8), labels))


def write_cifar(folder: Path, name: str = "cifar10", n_train: int = 20, n_test: int = 10,
                seed: int = 0) -> dict:
    """Writes tiny official-format files into `folder`; returns the arrays written.

    cifar10: 5 batch files of n_train records each; cifar100: one train.bin of 5 n_train.
    Each channel has its own value range, so a wrong plane order or transpose shows.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def images(n):
        return np.stack([rng.integers(0, 120, (n, 32, 32)), rng.integers(60, 200, (n, 32, 32)),
                         rng.integers(140, 256, (n, 32, 32))], axis=-1).astype(np.uint8)

    x_train, x_test = images(5 * n_train), images(n_test)
    if name == "cifar10":
        y_train, y_test = rng.integers(0, 10, 5 * n_train), rng.integers(0, 10, n_test)
        for i, f in enumerate(BATCHES):
            rows = slice(i * n_train, (i + 1) * n_train)
            (folder / f).write_bytes(record_bytes(x_train[rows], y_train[rows]))
        (folder / "test_batch.bin").write_bytes(record_bytes(x_test, y_test))
        (folder / "batches.meta.txt").write_text("airplane\n")   # in the real folder too
        return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    fine_train, fine_test = rng.integers(0, 100, 5 * n_train), rng.integers(0, 100, n_test)
    coarse_train, coarse_test = (rng.integers(0, 20, 5 * n_train), rng.integers(0, 20, n_test))
    (folder / "train.bin").write_bytes(
        record_bytes(x_train, np.stack([coarse_train, fine_train], 1)))
    (folder / "test.bin").write_bytes(record_bytes(x_test, np.stack([coarse_test, fine_test], 1)))
    return dict(x_train=x_train, y_train=fine_train, x_test=x_test, y_test=fine_test,
                coarse_train=coarse_train)


def write_archive(path: Path, name: str = "cifar10", **kw) -> dict:
    """The official archive layout: the files under cifar-10-batches-bin/ (cifar-100-binary/)."""
    inner = path.parent / f"_src_{path.name}" / cifar.LAYOUTS[name].folder
    arrays = write_cifar(inner, name, **kw)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(inner, arcname=inner.name)
    return arrays
