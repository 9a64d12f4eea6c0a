"""The one alignment rule, written once.

Every per-token array (labels, losses, scores, keep-masks, weights) is indexed by the position of the
token it is about: the same index as ``input_ids``. ``loss(j) = -log P(x_j | x_<j)`` comes from the
logits at position ``j - 1``. Position 0 therefore never has a loss and is never trained.

Everything that goes between "position of a token" and "position of the logits that predict it" calls
these functions; nothing else shifts by one.
"""

from __future__ import annotations

import numpy as np

from tokenclean import IGNORE_INDEX


def trained_positions(labels: np.ndarray) -> np.ndarray:
    """Positions ``j >= 1`` whose label is trained (``labels[j] != IGNORE_INDEX``), ascending. Shape (n,)."""
    labels = np.asarray(labels)
    pos = np.flatnonzero(labels != IGNORE_INDEX)
    return pos[pos >= 1]


def logit_positions(token_positions: np.ndarray) -> np.ndarray:
    """The positions whose logits predict ``token_positions``: ``j - 1``."""
    token_positions = np.asarray(token_positions)
    if token_positions.size and token_positions.min() < 1:
        raise ValueError("position 0 has no preceding logits; it can never be scored or trained")
    return token_positions - 1


def scatter_to_positions(length: int, positions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A float32 array of ``length`` with ``values`` at ``positions`` and NaN elsewhere (the store layout)."""
    out = np.full(length, np.nan, dtype=np.float32)
    out[np.asarray(positions)] = np.asarray(values, dtype=np.float32)
    return out
