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
