"""Plots run directories: accuracy vs round (min–max band over devices) and consensus distance.

  python -m experiments.plot DIR [DIR ...] --out=fig.png [--labels=a,b] [--title=...]
      [--target=0.97] [--partition_out=partition.png]

Each DIR is a run directory written by experiments.train (metrics.jsonl; config.json gives the
default label). --partition_out also draws the first DIR's partition.json as a heat map.
"""

import sys

from absl import app, flags

from p2pl_jax import plotting

_OUT = flags.DEFINE_string("out", None, "Output PNG.", required=True)
_LABELS = flags.DEFINE_list("labels", None, "One label per DIR (default: from config.json).")
_TITLE = flags.DEFINE_string("title", None, "Figure title.")
_TARGET = flags.DEFINE_float("target", None, "Draw this target accuracy (default: the first "
                             "run's target_accuracy).")
_PARTITION_OUT = flags.DEFINE_string("partition_out", None,
                                     "Also draw the first DIR's partition.json here.")


def main(argv):
    dirs = argv[1:]
    if not dirs:
        raise app.UsageError("give at least one run directory")
    if _LABELS.value is not None and len(_LABELS.value) != len(dirs):
        print(f"error: --labels has {len(_LABELS.value)} entries for {len(dirs)} directories",
              file=sys.stderr)
        sys.exit(2)
    try:
        runs = [plotting.load_run(d) for d in dirs]
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    labels = _LABELS.value or [plotting.default_label(r.config, r.path) for r in runs]
    target = _TARGET.value
    if target is None:
        target = runs[0].config.get("target_accuracy")
    plotting.plot_runs([(label, [r]) for label, r in zip(labels, runs)], _OUT.value,
                       title=_TITLE.value, target=target)
    print(f"wrote {_OUT.value}")
    if _PARTITION_OUT.value:
        plotting.plot_partition(f"{dirs[0]}/partition.json", _PARTITION_OUT.value)
        print(f"wrote {_PARTITION_OUT.value}")


if __name__ == "__main__":
    app.run(main)
