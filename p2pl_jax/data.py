"""Image datasets: IDX and CIFAR binary readers, and a loader that finds the data without surprises.

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

cifar10 / cifar100 are read from the official *binary* version only (the Python-pickle version
runs code from the file when loaded, so a folder or archive holding it is refused). Steps 1-3 and
5 are the same; in each folder (and in `data_dir/<name>`) the files may lie directly, in the
archive's own folder (`cifar-10-batches-bin/`, `cifar-100-binary/`), or in the unextracted archive
(`cifar-10-binary.tar.gz`, `cifar-100-binary.tar.gz`, read in memory). CIFAR-10 has
`data_batch_1.bin` ... `data_batch_5.bin` and `test_batch.bin`, records of 1 label byte + 3072
pixel bytes; CIFAR-100 has `train.bin` and `test.bin`, records of 2 label bytes (coarse, fine:
the fine label is used) + 3072 pixel bytes. The pixels are the red, green and blue 32x32 planes,
each row-major.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import socket
import tarfile
import zlib
from pathlib import Path

import numpy as np

from p2pl_jax.errors import ConfigError, check_choice

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
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

    x_train: float32 [n_train, H, W, C]; y_train: int32 [n_train] in [0, num_classes);
    x_test: float32 [n_test, H, W, C]; y_test: int32 [n_test];
    source: where it was loaded from (a directory path, an archive path or "tfds").
    MNIST-style: [n, 28, 28, 1] pixel / 255 in [0, 1], normalisation None.
    CIFAR: [n, 32, 32, 3] (RGB, HWC) standardised per channel c with the training set's
    statistics, x = (pixel / 255 - mean[c]) / std[c]; normalisation = (mean, std), float32 [3]
    each, on the pixel / 255 scale (population std over all training pixels of that channel).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str
    normalisation: tuple[np.ndarray, np.ndarray] | None = None


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


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _images(raw: np.ndarray, path: Path) -> np.ndarray:
    if raw.ndim != 3 or raw.shape[1:] != IMAGE_SHAPE:
        raise ConfigError(f"{path}: expected images of shape [n, 28, 28], found {list(raw.shape)}")
    return _readonly((raw.astype(np.float32) / np.float32(255.0))[..., None])


def _labels(raw: np.ndarray, path: Path) -> np.ndarray:
    if raw.ndim != 1:
        raise ConfigError(f"{path}: expected labels of shape [n], found {list(raw.shape)}")
    if raw.size and raw.max() >= NUM_CLASSES:
        raise ConfigError(f"{path}: labels must lie in [0, {NUM_CLASSES}), found {int(raw.max())}")
    return _readonly(raw.astype(np.int32))


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


def _tfds_attempt(name: str) -> tuple[Dataset | None, str]:
    """Loads `name` through TFDS if possible without a long download; returns (dataset, note)."""
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
        return _load_tfds(name, download=not prepared), "tfds"
    except Exception as e:  # noqa: BLE001
        return None, f"TensorFlow Datasets (loading failed: {e})"


@functools.lru_cache(maxsize=4)
def _load_tfds(name: str, download: bool) -> Dataset:
    import tensorflow_datasets as tfds

    arrays = {}
    for split in ("train", "test"):
        ds = tfds.as_numpy(tfds.load(name, split=split, batch_size=-1, download=download))
        arrays[f"x_{split}"] = np.asarray(ds["image"])   # uint8 [n, H, W, C]
        arrays[f"y_{split}"] = _readonly(np.asarray(ds["label"], dtype=np.int32))
    if name in _CIFAR:   # TFDS's cifar100 "label" is the fine label
        planes = {s: arrays[f"x_{s}"].transpose(0, 3, 1, 2) for s in ("train", "test")}
        return _cifar_dataset(planes["train"], arrays["y_train"], planes["test"],
                              arrays["y_test"], num_classes=_CIFAR[name].num_classes,
                              source="tfds")
    for split in ("train", "test"):
        x = arrays[f"x_{split}"].astype(np.float32).reshape(-1, *IMAGE_SHAPE, 1) / 255.0
        arrays[f"x_{split}"] = _readonly(x.astype(np.float32))
    return Dataset(num_classes=NUM_CLASSES, source="tfds", **arrays)


CIFAR_IMAGE_SHAPE = (32, 32, 3)
_CIFAR_PIXELS = 3 * 32 * 32


@dataclasses.dataclass(frozen=True)
class _CifarLayout:
    """Where the official binary version of a CIFAR dataset keeps what, and its label bytes."""

    folder: str                      # the archive's top folder
    archive: str                     # the official binary archive
    train: tuple[str, ...]
    test: tuple[str, ...]
    labels: tuple[tuple[str, int], ...]   # (name, number of classes) per label byte; last used
    pickle_marks: tuple[str, ...]    # names that show the Python-pickle version

    @property
    def url(self) -> str:
        return f"https://www.cs.toronto.edu/~kriz/{self.archive}"

    @property
    def num_classes(self) -> int:
        return self.labels[-1][1]

    @property
    def files(self) -> tuple[str, ...]:
        return self.train + self.test


_CIFAR = {
    "cifar10": _CifarLayout(
        "cifar-10-batches-bin", "cifar-10-binary.tar.gz",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), (("label", 10),),
        ("cifar-10-batches-py", "cifar-10-python.tar.gz", "batches.meta", "data_batch_1")),
    "cifar100": _CifarLayout(
        "cifar-100-binary", "cifar-100-binary.tar.gz", ("train.bin",), ("test.bin",),
        (("coarse label", 20), ("fine label", 100)),
        ("cifar-100-python", "cifar-100-python.tar.gz", "meta")),
}


def read_cifar_records(raw: bytes, name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Decodes one CIFAR binary file's bytes: (planes uint8 [n, 3, 32, 32], labels int32 [n]).

    Each record is the label byte(s) (CIFAR-100: coarse, then fine; the fine one is returned)
    and then the red, green and blue 32x32 planes, row-major. `where` names the file in errors.
    """
    layout = _CIFAR[name]
    nl = len(layout.labels)
    record = nl + _CIFAR_PIXELS
    if not raw or len(raw) % record:
        raise ConfigError(f"{where} is truncated or not a {name} binary file: its {len(raw)} bytes "
                          f"are not a positive multiple of the {record}-byte record ({nl} label "
                          f"byte{'s' * (nl > 1)} + {_CIFAR_PIXELS} pixel bytes)")
    a = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    for i, (kind, n) in enumerate(layout.labels):
        bad = np.flatnonzero(a[:, i] >= n)
        if bad.size:
            raise ConfigError(f"{where}: record {int(bad[0])} has {kind} {int(a[bad[0], i])}, "
                              f"outside [0, {n}); not a {name} binary file?")
    return a[:, nl:].reshape(-1, 3, 32, 32), a[:, nl - 1].astype(np.int32)


def _channel_stats(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of planes uint8 [n, 3, H, W] on the pixel/255 scale,
    exact from each channel's 256-bin histogram."""
    v = np.arange(256) / 255.0
    mean, std = [], []
    for c in range(planes.shape[1]):
        h = np.bincount(planes[:, c].ravel(), minlength=256) / (planes[:, c].size or 1)
        m = float(h @ v)
        mean.append(m)
        std.append(float(np.sqrt(h @ (v - m) ** 2)))
    return np.array(mean, np.float32), np.array(std, np.float32)


def _cifar_dataset(p_train: np.ndarray, y_train: np.ndarray, p_test: np.ndarray,
                   y_test: np.ndarray, *, num_classes: int, source: str) -> Dataset:
    """A Dataset from uint8 planes [n, 3, 32, 32]: HWC float32, standardised per channel with
    the training set's mean and std."""
    mean, std = _channel_stats(p_train)
    safe = np.where(std > 0, std, np.float32(1.0))
    scale, shift = np.float32(1 / 255) / safe, mean / safe

    def images(planes: np.ndarray) -> np.ndarray:
        x = planes.transpose(0, 2, 3, 1).astype(np.float32)   # [n, 32, 32, 3]
        x *= scale
        x -= shift
        return _readonly(x)

    return Dataset(x_train=images(p_train), y_train=_readonly(np.asarray(y_train, np.int32)),
                   x_test=images(p_test), y_test=_readonly(np.asarray(y_test, np.int32)),
                   num_classes=num_classes, source=source,
                   normalisation=(_readonly(mean), _readonly(std)))


def _cifar_bytes(source: Path, name: str) -> dict[str, tuple[bytes, str]]:
    """{file name: (bytes, where)} for every file of `name`, from a folder or, in memory, from
    the binary archive (members matched by base name; nothing is written to disk)."""
    layout = _CIFAR[name]
    out = {}
    if source.is_dir():
        for f in layout.files:
            try:
                out[f] = ((source / f).read_bytes(), str(source / f))
            except OSError as e:
                raise ConfigError(f"cannot read {source / f}: {e}") from e
        return out
    try:
        with tarfile.open(source, "r:gz") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in layout.files and base not in out:
                    out[base] = (tar.extractfile(member).read(), f"{source}:{member.name}")
                    if len(out) == len(layout.files):
                        break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ConfigError(f"cannot read archive {source}: {e}") from e
    missing = [f for f in layout.files if f not in out]
    if missing:
        raise ConfigError(f"archive {source} lacks {', '.join(missing)}; expected the binary "
                          f"version of {name} ({layout.url})")
    return out


@functools.lru_cache(maxsize=4)
def _load_cifar(name: str, source: str) -> Dataset:
    """Decodes the binary files of a resolved folder or archive (cached per source)."""
    raw = _cifar_bytes(Path(source), name)
    splits = []
    for files in (_CIFAR[name].train, _CIFAR[name].test):
        parts = [read_cifar_records(raw[f][0], name, raw[f][1]) for f in files]
        splits += [np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])]
    return _cifar_dataset(*splits, num_classes=_CIFAR[name].num_classes, source=source)


def _cifar_source(folder: Path, name: str) -> Path | None:
    """The first binary source in `folder`: the files in it, in its archive folder, or the
    archive; None if none."""
    layout = _CIFAR[name]
    for d in (folder, folder / layout.folder):
        if all((d / f).is_file() for f in layout.files):
            return d
    archive = folder / layout.archive
    return archive if archive.is_file() else None


def _cifar_note(folder: Path, name: str) -> str:
    """Why `folder` has no binary source of `name` (for error messages)."""
    layout = _CIFAR[name]
    if not folder.is_dir():
        return "absent"
    for d in (folder, folder / layout.folder):
        have = [f for f in layout.files if (d / f).is_file()]
        if have:
            return f"{d} lacks " + ", ".join(f for f in layout.files if f not in have)
    return f"no {layout.files[0]} ..., {layout.folder}/ or {layout.archive}"


def _refuse_pickle(folder: Path, name: str) -> None:
    """Raises if `folder` holds the Python-pickle version of `name` (never loaded)."""
    layout = _CIFAR[name]
    found = [m for m in layout.pickle_marks if (folder / m).exists()]
    if found:
        raise ConfigError(
            f"{folder / found[0]} is the Python-pickle version of {name}, which p2pl_jax never "
            f"loads (unpickling runs code from the file). Use the binary version instead: "
            f"{layout.url} (put the archive, or its extracted {layout.folder}/ folder, in "
            f"{folder})")


def _load_cifar_anywhere(name: str, data_dir: str | None) -> Dataset:
    layout = _CIFAR[name]
    if data_dir:
        root = Path(data_dir).expanduser()
        folders = (root, root / name)
        for folder in folders:
            source = _cifar_source(folder, name)
            if source is not None:
                return _load_cifar(name, str(source.resolve()))
        for folder in folders:
            _refuse_pickle(folder, name)
        raise ConfigError(f"data_dir={str(data_dir)!r} does not hold dataset {name!r}: neither "
                          f"it nor {root / name} has {', '.join(layout.files)} (directly or in "
                          f"{layout.folder}/) or {layout.archive} ({_cifar_note(root, name)}); "
                          f"get the binary version from {layout.url}")
    tried = []
    for folder in _candidates(name):
        source = _cifar_source(folder, name)
        if source is not None:
            return _load_cifar(name, str(source.resolve()))
        _refuse_pickle(folder, name)
        tried.append(f"{folder} ({_cifar_note(folder, name)})")
    dataset, note = _tfds_attempt(name)
    if dataset is not None:
        return dataset
    tried.append(note)
    ways = [f"download the binary version {layout.url} and pass --config.data_dir=DIR with the "
            f"archive (or its extracted {layout.folder}/ folder) in DIR or DIR/{name}/",
            f"set {DATA_DIR_ENV}=DIR with it in DIR/{name}/",
            f"put it in the cache dir {cache_dir(name)}",
            "pip install 'p2pl-jax[tfds]' on a machine with internet (TensorFlow Datasets)"]
    raise ConfigError(f"dataset {name!r} not found. Supply it in one of these ways:\n  - "
                      + "\n  - ".join(ways)
                      + f"\nFiles: {', '.join(layout.files)} (the binary version, never the "
                        "Python-pickle one).\nTried:\n  - " + "\n  - ".join(tried))


def _candidates(name: str) -> list[Path]:
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

    Returns a Dataset with x_* float32 [n, 28, 28, 1] in [0, 1] (MNIST-style) or
    [n, 32, 32, 3] standardised per channel (CIFAR; see Dataset) and y_* int32 [n].
    """
    check_choice("dataset", name, DATASETS)
    if name in _CIFAR:
        return _load_cifar_anywhere(name, data_dir)
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
    for folder in _candidates(name):
        missing = _idx_files(folder)[1]
        if not missing:
            return _load_dir(str(folder.resolve()))
        why = "missing " + ", ".join(missing) if folder.is_dir() else "absent"
        tried.append(f"{folder} ({why})")
    dataset, note = _tfds_attempt(name)
    if dataset is not None:
        return dataset
    tried.append(note)
    raise ConfigError(_help(name, tried))
