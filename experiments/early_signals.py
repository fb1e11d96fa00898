"""Imported first by the command-line tools: installs the signal watcher (p2pl_jax.interrupts)
before the heavy imports (JAX, orbax: about 2 s), so Ctrl-C or SIGTERM in that time also ends
the process with status 130 and a true message instead of a traceback or a kill by SIGTERM's
default action. Only when the importing tool is the program (`python -m experiments.train`);
imported by tests or other code it does nothing. The checkpoint folders the message lists come
from argv's --workdir (the flags are not parsed yet); the tool's main installs the exact ones
(`cli.install_interrupts`). What stays uncovered is the interpreter's own start-up before this
module runs (tens of milliseconds)."""

import os
import sys

from experiments import cli  # light: absl flags and p2pl_jax.interrupts
from p2pl_jax import interrupts, stages

# tool -> its checkpoint folders under --workdir (glob); literal folder names, because
# runner.CHECKPOINT_DIR and sweep.CHECKPOINT_DIR import JAX (tests/test_signals.py holds them)
CHECKPOINTS = {"experiments.train": "checkpoints",
               "experiments.sweep": os.path.join("*", "sweep_checkpoints"),
               "experiments.reproduce": os.path.join("runs", "*", "seed*", "checkpoints")}


def install(tool: str, workdir: str) -> None:
    """The watcher of `tool` with the checkpoint folders under the parsed --workdir (the tools'
    main calls this once the flags are parsed)."""
    cli.install_interrupts(os.path.join(workdir, CHECKPOINTS[tool]))


def workdir_from_argv(argv: list[str]) -> str | None:
    """The value of the last --workdir=X or --workdir X in argv, if any."""
    workdir = None
    for i, arg in enumerate(argv):
        if arg.startswith(("--workdir=", "-workdir=")):
            workdir = arg.split("=", 1)[1]
        elif arg in ("--workdir", "-workdir") and i + 1 < len(argv):
            workdir = argv[i + 1]
    return workdir


def _install() -> None:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    tool = getattr(spec, "name", None)
    if tool not in CHECKPOINTS:
        return
    workdir = workdir_from_argv(sys.argv)
    if workdir is None:
        interrupts.install(lambda: "no workdir was given, so nothing was written")
        stages.reached("import")
        return
    pattern = os.path.join(workdir, CHECKPOINTS[tool])
    interrupts.install(lambda: cli.checkpoints_on_disk(pattern))
    stages.reached("import")


_install()
