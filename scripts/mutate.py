"""Mutation testing of p2pl_jax's core modules with a small AST mutator of our own.

Each mutant is one small change of one module's source (an operator swapped, a constant changed,
a branch of jnp.where swapped, ...). It is written into an isolated copy of the repository and
the module's fast test selection is run there with pytest; the mutant is *killed* when a test
fails, *survives* when they all pass, and counts as killed by *timeout* when the run exceeds the
per-mutant limit (reported separately). A surviving mutant is a change no test notices.

Why not mutmut: its trampolines and forked workers fit badly with jax.jit (traced once, cached)
and JAX's threads, so every mutant here runs in a fresh pytest process instead.

  scripts/mutation.sh --list                      # the mutants of every core module
  scripts/mutation.sh rng sync                    # run (resumes from the results file)
  scripts/mutation.sh --jobs 2 network            # two mutants at a time (one copy each)
  scripts/mutation.sh --only sync:58:47 --rerun   # one mutant again
  scripts/mutation.sh --report docs_table         # markdown summary of the results file

Mutation operators: comparison swaps (< <=, > >=, == !=, < >), and/or and & | swaps, removal
of `not` / `~` / unary minus, arithmetic swaps (+ -, * /, // %, ** to *), numeric constants
(0 -> 1, 1 -> 0, n -> n + 1), True/False flips, any/all, maximum/minimum, max/min and
argmax/argmin swaps (functions and methods), jnp.where(c, a, b) -> where(c, b, a), and removal
of an accumulation (`x = x + y` -> `x = x`, `x += y` -> `pass`).

Not mutated: docstrings and other strings, type annotations, default values of arguments and
dataclass fields, decorators, `raise` and `assert` statements, the condition of an `if` whose
body only raises (error checking), f-strings, logging/print/warnings calls, check_choice /
check_range calls, `__all__`, and any line marked `# pragma: no mutate`. Nor is plumbing, whose
mutants only crash or cannot change a number: constants used as subscripts (x[0], x[:, 1:]) or
as keyword values (axis=-1, keepdims=True), the arguments of shape functions (reshape,
broadcast_to, zeros, ...), performance keywords (unroll=, precision=), the guard of a safe
division `where(c, x / where(c, d, 1.0), y)`, and the functions and lines in SKIP_FUNCTIONS and
SKIP_LINES below.

Each mutant has an id module:line:column (a letter is appended for a second mutant at the same
spot), stable as long as the module's lines do not move; a run result is reused only while the
recorded original and mutated source lines still match.

Results are JSON lines (default runs/mutation/mutation_results.jsonl, git-ignored); a mutant
already there with the same id and the same source change is skipped unless --rerun. Mutants a
human has judged equivalent (no test could kill them) are listed in docs/mutation_equivalent.txt
and excluded from the score.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "p2pl_jax"
MODULES = ("mixing", "consensus", "network", "sync", "rng", "local_update", "simulation",
           "metrics", "recorder", "partition")
DEFAULT_OUT = REPO / "runs" / "mutation" / "mutation_results.jsonl"
DEFAULT_JAX_CACHE = REPO / "runs" / "mutation" / "jax_cache"
JAX_CACHE_MAX_BYTES = 2 << 30   # emptied at the start of a campaign when larger
EQUIVALENT_FILE = REPO / "docs" / "mutation_equivalent.txt"
PRAGMA = "pragma: no mutate"

# Fast test selection of each module: pytest arguments, each a test file or a node id
# (file::test or file::test[param]); "-k" takes the next entry as an expression (it then
# filters the whole selection). Files or tests that do not exist (yet) are skipped at run time.
# Chosen to be the tests that check the module's numbers, and cheap enough for one pytest
# process per mutant; `-x` stops at the first failure, so killed mutants are cheaper still.
_REF = "tests/test_reference_round.py::test_round_equals_independent_reference"
_PROPS = "tests/test_properties.py::test_"
FAST_TESTS: dict[str, list[str]] = {
    "mixing": [
        "tests/test_mixing.py",
        f"{_PROPS}mixing_matrix_matches_reference",
        f"{_PROPS}doubly_stochastic_preserves_the_average",
        f"{_PROPS}neighbour_weights_match_dense_reference",
        f"{_PROPS}stationary_distribution_is_a_fixed_point",
        f"{_PROPS}stationary_distribution_data_size_closed_form",
        f"{_PROPS}spectral_info_symmetric",
        "tests/test_consensus.py::test_dense_and_gather_equal_numpy",
        "tests/test_consensus.py::test_doubly_stochastic_preserves_average",
    ],
    "consensus": [
        "tests/test_consensus.py",
        "tests/test_network.py::test_delay_returns_exactly_the_parameters_from_d_rounds_before",
        f"{_REF}[fixed-delay-2]",
        f"{_REF}[random-delay-dropouts-metropolis]",
        f"{_REF}[asym-links-metropolis-mix-gather]",
    ],
    "network": [
        "tests/test_fault_statistics.py",
        "tests/test_network.py::test_failure_probability_extremes_and_rate",
        "tests/test_network.py::test_bursts_switch_the_round_probability",
        "tests/test_network.py::test_dropped_device_keeps_its_parameters",
        "tests/test_network.py::test_delay_returns_exactly_the_parameters_from_d_rounds_before",
        "tests/test_network.py::test_time_varying_graph_changes_each_round",
        "tests/test_network.py::test_links_up_fraction_of_a_graph_without_links_is_zero",
        f"{_REF}[sym-links-2-epochs]",
        f"{_REF}[bursts-asym]",
        f"{_REF}[time-varying-rgg-links]",
        f"{_REF}[time-varying-er-asym-dropouts]",
        f"{_REF}[random-delay-dropouts-metropolis]",
    ],
    "sync": [
        "tests/test_sync.py",
        "tests/test_simulation.py::test_max_norm_sync_holds_largest_init",
    ],
    "rng": [
        "tests/test_fault_statistics.py::test_rng_derivation_is_the_documented_one",
        "tests/test_fault_statistics.py::test_rng_streams_distinct_and_uncorrelated",
        "tests/test_reference_round.py",
    ],
    "local_update": [
        f"{_REF}[sym-links-2-epochs]",
        f"{_REF}[fedavg-reset-2-epochs]",
        f"{_REF}[local-dropouts-2-epochs]",
        "tests/test_reference_round.py::test_device_blocks_give_the_same_round",
        "tests/test_simulation.py::test_round_equals_python_reference",
        "tests/test_simulation.py::test_local_is_training_alone_and_sync_none_is_independent",
        "tests/test_simulation.py::test_centralized_is_one_model_on_all_data",
        "tests/test_simulation.py::test_a_device_without_data_idles_and_the_loss_stays_finite",
    ],
    "simulation": [
        "tests/test_reference_round.py",
        "tests/test_simulation.py",
        "tests/test_consensus.py::test_backend_resolution",
        "tests/test_consensus.py::test_global_backend_equals_dense_in_simulator",
        "tests/test_network.py::test_participation_weights_with_nobody_online_keep_pi",
    ],
    "metrics": [
        "tests/test_metrics.py",
    ],
    "recorder": [
        "tests/test_recorder.py",
        "tests/test_eval_backfill.py",
        "tests/test_simulation.py::test_eval_after_local_through_the_runner",
        "tests/test_checkpoint.py::test_divergence_stops_with_round_and_cause_keeping_last_good_checkpoint",
        "tests/test_cli.py::test_smoke_run_writes_outputs",
    ],
    "partition": [
        "tests/test_partition.py",
        f"{_PROPS}partition_invariants",
        f"{_PROPS}shards_are_pure_when_classes_fill_whole_shards",
        f"{_PROPS}skew_fractions_apportioned",
        f"{_PROPS}one_device_fraction",
        f"{_PROPS}partition_stats_and_padding",
        f"{_PROPS}partition_rejects_too_few_samples",
    ],
}

# Pure plumbing that is not mutated: functions (qualified names) and lines (regexes) per module.
# Multi-device sharding (tested on several XLA devices only), ahead-of-time compilation and
# timing, sweep grouping keys, and the wording of error messages.
SKIP_FUNCTIONS: dict[str, set[str]] = {
    "simulation": {"Simulator.shard", "Simulator.compile"},
    "metrics": {"Evaluator.compile"},
    "recorder": {"Recorder.summary"},
}
SKIP_LINES: dict[str, list[str]] = {
    "simulation": [r"local_update_key"],
    "recorder": [r"eval_time|= self\.clock\(\)", r"^\s*when = "],
}

# Copied into the isolated repository (the rest of the working tree is, minus these).
_COPY_EXCLUDE_TOP = {".venv", "runs", ".git", "build", ".whl", ".gpu_data", ".pytest_cache",
                     ".ruff_cache", ".hypothesis"}
_COPY_EXCLUDE_ANY = {"__pycache__", ".ipynb_checkpoints"}

# A pytest plugin written into each copy: points JAX's persistent compilation cache at the shared
# directory (some test modules set their own per-process one at import; the cache is shared across
# mutant runs only if it is reset after collection) and records which file each core module was
# imported from, so a run that tested the wrong p2pl_jax is an error, never a survivor.
_PLUGIN_NAME = "_p2pl_mutation_plugin"
_PLUGIN = '''"""Written by scripts/mutate.py into its copy of the repository; not part of it."""
import json
import os
import sys


def pytest_collection_finish(session):
    path = os.environ.get("P2PL_MUTATION_JAX_CACHE")
    if not path or "jax" not in sys.modules:
        return
    import jax
    from jax._src import compilation_cache

    if jax.config.jax_compilation_cache_dir != path:
        jax.config.update("jax_compilation_cache_dir", path)
        compilation_cache.reset_cache()


def pytest_sessionfinish(session, exitstatus):
    marker = os.environ.get("P2PL_MUTATION_MARKER")
    if marker:
        files = {name: getattr(mod, "__file__", None) for name, mod in list(sys.modules.items())
                 if name == "p2pl_jax" or name.startswith("p2pl_jax.")}
        with open(marker, "w") as f:
            json.dump(files, f)
'''


# ------------------------------------------------------------------------------- the mutants


@dataclasses.dataclass
class Mutant:
    module: str
    line: int            # 1-based line of the mutated token
    col: int             # 0-based character column of the mutated token
    kind: str            # e.g. "compare <= -> <", "constant 1 -> 0", "where swap"
    original: str        # the original source line(s), whitespace collapsed
    mutated: str         # the same line(s) after the mutation
    edits: tuple         # ((start, end, replacement bytes), ...) byte offsets into the source
    id: str = ""

    def apply(self, source: bytes) -> bytes:
        out = source
        for start, end, text in sorted(self.edits, reverse=True):
            out = out[:start] + text + out[end:]
        return out

    def public(self) -> dict:
        return {"id": self.id, "module": self.module, "line": self.line, "col": self.col,
                "kind": self.kind, "original": self.original, "mutated": self.mutated}


_CMP_TEXT = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
             ast.NotEq: "!="}
_CMP_SWAPS = {ast.Lt: (ast.LtE, ast.Gt), ast.LtE: (ast.Lt, ast.GtE), ast.Gt: (ast.GtE, ast.Lt),
              ast.GtE: (ast.Gt, ast.LtE), ast.Eq: (ast.NotEq,), ast.NotEq: (ast.Eq,)}
_BIN_TEXT = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
             ast.Mod: "%", ast.Pow: "**", ast.BitAnd: "&", ast.BitOr: "|"}
_BIN_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
              ast.FloorDiv: ast.Mod, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult,
              ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd}
_BOOL_TEXT = {ast.And: "and", ast.Or: "or"}
# Function (jnp.any, np.maximum, ...) and method (x.max(), ...) names swapped at a call.
_ATTR_SWAPS = {"any": "all", "all": "any", "maximum": "minimum", "minimum": "maximum",
               "argmax": "argmin", "argmin": "argmax", "max": "min", "min": "max"}
_NAME_SWAPS = {"any": "all", "all": "any", "max": "min", "min": "max"}
_QUIET_CALLS = {"print", "check_choice", "check_range"}
# Calls whose arguments are shapes or layouts are plumbing (a changed one just crashes), as are
# constants used as subscripts (x[0], x[:, 1:]) or as keyword values (axis=1, keepdims=True) and
# keywords that only tune performance or placement.
_PLUMBING_KEYWORDS = {"unroll", "precision", "donate_argnums", "static_argnums",
                      "in_shardings", "out_shardings", "axis_of"}
_SHAPE_CALLS = {"reshape", "broadcast_to", "zeros", "ones", "empty", "full", "tile",
                "transpose", "expand_dims", "squeeze", "swapaxes", "moveaxis"}
_QUIET_RECEIVERS = {"logging", "logger", "log", "warnings", "absl_logging"}


def _call_name(func: ast.expr) -> tuple[str, str]:
    """(receiver, name) of a call's function: ("jnp", "where"), ("", "print"), ..."""
    if isinstance(func, ast.Name):
        return "", func.id
    if isinstance(func, ast.Attribute):
        base = func.value
        recv = base.id if isinstance(base, ast.Name) else (
            base.attr if isinstance(base, ast.Attribute) else "")
        return recv, func.attr
    return "", ""


class _Finder(ast.NodeVisitor):
    """Collects the mutants of one module's source (bytes, so offsets match ast's UTF-8 ones)."""

    def __init__(self, module: str, source: bytes):
        self.module = module
        self.src = source
        self.lines = source.split(b"\n")
        self.starts = [0]
        for line in self.lines[:-1]:
            self.starts.append(self.starts[-1] + len(line) + 1)
        skip_lines = [re.compile(r.encode()) for r in SKIP_LINES.get(module, [])]
        self.no_mutate = {i + 1 for i, line in enumerate(self.lines)
                          if PRAGMA.encode() in line or any(r.search(line) for r in skip_lines)}
        self.skip_functions = SKIP_FUNCTIONS.get(module, set())
        self.scope: list[str] = []
        self.found: list[Mutant] = []
        self.plumbing = 0   # > 0 inside subscripts: constants are not mutated
        self.layout = 0     # > 0 inside shape arguments: nothing is mutated
        self.guards: set[int] = set()   # ids of nodes to visit as layout

    def visit(self, node: ast.AST) -> None:
        if id(node) in self.guards:
            self.guards.discard(id(node))
            self.visit_layout(node)
        else:
            super().visit(node)

    # ---- positions and edits
    def off(self, line: int, col: int) -> int:
        return self.starts[line - 1] + col

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.off(node.lineno, node.col_offset),
                self.off(node.end_lineno, node.end_col_offset))

    def text(self, node: ast.AST) -> bytes:
        start, end = self.span(node)
        return self.src[start:end]

    def line_col(self, offset: int) -> tuple[int, int]:
        lo, hi = 0, len(self.starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        prefix = self.src[self.starts[lo]:offset]
        return lo + 1, len(prefix.decode("utf-8", "replace"))

    def find_token(self, start: int, end: int, token: str) -> int | None:
        """Offset of `token` in src[start:end], the gap between two operands: only blanks,
        brackets, line continuations and comments may come before it."""
        i, tok = start, token.encode()
        while i < end:
            c = self.src[i:i + 1]
            if c in b" \t\r\n\\()[]":
                i += 1
            elif c == b"#":
                nl = self.src.find(b"\n", i, end)
                i = end if nl < 0 else nl + 1
            else:
                if self.src[i:i + len(tok)] != tok:
                    return None
                after = self.src[i + len(tok):i + len(tok) + 1]
                if tok.isalpha() and (after.isalnum() or after == b"_"):
                    return None
                if not tok.isalpha() and after in (b"=", b"<", b">", b"*", b"/") \
                        and not token.endswith("="):
                    return None
                return i
        return None

    def add(self, kind: str, edits: list[tuple[int, int, bytes]]) -> None:
        if not edits or self.layout:
            return
        first = min(e[0] for e in edits)
        line, col = self.line_col(first)
        last_line, _ = self.line_col(max(e[1] for e in edits))
        if any(n in self.no_mutate for n in range(line, last_line + 1)):
            return
        lo = self.starts[line - 1]
        hi = self.starts[last_line - 1] + len(self.lines[last_line - 1])
        region = self.src[lo:hi]
        mutated = region
        for start, end, repl in sorted(edits, reverse=True):
            mutated = mutated[:start - lo] + repl + mutated[end - lo:]
        squash = lambda b: " ".join(b.decode("utf-8", "replace").split())
        if mutated == region:
            return
        self.found.append(Mutant(self.module, line, col, kind, squash(region), squash(mutated),
                                 tuple(edits)))

    def visit_plumbing(self, node: ast.AST) -> None:
        self.plumbing += 1
        try:
            self.visit(node)
        finally:
            self.plumbing -= 1

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self.visit(node.value)
        self.visit_plumbing(node.slice)

    def visit_layout(self, node: ast.AST) -> None:
        self.layout += 1
        try:
            self.visit(node)
        finally:
            self.layout -= 1

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg in _PLUMBING_KEYWORDS:
            return
        v = node.value
        if isinstance(v, ast.UnaryOp) and isinstance(v.op, ast.USub):
            v = v.operand
        if isinstance(v, ast.Constant):   # axis=-1, keepdims=True, kind="stable", ...
            return
        self.visit(node.value)

    # ---- skipped code
    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant):   # docstrings and bare strings
            return
        self.generic_visit(node)

    def visit_Raise(self, node: ast.Raise) -> None:
        return

    def visit_Assert(self, node: ast.Assert) -> None:
        return

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        return

    def visit_Import(self, node: ast.Import) -> None:
        return

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        return

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        if ".".join(self.scope) not in self.skip_functions:
            for stmt in node.body:     # not decorators, annotations or default values
                self.visit(stmt)
        self.scope.pop()

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.visit(node.body)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        for stmt in node.body:
            if not isinstance(stmt, ast.AnnAssign):   # not dataclass fields and their defaults
                self.visit(stmt)
        self.scope.pop()

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_If(self, node: ast.If) -> None:
        raises_only = all(isinstance(s, ast.Raise) for s in node.body) and not node.orelse
        if not raises_only:
            self.visit(node.test)
        for stmt in node.body + node.orelse:
            self.visit(stmt)

    def visit_Assign(self, node: ast.Assign) -> None:
        names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        if "__all__" in names:
            return
        value = node.value
        if (len(node.targets) == 1 and len(names) == 1 and isinstance(value, ast.BinOp)
                and isinstance(value.left, ast.Name) and value.left.id == names[0]
                and type(value.op) in (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            start, end = self.span(value)
            self.add("accumulation removed", [(start, end, names[0].encode())])
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        op = type(node.op)
        if op in _BIN_SWAPS:
            gap = self.find_token(self.span(node.target)[1], self.span(node.value)[0],
                                  _BIN_TEXT[op] + "=")
            if gap is not None:
                new = _BIN_TEXT[_BIN_SWAPS[op]] + "="
                self.add(f"augmented {_BIN_TEXT[op]}= -> {new}",
                         [(gap, gap + len(_BIN_TEXT[op]) + 1, new.encode())])
        start, end = self.span(node)
        self.add("accumulation removed", [(start, end, b"pass")])
        self.visit(node.value)

    # ---- mutated code
    def visit_Compare(self, node: ast.Compare) -> None:
        operands = [node.left, *node.comparators]
        for i, op in enumerate(node.ops):
            if type(op) not in _CMP_SWAPS:
                continue
            old = _CMP_TEXT[type(op)]
            gap = self.find_token(self.span(operands[i])[1], self.span(operands[i + 1])[0], old)
            if gap is None:
                continue
            for new_op in _CMP_SWAPS[type(op)]:
                new = _CMP_TEXT[new_op]
                self.add(f"compare {old} -> {new}", [(gap, gap + len(old), new.encode())])
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        op = type(node.op)
        strings = any(isinstance(x, ast.JoinedStr) or (isinstance(x, ast.Constant)
                                                       and isinstance(x.value, str | bytes))
                      for x in (node.left, node.right))
        if op in _BIN_SWAPS and not strings:
            old = _BIN_TEXT[op]
            gap = self.find_token(self.span(node.left)[1], self.span(node.right)[0], old)
            if gap is not None:
                new = _BIN_TEXT[_BIN_SWAPS[op]]
                self.add(f"arithmetic {old} -> {new}", [(gap, gap + len(old), new.encode())])
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        old = _BOOL_TEXT[type(node.op)]
        new = "or" if old == "and" else "and"
        edits = []
        for a, b in zip(node.values, node.values[1:]):
            gap = self.find_token(self.span(a)[1], self.span(b)[0], old)
            if gap is None:
                edits = []
                break
            edits.append((gap, gap + len(old), new.encode()))
        self.add(f"boolean {old} -> {new}", edits)
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        names = {ast.Not: "not", ast.Invert: "~", ast.USub: "-"}
        constant = isinstance(node.operand, ast.Constant)
        if type(node.op) in names and not (constant and self.plumbing):
            start, end = self.span(node)
            self.add(f"{names[type(node.op)]} removed",
                     [(start, end, b"(" + self.text(node.operand) + b")")])
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if self.plumbing:
            return
        v = node.value
        if isinstance(v, bool):
            start, end = self.span(node)
            self.add(f"{v} -> {not v}", [(start, end, str(not v).encode())])
        elif isinstance(v, int | float) and not isinstance(v, complex):
            new = (type(v)(1) if v == 0 else type(v)(0) if v == 1 else v + 1)
            start, end = self.span(node)
            self.add(f"constant {v!r} -> {new!r}", [(start, end, repr(new).encode())])

    def visit_Call(self, node: ast.Call) -> None:
        recv, name = _call_name(node.func)
        if name in _QUIET_CALLS or recv in _QUIET_RECEIVERS:
            return
        if isinstance(node.func, ast.Attribute) and name in _ATTR_SWAPS:
            end = self.off(node.func.end_lineno, node.func.end_col_offset)
            new = _ATTR_SWAPS[name]
            self.add(f"call .{name} -> .{new}", [(end - len(name), end, new.encode())])
        elif isinstance(node.func, ast.Name) and name in _NAME_SWAPS:
            start, end = self.span(node.func)
            new = _NAME_SWAPS[name]
            self.add(f"call {name} -> {new}", [(start, end, new.encode())])
        args = node.args
        if (name == "where" and len(args) == 3 and not node.keywords
                and not any(isinstance(a, ast.Starred) for a in args)
                and self.text(args[1]) != self.text(args[2])):
            (s1, e1), (s2, e2) = self.span(args[1]), self.span(args[2])
            self.add("where branches swapped",
                     [(s1, e1, self.text(args[2])), (s2, e2, self.text(args[1]))])
        self.visit(node.func)
        if name == "where":
            self.guards |= self._division_guards(node)
        for a in node.args:
            if name in _SHAPE_CALLS:
                self.visit_layout(a)
            else:
                self.visit(a)
        for k in node.keywords:
            self.visit(k)


    def _division_guards(self, node: ast.Call) -> set[int]:
        """ids of the args of `where(c, x / where(c, d, 1.0), y)` that are the inner guard
        `where(c, d, 1.0)`: it only keeps the unselected lanes finite, so its mutants are
        equivalent. They are visited as layout (not mutated)."""
        if len(node.args) != 3:
            return set()
        cond = self.text(node.args[0])
        out = set()
        for sub in ast.walk(node.args[1]):
            if (isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Div)
                    and isinstance(sub.right, ast.Call)
                    and _call_name(sub.right.func)[1] == "where" and sub.right.args
                    and self.text(sub.right.args[0]) == cond):
                out.add(id(sub.right))
        return out


def module_path(root: Path, module: str) -> Path:
    return root / PACKAGE / f"{module}.py"


def find_mutants(module: str, root: Path = REPO) -> list[Mutant]:
    """All mutants of p2pl_jax/<module>.py, deduplicated, ordered by position, with ids."""
    source = module_path(root, module).read_bytes()
    finder = _Finder(module, source)
    finder.visit(ast.parse(source))
    seen, out = set(), []
    for m in sorted(finder.found, key=lambda m: (m.line, m.col)):
        new = m.apply(source)
        if new in seen or new == source:
            continue
        try:
            ast.parse(new)
        except SyntaxError:
            continue
        seen.add(new)
        out.append(m)
    counts: dict[tuple[int, int], int] = {}
    for m in out:
        k = counts[(m.line, m.col)] = counts.get((m.line, m.col), 0) + 1
        m.id = f"{module}:{m.line}:{m.col}" + ("" if k == 1 else chr(ord("a") + k - 1))
    return out


# -------------------------------------------------------------------------- test selection


def _test_exists(root: Path, arg: str) -> bool:
    path, _, rest = arg.partition("::")
    file = root / path
    if not file.exists():
        return False
    if not rest:
        return True
    func = rest.split("::")[-1].split("[")[0]
    return re.search(rf"^\s*def {re.escape(func)}\(", file.read_text(), re.M) is not None


def selection(module: str, override: list[str] | None, root: Path) -> list[str]:
    """The pytest arguments of `module` (or `override`), without missing files or tests."""
    args = list(override) if override is not None else list(FAST_TESTS[module])
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a in ("-k", "-m") and i + 1 < len(args):
            out += [a, args[i + 1]]
            i += 2
            continue
        if a.startswith("-") or _test_exists(root, a):
            out.append(a)
        else:
            print(f"  ({module}: skipping missing test {a})", file=sys.stderr)
        i += 1
    return out


# --------------------------------------------------------------------------------- running


def copy_repo(dest: Path) -> Path:
    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in _COPY_EXCLUDE_ANY}
        if Path(folder) == REPO:
            skip |= {n for n in names if n in _COPY_EXCLUDE_TOP}
        return skip

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    (dest / f"{_PLUGIN_NAME}.py").write_text(_PLUGIN)
    return dest


@dataclasses.dataclass
class RunResult:
    status: str          # killed | survived | timeout | error
    seconds: float
    returncode: int | None
    detail: str          # first failing test, or why it is an error


class Worker:
    """One isolated copy of the repository; runs one pytest at a time in it."""

    def __init__(self, root: Path, jax_cache: Path | None):
        self.root = root
        self.jax_cache = jax_cache
        self.marker = root / ".mutation_marker.json"

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.root)]
                                            + [p for p in [env.get("PYTHONPATH")] if p])
        env["PYTHONDONTWRITEBYTECODE"] = "1"   # a same-size mutant in the same second: stale pyc
        env.setdefault("JAX_PLATFORMS", "cpu")
        env["P2PL_NO_TFDS"] = "1"
        shared = REPO.parent / "shared" / "data"
        if "P2PL_DATA_DIR" not in env and shared.is_dir():
            env["P2PL_DATA_DIR"] = str(shared)
        env["P2PL_MUTATION_MARKER"] = str(self.marker)
        if self.jax_cache is not None:
            env["JAX_COMPILATION_CACHE_DIR"] = str(self.jax_cache)
            env["P2PL_MUTATION_JAX_CACHE"] = str(self.jax_cache)
            # Every compilation is cached (most here take well under JAX's default 1 s, and
            # the unmutated functions of a test file are then compiled once per campaign):
            # this halves the run time of test_sync. (No jax_compilation_cache_max_size: it
            # needs the filelock package; run_campaign empties a cache grown too large.)
            env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
            env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
        else:
            env.pop("JAX_COMPILATION_CACHE_DIR", None)
        return env

    def pytest(self, module: str, tests: list[str], timeout: float,
               source: bytes | None = None) -> RunResult:
        """Runs `tests` with p2pl_jax/<module>.py replaced by `source` (then restored)."""
        path = module_path(self.root, module)
        original = path.read_bytes()
        self.marker.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               "-p", _PLUGIN_NAME, "--no-header", *tests]
        t0 = time.monotonic()
        try:
            if source is not None:
                path.write_bytes(source)
            proc = subprocess.Popen(cmd, cwd=self.root, env=self.env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                return RunResult("timeout", time.monotonic() - t0, None,
                                 f"no result within {timeout:.0f} s")
        finally:
            path.write_bytes(original)
        seconds = time.monotonic() - t0
        text = out.decode("utf-8", "replace")
        rc = proc.returncode
        where = self._imported_from(module)
        if where is not None and not where.startswith(str(self.root)):
            return RunResult("error", seconds, rc, f"{PACKAGE}.{module} imported from {where}")
        if rc == 0:
            if where is None:
                return RunResult("error", seconds, rc,
                                 f"the tests passed without importing {PACKAGE}.{module}")
            return RunResult("survived", seconds, rc, "")
        # 1 tests failed, 2 collection (e.g. import) failed, 3 internal error; 4 is a usage
        # error, but also what a node id gives when its module failed to import.
        collection_error = rc == 4 and re.search(r"^ERROR \S+\.py", text, re.M)
        if rc in (1, 2, 3) or collection_error:
            return RunResult("killed", seconds, rc, _first_failure(text))
        tail = " | ".join(text.strip().splitlines()[-3:])
        return RunResult("error", seconds, rc, f"pytest exit {rc}: {tail}"[:500])

    def _imported_from(self, module: str) -> str | None:
        try:
            files = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None
        return files.get(f"{PACKAGE}.{module}")


def _first_failure(text: str) -> str:
    for line in text.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line[:300]
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[:300]


class Results:
    """The JSON lines results file: latest record of each mutant id; appends are locked."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.latest: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if "id" in rec:
                    self.latest[rec["id"]] = rec

    def done(self, m: Mutant) -> dict | None:
        """The record of this very mutant (same id and same change), if it has a final one."""
        rec = self.latest.get(m.id)
        if rec and rec.get("original") == m.original and rec.get("mutated") == m.mutated \
                and rec.get("status") in ("killed", "survived", "timeout"):
            return rec
        return None

    def add(self, rec: dict) -> None:
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            self.latest[rec["id"]] = rec


def run_pool(workers: list[Worker], tasks: Iterable[Callable[[Worker], None]]) -> None:
    """Runs each task on some free worker, len(workers) at a time."""
    q: queue.Queue = queue.Queue()
    for t in tasks:
        q.put(t)
    errors: list[BaseException] = []

    def loop(w: Worker) -> None:
        while not errors:
            try:
                task = q.get_nowait()
            except queue.Empty:
                return
            try:
                task(w)
            except BaseException as e:   # noqa: BLE001 - reported after the pool stops
                errors.append(e)

    threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def sanity(w: Worker, module: str, tests: list[str], limit: float) -> float:
    """The original module must pass its tests in the copy and a broken one must fail them
    (proves the copy's module is the one tested). Returns the baseline seconds."""
    base = w.pytest(module, tests, limit)
    if base.status != "survived":
        raise SystemExit(f"{module}: the unmutated module does not pass its tests in the copy "
                         f"({base.status}: {base.detail}); fix the tests or pass --tests")
    source = module_path(w.root, module).read_bytes()
    canary = source + b"\nraise RuntimeError('p2pl mutation canary')\n"
    broken = w.pytest(module, tests, limit, canary)
    if broken.status != "killed":
        raise SystemExit(f"{module}: a module that raises at import was not detected "
                         f"({broken.status}: {broken.detail}); the copy is not what is tested")
    return base.seconds


def run_campaign(args, mutants: dict[str, list[Mutant]], results: Results) -> None:
    pending = {mod: [m for m in ms if args.rerun or not results.done(m)]
               for mod, ms in mutants.items()}
    if args.limit is not None:
        left = args.limit
        for mod in pending:
            pending[mod], left = pending[mod][:max(left, 0)], left - len(pending[mod])
    pending = {mod: ms for mod, ms in pending.items() if ms}
    total = sum(len(ms) for ms in pending.values())
    if not total:
        print("nothing to run (all selected mutants have results; --rerun to run them again)")
        return
    override = shlex.split(args.tests) if args.tests is not None else None
    jax_cache = None if args.jax_cache == "none" else Path(args.jax_cache).resolve()
    if jax_cache is not None:
        size = sum(f.stat().st_size for f in jax_cache.rglob("*") if f.is_file()) \
            if jax_cache.is_dir() else 0
        if size > JAX_CACHE_MAX_BYTES:
            print(f"emptying the JAX compilation cache {jax_cache} ({size / 2**30:.1f} GiB)")
            shutil.rmtree(jax_cache, ignore_errors=True)
        jax_cache.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="p2pl-mutate-", dir=args.workdir))
    try:
        workers = [Worker(copy_repo(base / f"w{j}"), jax_cache) for j in range(args.jobs)]
        tests = {mod: selection(mod, override, workers[0].root) for mod in pending}
        for mod, t in tests.items():
            if not [a for a in t if not a.startswith("-")]:
                raise SystemExit(f"{mod}: no tests selected")
        limits: dict[str, float] = {}

        def check(mod: str) -> Callable[[Worker], None]:
            def task(w: Worker) -> None:
                if args.no_sanity:
                    limits[mod] = args.timeout or 600.0
                    return
                secs = sanity(w, mod, tests[mod], args.timeout or 900.0)
                limits[mod] = args.timeout or max(60.0, 3.0 * secs + 30.0)
                print(f"{mod}: sanity ok (original passes in {secs:.1f} s, broken module is "
                      f"caught); timeout {limits[mod]:.0f} s; tests: {' '.join(tests[mod])}",
                      flush=True)
            return task

        run_pool(workers, [check(mod) for mod in pending])
        counter = iter(range(1, total + 1))
        lock = threading.Lock()

        def mutate(m: Mutant) -> Callable[[Worker], None]:
            def task(w: Worker) -> None:
                source = module_path(w.root, m.module).read_bytes()
                r = w.pytest(m.module, tests[m.module], limits[m.module], m.apply(source))
                rec = {**m.public(), "status": r.status, "seconds": round(r.seconds, 2),
                       "returncode": r.returncode, "detail": r.detail,
                       "tests": tests[m.module], "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
                results.add(rec)
                with lock:
                    print(f"[{next(counter)}/{total}] {m.id:<22} {r.status:<8} "
                          f"{r.seconds:6.1f} s  {m.kind}: {m.mutated}", flush=True)
            return task

        run_pool(workers, [mutate(m) for ms in pending.values() for m in ms])
    finally:
        if args.keep_work:
            print(f"copies kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------------- reports


def read_equivalent(path: Path = EQUIVALENT_FILE) -> dict[str, str]:
    """{mutant id: reason} from the equivalent-mutants file (`id reason`, # comments)."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                ident, _, reason = line.partition(" ")
                out[ident] = reason.strip()
    return out


def docs_table(mutants: dict[str, list[Mutant]], results: Results,
               equivalent: dict[str, str]) -> str:
    rows = ["| module | mutants | run | killed | timeouts | survived | equivalent | errors "
            "| s/mutant | score |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    survivors, totals = [], dict.fromkeys(("n", "run", "k", "t", "s", "eq", "err"), 0)
    secs: list[float] = []
    for mod, ms in mutants.items():
        c = dict.fromkeys(totals, 0)
        mod_secs = []
        c["n"] = len(ms)
        for m in ms:
            rec = results.latest.get(m.id)
            if not rec or rec.get("original") != m.original or rec.get("mutated") != m.mutated:
                continue
            status = rec.get("status")
            if status == "error":
                c["err"] += 1
                continue
            c["run"] += 1
            mod_secs.append(float(rec.get("seconds", 0.0)))
            if m.id in equivalent:
                c["eq"] += 1
            elif status == "killed":
                c["k"] += 1
            elif status == "timeout":
                c["t"] += 1
            elif status == "survived":
                c["s"] += 1
                survivors.append(m)
        for k in totals:
            totals[k] += c[k]
        secs += mod_secs
        rows.append(_row(mod, c, mod_secs))
    rows.append(_row("**all**", totals, secs))
    out = ["Mutation score = (killed + timeouts) / (run - equivalent); a timeout counts as "
           "killed.", "", *rows, ""]
    if survivors:
        out += ["Surviving mutants:", ""]
        out += [f"- `{m.id}` ({m.kind}): `{m.original}` -> `{m.mutated}`" for m in survivors]
    else:
        out.append("No surviving mutants.")
    return "\n".join(out)


def _row(name: str, c: dict, secs: list[float]) -> str:
    denom = c["run"] - c["eq"]
    score = f"{100.0 * (c['k'] + c['t']) / denom:.1f}%" if denom else "-"
    mean = f"{sum(secs) / len(secs):.1f}" if secs else "-"
    return (f"| {name} | {c['n']} | {c['run']} | {c['k']} | {c['t']} | {c['s']} | {c['eq']} "
            f"| {c['err']} | {mean} | {score} |")


# ------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("modules", nargs="*", metavar="MODULE",
                   help=f"core modules to mutate (default all): {', '.join(MODULES)}")
    p.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    p.add_argument("--only", nargs="+", metavar="ID", help="only these mutant ids")
    p.add_argument("--limit", type=int, help="run at most this many (pending) mutants")
    p.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (default 1)")
    p.add_argument("--tests", help="pytest arguments replacing every module's fast selection, "
                                   "e.g. \"tests/test_sync.py -k diameter\"")
    p.add_argument("--timeout", type=float,
                   help="seconds per mutant (default: 3 x the unmutated run + 30, at least 60)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file (JSON lines)")
    p.add_argument("--rerun", action="store_true", help="run mutants that have results again")
    p.add_argument("--report", choices=["docs_table"],
                   help="print a markdown summary of the results file and exit")
    p.add_argument("--jax-cache", default=str(DEFAULT_JAX_CACHE),
                   help="JAX compilation cache shared by the runs ('none': no cache)")
    p.add_argument("--no-sanity", action="store_true",
                   help="skip the unmutated and the broken-module runs before a module's mutants")
    p.add_argument("--workdir", help="where the repository copies go (default: system temp)")
    p.add_argument("--keep-work", action="store_true", help="keep the repository copies")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    bad = [m for m in args.modules if m not in MODULES]
    if bad:
        p.error(f"unknown module(s) {', '.join(bad)}; allowed: {', '.join(MODULES)}")

    modules = list(dict.fromkeys(args.modules)) or list(MODULES)
    mutants = {mod: find_mutants(mod) for mod in modules}
    if args.only:
        wanted = set(args.only)
        mutants = {mod: [m for m in ms if m.id in wanted] for mod, ms in mutants.items()}
        unknown = wanted - {m.id for ms in mutants.values() for m in ms}
        if unknown:
            p.error(f"unknown mutant ids: {', '.join(sorted(unknown))}")
        mutants = {mod: ms for mod, ms in mutants.items() if ms}
    results = Results(args.out)

    if args.report:
        print(docs_table(mutants, results, read_equivalent()))
        return 0
    if args.list:
        for ms in mutants.values():
            for m in ms:
                rec = results.done(m)
                state = f"  [{rec['status']}]" if rec else ""
                print(f"{m.id:<22} {m.kind:<28} {m.original}\n{'':<22} {'':<28} "
                      f"-> {m.mutated}{state}")
        print()
        for mod, ms in mutants.items():
            print(f"{mod:<14} {len(ms):4d} mutants")
        print(f"{'total':<14} {sum(len(ms) for ms in mutants.values()):4d} mutants")
        return 0
    run_campaign(args, mutants, results)
    print()
    print(docs_table(mutants, results, read_equivalent()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
