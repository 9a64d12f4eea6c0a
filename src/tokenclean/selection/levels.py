"""The score-based selectors of ``tokenclean select``: one small :class:`~.selector.Selector` per level.

- :class:`GlobalTopK` (Token Cleaning), :class:`PerSample` (RHO), :class:`RandomK`, :class:`Threshold`: a
  keep-mask from :mod:`tokenclean.selection.masks` on the table's response scores;
- :class:`SoftWeights` (soft Token Cleaning): every scored token kept with the weight
  ``sigmoid((score - tau) / temperature)``, ``tau`` the global top-K cut (:func:`soft_weights`).

:func:`selector_for` builds the selector of a checked settings dict (:func:`settings`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from tokenclean.errors import ConfigError
from tokenclean.selection.masks import (
    LEVELS,
    ratio_fraction,
    select_global,
    select_random,
    select_sample,
    select_threshold,
)
from tokenclean.selection.selector import Selection, Selector
from tokenclean.selection.stats import tie_decided
from tokenclean.selection.table import TokenTable

WEIGHT_MAPPINGS = ("sigmoid",)


@dataclass(frozen=True)
class ScoreSelector(Selector):
    """A selection on the table's response scores; ``seed`` is recorded whatever the level."""

    ratio: float | None = None
    seed: int | None = 42
    threshold: float | None = None

    def describe(self, table: TokenTable, keep: np.ndarray) -> dict[str, Any]:
        return {
            "tie_decided_tokens": tie_decided(keep, table.response_scores, table.response_offsets, self.level)
        }

    def label(self) -> str:
        return f"{self.level} K={self.ratio}"

    def _ratio(self) -> float:
        assert self.ratio is not None
        return self.ratio


class GlobalTopK(ScoreSelector):
    level: ClassVar[str] = "global"

    def keep(self, table: TokenTable) -> np.ndarray:
        return select_global(table.response_scores, self._ratio())


class PerSample(ScoreSelector):
    level: ClassVar[str] = "sample"

    def keep(self, table: TokenTable) -> np.ndarray:
        return select_sample(table.response_scores, table.response_offsets, self._ratio())


class RandomK(ScoreSelector):
    level: ClassVar[str] = "random"

    def keep(self, table: TokenTable) -> np.ndarray:
        return select_random(
            table.response_scores.size, self._ratio(), 42 if self.seed is None else self.seed
        )


class Threshold(ScoreSelector):
    level: ClassVar[str] = "threshold"

    def keep(self, table: TokenTable) -> np.ndarray:
        assert self.threshold is not None
        return select_threshold(table.response_scores, self.threshold)

    def label(self) -> str:
        return f"threshold score>{self.threshold}"


@dataclass(frozen=True)
class SoftWeights(ScoreSelector):
    """The hard global top-K, softened: every scored token kept with its sigmoid weight."""

    level: ClassVar[str] = "global"
    mapping: str = "sigmoid"
    temperature: float = 1.0

    def keep(self, table: TokenTable) -> Selection:
        scores = table.response_scores
        w = soft_weights(scores, select_global(scores, self._ratio()), self.temperature)
        keep = w > 0
        return Selection(keep=keep, weights=w, record={"weights": self.weight_stats(w, keep)})

    def weight_stats(self, weights: np.ndarray, keep: np.ndarray) -> dict[str, Any]:
        tally = WeightTally()
        tally.add(weights[keep])
        return tally.result(self.mapping, self.temperature)


class WeightTally:
    """The ``weights`` record of a soft selection, summed block by block. The sum is exact (every float32
    is an integer multiple of 2**-149, summed as a Python int) and rounded once, so it does not depend on
    how the weights are cut into blocks."""

    def __init__(self) -> None:
        self.scaled = 0  # sum of the kept weights * 2**149
        self.count = self.above_half = 0

    def add(self, w: np.ndarray) -> None:
        """Count the (n,) float32 weights of kept tokens."""
        w = np.ascontiguousarray(w, dtype=np.float32)
        self.count += int(w.size)
        self.above_half += int(np.count_nonzero(w > 0.5))
        self.scaled += exact_scaled_sum(w)

    def result(self, mapping: str, temperature: float) -> dict[str, Any]:
        total = self.scaled / (1 << 149)  # int / int: correctly rounded
        n = self.count
        return {
            "mapping": mapping,
            "temperature": temperature,
            "sum": total,
            "mean": self.scaled / (n << 149) if n else None,
            "share_above_half": self.above_half / n if n else None,
            "effective_tokens": total,
        }


def exact_scaled_sum(x: np.ndarray) -> int:
    """``sum(x) * 2**149`` exactly for finite float32 ``x``: the integer mantissas summed per exponent
    (in float64 slices of at most 2**28 values, below 2**53: exact), then shifted and added as ints."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    total = 0
    for a in range(0, bits.size, 1 << 28):
        b = bits[a : a + (1 << 28)]
        exp = ((b >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int64)  # biased exponent
        man = (b & np.uint32(0x7FFFFF)).astype(np.int64) | np.where(exp > 0, 1 << 23, 0)
        man = np.where(b >> np.uint32(31), -man, man)  # value = man * 2**(max(exp, 1) - 150)
        shift = np.maximum(exp, 1) - 1  # value * 2**149 = man << shift
        sums = np.bincount(shift, weights=man.astype(np.float64), minlength=1)
        for s in np.flatnonzero(sums):
            total += int(sums[s]) << int(s)
    return total


SELECTORS: dict[str, type[ScoreSelector]] = {c.level: c for c in (GlobalTopK, PerSample, RandomK, Threshold)}


def selector_for(settings: dict[str, Any]) -> ScoreSelector:
    """The selector of a checked settings dict (:func:`settings`, optionally with ``weights``)."""
    common = {"ratio": settings["ratio"], "seed": settings["seed"], "threshold": settings["threshold"]}
    if settings.get("weights") is not None:
        return SoftWeights(**common, mapping=settings["weights"], temperature=settings["temperature"])
    return SELECTORS[settings["level"]](**common)


def settings(level: str, ratio: float | None, seed: int, threshold: float | None, column: str) -> dict:
    """Checked settings; ``ratio`` is recorded as None for ``threshold`` and ``threshold`` as None otherwise."""
    if level not in LEVELS:
        raise ConfigError(f"level: unknown '{level}' (valid: {', '.join(LEVELS)})")
    if level == "threshold":
        if threshold is None or not math.isfinite(float(threshold)):
            raise ConfigError(
                f"threshold: level 'threshold' needs a finite threshold value, got {threshold!r}"
            )
        ratio = None
    else:
        if ratio is None:
            raise ConfigError(f"ratio: level '{level}' needs a ratio in [0, 1]")
        ratio_fraction(ratio)
        threshold = None
    return {"level": level, "ratio": ratio, "seed": seed, "threshold": threshold, "column": column}


def weight_settings(settings: dict, mapping: str, temperature: float) -> dict:
    """``settings`` with a checked soft-weight ``mapping`` and ``temperature`` (global level only)."""
    if mapping not in WEIGHT_MAPPINGS:
        raise ConfigError(f"weights: unknown mapping '{mapping}' (valid: {', '.join(WEIGHT_MAPPINGS)})")
    if settings["level"] != "global":
        raise ConfigError(
            f"weights: the '{mapping}' mapping centres on the global top-K cut; use --level global"
        )
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ConfigError(f"temperature: expected a positive number, got {temperature!r}")
    return dict(settings, weights=mapping, temperature=t)


def soft_weights(scores: np.ndarray, hard_keep: np.ndarray, temperature: float) -> np.ndarray:
    """Soft Token Cleaning: ``w = sigmoid((score - tau) / temperature)`` per response token, float32 (N,).

    ``tau`` is the midpoint between the lowest kept and the highest dropped score of the hard global top-K
    selection ``hard_keep``, so a token at the cut gets ~0.5, the hard-kept tokens mostly above it and the
    dropped ones below; ``temperature`` (nats of score) sets how soft the cut is (-> 0: the hard selection).
    Unscored (NaN) tokens get 0. The training loss is then ``sum w*l / sum w`` (policy ``weights``)."""
    finite = np.isfinite(scores)  # the cut sits between finite scores; +-inf get weight 1 / 0
    kept, dropped = scores[hard_keep & finite], scores[~hard_keep & finite]
    lowest_kept = float(kept.min()) if kept.size else None
    highest_dropped = float(dropped.max()) if dropped.size else None
    return sigmoid_weights(scores, soft_cut(lowest_kept, highest_dropped), temperature)


def soft_cut(lowest_kept: float | None, highest_dropped: float | None) -> float:
    """``tau`` of :func:`soft_weights` from the two scores on either side of the hard cut (None: no such
    token); a streaming selection needs only these two numbers."""
    if lowest_kept is not None and highest_dropped is not None:
        return 0.5 * (lowest_kept + highest_dropped)
    if lowest_kept is not None:
        return lowest_kept
    return highest_dropped if highest_dropped is not None else 0.0


def sigmoid_weights(scores: np.ndarray, tau: float, temperature: float) -> np.ndarray:
    """``sigmoid((score - tau) / temperature)``, 0 where the score is NaN: (N,) float32."""
    with np.errstate(invalid="ignore"):  # NaN scores: weight 0 below
        z = (scores.astype(np.float64) - tau) / temperature
    w = 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))
    return np.where(~np.isnan(scores), w, 0.0).astype(np.float32)
