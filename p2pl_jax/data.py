"""Image datasets: the IDX reader, the Dataset, and a loader that finds the data without surprises.

`load_dataset(name, data_dir)` looks, in order, in:

1. `data_dir` (the `--config.data_dir` flag), which must hold the four IDX files, directly or in a
   `<name>` subfolder; when given and missing files, that is an error (no fall-through);
2. `$P2PL_DATA_DIR/<name>`;
3. the user cache `${XDG_CACHE_HOME:-~/.cache}/p2pl_jax/<name>`;
4. for fashion_mnist, the Debian package `dataset-fashion-mnist`
   (`/usr/share/datasets/fashion-mnist`);
5. TensorFlow Datasets, only if it is installed and the dataset is already prepared or the
   network answers within 3 s. Setting `P2PL_NO_TFDS=1` skips this step (the tests do).

Each folder holds `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`
and `t10k-labels-idx1-ubyte` (a `.` may replace the last `-`; each may end in `.gz`).
Decoded arrays are cached in-process and returned read-only.

cifar10 / cifar100 are handed to `p2pl_jax.cifar` (the official binary version only; steps 1-3
and 5, with that module's file names and the refusal of the Python-pickle version).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import socket
import zlib
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from p2pl_jax.errors import ConfigError, check_choice

CIFAR_DATASETS = ("cifar10", "cifar100")   # read by p2pl_jax.cifar
DATASETS = ("mnist", "fashion_mnist", *CIFAR_DATASETS)
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
DEBIAN_DIRS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
NO_TFDS_ENV = "P2PL_NO_TFDS"
DATA_DIR_ENV = "P2PL_DATA_DIR"
_FILES = {
    "x_train": ("train", "images", 3),
    "y_train": ("train", "labels", 1),
    "x_test": ("t10k", "images", 3),
    "y_test": ("t10k", "labels", 1),
}
_UINT8_CODE = 0x08


@dataclasses.dataclass(frozen=True)
class Dataset:
    """An image-classification dataset held in host memory (read-only arrays).

    x_train: uint8 pixels [n_train, H, W, C]; y_train: int32 [n_train] in [0, num_classes);
    x_test: uint8 [n_test, H, W, C]; y_test: int32 [n_test];
    source: where it was loaded from (a directory path, an archive path or "tfds").
    The images stay uint8 (a quarter of float32's memory and bandwidth, on the host and on the
    accelerator) and are converted per batch by `decode`:
    MNIST-style: [n, 28, 28, 1], decoded to pixel / 255 in [0, 1]; normalisation None.
    CIFAR: [n, 32, 32, 3] (RGB, HWC), decoded to (pixel / 255 - mean[c]) / std[c] with the
    training set's statistics; normalisation = (mean, std), float32 [3] each, on the
    pixel / 255 scale (population std over all training pixels of that channel).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str
    normalisation: tuple[np.ndarray, np.ndarray] | None = None

    def decoded(self, split: str) -> np.ndarray:
        """The float32 images of `split` ("train" or "test"), as the model sees them."""
        return np.asarray(decode(getattr(self, f"x_{split}"), self.normalisation))


def decode_table(normalisation=None) -> np.ndarray:
    """float32 [256, C] (C = 1 without normalisation): the model input of pixel value p in
    channel c, p / 255, then (p / 255 - mean[c]) / std[c] (a channel of std 0 is only
    centred); computed on the host in float32."""
    v = np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)
    if normalisation is None:
        return v
    mean, std = (np.asarray(a, np.float32) for a in normalisation)
    return ((v - mean) / np.where(std > 0, std, np.float32(1.0))).astype(np.float32)


def decode(x, normalisation=None):
    """float32 model inputs from stored images x [..., C] (numpy or JAX arrays).

    uint8 pixels are looked up in `decode_table` (a gather, not arithmetic: XLA turns a
    division by 255 into a multiplication by its reciprocal, which rounds differently, so the
    table keeps a jitted batch equal to the host's float32 images to the bit); float inputs
    are returned unchanged (synthetic data, tests).
    """
    if x.dtype != np.uint8:
        return x
    table = decode_table(normalisation)
    xp = np if isinstance(x, np.ndarray) else jnp
    channels = table.shape[1]
    index = x.astype(np.int32)
    if channels > 1:
        index = index * channels + np.arange(channels, dtype=np.int32)
    return xp.take(xp.asarray(table.reshape(-1)), index)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads a uint8 IDX file (optionally gzipped) into an array of the shape its header gives."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise ConfigError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UINT8_CODE:
        raise ConfigError(f"{path} is not a uint8 IDX file: expected magic bytes 00 00 08 <ndim>, "
                          f"found {raw[:4].hex(' ') or 'an empty file'}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError(f"{path} is truncated: expected a {header}-byte header, found {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    found = len(raw) - header
    if found != expected:
        raise ConfigError(f"{path} is truncated or corrupt: for header shape {list(dims)} "
                          f"expected {expected} bytes of data, found {found}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_file(folder: Path, split: str, kind: str, ndim: int) -> Path | None:
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            p = folder / f"{split}-{kind}{sep}idx{ndim}-ubyte{ext}"
            if p.is_file():
                return p
    return None


def _idx_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Returns the IDX files found in `folder` and the names of the missing ones."""
    found, missing = {}, []
    for key, (split, kind, ndim) in _FILES.items():
        p = _find_file(folder, split, kind, ndim)
        if p is None:
            missing.append(f"{split}-{kind}-idx{ndim}-ubyte[.gz]")
        else:
            found[key] = p
    return found, missing


def readonly(a: np.ndarray) -> np.ndarray:
    """Marks `a` read-only (datasets are cached and shared) and returns it."""
    a.flags.writeable = False
    return a


def _images(raw: np.ndarray, path: Path) -> np.ndarray:
    if raw.ndim != 3 or raw.shape[1:] != IMAGE_SHAPE:
        raise ConfigError(f"{path}: expected images of shape [n, 28, 28], found {list(raw.shape)}")
    return readonly(np.ascontiguousarray(raw, dtype=np.uint8)[..., None])


def _labels(raw: np.ndarray, path: Path) -> np.ndarray:
    if raw.ndim != 1:
        raise ConfigError(f"{path}: expected labels of shape [n], found {list(raw.shape)}")
    if raw.size and raw.max() >= NUM_CLASSES:
        raise ConfigError(f"{path}: labels must lie in [0, {NUM_CLASSES}), found {int(raw.max())}")
    return readonly(raw.astype(np.int32))


@functools.lru_cache(maxsize=8)
def _load_dir(folder: str) -> Dataset:
    """Decodes the four IDX files of a resolved folder (cached per folder)."""
    files, missing = _idx_files(Path(folder))
    if missing:
        raise ConfigError(f"{folder} lacks {', '.join(missing)}")
    arrays = {}
    for key, path in files.items():
        raw = read_idx(path)
        arrays[key] = _images(raw, path) if key.startswith("x") else _labels(raw, path)
    for split in ("train", "test"):
        nx, ny = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if nx != ny:
            raise ConfigError(f"{folder}: {split} split has {nx} images but {ny} labels")
    return Dataset(num_classes=NUM_CLASSES, source=folder, **arrays)


def cache_dir(name: str) -> Path:
    """The per-user cache folder for dataset `name`: ${XDG_CACHE_HOME:-~/.cache}/p2pl_jax/<name>."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "p2pl_jax" / name


def tfds_attempt(name: str, build=None) -> tuple[Dataset | None, str]:
    """Loads `name` through TFDS if possible without a long download; returns (dataset, note).

    `build(name, arrays)` makes the Dataset from TFDS's arrays (x_* uint8 [n, H, W, C], y_*
    int32 [n]); None: the MNIST-style one (`p2pl_jax.cifar` passes its own).
    """
    if os.environ.get(NO_TFDS_ENV, "") not in ("", "0"):
        return None, f"TensorFlow Datasets (skipped: {NO_TFDS_ENV} is set)"
    try:
        import tensorflow  # noqa: F401
        import tensorflow_datasets as tfds
    except ImportError:
        return None, "TensorFlow Datasets (not installed)"
    try:
        prepared = tfds.builder(name).is_prepared()
    except Exception as e:  # noqa: BLE001 - any TFDS failure means "not available"
        return None, f"TensorFlow Datasets (builder failed: {e})"
    if not prepared:
        try:
            socket.create_connection(("storage.googleapis.com", 443), timeout=3).close()
        except OSError:
            return None, "TensorFlow Datasets (not prepared and no network)"
    try:
        return _load_tfds(name, download=not prepared, build=build or _mnist_from_tfds), "tfds"
    except Exception as e:  # noqa: BLE001
        return None, f"TensorFlow Datasets (loading failed: {e})"


@functools.lru_cache(maxsize=4)
def _load_tfds(name: str, download: bool, build) -> Dataset:
    import tensorflow_datasets as tfds

    arrays = {}
    for split in ("train", "test"):
        ds = tfds.as_numpy(tfds.load(name, split=split, batch_size=-1, download=download))
        arrays[f"x_{split}"] = np.asarray(ds["image"])   # uint8 [n, H, W, C]
        arrays[f"y_{split}"] = readonly(np.asarray(ds["label"], dtype=np.int32))
    return build(name, arrays)


def _mnist_from_tfds(name: str, arrays: dict[str, np.ndarray]) -> Dataset:
    for split in ("train", "test"):
        x = arrays[f"x_{split}"].astype(np.uint8).reshape(-1, *IMAGE_SHAPE, 1)
        arrays[f"x_{split}"] = readonly(x)
    return Dataset(num_classes=NUM_CLASSES, source="tfds", **arrays)


def candidate_dirs(name: str) -> list[Path]:
    """The folders searched without a data_dir, in order: steps 2-4 of the module docstring."""
    dirs = []
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        dirs.append(Path(env) / name)
    dirs.append(cache_dir(name))
    if name in DEBIAN_DIRS:
        dirs.append(DEBIAN_DIRS[name])
    return dirs


def _help(name: str, tried: list[str]) -> str:
    ways = [
        "pass --config.data_dir=DIR (a folder holding the four IDX files, or DIR/<name>/)",
        f"set {DATA_DIR_ENV}=DIR with the files in DIR/{name}/",
        f"put the files in the cache dir {cache_dir(name)}",
    ]
    if name in DEBIAN_DIRS:
        ways.append(f"apt-get install dataset-fashion-mnist (installs {DEBIAN_DIRS[name]})")
    ways.append("pip install 'p2pl-jax[tfds]' on a machine with internet (TensorFlow Datasets)")
    return (f"dataset {name!r} not found. Supply it in one of these ways:\n  - "
            + "\n  - ".join(ways)
            + "\nFiles: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,"
              " t10k-labels-idx1-ubyte (each optionally .gz).\nTried:\n  - "
            + "\n  - ".join(tried))


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Loads dataset `name` (one of DATASETS); see the module docstring for the lookup order.

    Returns a Dataset with x_* uint8 [n, 28, 28, 1] (MNIST-style) or [n, 32, 32, 3] (CIFAR,
    with its per-channel normalisation; see Dataset and `decode`) and y_* int32 [n].
    """
    check_choice("dataset", name, DATASETS)
    if name in CIFAR_DATASETS:
        # imported here, not at the top: p2pl_jax.cifar imports this module
        from p2pl_jax import cifar

        return cifar.load(name, data_dir)
    if data_dir:
        root = Path(data_dir).expanduser()
        for folder in (root, root / name):
            if not _idx_files(folder)[1]:
                return _load_dir(str(folder.resolve()))
        missing = _idx_files(root)[1]
        raise ConfigError(f"data_dir={str(data_dir)!r} does not hold dataset {name!r}: "
                          f"neither it nor {root / name} has all four IDX files "
                          f"(missing in data_dir: {', '.join(missing)})")
    tried = []
    for folder in candidate_dirs(name):
        missing = _idx_files(folder)[1]
        if not missing:
            return _load_dir(str(folder.resolve()))
        why = "missing " + ", ".join(missing) if folder.is_dir() else "absent"
        tried.append(f"{folder} ({why})")
    dataset, note = tfds_attempt(name)
    if dataset is not None:
        return dataset
    tried.append(note)
    raise ConfigError(_help(name, tried))
