"""Selection keep-masks: exact counts, the tie rule, seeded random, threshold, NaN, fast == naive twins."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenclean.errors import ConfigError
from tokenclean.selection.masks import (
    LEVELS,
    global_masks,
    global_ranking,
    keep_mask,
    ratio_count,
    select_global,
    select_random,
    select_sample,
    select_sample_lexsort,
    select_threshold,
)

NAN = float("nan")


def naive_global(scores: list[float], ratio: float) -> np.ndarray:
    """Python sort of every token by (score desc, flat index asc); NaN never kept. The reference rule."""
    k = ratio_count(ratio, len(scores))
    order = sorted((i for i, s in enumerate(scores) if not math.isnan(s)), key=lambda i: (-scores[i], i))
    keep = np.zeros(len(scores), dtype=bool)
    keep[order[:k]] = True
    return keep


def naive_sample(scores: list[float], offsets: list[int], ratio: float) -> np.ndarray:
    keep = np.zeros(len(scores), dtype=bool)
    for a, b in itertools.pairwise(offsets):
        keep[a:b] = naive_global(scores[a:b], ratio)
    return keep


def csr(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


# ---------------------------------------------------------------- counts


@pytest.mark.parametrize("n", [0, 1, 7, 100, 1001])
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.29, 0.3, 0.6, 0.7, 0.99, 1.0])
def test_global_and_random_keep_exactly_floor_k_n(n: int, ratio: float) -> None:
    s = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    expected = (n * round(ratio * 100)) // 100  # exact on the decimal ratio
    assert select_global(s, ratio).sum() == expected
    assert select_random(n, ratio, seed=3).sum() == expected


def test_ratio_count_is_exact_where_float_floor_is_not() -> None:
    assert math.floor(0.29 * 100) == 28  # the float trap
    assert ratio_count(0.29, 100) == 29
    assert ratio_count(0.7, 10) == 7
    assert ratio_count(1.0, 12345) == 12345


def test_global_keeps_the_highest_scores() -> None:
    s = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    keep = select_global(s, 0.6)
    assert s[keep].min() >= s[~keep].max()


def test_sample_level_keeps_floor_k_ni_per_sample() -> None:
    lengths = [1, 2, 3, 10, 17, 0, 5]
    off = csr(lengths)
    s = np.random.default_rng(1).standard_normal(off[-1]).astype(np.float32)
    for ratio in (0.3, 0.5, 0.6, 0.9):
        keep = select_sample(s, off, ratio)
        got = [int(keep[a:b].sum()) for a, b in itertools.pairwise(off)]
        assert got == [ratio_count(ratio, n) for n in lengths]
        for a, b in itertools.pairwise(off):  # within each sample, kept beat dropped
            kept, dropped = s[a:b][keep[a:b]], s[a:b][~keep[a:b]]
            if kept.size and dropped.size:
                assert kept.min() >= dropped.max()


# ---------------------------------------------------------------- ties


def test_global_tie_rule_earlier_sample_then_earlier_position_wins() -> None:
    #            sample 0 (flat 0-3)  ---  sample 1 (flat 4-7) ---
    s = np.array([1.0, 5.0, 5.0, 0.0, 5.0, 5.0, 9.0, 5.0], dtype=np.float32)
    # N = 8; K = 0.5 -> 4 kept: the 9 and three of the five 5s: both of sample 0, then sample 1's first
    keep = select_global(s, 0.5)
    assert np.flatnonzero(keep).tolist() == [1, 2, 4, 6]
    # K = 0.625 -> 5 kept: the next 5 (sample 1, position 1) joins; the last 5 (index 7) still loses
    assert np.flatnonzero(select_global(s, 0.625)).tolist() == [1, 2, 4, 5, 6]


def test_negative_zero_ties_with_zero() -> None:
    s = np.array([0.0, -0.0, 0.0, -0.0], dtype=np.float32)
    assert np.flatnonzero(select_global(s, 0.5)).tolist() == [0, 1]
    assert np.flatnonzero(select_sample(s, csr([4]), 0.5)).tolist() == [0, 1]


def test_sample_tie_rule_earlier_position_wins() -> None:
    s = np.array([2.0, 3.0, 3.0, 3.0, 7.0, 7.0, 7.0], dtype=np.float32)
    keep = select_sample(s, csr([4, 3]), 0.5)  # sample 0 keeps 2 of 4, sample 1 keeps 1 of 3
    assert np.flatnonzero(keep).tolist() == [1, 2, 4]


# ---------------------------------------------------------------- random


def test_random_same_seed_same_mask_different_seed_differs() -> None:
    a, b, c = select_random(10_000, 0.6, 1), select_random(10_000, 0.6, 1), select_random(10_000, 0.6, 2)
    assert (a == b).all()
    assert (a != c).any()
    assert a.sum() == c.sum() == 6000


def test_random_is_roughly_uniform_over_positions() -> None:
    hits = sum(select_random(1000, 0.3, seed).astype(int) for seed in range(200))  # (1000,)
    # each position is kept with probability 0.3: 200 draws -> mean 60, sd ~6.5
    assert 45 < hits[:500].mean() < 75 and 45 < hits[500:].mean() < 75
    assert hits.min() > 25 and hits.max() < 95


def test_random_ignores_scores_and_nan() -> None:
    s = np.array([NAN] * 10, dtype=np.float32)
    keep = keep_mask("random", s, csr([10]), ratio=0.5, seed=0)
    assert keep.sum() == 5


# ---------------------------------------------------------------- threshold and NaN


def test_threshold_is_strict_and_skips_nan() -> None:
    s = np.array([0.5, 1.0, 1.5, NAN, -2.0, 1.0000001], dtype=np.float32)
    assert np.flatnonzero(select_threshold(s, 1.0)).tolist() == [2, 5]
    with pytest.raises(ConfigError, match="threshold"):
        select_threshold(s, NAN)


def test_nan_never_kept_and_count_is_capped() -> None:
    s = np.array([NAN, 3.0, NAN, 1.0, 2.0, NAN], dtype=np.float32)
    off = csr([3, 3])
    g = select_global(s, 1.0)  # floor(1.0 * 6) = 6 requested, only 3 are scored
    assert np.flatnonzero(g).tolist() == [1, 3, 4]
    assert np.flatnonzero(select_global(s, 0.34)).tolist() == [1, 4]  # floor(0.34*6)=2: the 3 and the 2
    assert not select_sample(s, off, 1.0)[np.isnan(s)].any()
    assert select_sample(s, off, 1.0).sum() == 3
    assert np.flatnonzero(global_ranking(s).mask(1.0)).tolist() == [1, 3, 4]


def test_infinities_rank_at_the_ends() -> None:
    s = np.array([-np.inf, 0.0, np.inf, NAN], dtype=np.float32)
    assert np.flatnonzero(select_global(s, 0.25)).tolist() == [2]
    assert np.flatnonzero(select_global(s, 0.75)).tolist() == [0, 1, 2]


# ---------------------------------------------------------------- fast == naive twins

score_lists = st.lists(
    st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, NAN, float("inf")]), st.floats(-4, 4, width=32)),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(scores=score_lists, ratio=st.floats(0.0, 1.0), cuts=st.lists(st.integers(0, 40), max_size=6))
def test_fast_masks_equal_naive_python_sort(scores: list[float], ratio: float, cuts: list[int]) -> None:
    s = np.asarray(scores, dtype=np.float32)
    off = np.array([0, *sorted(min(c, s.size) for c in cuts), s.size], dtype=np.int64)
    exp_g = naive_global(s.tolist(), ratio)
    assert (select_global(s, ratio) == exp_g).all()
    assert (global_ranking(s).mask(ratio) == exp_g).all()
    exp_s = naive_sample(s.tolist(), off.tolist(), ratio)
    assert (select_sample(s, off, ratio) == exp_s).all()
    assert (select_sample_lexsort(s, off, ratio) == exp_s).all()
    assert (select_sample(s.astype(np.float64), off, ratio) == exp_s).all()  # the non-float32 path


def test_global_masks_for_a_sweep_are_nested_and_equal_select_global() -> None:
    s = np.round(np.random.default_rng(4).standard_normal(3000), 1).astype(np.float32)  # many ties
    masks = global_masks(s, [0.3, 0.5, 0.6, 0.9])
    for r, m in masks.items():
        assert (m == select_global(s, r)).all()
    assert (masks[0.3] <= masks[0.5]).all() and (masks[0.5] <= masks[0.6]).all()
    assert (masks[0.6] <= masks[0.9]).all()


# ---------------------------------------------------------------- errors


def test_bad_settings_name_the_key() -> None:
    s, off = np.zeros(4, dtype=np.float32), csr([4])
    with pytest.raises(ConfigError, match=r"level: unknown 'top'.*global, sample, random, threshold"):
        keep_mask("top", s, off, 0.5)
    with pytest.raises(ConfigError, match="ratio: must be in"):
        keep_mask("global", s, off, 1.5)
    with pytest.raises(ConfigError, match="ratio: level 'sample' needs"):
        keep_mask("sample", s, off, None)
    with pytest.raises(ConfigError, match="threshold: level 'threshold' needs"):
        keep_mask("threshold", s, off)
    with pytest.raises(ValueError, match="offsets"):
        keep_mask("global", s, csr([3]), 0.5)
    assert LEVELS == ("global", "sample", "random", "threshold")
