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
"""

from __future__ import annotations

import sys

from absl import app, flags

from p2pl_jax.analysis import table
from p2pl_jax.errors import ConfigError

_N = flags.DEFINE_integer("num_devices", 100, "Devices.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds 0 .. seeds-1 (graph and sizes per seed).")
_RADIUS = flags.DEFINE_float("radius", 0.25, "Random geometric graph radius.")
_SAMPLES = flags.DEFINE_integer("samples", 60000, "Total training samples split across devices.")
_SKEWS = flags.DEFINE_list("skews", ["equal", "lognormal:0.5", "lognormal:1", "top:0.3",
                                     "top:0.5"],
                           "Size distributions: equal, lognormal:SIGMA, top:FRACTION (one "
                           "device holds FRACTION of the data, the rest equal).")
_SCHEMES = flags.DEFINE_list("schemes", ["data_size", "uniform", "metropolis", "max_degree"],
                             "Weight schemes.")
_OUT = flags.DEFINE_string("out", None, "Also write the markdown table here.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        lines = table(_N.value, _SEEDS.value, _RADIUS.value, _SAMPLES.value, _SKEWS.value,
                      _SCHEMES.value)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            f.write(text)


if __name__ == "__main__":
    app.run(main)
