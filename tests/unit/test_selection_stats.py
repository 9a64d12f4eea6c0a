"""Selection stats from a keep-mask: counts, requested vs achieved, histogram, emptied samples, NaN."""

from __future__ import annotations

import numpy as np

from tokenclean.selection.stats import kept_fraction_histogram, kept_per_sample, selection_stats


def test_stats_on_a_hand_checked_mask() -> None:
    off = np.array([0, 4, 6, 10, 11], dtype=np.int64)  # n_i = 4, 2, 4, 1
    keep = np.array([1, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0], dtype=bool)  # kept_i = 4, 0, 1, 0
    scores = np.array([1, 2, 3, 4, np.nan, 0, 5, 0, 0, 0, np.nan], dtype=np.float32)
    st = selection_stats(keep, scores, off, "global", 0.5, 42, None)
    assert kept_per_sample(keep, off).tolist() == [4, 0, 1, 0]
    assert st["kept_tokens"] == 5 and st["total_response_tokens"] == 11 and st["dropped_tokens"] == 6
    assert st["requested_tokens"] == 5 and st["requested_ratio"] == 0.5
    assert st["achieved_ratio"] == 5 / 11
    assert st["nan_scores"] == 2
    assert st["samples_total"] == 4 and st["samples_emptied"] == 2 and st["samples_kept"] == 2
    h = st["kept_fraction_histogram"]
    # fractions 1.0, 0.0, 0.25, 0.0 -> bins [0, .1): 2, [.2, .3): 1, [.9, 1.0]: 1
    assert h["counts"] == [2, 0, 1, 0, 0, 0, 0, 0, 0, 1]
    assert h["exactly_zero"] == 2 and h["exactly_one"] == 1
    assert len(h["edges"]) == 11 and h["edges"][0] == 0.0 and h["edges"][-1] == 1.0
    assert st["level"] == "global" and st["seed"] == 42 and st["threshold"] is None


def test_requested_tokens_per_level() -> None:
    off = np.array([0, 3, 10], dtype=np.int64)  # n_i = 3, 7
    keep = np.zeros(10, dtype=bool)
    s = np.zeros(10, dtype=np.float32)
    assert selection_stats(keep, s, off, "sample", 0.5, 0, None)["requested_tokens"] == 1 + 3
    assert selection_stats(keep, s, off, "random", 0.5, 0, None)["requested_tokens"] == 5
    th = selection_stats(keep, s, off, "threshold", None, 0, 0.3)
    assert th["requested_tokens"] is None and th["threshold"] == 0.3


def test_histogram_counts_every_sample_once() -> None:
    rng = np.random.default_rng(0)
    n = rng.integers(1, 50, 300)
    kept = rng.integers(0, n + 1)
    h = kept_fraction_histogram(kept, n)
    assert sum(h["counts"]) == 300
