"""Lint, format and type checks run as part of the test suite (so CI runs them through the README command)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tokenclean.testing import require

ROOT = Path(__file__).resolve().parents[2]


LINTED = [d for d in ("src", "tests", "benchmarks") if (ROOT / d).is_dir()]


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_lint_and_format() -> None:
    require("ruff")
    lint = run("ruff", "check", *LINTED)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run("ruff", "format", "--check", *LINTED)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_on_src() -> None:
    require("mypy")
    res = run(sys.executable, "-m", "mypy", "src/tokenclean")
    assert res.returncode == 0, res.stdout + res.stderr


def test_cli_help_is_fast_and_lists_commands() -> None:
    res = run(sys.executable, "-X", "importtime", "-m", "tokenclean.cli", "--help")
    assert res.returncode == 0
    assert "prepare" in res.stdout and "inspect" in res.stdout
    assert "import time:" in res.stderr and " torch" not in res.stderr  # no heavy import for --help


MAX_FUNCTION_LINES = 80


def test_functions_are_small_or_say_why() -> None:
    """No function in src/ is longer than 80 lines unless its docstring gives the reason (a line starting
    "Long because")."""
    import ast

    too_long = []
    for path in sorted((ROOT / "src" / "tokenclean").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES and "Long because" not in (ast.get_docstring(node) or ""):
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert too_long == []


def test_no_method_name_is_compared_outside_the_registry() -> None:
    """Traits come from the method registry: no code outside src/tokenclean/methods/ compares a value to a
    registered method's name (``== "profit"``, ``in ("dft", ...)``)."""
    import ast

    from tokenclean import methods

    names = set(methods.names()) - {"base", "random", "warmup", "full"}  # also ordinary words in settings
    found = []
    for path in sorted((ROOT / "src" / "tokenclean").rglob("*.py")):
        if "methods" in path.relative_to(ROOT / "src" / "tokenclean").parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value in names]
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {c.value!r}" for c in consts]
    assert found == []
