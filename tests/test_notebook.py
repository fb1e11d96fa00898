"""The Colab notebook runs (on CPU, shrunk), and the generated docs are up to date."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "p2pl_colab.ipynb"

_RUN_CELLS = """
import json, sys
cells = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for i, source in enumerate(cells):
    exec(compile(source, f"<notebook cell {i}>", "exec"), namespace)
"""


def _source(cell) -> str:
    return "".join(cell["source"])


def test_notebook_code_cells_run_on_cpu_with_a_tiny_config(tmp_path, tmp_path_factory,
                                                           mnist_dir):
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    install = [c for c in code if "install" in c["metadata"].get("tags", [])]
    assert len(install) == 1 and install[0] is code[0]
    assert "REPO_URL =" in _source(install[0]) and "pip" in _source(install[0])
    cells = [_source(c) for c in code[1:]]
    assert not any(line.lstrip().startswith(("!", "%")) for s in cells
                   for line in s.splitlines()), "magics would not run outside IPython"
    (tmp_path / "cells.json").write_text(json.dumps(cells))
    runs = tmp_path / "runs"
    env = dict(os.environ, JAX_PLATFORMS="cpu", P2PL_NO_TFDS="1", MPLBACKEND="Agg",
               P2PL_NOTEBOOK_TINY="1", P2PL_NOTEBOOK_WORKDIR=str(runs),
               JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.getbasetemp()
                                             / "jax_compilation_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    proc = subprocess.run([sys.executable, "-c", _RUN_CELLS, str(tmp_path / "cells.json")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (runs / "mixing_sweep.png").stat().st_size > 10_000
    for scheme in ("data_size", "metropolis"):
        summary = json.loads((runs / scheme / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["rounds_run"] == 2
        assert len((runs / scheme / "metrics.jsonl").read_text().splitlines()) == 2
        assert scheme in proc.stdout   # the summary table


def test_config_reference_is_up_to_date():
    spec = importlib.util.spec_from_file_location("gen_config_reference",
                                                  REPO / "scripts" / "gen_config_reference.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    committed = (REPO / "docs" / "config_reference.md").read_text()
    assert committed == gen.render(), (
        "docs/config_reference.md is stale: run python scripts/gen_config_reference.py")
    # every field is documented
    assert "| — |" not in committed
