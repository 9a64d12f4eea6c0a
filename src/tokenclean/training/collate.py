"""Which samples each optimizer step sees, how they are cut into micro-batches, and padding them.

The data order is a pure function of (seed, epoch): ``numpy.random.default_rng([seed, epoch]).permutation(n)``.
Optimizer step ``s`` (0-based, counted over the whole run) takes the ``effective_batch`` samples at positions
``[i * E, (i + 1) * E)`` of epoch ``s // steps_per_epoch``'s order, ``i = s % steps_per_epoch``; the last step of
an epoch may hold fewer samples. No iterator state is needed to resume: the step number is the data position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.alignment import logit_positions, trained_positions
from tokenclean.training.data import TrainData

if TYPE_CHECKING:
    import torch


def steps_per_epoch(n_samples: int, effective_batch: int) -> int:
    return math.ceil(n_samples / effective_batch)


def total_steps(n_samples: int, effective_batch: int, epochs: int, max_steps: int | None) -> int:
    """Optimizer steps of the run: ``max_steps`` when set, else ``epochs * ceil(n / effective_batch)``."""
    return max_steps if max_steps is not None else epochs * steps_per_epoch(n_samples, effective_batch)


def epoch_order(n_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The seeded shuffle of epoch ``epoch``: a permutation of ``range(n_samples)``. Shape (n,)."""
    return np.random.default_rng([seed, epoch]).permutation(n_samples)


def step_samples(n_samples: int, effective_batch: int, seed: int, step: int) -> np.ndarray:
    """Sample indices of optimizer step ``step`` (0-based over the run, epochs cycle). Shape (<= E,)."""
    spe = steps_per_epoch(n_samples, effective_batch)
    epoch, i = divmod(step, spe)
    return epoch_order(n_samples, seed, epoch)[i * effective_batch : (i + 1) * effective_batch]


def micro_batches(
    samples: np.ndarray, lengths: np.ndarray, batch_size: int, group_by_length: bool
) -> list[np.ndarray]:
    """Cut one step's samples into micro-batches of ``batch_size``; with ``group_by_length`` sort them by
    length first (longest first, stable) so each micro-batch pads little. The step's loss does not change:
    it is a mean over the kept tokens of all its micro-batches."""
    if group_by_length:
        samples = samples[np.argsort(-lengths[samples], kind="stable")]
    return [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]


@dataclass
class MicroBatch:
    """Padded tensors of one forward pass plus the kept tokens in flat form.

    ``rows``/``logit_pos``/``targets`` list every kept token: the token ``targets[k]`` of row ``rows[k]`` is
    predicted by the logits at ``logit_pos[k]`` (= its position - 1, via :mod:`tokenclean.alignment`).
    """

    input_ids: torch.Tensor  # torch.LongTensor (B, T), right-padded with 0
    attention_mask: torch.Tensor  # torch.LongTensor (B, T), 0 on padding
    labels: torch.Tensor  # torch.LongTensor (B, T), IGNORE_INDEX on padding and untrained positions
    rows: torch.Tensor  # torch.LongTensor (N,)
    logit_pos: torch.Tensor  # torch.LongTensor (N,)
    targets: torch.Tensor  # torch.LongTensor (N,)
    n_kept: int  # N
    n_tokens: int  # non-padding tokens


def collate(data: TrainData, idx: np.ndarray, device: str = "cpu") -> MicroBatch:
    """Right-pad the samples ``idx`` into one micro-batch."""
    import torch

    lens = [len(data.input_ids[i]) for i in idx]
    b, t = len(idx), max(lens)
    ids = np.zeros((b, t), dtype=np.int64)  # (B, T)
    att = np.zeros((b, t), dtype=np.int64)  # (B, T)
    lab = np.full((b, t), IGNORE_INDEX, dtype=np.int64)  # (B, T)
    rows, lpos, tgts = [], [], []
    for r, (i, n) in enumerate(zip(idx, lens)):
        ids[r, :n] = data.input_ids[i]
        att[r, :n] = 1 if data.attention_mask is None else data.attention_mask[i]
        lab[r, :n] = data.labels[i]
        tok_pos = trained_positions(lab[r, :n])  # (n_r,) positions j >= 1 that are trained
        rows.append(np.full(len(tok_pos), r, dtype=np.int64))
        lpos.append(logit_positions(tok_pos))  # (n_r,) j - 1
        tgts.append(lab[r, tok_pos])
    flat = [np.concatenate(x) for x in (rows, lpos, tgts)]
    ts = [torch.from_numpy(x).to(device) for x in (ids, att, lab, *flat)]
    return MicroBatch(ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], n_kept=len(flat[0]), n_tokens=int(sum(lens)))
