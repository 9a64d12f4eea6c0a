"""Which samples each optimizer step sees, how they are cut into micro-batches, and padding them.

The data order is a pure function of (seed, epoch): ``numpy.random.default_rng([seed, epoch]).permutation(n)``.
Optimizer step ``s`` (0-based, counted over the whole run) takes the ``effective_batch`` samples at positions
``[i * E, (i + 1) * E)`` of epoch ``s // steps_per_epoch``'s order, ``i = s % steps_per_epoch``; the last step of
an epoch may hold fewer samples. No iterator state is needed to resume: the step number is the data position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenclean.alignment import trained_positions
from tokenclean.signals import TokenBatch, make_token_batch
from tokenclean.training.data import TrainData


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


def rank_share(
    samples: np.ndarray, lengths: np.ndarray, rank: int, world: int, group_by_length: bool
) -> np.ndarray:
    """This rank's samples of one optimizer step. With ``group_by_length`` the step's samples are sorted by
    length first (longest first, stable); rank ``r`` of ``world`` then takes every ``world``-th sample from
    ``r``, so every rank gets a similar mix of lengths. ``world = 1`` keeps them all."""
    if group_by_length:
        samples = samples[np.argsort(-lengths[samples], kind="stable")]
    return samples[rank::world]


def micro_batches(
    samples: np.ndarray, lengths: np.ndarray, batch_size: int, group_by_length: bool
) -> list[np.ndarray]:
    """Cut one step's (or one rank's) samples into micro-batches of ``batch_size``; with ``group_by_length``
    sort them by length first (longest first, stable) so each micro-batch pads little. The step's loss does
    not change: it is normalised over the counted tokens of all its micro-batches."""
    if group_by_length:
        samples = samples[np.argsort(-lengths[samples], kind="stable")]
    return [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]


def packed_micro_batches(
    samples: np.ndarray, lengths: np.ndarray, rank: int, world: int, batch_size: int
) -> list[np.ndarray]:
    """This rank's micro-batches of one step, balanced by tokens: the step's samples longest first (stable),
    each to the rank with the fewest tokens so far (ties: the lowest rank); this rank's samples, longest
    first, cut into micro-batches of ``batch_size`` (each packed padding-free by :func:`collate`). Every
    rank computes the same assignment; ``world = 1`` keeps every sample."""
    load = np.zeros(world, dtype=np.int64)  # (world,) tokens assigned so far
    mine = []
    for i in samples[np.argsort(-lengths[samples], kind="stable")]:
        r = int(np.argmin(load))
        load[r] += int(lengths[i])
        if r == rank:
            mine.append(i)
    arr = np.asarray(mine, dtype=np.int64)
    return [arr[i : i + batch_size] for i in range(0, len(arr), batch_size)]


def rank_rows(
    n: int,
    lengths: np.ndarray,
    rank: int,
    world: int,
    steps: int,
    global_batch: int,
    seed: int,
    batch_size: int,
    group_by_length: bool,
    packed: bool,
) -> np.ndarray:
    """The samples rank ``rank`` of ``world`` trains on over the run's ``steps`` optimizer steps, sorted:
    its share of every step (:func:`packed_micro_batches` when ``packed``, else :func:`rank_share`) and
    each step's first sample (the stand-in of a rank with none). Shape (m,) int64; ``world = 1``: all."""
    if world == 1:
        return np.arange(n, dtype=np.int64)
    mine = np.zeros(n, dtype=bool)
    spe = steps_per_epoch(n, global_batch)
    order = np.zeros(0, dtype=np.int64)
    for step in range(steps):
        if step % 64 == 0 and mine.all():
            break
        epoch, i = divmod(step, spe)
        if i == 0 or not order.size:
            order = epoch_order(n, seed, epoch)  # once per epoch: step_samples(step) is a slice of it
        idx = order[i * global_batch : (i + 1) * global_batch]
        if packed:
            for part in packed_micro_batches(idx, lengths, rank, world, batch_size):
                mine[part] = True
        else:
            mine[rank_share(idx, lengths, rank, world, group_by_length)] = True
        mine[idx[:1]] = True
    return np.flatnonzero(mine)


@dataclass
class MicroBatch:
    """One forward pass: the padded samples and their *candidate* tokens (every trained label, j >= 1).

    A token policy turns candidates into weights; :meth:`counted` keeps the tokens with weight > 0, so only
    those reach the LM head in the gradient pass. ``keys`` are (sample index, position) per candidate: a
    global name for a token, the same on every rank and for every micro-batching.
    """

    batch: TokenBatch  # candidates; tensors on the training device
    data_weights: np.ndarray  # (N,) float32: the dataset's ``weights`` column at the candidates, else 1
    sample_rows: np.ndarray  # (B,) dataset index of each row
    positions_by_row: list[np.ndarray]  # per row, its candidate positions
    keys: np.ndarray  # (N, 2) int64 (sample index, position)
    n_tokens: int  # non-padding tokens

    @property
    def n_candidates(self) -> int:
        return len(self.keys)

    @property
    def n_computed(self) -> int:
        """Tokens the forward pass computes (rows x row length, padding included)."""
        return int(self.batch.input_ids.numel())

    @property
    def n_kept(self) -> int:
        """Candidates with a positive dataset weight (with no weights column: all of them)."""
        return int((self.data_weights > 0).sum())

    def counted(self, weights: np.ndarray) -> tuple[TokenBatch, Any]:
        """The batch asking only for tokens with ``weights > 0``, and those weights as a float32 tensor."""
        import torch

        sel = np.flatnonzero(weights > 0)
        idx = torch.from_numpy(sel).to(self.batch.rows.device)
        tb = self.batch.select(idx)  # keeps a packed batch's position_ids
        return tb, torch.from_numpy(np.ascontiguousarray(weights[sel], dtype=np.float32)).to(idx.device)


NOT_PACKED = -1  # collate(row_tokens=NOT_PACKED): one right-padded sample per row


def collate(
    data: TrainData, idx: np.ndarray, device: str = "cpu", row_tokens: int | None = NOT_PACKED
) -> MicroBatch:
    """The samples ``idx`` as one micro-batch; every trained label is a candidate. Right-padded, one sample
    per row (``row_tokens=NOT_PACKED``), or packed padding-free (:func:`tokenclean.packing.
    make_packed_batch`: samples back to back, ``position_ids`` restarting per sample) into rows of at most
    ``row_tokens`` tokens (None: one row). Packing needs data without an ``attention_mask`` column."""
    data.check_loaded(idx)
    ids = [np.asarray(data.input_ids[i], dtype=np.int64) for i in idx]
    att = None if data.attention_mask is None else [data.attention_mask[i] for i in idx]
    pos = [trained_positions(data.labels[i]) for i in idx]  # (n_r,) positions j >= 1 that are trained
    prompt = [data.prompt_mask(i) for i in idx]
    if row_tokens == NOT_PACKED:
        batch = make_token_batch(ids, pos, pad_id=0, attention_mask=att, prompt_mask=prompt)
    else:
        from tokenclean.packing import make_packed_batch

        if att is not None:
            raise ValueError("packing needs data without an attention_mask column")
        batch = make_packed_batch(ids, pos, row_tokens, pad_id=0, prompt_mask=prompt)
    if data.weights is not None:
        w = np.concatenate([np.asarray(data.weights[i], dtype=np.float32)[p] for i, p in zip(idx, pos)])
    else:
        w = np.ones(sum(len(p) for p in pos), dtype=np.float32)
    keys = np.concatenate([np.stack([np.full(len(p), i, dtype=np.int64), p], 1) for i, p in zip(idx, pos)])
    return MicroBatch(
        batch.to(device),
        w,
        np.asarray(idx, dtype=np.int64),
        pos,
        keys.reshape(-1, 2),
        n_tokens=int(sum(len(x) for x in ids)),
    )
