"""Figures are written as PNG and SVG for synthetic data, skipped cleanly without data, and subsampled
deterministically."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tokenclean.report import plots
from tokenclean.report.tables import Column
from tokenclean.report.tokens import TokenArrays

pytestmark = pytest.mark.requires("matplotlib")


def _arrays(n: int = 500, seed: int = 0, kept: bool = True) -> TokenArrays:
    rng = np.random.default_rng(seed)
    base = rng.gamma(2, 1, n).astype(np.float32)
    ref = (base * rng.uniform(0.2, 1.2, n)).astype(np.float32)
    score = base - ref
    keep = score >= np.quantile(score, 0.4) if kept else None
    return TokenArrays(base, ref, score, keep)


def _is_png(p: Path) -> bool:
    return p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000


def _is_svg(p: Path) -> bool:
    head = p.read_text()[:400]
    return "<svg" in head and p.read_text().rstrip().endswith("</svg>")


def test_scatter_and_hist_write_png_and_svg(tmp_path: Path):
    a = _arrays()
    got = plots.plot_scatter(a, tmp_path / "scatter", "t")
    assert [p.name for p in got] == ["scatter.png", "scatter.svg"]
    assert _is_png(got[0]) and _is_svg(got[1])
    got = plots.plot_hist(a, tmp_path / "hist", "t")
    assert _is_png(got[0]) and _is_svg(got[1])
    got = plots.plot_hist(_arrays(kept=False), tmp_path / "hist_nokept", "t", formats=("png",))
    assert [p.name for p in got] == ["hist_nokept.png"]


def test_plots_are_byte_stable(tmp_path: Path):
    a = _arrays()
    p1 = plots.plot_scatter(a, tmp_path / "a", "t", max_points=100, formats=("svg",))[0]
    p2 = plots.plot_scatter(a, tmp_path / "b", "t", max_points=100, formats=("svg",))[0]
    assert p1.read_bytes() == p2.read_bytes()


def test_missing_data_skips_without_writing(tmp_path: Path):
    empty = TokenArrays(None, None, np.zeros(0, np.float32), None)
    assert plots.plot_scatter(None, tmp_path / "s", "t") == []
    assert (
        plots.plot_scatter(TokenArrays(None, None, np.ones(3, np.float32), None), tmp_path / "s", "t") == []
    )
    assert plots.plot_hist(empty, tmp_path / "h", "t") == []
    cols = [Column("mmlu", "MMLU", True), Column("average", "Average", True)]
    assert plots.plot_lines({"fixed": [(0.5, {"mmlu": None})]}, cols, tmp_path / "l", "k", "t") == []
    assert plots.plot_lines({}, cols, tmp_path / "l", "k", "t") == []
    assert list(tmp_path.iterdir()) == []


def test_lines_one_panel_per_metric_with_data(tmp_path: Path):
    cols = [
        Column("mmlu", "MMLU", True, scale=100),
        Column("boolq", "BoolQ", True),
        Column("average", "Average", True),
    ]
    series = {
        "Fixed-model": [(k, {"mmlu": 0.5 + k / 10, "boolq": None, "average": 0.5}) for k in (0.3, 0.6, 0.9)],
        "RHO": [(0.6, {"mmlu": 0.55, "boolq": None, "average": 0.52})],
    }
    got = plots.plot_lines(series, cols, tmp_path / "sweep", "ratio", "Sweep")
    assert _is_png(got[0]) and _is_svg(got[1])


def test_subsample_is_deterministic_and_bounded():
    a, b = plots.subsample(100_000, 20_000, seed=0), plots.subsample(100_000, 20_000, seed=0)
    assert len(a) == 20_000 and np.array_equal(a, b) and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, plots.subsample(100_000, 20_000, seed=1))
    assert np.array_equal(plots.subsample(10, 20_000), np.arange(10))


def test_matplotlib_is_imported_lazily():
    import subprocess

    code = "import sys, tokenclean.report.plots, tokenclean.report.build; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
