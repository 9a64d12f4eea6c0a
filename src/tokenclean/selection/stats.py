"""What a selection did, from its keep-mask: pure array function returning a JSON-ready dict."""

from __future__ import annotations

from typing import Any

import numpy as np

from tokenclean.selection.masks import TIE_RULE, check_offsets, ratio_count, ratio_counts, segment_ids

HIST_BINS = 10


def kept_per_sample(keep: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Number of kept tokens of each sample: (S,) int64."""
    off = check_offsets(offsets, keep.size)
    csum = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])  # (N+1,)
    return csum[off[1:]] - csum[off[:-1]]


def kept_fraction_histogram(kept: np.ndarray, n: np.ndarray, bins: int = HIST_BINS) -> dict[str, Any]:
    """Histogram of per-sample kept fractions ``kept_i / n_i`` over [0, 1] in ``bins`` equal bins.

    Bins are half-open ``[lo, hi)`` except the last, which includes 1.0; samples with ``n_i == 0`` are left
    out (they have no fraction).
    """
    has = n > 0
    frac = kept[has] / n[has]
    counts, edges = np.histogram(frac, bins=bins, range=(0.0, 1.0))
    return {
        "edges": [round(float(e), 6) for e in edges],
        "counts": [int(c) for c in counts],
        "exactly_zero": int(np.count_nonzero(frac == 0.0)),
        "exactly_one": int(np.count_nonzero(frac == 1.0)),
    }


def selection_stats(
    keep: np.ndarray,
    scores: np.ndarray,
    offsets: np.ndarray,
    level: str,
    ratio: float | None,
    seed: int | None,
    threshold: float | None,
) -> dict[str, Any]:
    """Requested vs achieved ratio, kept/total tokens, NaN count, kept-fraction histogram, samples emptied."""
    tally = SelectionTally(level, ratio)
    tally.add(keep, scores, offsets)
    return tally.result(seed, threshold)


class SelectionTally:
    """:func:`selection_stats` summed block by block (blocks of whole samples, in order): every entry is a
    sum of per-block counts, so any cut into blocks gives the dict one block gives."""

    def __init__(self, level: str, ratio: float | None) -> None:
        self.level, self.ratio = level, ratio
        self.total = self.kept = self.requested = self.nans = self.samples = self.emptied = 0
        self.hist = np.zeros(HIST_BINS, dtype=np.int64)
        self.zero = self.one = 0

    def add(self, keep: np.ndarray, scores: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Count one block; returns its kept tokens per sample (S_b,) int64."""
        off = check_offsets(offsets, keep.size)
        n_i = np.diff(off)  # (S_b,)
        kept = kept_per_sample(keep, off)  # (S_b,)
        self.total += int(keep.size)
        self.kept += int(kept.sum())
        if self.level == "sample" and self.ratio is not None:
            self.requested += int(ratio_counts(self.ratio, n_i).sum())
        self.nans += int(np.count_nonzero(np.isnan(scores)))
        self.samples += int(n_i.size)
        self.emptied += int(np.count_nonzero(kept == 0))
        h = kept_fraction_histogram(kept, n_i)
        self.hist += np.asarray(h["counts"], dtype=np.int64)
        self.zero += h["exactly_zero"]
        self.one += h["exactly_one"]
        return kept

    def result(self, seed: int | None, threshold: float | None) -> dict[str, Any]:
        level, ratio, total = self.level, self.ratio, self.total
        requested: int | None = None
        if level in ("global", "random") and ratio is not None:
            requested = ratio_count(ratio, total)
        elif level == "sample" and ratio is not None:
            requested = self.requested
        edges = np.histogram(np.zeros(0), bins=HIST_BINS, range=(0.0, 1.0))[1]
        return {
            "level": level,
            "requested_ratio": ratio,
            "requested_tokens": requested,
            "achieved_ratio": (self.kept / total) if total else 0.0,
            "kept_tokens": self.kept,
            "total_response_tokens": total,
            "dropped_tokens": total - self.kept,
            "nan_scores": self.nans,
            "samples_total": self.samples,
            "samples_emptied": self.emptied,
            "samples_kept": self.samples - self.emptied,
            "kept_fraction_histogram": {
                "edges": [round(float(e), 6) for e in edges],
                "counts": [int(c) for c in self.hist],
                "exactly_zero": self.zero,
                "exactly_one": self.one,
            },
            "seed": seed,  # only the random level draws from it
            "threshold": threshold if level == "threshold" else None,
            "tie_rule": TIE_RULE,
        }


def tie_decided(keep: np.ndarray, scores: np.ndarray, offsets: np.ndarray, level: str) -> int:
    """Kept tokens chosen by the tie rule rather than by their score: those sharing the score at a cut
    (``global``: one cut; ``sample``: one per sample) where other tokens with that same score were dropped.
    0 for ``random`` and ``threshold`` (no cut by rank)."""
    if level not in ("global", "sample") or not keep.any():
        return 0
    s = np.asarray(scores, dtype=np.float64) + 0.0  # (N,) -0.0 == 0.0
    if level == "global":
        tied = s == s[keep].min()  # (N,) the cut is the lowest kept score
        return int(np.count_nonzero(tied & keep)) if np.any(tied & ~keep) else 0
    off = check_offsets(offsets, keep.size)
    seg = segment_ids(off)  # (N,)
    cut = np.full(off.size - 1, np.inf)  # (S,) lowest kept score of each sample
    np.minimum.at(cut, seg[keep], s[keep])
    has_kept = np.bincount(seg[keep], minlength=off.size - 1) > 0  # (S,)
    tied = (s == cut[seg]) & has_kept[seg]  # (N,)
    split = np.bincount(seg[tied & ~keep], minlength=off.size - 1) > 0  # (S,) some tied dropped
    return int(np.count_nonzero(tied & keep & split[seg]))


def describe(stats: dict[str, Any], level: str) -> str:
    """One line saying what a selection did. A soft selection (``weights``) keeps every scored token and
    says so, with its weights, instead of a hard "kept N of N"."""
    w = stats.get("weights")
    total = stats["total_response_tokens"]
    if w:
        above = w.get("share_above_half")
        return (
            f"soft weights ({w['mapping']}, T={w['temperature']}) around the global K={stats['requested_ratio']} "
            f"cut: all {stats['kept_tokens']} of {total} scored response tokens train, weighted; mean weight "
            f"{w['mean']:.3f} ({w['effective_tokens']:.1f} effective tokens)"
            + (f", {100 * above:.1f}% weighted above 0.5" if above is not None else "")
        )
    what = f"score > {stats['threshold']}" if level == "threshold" else f"K={stats['requested_ratio']}"
    nan = f"; {stats['nan_scores']} NaN scores" if stats.get("nan_scores") else ""
    return (
        f"{level} {what}: kept {stats['kept_tokens']} of {total} response tokens "
        f"(achieved {stats['achieved_ratio']:.4f}); {stats['samples_emptied']} of {stats['samples_total']} "
        f"samples emptied and dropped{nan}"
    )
