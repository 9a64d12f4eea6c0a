"""Padding-free batches: several samples flattened into one row, ``position_ids`` restarting at every sample.

The building block of scoring (:mod:`tokenclean.scoring.engine`) and of training micro-batches: a list of
samples becomes a :class:`tokenclean.signals.TokenBatch` whose rows hold whole samples back to back, like
transformers' ``DataCollatorWithFlattening``. There is no ``attention_mask``; transformers reads the sample
boundaries from ``position_ids`` (a position that is not the previous one + 1 starts a new sample):

- ``flash_attention_2`` (and 3): the varlen kernel gets ``cu_seqlens`` from the position_ids of ONE row,
  so nothing is computed across samples; pack into a single row (``row_tokens=None``).
- ``sdpa``, ``eager`` (and flex): ``masking_utils.find_packed_sequence_indices`` builds a block-diagonal
  causal mask, on CPU too (transformers >= 4.53; tested with the installed version in
  tests/unit/test_packing.py). The mask is ``(rows, T, T)``: bound the row length with ``row_tokens``.

A model whose attention ignores packed position_ids would mix samples; :func:`packing_works` is the
cheap probe (two short samples packed against each alone) callers run once before packing.

Padding efficiency = real tokens / computed tokens (rows x row length): 1.0 for one packed row,
:func:`padding_efficiency` for any batch.

Use (training side, the same call)::

    batch = make_packed_batch(ids_list, positions_list, row_tokens=None, prompt_mask=prompts)
    out = token_signals(model, batch.to(device), ("loss",), grad=True)
    # out["loss"][k] belongs to sample batch.token_sample[k] at position batch.token_pos[k]
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from tokenclean.alignment import logit_positions
from tokenclean.signals import TokenBatch

PACK_ROW_TOKENS = 4096  # sdpa/eager: longest packed row (its T x T mask); a longer sample gets its own row


def pack_rows(lengths: Sequence[int], row_tokens: int | None = None) -> list[list[int]]:
    """Sample indices per row: first-fit decreasing into rows of at most ``row_tokens`` tokens (a longer
    sample gets a row of its own); ``None``: every sample in one row, in the given order. Deterministic."""
    if row_tokens is None:
        return [list(range(len(lengths)))] if len(lengths) else []
    if row_tokens < 1:
        raise ValueError(f"row_tokens must be >= 1, got {row_tokens}")
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(row_tokens - lengths[i])
    return rows


def make_packed_batch(
    input_ids: Sequence[np.ndarray],
    positions: Sequence[np.ndarray],
    row_tokens: int | None = None,
    pad_id: int = 0,
    prompt_mask: Sequence[np.ndarray] | None = None,
) -> TokenBatch:
    """Pack samples ``input_ids`` into rows (:func:`pack_rows`) and ask for ``positions[s]`` (token
    positions ``>= 1`` inside sample ``s``). Asked tokens come sample by sample in the given order, so
    ``token_sample``/``token_pos`` equal those of :func:`tokenclean.signals.make_token_batch` on the same
    lists. Rows shorter than the longest are padded at the end with a segment of their own."""
    import torch

    lens = [len(x) for x in input_ids]
    layout = pack_rows(lens, row_tokens)
    t = max((sum(lens[i] for i in row) for row in layout), default=0)
    ids = np.full((len(layout), t), pad_id, dtype=np.int64)  # (B, T)
    pids = np.zeros((len(layout), t), dtype=np.int64)  # (B, T)
    pm = np.zeros((len(layout), t), dtype=bool) if prompt_mask is not None else None  # (B, T)
    where = np.zeros((len(lens), 2), dtype=np.int64)  # (S, 2) row and start of each sample
    for r, row in enumerate(layout):
        off = 0
        for s in row:
            n = lens[s]
            ids[r, off : off + n] = input_ids[s]
            pids[r, off : off + n] = np.arange(n)
            if pm is not None and prompt_mask is not None:
                pm[r, off : off + n] = prompt_mask[s]
            where[s] = (r, off)
            off += n
        pids[r, off:] = np.arange(t - off)  # the tail pads: a segment of their own, read by no one
    pos = [np.asarray(p, dtype=np.int64) for p in positions]
    for p in pos:
        logit_positions(p)  # raises on position 0 (the alignment rule)
    empty = np.zeros(0, dtype=np.int64)
    sample = np.concatenate(
        [np.full(len(p), s, dtype=np.int64) for s, p in enumerate(pos)] or [empty]
    )  # (N,)
    local = np.concatenate(pos or [empty])  # (N,)
    return TokenBatch(
        torch.from_numpy(ids),
        None,
        torch.from_numpy(where[sample, 0]),
        torch.from_numpy(where[sample, 1] + local),
        None if pm is None else torch.from_numpy(pm),
        position_ids=torch.from_numpy(pids),
        sample=torch.from_numpy(sample),
        sample_pos=torch.from_numpy(local),
    )


def padding_efficiency(real_tokens: int, batch: TokenBatch) -> float:
    """Real tokens / computed tokens (``rows x row length``) of one batch (1.0 for an empty batch)."""
    computed = int(batch.input_ids.numel())
    return real_tokens / computed if computed else 1.0


def row_tokens_for(attn_implementation: str | None, batch_tokens: int) -> int | None:
    """Packed row length for an attention implementation: one row (None) for the varlen kernels (flash),
    else ``min(batch_tokens, PACK_ROW_TOKENS)`` (the ``T x T`` mask of sdpa/eager stays small)."""
    from tokenclean.signals import VARLEN_ATTENTION

    if attn_implementation in VARLEN_ATTENTION:
        return None
    return min(batch_tokens, PACK_ROW_TOKENS)


def packing_works(model: Any, tol: float = 1e-3) -> bool:
    """Whether ``model`` keeps packed samples apart: two short samples packed in one row give the losses
    each gives alone (max difference <= ``tol`` nats; bf16 adds rounding, so keep tol loose for it). The
    result is remembered on the model object."""
    import torch

    from tokenclean.signals import make_token_batch, model_parts, token_signals

    cached = getattr(model, "_tokenclean_packing_works", None)
    if cached is not None:
        return bool(cached)
    head = model_parts(model)[1]
    vocab = int(head.weight.shape[0])
    gen = np.random.default_rng(0)
    samples = [gen.integers(1, vocab, size=n).astype(np.int64) for n in (11, 7)]
    pos = [np.arange(1, len(x)) for x in samples]
    dev = head.weight.device
    packed = token_signals(model, make_packed_batch(samples, pos).to(dev))["loss"].float()
    alone = torch.cat(
        [token_signals(model, make_token_batch([x], [p]).to(dev))["loss"] for x, p in zip(samples, pos)]
    )
    ok = float((packed - alone.float()).abs().max()) <= tol
    with contextlib.suppress(AttributeError):  # a module that forbids new attributes: probe again next time
        model._tokenclean_packing_works = ok
    return ok


__all__ = [
    "PACK_ROW_TOKENS",
    "make_packed_batch",
    "pack_rows",
    "packing_works",
    "padding_efficiency",
    "row_tokens_for",
]
