"""Plots run directories: accuracy vs round (worst device, device mean, min–max band) and
consensus distance.

  python -m experiments.plot DIR [DIR ...] --out=fig.png [--labels=a,b] [--title=...]
      [--target=0.97] [--partition_out=partition.png] [--x=round|bytes|energy|sim_time]

Each DIR is a run directory written by experiments.train (metrics.jsonl; config.json gives the
default labels: the config fields that differ between the runs, or the directory names when the
configs are equal; the title defaults to what the runs share, e.g. "p2pl cycle").
--partition_out also draws the first DIR's partition.json as a heat map. --x puts the cumulative
bytes sent, energy (J) or simulated time (s) on the accuracy panel's x axis instead of the round
(energy and sim_time: runs with channel=wireless).

Exit status 2, with one message naming the file or flag, for a user error: a bad flag, a missing
run directory or metrics.jsonl, an empty metrics.jsonl, a malformed line (one that is not the
last: a truncated last line, from a run stopped while writing it, is skipped with a warning), a
malformed config.json, or an --out / --partition_out that cannot be written.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from experiments import cli
from p2pl_jax import plotting
from p2pl_jax.errors import ConfigError

USAGE = ("python -m experiments.plot DIR [DIR ...] --out=FIG.png [--labels=A,B,...] "
         "[--title=TITLE] [--target=0.97] [--partition_out=PARTITION.png] "
         "[--x=round|bytes|energy|sim_time]")

_OUT = flags.DEFINE_string("out", None, "Output PNG.", required=True)
_LABELS = flags.DEFINE_list("labels", None, "One label per DIR (default: from config.json).")
_TITLE = flags.DEFINE_string("title", None, "Figure title (default: what the runs share).")
_TARGET = flags.DEFINE_float("target", None, "Draw this target accuracy (default: the first "
                             "run's target_accuracy).", lower_bound=0.0, upper_bound=1.0)
_PARTITION_OUT = flags.DEFINE_string("partition_out", None,
                                     "Also draw the first DIR's partition.json here.")

_X = flags.DEFINE_enum("x", "round", list(plotting.X_AXES),
                       "The accuracy panel's x axis: round, or the cumulative bytes sent, "
                       "energy (J) or simulated time (s).")

parse_flags = cli.flags_parser(USAGE)


def _check_output(flag: str, path: str) -> None:
    problem = plotting.output_problem(path)
    if problem:
        cli.fail(f"--{flag}={path} {problem}", cli.EXIT_USER_ERROR)


def _write(flag: str, path: str, draw) -> None:
    """Runs draw(); a failure to write the file is a user error naming the flag."""
    try:
        draw()
    except OSError as e:
        cli.fail(f"cannot write --{flag}={path}: {e.strerror or e}", cli.EXIT_USER_ERROR)
    print(f"wrote {path}")


def main(argv: list[str]) -> None:
    dirs = argv[1:]
    if not dirs:
        cli.fail(f"give at least one run directory\nUsage: {USAGE}", cli.EXIT_USER_ERROR)
    _check_output("out", _OUT.value)
    if _PARTITION_OUT.value is not None:
        _check_output("partition_out", _PARTITION_OUT.value)
    labels = _LABELS.value
    if labels is not None:
        if len(labels) != len(dirs):
            cli.fail(f"--labels has {len(labels)} entries for {len(dirs)} directories; give "
                     "one label per DIR", cli.EXIT_USER_ERROR)
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            cli.fail(f"--labels repeats {', '.join(map(repr, repeated))}; the labels must tell "
                     "the runs apart", cli.EXIT_USER_ERROR)
    partition = os.path.join(dirs[0], "partition.json")
    if _PARTITION_OUT.value is not None and os.path.isdir(dirs[0]) and not os.path.isfile(
            partition):
        cli.fail(f"--partition_out draws the first DIR's partition.json, but {partition} does "
                 "not exist", cli.EXIT_USER_ERROR)
    try:
        runs = [plotting.load_run(d) for d in dirs]
    except (FileNotFoundError, ConfigError) as e:
        cli.fail(str(e), cli.EXIT_USER_ERROR)
    for run in runs:
        for warning in run.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    configs = [r.config for r in runs]
    if labels is None:
        labels = plotting.default_labels(configs, [r.path for r in runs])
    title = _TITLE.value
    if title is None and len(runs) > 1:
        title = plotting.common_label(configs)
    target = _TARGET.value
    if target is None:
        target = runs[0].config.get("target_accuracy")
        if isinstance(target, bool) or not isinstance(target, (int, float)):
            target = None
    try:
        _write("out", _OUT.value, lambda: plotting.plot_runs(
            [(label, [r]) for label, r in zip(labels, runs)], _OUT.value, title=title,
            target=target, x=_X.value))
    except ConfigError as e:   # --x names a metric a run does not record
        cli.fail(str(e), cli.EXIT_USER_ERROR)
    if _PARTITION_OUT.value is not None:
        try:
            _write("partition_out", _PARTITION_OUT.value,
                   lambda: plotting.plot_partition(partition, _PARTITION_OUT.value))
        except ConfigError as e:   # a malformed partition.json
            cli.fail(str(e), cli.EXIT_USER_ERROR)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
