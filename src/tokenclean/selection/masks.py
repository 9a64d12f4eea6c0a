"""Keep-masks from token scores: pure array functions, no I/O.

Layout (CSR): ``scores`` is a flat float array of the *response* tokens of every sample, sample after sample,
positions ascending within a sample; ``offsets`` (int64, shape (S+1,)) delimits them: sample ``i`` owns
``scores[offsets[i]:offsets[i+1]]``, ``n_i = offsets[i+1] - offsets[i]``, ``N = offsets[-1]``.
Every function returns a bool keep-mask of shape (N,) aligned with ``scores``.

Levels:

- ``global`` (Token Cleaning): keep exactly ``floor(K * N)`` tokens with the highest scores across the set;
- ``sample`` (RHO baseline): keep ``floor(K * n_i)`` highest-scored tokens of each sample;
- ``random`` (uniform baseline): keep ``floor(K * N)`` tokens drawn uniformly without replacement, seeded;
- ``threshold``: keep every token with ``score > value``.

Counts: ``floor(K * n)`` is computed exactly on the decimal ratio as written (``K = 0.29`` is 29/100, so
``floor(0.29 * 100) == 29``, where float arithmetic gives 28).

Tie rule (deterministic, documented): tokens are ranked by score descending, then by flat index ascending,
i.e. by (sample index, position) ascending: among equal scores at the cut, earlier samples win, and within a
sample earlier positions win. ``-0.0`` and ``0.0`` are equal.

NaN scores (positions the scorer left unscored) are never kept by ``global``/``sample``/``threshold``; they
still count in ``N`` and ``n_i`` (the count is of response tokens), so a set with NaNs can keep fewer than
``floor(K * N)`` tokens when ``floor(K * N)`` exceeds the number of finite-or-infinite scores.
``random`` does not look at scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from tokenclean.errors import ConfigError

LEVELS = ("global", "sample", "random", "threshold")
TIE_RULE = "score descending, then (sample index, position) ascending"


def ratio_fraction(ratio: float) -> Fraction:
    """The ratio as an exact fraction of its shortest decimal form (``0.29`` -> 29/100); checks 0 <= K <= 1."""
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not math.isfinite(ratio):
        raise ConfigError(f"ratio: must be a number in [0, 1], got {ratio!r}")
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"ratio: must be in [0, 1], got {ratio}")
    return Fraction(repr(float(ratio))).limit_denominator(10**9)


def n_keep(ratio: float, n: int) -> int:
    """How many of ``n`` tokens a top-``ratio`` selection keeps: ``floor(ratio * n)`` exactly, on the decimal
    ratio as written (``n_keep(0.29, 100) == 29`` where float arithmetic gives 28). The one rounding rule
    of every top-k in tokenclean (offline levels here, the online policies' per-step and per-sample k)."""
    f = ratio_fraction(ratio)
    return (int(n) * f.numerator) // f.denominator


ratio_count = n_keep  # the name the selection code has used


def ratio_counts(ratio: float, n: np.ndarray) -> np.ndarray:
    """``floor(ratio * n_i)`` exactly for each element of an int array: (S,) int64."""
    f = ratio_fraction(ratio)
    return (np.asarray(n, dtype=np.int64) * f.numerator) // f.denominator


def check_offsets(offsets: np.ndarray, n: int) -> np.ndarray:
    """Validate CSR offsets against a flat array of length ``n``; returns them as int64."""
    off = np.asarray(offsets, dtype=np.int64)
    if off.ndim != 1 or off.size < 1 or off[0] != 0 or off[-1] != n or np.any(np.diff(off) < 0):
        raise ValueError(f"offsets must be non-decreasing, start at 0 and end at {n} (got {off[:3]}...)")
    return off


def segment_ids(offsets: np.ndarray) -> np.ndarray:
    """Sample index of each flat element: (N,) int64."""
    off = np.asarray(offsets, dtype=np.int64)
    return np.repeat(np.arange(off.size - 1, dtype=np.int64), np.diff(off))


def select_global(scores: np.ndarray, ratio: float) -> np.ndarray:
    """Keep the ``floor(ratio * N)`` highest scores of the flat array (NaN never kept). Tie rule: module doc.

    Equals ``global_ranking(scores).mask(ratio)`` (a full stable sort) but costs O(N): one ``np.partition``
    finds the cut value, every score above it is kept, and the first ties at the cut (by flat index) fill
    the remaining places.
    """
    s = np.asarray(scores)
    k = min(ratio_count(ratio, s.size), int(s.size - np.count_nonzero(np.isnan(s))))
    if k <= 0:
        return np.zeros(s.size, dtype=bool)
    neg = -s  # (N,) the one working copy; -NaN is NaN, which partitions last
    neg.partition(k - 1)  # in place
    cut = -neg[k - 1]  # the k-th largest score
    del neg
    keep = s > cut  # (N,) strictly above the cut: fewer than k of them
    need = k - int(np.count_nonzero(keep))
    ties = np.flatnonzero(s == cut)[:need]  # ascending flat index = (sample, position) order
    keep[ties] = True
    return keep


def select_sample(scores: np.ndarray, offsets: np.ndarray, ratio: float) -> np.ndarray:
    """Keep the ``floor(ratio * n_i)`` highest scores of each sample (NaN never kept). Tie rule: module doc.

    float32 scores take a fast path (one ``np.sort`` of packed (sample, score) keys, then each sample's cut
    value and ties at the cut); other dtypes use :func:`select_sample_lexsort`, which it equals.
    """
    s = np.asarray(scores)
    off = check_offsets(offsets, s.size)
    if s.dtype != np.float32:
        return select_sample_lexsort(s, off, ratio)
    if s.size == 0:
        return np.zeros(0, dtype=bool)
    seg = segment_ids(off)  # (N,)
    quota = ratio_counts(ratio, np.diff(off))  # (S,) floor(K * n_i)
    key = (seg.astype(np.uint64) << np.uint64(32)) | descending_key32(s)  # (N,) sample asc, score desc
    # sample i's keys occupy sorted positions [off_i, off_i+1): its cut is the quota_i-th of them
    at = np.where(quota > 0, off[:-1] + quota - 1, 0)  # (S,)
    cut = np.sort(key)[at]  # (S,)
    cut[quota == 0] = np.flatnonzero(quota == 0).astype(np.uint64) << np.uint64(32)  # nothing is below
    keep = key < cut[seg]  # strictly better than the sample's cut
    ties = key == cut[seg]
    need = quota - kept_counts(keep, off)  # (S,) places left for ties at the cut
    tie_rank = np.cumsum(ties, dtype=np.int64)  # (N,) 1-based rank of a tie within its sample:
    tie_rank -= np.concatenate([[0], tie_rank])[off[:-1]][seg]
    keep |= ties & (tie_rank <= need[seg])
    return keep & ~np.isnan(s)


def select_sample_lexsort(scores: np.ndarray, offsets: np.ndarray, ratio: float) -> np.ndarray:
    """The plain twin of :func:`select_sample`: a full stable (sample, -score) sort, any float dtype."""
    s = np.asarray(scores)
    off = check_offsets(offsets, s.size)
    seg = segment_ids(off)  # (N,)
    order = np.lexsort((-s, seg))  # sample asc, then score desc (NaN last), then flat index (stable)
    rank = np.empty(s.size, dtype=np.int64)
    rank[order] = np.arange(s.size, dtype=np.int64) - off[seg[order]]  # rank within the sample
    quota = ratio_counts(ratio, np.diff(off))  # (S,) floor(K * n_i)
    return (rank < quota[seg]) & ~np.isnan(s)


def descending_key32(scores: np.ndarray) -> np.ndarray:
    """uint32 keys whose ascending order is float32 ``scores`` descending (-0.0 == 0.0, NaN last): (N,)."""
    bits = (np.asarray(scores, dtype=np.float32) + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 = +0.0
    neg = (bits >> np.uint32(31)).astype(bool)
    asc = np.where(neg, ~bits, bits | np.uint32(0x80000000))  # ascending uint32 order == float order
    desc = (~asc).astype(np.uint64)
    desc[np.isnan(scores)] = 0xFFFFFFFF
    return desc


def kept_counts(keep: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Number of True values of each sample: (S,) int64."""
    csum = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])  # (N+1,)
    return csum[offsets[1:]] - csum[offsets[:-1]]


def select_random(n: int, ratio: float, seed: int) -> np.ndarray:
    """Keep ``floor(ratio * n)`` of ``n`` tokens uniformly at random without replacement (seeded)."""
    k = ratio_count(ratio, n)
    rng = np.random.default_rng(seed)
    keep = np.zeros(n, dtype=bool)
    keep[rng.choice(n, size=k, replace=False, shuffle=False)] = True
    return keep


def select_threshold(scores: np.ndarray, value: float) -> np.ndarray:
    """Keep every token with ``score > value`` (NaN compares false, so it is never kept)."""
    if value is None or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"threshold: must be a number, got {value!r}")
    return np.asarray(scores) > value


@dataclass(frozen=True)
class GlobalRanking:
    """The full global order: ``rank[t]`` is token ``t``'s place (score descending, then flat index
    ascending; NaN last). ``mask(K)`` equals ``select_global(scores, K)``: this is its plain twin (one stable
    O(N log N) sort), and gives every token's rank when a report needs it."""

    rank: np.ndarray  # (N,) int64
    n_scored: int  # tokens with a non-NaN score

    def mask(self, ratio: float) -> np.ndarray:
        k = min(ratio_count(ratio, self.rank.size), self.n_scored)
        return self.rank < k


def global_ranking(scores: np.ndarray) -> GlobalRanking:
    """One stable sort of the whole array; see :class:`GlobalRanking`."""
    s = np.asarray(scores)
    order = np.argsort(-s, kind="stable")  # (N,) NaN sorts last
    rank = np.empty(s.size, dtype=np.int64)
    rank[order] = np.arange(s.size, dtype=np.int64)
    return GlobalRanking(rank=rank, n_scored=int(s.size - np.count_nonzero(np.isnan(s))))


def keep_mask(
    level: str,
    scores: np.ndarray,
    offsets: np.ndarray,
    ratio: float | None = None,
    seed: int = 42,
    threshold: float | None = None,
) -> np.ndarray:
    """Dispatch to the level's function. ``ratio`` is required except for ``threshold``."""
    s = np.asarray(scores)
    check_offsets(offsets, s.size)
    if level not in LEVELS:
        raise ConfigError(f"level: unknown '{level}' (valid: {', '.join(LEVELS)})")
    if level == "threshold":
        if threshold is None:
            raise ConfigError("threshold: level 'threshold' needs a threshold value")
        return select_threshold(s, threshold)
    if ratio is None:
        raise ConfigError(f"ratio: level '{level}' needs a ratio in [0, 1]")
    if level == "global":
        return select_global(s, ratio)
    if level == "sample":
        return select_sample(s, offsets, ratio)
    return select_random(s.size, ratio, seed)


def global_masks(scores: np.ndarray, ratios: Sequence[float]) -> dict[float, np.ndarray]:
    """Masks for several ratios of one score array (a sweep: score once, select many).

    One O(N) :func:`select_global` per ratio, which is faster than one full sort for a handful of ratios;
    the masks are nested (a larger K keeps a superset) because every ratio uses the same tie rule.
    """
    s = np.asarray(scores)
    return {float(r): select_global(s, r) for r in ratios}
