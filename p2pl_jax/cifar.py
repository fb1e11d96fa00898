"""CIFAR-10 / CIFAR-100 from the official *binary* version, and where to find it.

`load(name, data_dir)` (reached through `data.load_dataset`) looks in the places of
`p2pl_jax.data` steps 1-3 and 5: `data_dir` (no fall-through when given), `$P2PL_DATA_DIR/<name>`,
the user cache `${XDG_CACHE_HOME:-~/.cache}/p2pl_jax/<name>`, then TensorFlow Datasets. In each
folder (and in `data_dir/<name>`) the files may lie directly, in the archive's own folder
(`cifar-10-batches-bin/`, `cifar-100-binary/`), or in the unextracted archive
(`cifar-10-binary.tar.gz`, `cifar-100-binary.tar.gz`, read in memory). CIFAR-10 has
`data_batch_1.bin` ... `data_batch_5.bin` and `test_batch.bin`, records of 1 label byte + 3072
pixel bytes; CIFAR-100 has `train.bin` and `test.bin`, records of 2 label bytes (coarse, fine:
the fine label is used) + 3072 pixel bytes. The pixels are the red, green and blue 32x32 planes,
each row-major.

The Python-pickle version runs code from the file when loaded, so a folder or archive holding it
is refused (with a message naming the binary version) and never read.

The images are stored uint8 [n, 32, 32, 3] (HWC) with the training set's per-channel mean and
std as the Dataset's normalisation, applied per batch by `data.decode`.
"""

from __future__ import annotations

import dataclasses
import functools
import tarfile
import zlib
from pathlib import Path

import numpy as np

from p2pl_jax.data import (
    CIFAR_DATASETS,
    DATA_DIR_ENV,
    Dataset,
    cache_dir,
    candidate_dirs,
    readonly,
    tfds_attempt,
)
from p2pl_jax.errors import ConfigError

IMAGE_SHAPE = (32, 32, 3)
PIXELS = 3 * 32 * 32   # pixel bytes per record


@dataclasses.dataclass(frozen=True)
class Layout:
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


LAYOUTS = {
    "cifar10": Layout(
        "cifar-10-batches-bin", "cifar-10-binary.tar.gz",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), (("label", 10),),
        ("cifar-10-batches-py", "cifar-10-python.tar.gz", "batches.meta", "data_batch_1")),
    "cifar100": Layout(
        "cifar-100-binary", "cifar-100-binary.tar.gz", ("train.bin",), ("test.bin",),
        (("coarse label", 20), ("fine label", 100)),
        ("cifar-100-python", "cifar-100-python.tar.gz", "meta")),
}
assert tuple(LAYOUTS) == CIFAR_DATASETS


def read_records(raw: bytes, name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Decodes one CIFAR binary file's bytes: (planes uint8 [n, 3, 32, 32], labels int32 [n]).

    Each record is the label byte(s) (CIFAR-100: coarse, then fine; the fine one is returned)
    and then the red, green and blue 32x32 planes, row-major. `where` names the file in errors.
    """
    layout = LAYOUTS[name]
    nl = len(layout.labels)
    record = nl + PIXELS
    if not raw or len(raw) % record:
        raise ConfigError(f"{where} is truncated or not a {name} binary file: its {len(raw)} bytes "
                          f"are not a positive multiple of the {record}-byte record ({nl} label "
                          f"byte{'s' * (nl > 1)} + {PIXELS} pixel bytes)")
    a = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    for i, (kind, n) in enumerate(layout.labels):
        bad = np.flatnonzero(a[:, i] >= n)
        if bad.size:
            raise ConfigError(f"{where}: record {int(bad[0])} has {kind} {int(a[bad[0], i])}, "
                              f"outside [0, {n}); not a {name} binary file?")
    return a[:, nl:].reshape(-1, 3, 32, 32), a[:, nl - 1].astype(np.int32)


def channel_stats(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def from_planes(p_train: np.ndarray, y_train: np.ndarray, p_test: np.ndarray,
                y_test: np.ndarray, *, num_classes: int, source: str) -> Dataset:
    """A Dataset from uint8 planes [n, 3, 32, 32]: HWC uint8, with the training set's per-channel
    mean and std as its normalisation (applied per batch by `data.decode`)."""
    mean, std = channel_stats(p_train)

    def images(planes: np.ndarray) -> np.ndarray:
        return readonly(np.ascontiguousarray(planes.transpose(0, 2, 3, 1)))   # [n, 32, 32, 3]

    return Dataset(x_train=images(p_train), y_train=readonly(np.asarray(y_train, np.int32)),
                   x_test=images(p_test), y_test=readonly(np.asarray(y_test, np.int32)),
                   num_classes=num_classes, source=source,
                   normalisation=(readonly(mean), readonly(std)))


def from_tfds(name: str, arrays: dict[str, np.ndarray]) -> Dataset:
    """The Dataset of TFDS's arrays (x_* uint8 [n, 32, 32, 3], y_* int32 [n]; TFDS's cifar100
    "label" is the fine label)."""
    planes = {s: arrays[f"x_{s}"].transpose(0, 3, 1, 2) for s in ("train", "test")}
    return from_planes(planes["train"], arrays["y_train"], planes["test"], arrays["y_test"],
                       num_classes=LAYOUTS[name].num_classes, source="tfds")


def _file_bytes(source: Path, name: str) -> dict[str, tuple[bytes, str]]:
    """{file name: (bytes, where)} for every file of `name`, from a folder or, in memory, from
    the binary archive (members matched by base name; nothing is written to disk)."""
    layout = LAYOUTS[name]
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
def _load_source(name: str, source: str) -> Dataset:
    """Decodes the binary files of a resolved folder or archive (cached per source)."""
    raw = _file_bytes(Path(source), name)
    splits = []
    for files in (LAYOUTS[name].train, LAYOUTS[name].test):
        parts = [read_records(raw[f][0], name, raw[f][1]) for f in files]
        splits += [np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])]
    return from_planes(*splits, num_classes=LAYOUTS[name].num_classes, source=source)


def _find_source(folder: Path, name: str) -> Path | None:
    """The first binary source in `folder`: the files in it, in its archive folder, or the
    archive; None if none."""
    layout = LAYOUTS[name]
    for d in (folder, folder / layout.folder):
        if all((d / f).is_file() for f in layout.files):
            return d
    archive = folder / layout.archive
    return archive if archive.is_file() else None


def _note(folder: Path, name: str) -> str:
    """Why `folder` has no binary source of `name` (for error messages)."""
    layout = LAYOUTS[name]
    if not folder.is_dir():
        return "absent"
    for d in (folder, folder / layout.folder):
        have = [f for f in layout.files if (d / f).is_file()]
        if have:
            return f"{d} lacks " + ", ".join(f for f in layout.files if f not in have)
    return f"no {layout.files[0]} ..., {layout.folder}/ or {layout.archive}"


def _refuse_pickle(folder: Path, name: str) -> None:
    """Raises if `folder` holds the Python-pickle version of `name` (never loaded)."""
    layout = LAYOUTS[name]
    found = [m for m in layout.pickle_marks if (folder / m).exists()]
    if found:
        raise ConfigError(
            f"{folder / found[0]} is the Python-pickle version of {name}, which p2pl_jax never "
            f"loads (unpickling runs code from the file). Use the binary version instead: "
            f"{layout.url} (put the archive, or its extracted {layout.folder}/ folder, in "
            f"{folder})")


def load(name: str, data_dir: str | None = None) -> Dataset:
    """Loads CIFAR dataset `name` (a key of LAYOUTS); see the module docstring for where.

    Returns a Dataset with x_* uint8 [n, 32, 32, 3], y_* int32 [n] and the training set's
    per-channel normalisation. Cached in-process per source. Raises ConfigError naming every
    place tried, the file at fault, or the pickle version found.
    """
    layout = LAYOUTS[name]
    if data_dir:
        root = Path(data_dir).expanduser()
        folders = (root, root / name)
        for folder in folders:
            source = _find_source(folder, name)
            if source is not None:
                return _load_source(name, str(source.resolve()))
        for folder in folders:
            _refuse_pickle(folder, name)
        raise ConfigError(f"data_dir={str(data_dir)!r} does not hold dataset {name!r}: neither "
                          f"it nor {root / name} has {', '.join(layout.files)} (directly or in "
                          f"{layout.folder}/) or {layout.archive} ({_note(root, name)}); "
                          f"get the binary version from {layout.url}")
    tried = []
    for folder in candidate_dirs(name):
        source = _find_source(folder, name)
        if source is not None:
            return _load_source(name, str(source.resolve()))
        _refuse_pickle(folder, name)
        tried.append(f"{folder} ({_note(folder, name)})")
    dataset, note = tfds_attempt(name, from_tfds)
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
