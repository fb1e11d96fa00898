"""Shared benchmark helpers: machine header, timing, copy bandwidth, memory, data, simulator set-up.

Every benchmark prints `header()` (host, CPU model / accelerator, backend, versions) before its
numbers, times with `block_until_ready`, reports medians over repeats and compile time apart.

`python -m benchmarks.common --table A.json B.json ...` prints the JSON results the benchmarks
write with `--json` as one short markdown table (benchmarks/gpu_check.sh ends with it).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import resource
import socket
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from p2pl_jax import data as data_lib
from p2pl_jax import graphs, simulation, wireless, writers
from p2pl_jax.models import MLP

os.environ.setdefault("P2PL_NO_TFDS", "1")   # never wait on TensorFlow Datasets / the network
_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not os.environ.get("P2PL_DATA_DIR") and _SHARED_DATA.is_dir():
    os.environ["P2PL_DATA_DIR"] = str(_SHARED_DATA)   # as scripts/*.sh do

GiB = 1 << 30
MiB = 1 << 20
LEARNING_RATE, MOMENTUM = 0.05, 0.9   # configs/mnist.py
IMAGE_SHAPE = (28, 28, 1)


# ----------------------------------------------------------------------------- machine, timing


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(with_torch: bool = False) -> dict[str, Any]:
    """Host, CPU, accelerator, backend and versions: printed and saved with every number."""
    import flax
    import optax

    dev = jax.devices()[0]
    info = {"host": socket.gethostname(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "backend": jax.default_backend(), "device": dev.device_kind,
            "device_count": jax.device_count(), "jax": jax.__version__, "jaxlib": "?",
            "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__,
            "python": platform.python_version()}
    try:
        import jaxlib
        info["jaxlib"] = jaxlib.__version__
    except (ImportError, AttributeError):
        pass
    if with_torch:
        torch = optional_torch()
        info["torch"] = torch.__version__ if torch else "not importable"
        if torch is not None:
            info["torch_threads"] = torch.get_num_threads()
            if torch.cuda.is_available():
                info["torch_cuda_device"] = torch.cuda.get_device_name(0)
    return info


def header(title: str, info: dict[str, Any], args: argparse.Namespace | None = None) -> None:
    print(f"# {title}")
    print(f"# machine: {info['host']} | CPU: {info['cpu']} ({info['cpu_count']} cores) | "
          f"device: {info['device']} x{info['device_count']} | backend: {info['backend']}")
    versions = " ".join(f"{k} {info[k]}" for k in ("jax", "jaxlib", "flax", "optax", "numpy",
                                                   "python", "torch") if k in info)
    print(f"# versions: {versions}")
    if "torch_cuda_device" in info:
        print(f"# torch cuda device: {info['torch_cuda_device']}")
    if args is not None:
        print(f"# args: {' '.join(sys.argv[1:]) or '(defaults)'}")
    sys.stdout.flush()


def optional_torch():
    """torch, or None when it is not importable (the benchmarks treat it as optional)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Calls fn(), waits for every array it returns; returns (result, seconds)."""
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return out, time.perf_counter() - t0


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: list[float]) -> str:
    """'min-max' of the repeats, to show the noise next to a median."""
    return f"{min(xs):.4g}-{max(xs):.4g}" if xs else "-"


def copy_bandwidth(nbytes: int, repeats: int = 5, passes: int = 10) -> dict[str, float]:
    """Measured device memory bandwidth: `passes` times x <- x + 1 on a float32 array of `nbytes`.

    The passes run in one jitted fori_loop (each reads and writes the whole array: 2 * nbytes),
    so one call lasts long enough that dispatch and synchronisation jitter do not count (a
    single 1 GiB pass on an H200 is ~1 ms and measured anywhere from 2 to 3 TB/s). Returns the
    median over `repeats` calls (after one warm-up call), in bytes per second, and the fastest
    call's (`best_bytes_per_s`: the machine's peak, for floors on a machine shared with others).
    """
    body = lambda i, a: a + 1.0
    run = jax.jit(lambda a: jax.lax.fori_loop(0, passes, body, a))
    x = jnp.zeros((nbytes // 4,), jnp.float32)
    jax.block_until_ready(run(x))
    times = [timed(partial(run, x))[1] for _ in range(repeats)]
    t = median(times)
    return {"bytes": float(nbytes), "passes": passes, "seconds": t,
            "bytes_per_s": 2 * nbytes * passes / t, "spread": spread(times),
            "best_bytes_per_s": 2 * nbytes * passes / min(times)}


def default_copy_bytes() -> int:
    """1 GiB on an accelerator, 256 MiB on CPU (well beyond the caches)."""
    return 256 * MiB if jax.default_backend() == "cpu" else GiB


def peak_memory() -> tuple[float, str]:
    """(bytes, what): the device's peak_bytes_in_use where jax reports it, else host max RSS.

    Both are peaks of the whole process so far, so benchmarks run their cases smallest first.
    """
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = {}
    if "peak_bytes_in_use" in stats:
        return float(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "host max RSS"


def available_memory() -> tuple[float, str]:
    """(bytes, what) the next case may use: device bytes_limit - bytes_in_use, else host
    MemAvailable."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001
        stats = {}
    if "bytes_limit" in stats:
        return float(stats["bytes_limit"] - stats.get("bytes_in_use", 0)), "device"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024, "host"
    except OSError:
        pass
    return float("inf"), "unknown"


def free() -> None:
    gc.collect()


# ----------------------------------------------------------------------------- data and set-up


def resolve_device_block(device_block: int) -> int:
    """The runner's rule (-1 = auto: 2 on CPU, 0 on GPU/TPU)."""
    try:
        from p2pl_jax.runner import resolve_device_block as rule
    except ImportError:   # runner needs ml_collections, which a bare GPU machine may lack
        return device_block if device_block != -1 else (
            2 if jax.default_backend() == "cpu" else 0)
    return rule(device_block)


def load_data(kind: str = "auto", seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Training images uint8 [T, 28, 28, 1] (stored as the simulator stores them, decoded per
    batch) and labels int32 [T], and where they came from.

    kind: "mnist" (must load), "random" (uniform pixels, random labels, T = 60000), "auto"
    (MNIST when found via P2PL_DATA_DIR or the cache, else random). Timings do not depend on
    the pixel values.
    """
    if kind in ("auto", "mnist"):
        try:
            ds = data_lib.load_dataset("mnist")
            return ds.x_train, ds.y_train.astype(np.int32), f"MNIST ({ds.source})"
        except Exception as e:  # noqa: BLE001 - ConfigError (not found) or a broken file
            if kind == "mnist":
                raise
            reason = str(e).splitlines()[0][:80]
            print(f"# data: MNIST not found ({reason}...); random data of MNIST shape")
    r = np.random.default_rng(seed)
    x = r.integers(0, 256, (60000, *IMAGE_SHAPE), dtype=np.uint8)
    y = r.integers(0, 10, 60000).astype(np.int32)
    return x, y, "random (MNIST shape)"


def device_parts(num_rows: int, num_devices: int, samples: int, seed: int) -> list[np.ndarray]:
    """IID split: `samples` rows per device from one permutation, wrapping around (rows reused)
    when num_devices * samples > num_rows."""
    order = np.random.default_rng(seed).permutation(num_rows)
    total = num_devices * samples
    order = np.resize(order, total)
    return list(order.reshape(num_devices, samples))


def adjacency(topology: str, n: int, degree: int, seed: int) -> np.ndarray:
    """bool [N, N] adjacency.

    "random": the union of degree // 2 random Hamiltonian cycles (connected, max degree
    `degree`; built in numpy in milliseconds even for N = 10000, where networkx's
    random_regular_graph takes tens of seconds); "complete"; any other name goes to
    p2pl_jax.graphs.make_graph(topology, n, degree=degree).
    """
    if topology == "complete":
        adj = np.ones((n, n), bool)
    elif topology == "random":
        adj = np.zeros((n, n), bool)
        r = np.random.default_rng(seed)
        for _ in range(max(1, degree // 2)):
            p = r.permutation(n)
            q = np.roll(p, -1)
            adj[p, q] = adj[q, p] = True
    else:
        return graphs.adjacency(graphs.make_graph(topology, n, seed=seed, degree=degree))
    np.fill_diagonal(adj, False)
    return adj


@dataclasses.dataclass
class Setup:
    sim: simulation.Simulator
    n: int
    samples: int
    batch_size: int
    local_epochs: int
    steps: int            # local steps per device per round
    num_params: int       # P, parameters of one device's model
    max_neighbours: int   # K, neighbour-list width including self
    topology: str
    data_source: str
    setup_s: float


def build(n: int, *, samples: int = 600, batch_size: int = 10, local_epochs: int = 1,
          backend: str = "dense", topology: str = "random", degree: int = 4,
          device_block: int = -1, data: str = "auto", seed: int = 0,
          hidden_sizes: tuple[int, ...] = (200, 200),
          xy: tuple[np.ndarray, np.ndarray, str] | None = None,
          channel: str = "ideal") -> Setup:
    """A P2PL Simulator (MLP 784-200-200-10, data_size weights, no sync) on N devices.

    xy: (x, y, source) from `load_data`, to share one dataset between several set-ups.
    channel "wireless": the default link budget (wireless.Radio), devices uniform in its
    500 m square, cycles per sample from XLA's count.
    """
    t0 = time.perf_counter()
    x, y, source = xy if xy is not None else load_data(data, seed)
    parts = device_parts(len(y), n, samples, seed)
    adj = adjacency(topology, n, degree, seed)
    # diameter=0: no networkx all-pairs BFS (minutes at N = 10000); it only sets the number of
    # phase-0 sync steps, and benchmarks use sync "none" (the timed round is the same).
    sim = simulation.Simulator(
        model=MLP(hidden_sizes=tuple(hidden_sizes)), x=x, y=y, parts=parts, adj=adj,
        algorithm="p2pl", mixing_scheme="data_size", sync_mode="none", backend=backend,
        local_epochs=local_epochs, batch_size=batch_size,
        device_block=resolve_device_block(device_block), diameter=0,
        channel=None if channel == "ideal" else wireless.Setup(
            radio=wireless.Radio(), positions=wireless.positions(n, 500.0, seed), seed=seed))
    jax.block_until_ready(sim.arrays)
    num_params = mlp_params(tuple(hidden_sizes), int(np.prod(x.shape[1:])))
    return Setup(sim=sim, n=n, samples=samples, batch_size=batch_size,
                 local_epochs=local_epochs, steps=local_epochs * math.ceil(samples / batch_size),
                 num_params=num_params, max_neighbours=int(sim.arrays.idx.shape[1]),
                 topology=topology if topology != "random" else f"random (degree <= {degree})",
                 data_source=source, setup_s=time.perf_counter() - t0)


def parse_hidden(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in str(text).split(",") if v.strip())


def mlp_params(hidden_sizes: tuple[int, ...], inputs: int = 784, classes: int = 10) -> int:
    """P: parameters (weights and biases) of one MLP inputs-hidden...-classes."""
    h = (inputs, *hidden_sizes, classes)
    return sum(a * b + b for a, b in zip(h[:-1], h[1:]))


def mlp_name(hidden_sizes: tuple[int, ...]) -> str:
    return "-".join(str(v) for v in (784, *hidden_sizes, 10))


def hparams() -> simulation.HParams:
    return simulation.make_hparams(LEARNING_RATE, MOMENTUM, 0.0)


# ----------------------------------------------------------------------------- results


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Right-aligned columns, two spaces apart."""
    cells = [header] + rows
    widths = [max(len(c[i]) if i < len(c) else 0 for c in cells) for i in range(len(header))]
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)).rstrip())


def write_json(path: str | None, obj: Any) -> None:
    """Strict JSON (non-finite floats as null, listed under `nonfinite`; p2pl_jax.writers)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(writers.dumps(json.loads(json.dumps(obj, default=str)), indent=1))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def markdown_table(paths: list[str]) -> str:
    """One markdown table from the JSON files of round_time / vs_loop / models (--json)."""
    lines = ["| benchmark | N | case | time (s) | detail |", "| --- | --- | --- | --- | --- |"]
    for p in paths:
        try:
            obj = json.loads(Path(p).read_text())
        except (OSError, ValueError):
            continue
        dev = obj.get("machine", {}).get("device", "?")
        if obj.get("benchmark") == "round_time":
            for r in obj.get("rows", []):
                if "error" in r:
                    lines.append(f"| round_time ({dev}) | {r['n']} | {r['backend']} | - | "
                                 f"{r['error']} |")
                    continue
                lines.append(
                    f"| round_time ({dev}) | {r['n']} | {r['backend']} round | "
                    f"{_fmt(r['round_s'])} | consensus {_fmt(r['consensus_s'])} s, "
                    f"{_fmt(r['device_steps_per_s'])} dev-steps/s, "
                    f"{_fmt(r['ratio_to_floor'])}x floor, compile {_fmt(r['compile_s'])} s, "
                    f"peak {_fmt(r['peak_bytes'] / GiB)} GiB |")
        elif obj.get("benchmark") == "models":
            n = obj.get("args", {}).get("devices", "?")
            for r in obj.get("rows", []):
                if "error" in r:
                    lines.append(f"| models ({dev}) | {n} | {r['model']} | - | {r['error']} |")
                    continue
                lines.append(
                    f"| models ({dev}) | {r['n']} | {r['model']} w={r['width_multiplier']:g} "
                    f"B={r['batch_size']} round | {_fmt(r['round_s'])} | single batch "
                    f"{_fmt(r['single_s'])} s ({_fmt(r['ratio_to_single'])}x), "
                    f"{_fmt(r['ratio_to_floor'])}x floor ({r['bound']}), "
                    f"{_fmt(r['gflops_per_s'])} GFLOP/s, compile {_fmt(r['compile_s'])} s, "
                    f"peak {_fmt(r['peak_bytes'] / GiB)} GiB |")
        elif obj.get("benchmark") == "vs_loop":
            n = obj["n"]
            lines.append(f"| vs_loop ({dev}) | {n} | vectorized | {_fmt(obj['vectorized_s'])} | "
                         f"match: {obj.get('match')} |")
            for name in ("jax_loop", "torch_loop"):
                if obj.get(name):
                    r = obj[name]
                    lines.append(f"| vs_loop ({dev}) | {n} | {name} | {_fmt(r['round_s'])} | "
                                 f"{_fmt(r['ratio'])}x vectorized{r.get('note', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--table", nargs="+", required=True, help="JSON files written with --json")
    args = ap.parse_args(argv)
    print(markdown_table(args.table))


if __name__ == "__main__":
    main()
