"""The paper's figures from a run's data, as PNG and SVG (matplotlib's object API with the Agg canvas: no
pyplot, no global backend switch; matplotlib is imported only when a plot is drawn).

- :func:`plot_lines`: metric vs x per series, one panel per metric: the token-proportion sweep (paper Fig. 2,
  x = ratio, one line per method) and the self-evolving rounds (Tab. 2 as a plot, x = round).
- :func:`plot_scatter`: base loss vs reference loss per token, kept tokens highlighted (paper Fig. 3), on a
  deterministic subsample.
- :func:`plot_hist`: score histograms of kept vs dropped tokens.

Every function returns the paths it wrote, or ``[]`` when its data is absent (nothing is written).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean.report.tables import Column
from tokenclean.report.tokens import TokenArrays

KEPT_COLOR, DROPPED_COLOR = "#1a9850", "#9e9e9e"
PALETTE = (  # 14 distinct colours: every method of a full comparison gets its own
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
    "#bcbd22", "#393b79", "#ad494a", "#8ca252", "#e7969c",
)  # fmt: skip


def _figure(
    nrows: int = 1,
    ncols: int = 1,
    size: tuple[float, float] = (5.0, 4.0),
    top: float = 0.55,
    bottom: float = 0.55,
    left: float = 0.65,
) -> tuple[Any, Any]:
    """A figure of ``nrows x ncols`` panels of ``size`` inches with fixed margins in inches (a fixed layout
    draws once; constrained layout would draw every figure twice)."""
    from matplotlib.figure import Figure

    w, h = size[0] * ncols, size[1] * nrows + top + bottom
    fig = Figure(figsize=(w, h))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    fig.subplots_adjust(
        left=left / w, right=1 - 0.2 / w, top=1 - top / h, bottom=bottom / h, wspace=0.28, hspace=0.55
    )
    return fig, axes


def _save(fig: Any, stem: Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write ``stem.png`` / ``stem.svg``; byte-stable output (fixed SVG id salt, no dates)."""
    import matplotlib

    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    with matplotlib.rc_context({"svg.hashsalt": "tokenclean", "svg.fonttype": "path"}):
        for fmt in formats:
            p = stem.with_suffix(f".{fmt}")
            meta: dict[str, Any] = {"Date": None} if fmt == "svg" else {"Software": None}
            fig.savefig(p, format=fmt, dpi=110, metadata=meta)
            out.append(p)
    return out


def _grid(n: int) -> tuple[int, int]:
    ncols = min(n, 4)
    return math.ceil(n / ncols), ncols


def plot_lines(
    series: Mapping[str, Sequence[tuple[float, Mapping[str, float | None]]]],
    columns: Sequence[Column],
    stem: Path,
    xlabel: str,
    title: str,
    formats: Sequence[str] = ("png", "svg"),
    integer_x: bool = False,
) -> list[Path]:
    """One panel per column; in each, one line per series through its (x, value) points (None skipped)."""
    from matplotlib.ticker import MaxNLocator

    cols = [c for c in columns if any(v.get(c.key) is not None for pts in series.values() for _, v in pts)]
    if not cols:
        return []
    nrows, ncols = _grid(len(cols))
    fig, axes = _figure(nrows, ncols, (3.6, 2.6), top=0.5, bottom=0.75)
    for ax, c in zip(axes.flat, cols):
        for i, (name, pts) in enumerate(series.items()):
            xy = sorted((x, v[c.key] * c.scale) for x, v in pts if v.get(c.key) is not None)  # type: ignore[operator]
            if xy:
                xs, ys = zip(*xy)
                ax.plot(xs, ys, marker="o", ms=4, lw=1.6, color=PALETTE[i % len(PALETTE)], label=name)
        better = {True: " (higher is better)", False: " (lower is better)", None: ""}[c.higher_is_better]
        ax.set_title(c.label + better, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(cols) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncols=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11, y=1 - 0.12 / fig.get_figheight())
    return _save(fig, stem, formats)


def subsample(n: int, k: int, seed: int = 0) -> np.ndarray:
    """``min(n, k)`` sorted indices of ``range(n)``, the same for the same (n, k, seed)."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def _axis_range(values: np.ndarray) -> tuple[float, float]:
    """A shared axis range over the 0.5-99.5th percentiles (from 0 when the data comes close to 0)."""
    if len(values) == 0:
        return 0.0, 1.0
    lo, hi = (float(x) for x in np.nanpercentile(values, [0.5, 99.5]))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.04 * (hi - lo)
    lo = 0.0 if 0 <= lo < 0.25 * hi else lo - pad
    return lo, hi + pad


def plot_scatter(
    arr: TokenArrays | None,
    stem: Path,
    title: str,
    max_points: int = 20_000,
    seed: int = 0,
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """Base loss (x) vs reference loss (y) per scored token; kept tokens green over dropped grey (Fig. 3)."""
    if arr is None or arr.base is None or arr.ref is None or len(arr.score) == 0:
        return []
    ok = np.isfinite(arr.base) & np.isfinite(arr.ref)  # (N,)
    idx = subsample(int(ok.sum()), max_points, seed)
    base, ref = arr.base[ok][idx], arr.ref[ok][idx]  # (n,)
    kept = arr.kept[ok][idx] if arr.kept is not None else np.zeros(len(idx), dtype=bool)
    fig, axes = _figure(1, 1, (5.0, 4.4), top=0.6)
    ax = axes[0, 0]
    size = 14.0 if len(idx) < 2_000 else 6.0 if len(idx) < 8_000 else 3.0  # points visible at any count
    lo, hi = _axis_range(np.concatenate([base, ref]))
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--", label="base = reference")
    ax.scatter(
        base[~kept],
        ref[~kept],
        s=size,
        alpha=0.45,
        color=DROPPED_COLOR,
        lw=0,
        rasterized=True,
        label="dropped",
    )
    ax.scatter(
        base[kept], ref[kept], s=size, alpha=0.6, color=KEPT_COLOR, lw=0, rasterized=True, label="kept"
    )
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("base model loss")
    ax.set_ylabel("reference model loss")
    n_all = len(arr.score)
    kept_all = int(arr.kept.sum()) if arr.kept is not None else 0
    shown = f"; {len(idx):,} shown" if len(idx) < n_all else ""
    pct = f"{kept_all / max(n_all, 1):.0%}"
    ax.set_title(f"{title}\nkept {kept_all:,} of {n_all:,} scored tokens ({pct}){shown}", fontsize=9)
    ax.legend(loc="upper left", fontsize=8, markerscale=max(1.0, 8 / size))
    ax.grid(alpha=0.3)
    return _save(fig, stem, formats)


def plot_hist(
    arr: TokenArrays | None, stem: Path, title: str, bins: int = 60, formats: Sequence[str] = ("png", "svg")
) -> list[Path]:
    """Histogram of token scores, kept vs dropped; the global threshold is drawn when one separates them."""
    if arr is None or len(arr.score) == 0:
        return []
    s = arr.score
    lo, hi = (float(x) for x in np.nanpercentile(s, [0.5, 99.5]))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    fig, axes = _figure(1, 1, (5.4, 3.0), top=0.4)
    ax = axes[0, 0]
    clipped = np.clip(s, lo, hi)
    if arr.kept is None:
        ax.hist(clipped, bins=edges, color=PALETTE[0], alpha=0.8, label="all scored tokens")
    else:
        ax.hist(
            clipped[~arr.kept],
            bins=edges,
            color=DROPPED_COLOR,
            alpha=0.8,
            label=f"dropped ({int((~arr.kept).sum()):,})",
        )
        ax.hist(
            clipped[arr.kept],
            bins=edges,
            color=KEPT_COLOR,
            alpha=0.7,
            label=f"kept ({int(arr.kept.sum()):,})",
        )
        if arr.kept.any() and (~arr.kept).any() and s[~arr.kept].max() <= s[arr.kept].min():
            t = float(s[arr.kept].min())
            ax.axvline(t, color="black", lw=1, ls="--", label=f"threshold {t:.3f}")
    ax.set_xlabel("score = base loss − reference loss")
    ax.set_ylabel("tokens")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, stem, formats)


def plot_classes(
    methods: Mapping[str, Mapping[str, Any]],
    stem: Path,
    title: str = "Share of each truth label's tokens kept (counted, for online methods)",
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """Grouped bars: per truth label (x), the share of its tokens each method kept, with the 95% interval
    as an error bar where the summary has one (``classes``/``classes_ci`` of ground-truth runs). Online
    methods' entries are measured on the tokens they counted; soft methods (a ``mean_weight``) show the
    label's mean training weight x 100, hatched; every method with a breakdown is drawn."""
    from tokenclean.report.tables import method_label, method_order
    from tokenclean.report.truth_tables import CLASS_LABELS, class_labels

    names = [m for m in method_order(list(methods)) if methods[m].get("classes")]
    labels = class_labels(dict(methods))
    if not names or not labels:
        return []
    fig, axes = _figure(
        1, 1, (max(5.4, 1.1 * len(labels) * max(len(names), 4) / 4), 3.4), top=0.4, bottom=1.1
    )
    ax = axes[0, 0]
    width = 0.8 / len(names)
    x = np.arange(len(labels))
    for k, name in enumerate(names):
        classes, ci = methods[name]["classes"], methods[name].get("classes_ci") or {}
        soft = any(c.get("mean_weight") is not None for c in classes.values())
        key = "mean_weight" if soft else "kept"  # soft methods: mean training weight (x100), hatched
        v = np.array([100 * classes[lab][key] if lab in classes else np.nan for lab in labels])
        lo_hi = [(ci.get(lab) or {}).get(key) for lab in labels]
        err = np.array(
            [[v[i] - 100 * b[0], 100 * b[1] - v[i]] if b else [0.0, 0.0] for i, b in enumerate(lo_hi)]
        ).T
        ax.bar(
            x + (k - (len(names) - 1) / 2) * width,
            v,
            width,
            yerr=np.clip(err, 0, None),
            color=PALETTE[k % len(PALETTE)],
            hatch="//" if soft else None,
            label=method_label(name) + (" (mean weight)" if soft else ""),
            error_kw={"elinewidth": 0.8, "capsize": 1.5},
        )
    ax.set_xticks(x, [CLASS_LABELS.get(lab, lab) for lab in labels])
    ax.set_ylabel("% of the label's tokens kept (soft: mean weight x 100)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=min(len(names), 6), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, stem, formats)
