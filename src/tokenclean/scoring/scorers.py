"""Scorers: pure functions from per-token losses to per-token scores, in a registry.

A scorer takes flat float32 arrays aligned to token positions (``base_loss``, ``ref_loss``, NaN where a
position is not scored) and the boolean ``mask`` of scored positions, and returns a float32 array of the
same shape (NaN outside ``mask``). Higher score = more worth keeping. Scorers never load models or read
files; later stages (selection) only see their output.

Registered here:

- ``token_cleaning``: ``base_loss - ref_loss`` (Token Cleaning, Eq. 2-3; also RHO-1's excess loss).
- ``base_loss``: the base model's loss (high = the base finds the token surprising).
- ``ref_loss``: the reference model's loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tokenclean.errors import ConfigError

ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Scorer:
    """A registered scorer: its function, whether it needs reference losses, and a one-line description."""

    name: str
    fn: ScoreFn
    needs_reference: bool
    doc: str

    def __call__(self, base_loss: np.ndarray, ref_loss: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Apply the scorer; the result is float32 of ``base_loss``'s shape with NaN outside ``mask``."""
        mask = np.asarray(mask, dtype=bool)
        out = np.asarray(self.fn(base_loss, ref_loss, mask), dtype=np.float32).copy()
        if out.shape != base_loss.shape:
            raise ValueError(f"scorer '{self.name}' returned shape {out.shape}, expected {base_loss.shape}")
        out[~mask] = np.nan
        return out


SCORERS: dict[str, Scorer] = {}


def register(name: str, needs_reference: bool, doc: str) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator adding a pure ``(base_loss, ref_loss, mask) -> score`` function to :data:`SCORERS`."""

    def deco(fn: ScoreFn) -> ScoreFn:
        if name in SCORERS:
            raise ValueError(f"scorer '{name}' is already registered")
        SCORERS[name] = Scorer(name, fn, needs_reference, doc)
        return fn

    return deco


def get_scorer(name: str) -> Scorer:
    """The scorer called ``name``; an unknown name raises :class:`ConfigError` listing the valid ones."""
    try:
        return SCORERS[name]
    except KeyError:
        valid = ", ".join(sorted(SCORERS))
        raise ConfigError(f"scorer: unknown scorer '{name}' (valid: {valid})") from None


@register("token_cleaning", needs_reference=True, doc="base_loss - ref_loss (Token Cleaning influence)")
def token_cleaning(base_loss: np.ndarray, ref_loss: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return base_loss - ref_loss


@register("base_loss", needs_reference=False, doc="the base model's per-token loss")
def base_loss(base_loss: np.ndarray, ref_loss: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return base_loss


@register("ref_loss", needs_reference=True, doc="the reference model's per-token loss")
def ref_loss(base_loss: np.ndarray, ref_loss: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return ref_loss
