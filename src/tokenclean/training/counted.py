"""The tokens an online policy counted: ``OUT/counted/step-NNNNN.npz`` of a training output.

Written by the training loop (rank 0, the arrays gathered from every rank) for each optimizer step from the
start of the epoch in which the run's last epoch-length of steps begins, so every sample's last visit is
recorded even when the run ends mid-epoch (``budget.match_updates``); read by the report and the
ground-truth recovery, which take each sample's tokens from its last visit. Format of one file
(``numpy.savez``):

- ``keys``: (N, 2) int64, (dataset sample index, token position) of each counted token of the step;
- ``weights``: (N,) float32, its effective weight (the policy's weight times an in-forward multiplier such
  as DFT's ``sg(p)``);
- ``samples``: (S,) int64, the dataset index of every sample the step trained on, counted tokens or not
  (files written before it existed lack it: their tokens are merged over the recorded steps).

A step re-run after a resume overwrites its file (atomically).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tokenclean.utils import read_json

COUNTED = "counted"


def write_counted(
    out: Path, step: int, keys: np.ndarray, weights: np.ndarray, samples: np.ndarray | None = None
) -> Path:
    """Write step ``step``'s counted tokens (``keys`` (N, 2) int64, ``weights`` (N,) float32) and the
    samples it trained on (``samples`` (S,) int64) atomically."""
    rows = np.unique(keys.reshape(-1, 2)[:, 0]) if samples is None else np.asarray(samples)
    d = Path(out) / COUNTED
    d.mkdir(parents=True, exist_ok=True)
    tmp, final = d / f".step-{step:05d}.npz", d / f"step-{step:05d}.npz"
    with open(tmp, "wb") as f:
        np.savez(
            f,
            keys=keys.reshape(-1, 2).astype(np.int64),
            weights=weights.astype(np.float32),
            samples=rows.astype(np.int64),
        )
    os.replace(tmp, final)
    return final


def counted_tokens(train_dir: str | Path, data_dir: str | Path) -> dict[str, dict[int, float]]:
    """The tokens an online policy counted at each sample's last recorded visit in a finished run:
    sample_id -> {position: weight}; a sample whose last visit counted nothing maps to ``{}``."""
    from tokenclean.training.data import load_train_data

    done = read_json(Path(train_dir) / "done.json")
    data = load_train_data(data_dir, int(done["config"]["max_length"]))
    out: dict[str, dict[int, float]] = {}
    for f in sorted((Path(train_dir) / COUNTED).glob("step-*.npz")):
        with np.load(f) as z:
            if "samples" in z.files:  # a visit replaces what earlier visits of the sample counted
                for i in z["samples"]:
                    out[data.sample_ids[int(i)]] = {}
            for (i, pos), w in zip(z["keys"], z["weights"]):
                out.setdefault(data.sample_ids[int(i)], {})[int(pos)] = float(w)
    return out


__all__ = ["COUNTED", "counted_tokens", "write_counted"]
