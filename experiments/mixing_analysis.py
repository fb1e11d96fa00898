"""How each mixing scheme weighs the devices, and how fast it mixes, under size skew (claim 7).

  python -m experiments.mixing_analysis [--num_devices=100] [--seeds=3] [--radius=0.25]
      [--skews=equal,lognormal:0.5,lognormal:1,top:0.3,top:0.5] [--out=FILE.md]

No training: for each seed the random geometric graph and the device sizes are built exactly as a
reproduction run with that seed builds them (graphs.make_graph, partition.partition on 60000
MNIST-sized indices), and for each weight scheme the dense W gives
  spectral gap   1 − SLEM(W): how fast consensus contracts disagreement;
  TV(π, p)       total variation between π, the stationary distribution of W (how much each
                 device's model counts in the consensus limit), and p = |D_n| / Σ|D|, the data
                 share FedAvg and centralized training give it;
  π/p largest    π / p of the device with the most data (< 1: the consensus under-weights it).
Mean over seeds. The markdown table goes to stdout and to --out if given.

Allowed values: --num_devices ≥ 2; --seeds ≥ 1; 0 < --radius ≤ 1.5 (and every seed's graph
connected); --samples ≥ --num_devices; --skews a list of equal, lognormal:SIGMA (0 < SIGMA ≤ 10),
top:FRACTION (0 < FRACTION < 1); --schemes among data_size, metropolis, uniform, max_degree,
fedavg, data_size_mh (π = p exactly: TV 0, π/p 1); --out a writable file path (its folder
must exist). All are checked before any work.

Exit status: 0 done; 2 a user error (a bad flag or value, an unwritable --out), printed as one
message `error: ...` without a traceback.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from experiments import cli
from experiments.cli import EXIT_USER_ERROR
from p2pl_jax.analysis import check_args, table
from p2pl_jax.errors import ConfigError

_N = flags.DEFINE_integer("num_devices", 100, "Devices (≥ 2).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds 0 .. seeds-1 (graph and sizes per seed).")
_RADIUS = flags.DEFINE_float("radius", 0.25, "Random geometric graph radius, in (0, 1.5].")
_SAMPLES = flags.DEFINE_integer("samples", 60000, "Total training samples split across devices "
                                "(≥ num_devices).")
_SKEWS = flags.DEFINE_list("skews", ["equal", "lognormal:0.5", "lognormal:1", "top:0.3",
                                     "top:0.5"],
                           "Size distributions: equal, lognormal:SIGMA (0 < SIGMA ≤ 10), "
                           "top:FRACTION (one device holds FRACTION of the data, 0 < FRACTION "
                           "< 1, the rest equal).")
_SCHEMES = flags.DEFINE_list("schemes", ["data_size", "uniform", "metropolis", "max_degree",
                                        "data_size_mh"],
                             "Weight schemes (data_size, metropolis, uniform, max_degree, "
                             "fedavg, data_size_mh).")
_OUT = flags.DEFINE_string("out", None, "Also write the markdown table here.")

USAGE = ("python -m experiments.mixing_analysis [--num_devices=100] [--seeds=3] [--radius=0.25] "
         "[--samples=60000] [--skews=equal,lognormal:1,top:0.5] "
         "[--schemes=data_size,uniform,metropolis,max_degree,data_size_mh] [--out=FILE.md]")
parse_flags = cli.flags_parser(USAGE)


def check_out(path: str) -> None:
    """Raises ConfigError unless `path` can be written as a file (its folder must exist)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"--out={path} is a directory; give a file path, e.g. {path}/table.md")
    if not os.path.isdir(folder):
        raise ConfigError(f"--out={path}: its folder {folder} does not exist (or is not a "
                          f"directory); create it or give another path")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path)
                                                     and not os.access(path, os.W_OK)):
        raise ConfigError(f"--out={path} is not writable; give a writable file path")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {argv[1:]}\nUsage: {USAGE}", EXIT_USER_ERROR)
    try:
        check_args(_N.value, _SEEDS.value, _RADIUS.value, _SAMPLES.value, _SKEWS.value,
                   _SCHEMES.value, prefix="--")
        if _OUT.value:
            check_out(_OUT.value)
        lines = table(_N.value, _SEEDS.value, _RADIUS.value, _SAMPLES.value, _SKEWS.value,
                      _SCHEMES.value)
    except ConfigError as e:
        cli.fail(str(e), EXIT_USER_ERROR)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if _OUT.value:
        try:
            with open(_OUT.value, "w") as f:
                f.write(text)
        except OSError as e:
            cli.fail(f"--out={_OUT.value} cannot be written: {e.strerror or e}", EXIT_USER_ERROR)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
