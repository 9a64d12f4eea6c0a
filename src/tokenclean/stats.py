"""Means with 95% intervals by a two-level bootstrap over seeds and units (the method every table states).

A result is measured once per training seed ``s`` (S seeds) on the same units (held-out questions, or pool
samples for token recovery). A statistic of one seed on a multiset of units, ``f(s, units)``, is e.g. the
token-weighted mean answer loss of those questions. Then:

- the point estimate is the mean over seeds of ``f(s, all units)``;
- one bootstrap replicate draws S seeds with replacement and U units with replacement (the same units for
  every drawn seed: the units are shared, so seeds and methods are compared on the same questions) and
  takes the mean over the drawn seeds of ``f(s, drawn units)``;
- the interval is the 2.5th and 97.5th percentile of 1000 replicates (percentile bootstrap), from a fixed
  seed, so the same inputs give the same interval.

Units that come in clusters (the phrasings of one fact, the pool samples about one fact) are not independent:
:func:`clustered` resamples whole clusters instead (a cluster bootstrap), which the ground-truth tables use
whenever the data names its fact. With one seed the interval covers the sampling of units only; with few seeds the seed level is coarse
(3 seeds can only be resampled 10 ways), which is why the tables print the number of seeds next to them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

N_BOOT = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float

    def overlaps(self, other: Interval) -> bool:
        return self.lo <= other.hi and other.lo <= self.hi

    def as_list(self) -> list[float]:
        return [self.lo, self.hi]


StatFn = Callable[[int, np.ndarray], Mapping[str, float | None]]


def bootstrap(
    stat: StatFn, n_seeds: int, n_units: int, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0
) -> dict[str, Interval]:
    """Intervals of every statistic ``stat(s, units)`` returns (see module doc). ``units`` is an int array
    of unit indices (with repeats). A statistic that is None for some seed or replicate is left out."""
    if n_seeds < 1 or n_units < 1:
        raise ValueError(f"bootstrap needs >= 1 seed and unit, got {n_seeds} and {n_units}")
    every = np.arange(n_units)
    per_seed = [stat(s, every) for s in range(n_seeds)]
    keys = [k for k in per_seed[0] if all(p.get(k) is not None for p in per_seed)]
    point = {k: float(np.mean([p[k] for p in per_seed])) for k in keys}  # type: ignore[misc]
    rng = np.random.default_rng(seed)
    reps: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(n_boot):
        seeds = rng.integers(0, n_seeds, n_seeds)
        units = rng.integers(0, n_units, n_units)
        vals = {int(s): stat(int(s), units) for s in np.unique(seeds)}
        for k in keys:
            v = [vals[int(s)].get(k) for s in seeds]
            if all(x is not None for x in v):
                reps[k].append(float(np.mean(v)))  # type: ignore[arg-type]
    a = (1.0 - level) / 2.0
    out = {}
    for k in keys:
        r = np.asarray(reps[k]) if reps[k] else np.asarray([point[k]])
        out[k] = Interval(point[k], float(np.quantile(r, a)), float(np.quantile(r, 1.0 - a)))
    return out


def clustered(stat: StatFn, clusters: np.ndarray) -> tuple[StatFn, int]:
    """``(stat over cluster draws, number of clusters)``: a draw of cluster indices becomes the units of
    the drawn clusters (with repeats), for :func:`bootstrap` to resample clusters instead of units."""
    _, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    members = [np.flatnonzero(inverse == c) for c in range(int(inverse.max()) + 1)] if len(inverse) else []

    def f(s: int, drawn: np.ndarray) -> Mapping[str, float | None]:
        return stat(s, np.concatenate([members[int(c)] for c in drawn]))

    return f, len(members)


def weighted_mean(values: np.ndarray, weights: np.ndarray, units: np.ndarray) -> float | None:
    """``sum(v*w)/sum(w)`` over ``units`` (with repeats): a ratio of sums, e.g. a token-weighted mean."""
    w = weights[units]
    tot = float(w.sum())
    return float((values[units] * w).sum() / tot) if tot > 0 else None


def overlap_sentence(metric: str, intervals: Mapping[str, Interval], lower_is_better: bool) -> str:
    """One sentence saying which methods' intervals of ``metric`` are apart and that the rest overlap."""
    names = list(intervals)
    apart = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ia, ib = intervals[a], intervals[b]
            if not ia.overlaps(ib):
                better, worse = (a, b) if (ia.mean < ib.mean) == lower_is_better else (b, a)
                apart.append(f"{better} > {worse}")
    n_pairs = len(names) * (len(names) - 1) // 2
    if not apart:
        return f"{metric}: all {n_pairs} pairs of intervals overlap (no difference resolved)."
    rest = n_pairs - len(apart)
    return (
        f"{metric}: intervals apart (better > worse): {', '.join(apart)}; the other {rest} pair(s) overlap."
    )
