"""The benchmarks are collected and each asserts something (issue 24: every benchmark asserts its target)."""

import ast
import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = sorted((ROOT / "benchmarks").glob("*.py"))


def test_pytest_collects_every_benchmark_file():
    """``make benchmarks`` runs ``pytest benchmarks``: before issue 24 the bench_*.py names matched no
    ``python_files`` pattern, and it ran no benchmark at all."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["python_files"]
    assert BENCH
    missed = [f.name for f in BENCH if not any(fnmatch.fnmatch(f.name, p) for p in patterns)]
    assert not missed, missed


def _asserts(node) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def test_every_benchmark_test_asserts():
    """Each ``test_*`` function of benchmarks/ holds an ``assert``, or calls a function of its module that does
    (a printed target is not a check)."""
    silent = []
    for f in BENCH:
        tree = ast.parse(f.read_text())
        checking = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and _asserts(n)}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                calls = {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
                if not _asserts(node) and not calls & checking:
                    silent.append(f"{f.name}::{node.name}")
    assert not silent, silent
