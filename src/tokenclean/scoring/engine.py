"""The scoring engine: ``loss_M(j) = -log P_M(x_j | x_<j)`` at every trained position, in length-bucketed
batches, through the one token-signal primitive :func:`tokenclean.signals.token_signals`.

How it stays fast and lean (and why it is exact):

- The model *body* (decoder) runs once per batch; the LM head is applied only to the hidden states at the
  logit positions ``j - 1`` of trained tokens ``j`` (:mod:`tokenclean.alignment`), ``chunk_rows`` rows at a
  time, so no ``[batch, length, vocab]`` tensor ever exists. Peak extra memory is ``chunk_rows x vocab``.
- The head output is upcast to fp32 before ``logsumexp`` even when the model runs in bf16/fp16.
- Samples are sorted by length (the scoring run sorts the whole dataset, :mod:`.run`) and either packed
  padding-free (:class:`Packing`, :mod:`tokenclean.packing`: samples back to back in a row, ``position_ids``
  restarting per sample, no padding at all) or, where the model's attention does not keep packed samples
  apart, batched with at most ``batch_tokens`` padded tokens (:func:`make_batches`), right-padded with an
  attention mask; a causal model never lets a real token attend to a pad on its right. Either way a
  sample's losses do not depend on its batch mates (tested to 1e-5 in fp32).

:func:`naive_token_losses` is the twin: full logits, ``log_softmax().gather()``; the engine equals it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenclean.alignment import trained_positions
from tokenclean.packing import make_packed_batch, pack_rows
from tokenclean.signals import (
    DEFAULT_CHUNK_ROWS,
    make_token_batch,
    model_parts,
    naive_token_signals,
    token_signals,
)

DEFAULT_BATCH_TOKENS = 1024  # CPU: measured fastest (smaller batches pad less; GEMMs stay efficient)
GPU_BATCH_TOKENS = 16384


def default_batch_tokens(device: str) -> int:
    """Padded tokens per batch: 1024 on CPU (SmolLM2-135M, 2 cores: 1024 beat 2048 and 4096 by 9-20%),
    16384 on CUDA (larger GEMMs, the head chunks bound the memory)."""
    return GPU_BATCH_TOKENS if device.startswith("cuda") else DEFAULT_BATCH_TOKENS


@dataclass(frozen=True)
class Sample:
    """One prepared sample: ``input_ids`` and ``labels`` (int arrays of the same length)."""

    index: int  # row in the prepared dataset
    input_ids: np.ndarray  # (T,)
    labels: np.ndarray  # (T,)


@dataclass(frozen=True)
class SampleLosses:
    """Losses of one sample at its trained positions (ascending, all ``>= 1``)."""

    index: int
    positions: np.ndarray  # (n,) int64, token positions j
    losses: np.ndarray  # (n,) float32, -log P(x_j | x_<j)


def make_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Pack sample indices into batches with ``max_len * n_rows <= batch_tokens`` (a longer sample still
    gets a batch of its own). Samples are taken longest first (stable), so each batch holds similar lengths
    and padding waste stays small. Deterministic for the same lengths and budget."""
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for i in order:
        new_max = max(cur_max, lengths[i])
        if cur and new_max * (len(cur) + 1) > batch_tokens:
            batches.append(cur)
            cur, new_max = [], lengths[i]
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(cur)
    return batches


def make_packed_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Packed batches: samples longest first (stable), each batch taking samples while their *real* tokens
    stay within ``batch_tokens`` (a longer sample gets a batch of its own). No padding to budget for."""
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    batches: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if cur and used + lengths[i] > batch_tokens:
            batches.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += lengths[i]
    if cur:
        batches.append(cur)
    return batches


@dataclass(frozen=True)
class Packing:
    """How a scoring batch is laid out: padded rows (``packed=False``), or samples packed padding-free into
    rows of at most ``row_tokens`` tokens (None: one row; see :mod:`tokenclean.packing`)."""

    packed: bool = False
    row_tokens: int | None = None

    def batches(self, lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
        """The batch plan of ``lengths`` under the ``batch_tokens`` budget. Packed into rows of at most
        ``row_tokens``: the rows are filled first (first-fit decreasing over all ``lengths``), then
        ``batch_tokens // row_tokens`` rows make a batch, so rows stay full."""
        if not self.packed:
            return make_batches(lengths, batch_tokens)
        if self.row_tokens is None:
            return make_packed_batches(lengths, batch_tokens)
        rows = pack_rows(lengths, self.row_tokens)
        per = max(1, batch_tokens // self.row_tokens)
        return [[i for r in rows[k : k + per] for i in r] for k in range(0, len(rows), per)]

    def computed_tokens(self, lengths: Sequence[int]) -> int:
        """Tokens the model computes for ONE batch of samples of ``lengths`` (real + padding)."""
        if not len(lengths):
            return 0
        if not self.packed:
            return max(lengths) * len(lengths)
        rows = pack_rows(lengths, self.row_tokens)
        return len(rows) * max(sum(lengths[i] for i in r) for r in rows)


PADDED = Packing()


def _samples_batch(samples: Sequence[Sample], pad_id: int, packing: Packing = PADDED) -> Any:
    """The samples in one batch (padded or packed), asking for every trained position (j >= 1)."""
    ids = [np.asarray(s.input_ids, dtype=np.int64) for s in samples]
    pos = [trained_positions(s.labels) for s in samples]
    if packing.packed:
        return make_packed_batch(ids, pos, packing.row_tokens, pad_id)
    return make_token_batch(ids, pos, pad_id)


def _split(batch: Any, losses: np.ndarray, samples: Sequence[Sample]) -> list[SampleLosses]:
    """Per-sample results from the flat (N,) losses, samples in batch order."""
    smp, pos = batch.token_sample.numpy(), batch.token_pos.numpy()
    return [SampleLosses(s.index, pos[smp == r], losses[smp == r]) for r, s in enumerate(samples)]


def batch_token_losses(
    model: Any,
    samples: Sequence[Sample],
    pad_id: int = 0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    packing: Packing = PADDED,
) -> list[SampleLosses]:
    """Losses at every trained position of each sample, from :func:`tokenclean.signals.token_signals` in one
    batch (padded, or packed padding-free) without full logits.

    Equals :func:`naive_token_losses` (fp32: to ~1e-6; bf16: up to bf16 rounding of the head matmul)."""
    batch = _samples_batch(samples, pad_id, packing)
    device = model_parts(model)[1].weight.device
    out = token_signals(model, batch.to(device), ("loss",), chunk_rows=chunk_rows)
    return _split(batch, out["loss"].float().cpu().numpy(), samples)


def naive_token_losses(model: Any, samples: Sequence[Sample], pad_id: int = 0) -> list[SampleLosses]:
    """The naive twin: full ``[B, T, V]`` logits from ``model(...)`` on the right-padded batch,
    ``log_softmax`` in fp32, ``gather``. Slow and memory-hungry; used by tests and the self-check only."""
    batch = _samples_batch(samples, pad_id)
    device = next(model.parameters()).device
    out = naive_token_signals(model, batch.to(device), ("loss",))
    return _split(batch, out["loss"].cpu().numpy(), samples)


def iter_token_losses(
    model: Any,
    samples: Sequence[Sample],
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    pad_id: int = 0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    packing: Packing = PADDED,
) -> Iterator[list[SampleLosses]]:
    """Score ``samples`` in length-bucketed (or packed) batches; yields each batch's results (batch order,
    not input order). Every sample appears exactly once."""
    for idx in packing.batches([len(s.input_ids) for s in samples], batch_tokens):
        yield batch_token_losses(model, [samples[i] for i in idx], pad_id, chunk_rows, packing)
