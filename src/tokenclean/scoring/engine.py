"""The per-token loss engine: ``loss_M(j) = -log P_M(x_j | x_<j)`` at every trained position.

How it stays fast and lean (and why it is exact):

- The model *body* (decoder) runs once per batch; the LM head is applied only to the hidden states at the
  logit positions ``j - 1`` of trained tokens ``j`` (:mod:`tokenclean.alignment`), ``chunk_rows`` rows at a
  time, so no ``[batch, length, vocab]`` tensor ever exists. Peak extra memory is ``chunk_rows x vocab``.
- The head output is upcast to fp32 before ``logsumexp`` even when the model runs in bf16/fp16.
- Samples are sorted by length and packed into batches of at most ``batch_tokens`` padded tokens
  (:func:`make_batches`), right-padded with an attention mask; a causal model never lets a real token attend to
  a pad on its right, so a sample's losses do not depend on its batch mates (tested to 1e-5 in fp32).

:func:`naive_token_losses` is the twin: full logits, ``log_softmax().gather()``; the engine equals it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.alignment import logit_positions, trained_positions

DEFAULT_BATCH_TOKENS = 1024  # CPU: measured fastest (smaller batches pad less; GEMMs stay efficient)
GPU_BATCH_TOKENS = 16384


def default_batch_tokens(device: str) -> int:
    """Padded tokens per batch: 1024 on CPU (SmolLM2-135M, 2 cores: 1024 beat 2048 and 4096 by 9-20%),
    16384 on CUDA (larger GEMMs, the head chunks bound the memory)."""
    return GPU_BATCH_TOKENS if device.startswith("cuda") else DEFAULT_BATCH_TOKENS


DEFAULT_CHUNK_ROWS = 256  # rows of the LM head per step: 256 x vocab fp32 logits (49k vocab: 50 MB)


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


def model_parts(model: Any) -> tuple[Any, Any, Any]:
    """``(decoder, lm_head, config)`` of a causal LM, also inside a PEFT wrapper (public APIs only).

    The decoder returns the final-norm hidden states; ``lm_head`` maps them to logits. LoRA layers injected
    by PEFT live inside these modules, so ``disable_adapter()`` on the wrapper still applies."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = inner.get_decoder()
    head = inner.get_output_embeddings()
    if decoder is inner or head is None:
        raise TypeError(f"{type(inner).__name__} has no separate decoder and LM head; not a causal LM")
    return decoder, head, inner


def _head_transform(inner: Any, logits: Any) -> Any:
    """Architecture-specific logit post-processing some causal LMs apply after the head (fp32 in, fp32 out):
    Gemma-2/3 final soft-capping, Granite ``logits_scaling``, Cohere ``logit_scale``. Anything else is
    caught by the self-check in :mod:`tokenclean.scoring.store` (engine vs full forward on one sample)."""
    import torch

    cfg = inner.config
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    scaling = getattr(cfg, "logits_scaling", None)
    if scaling:
        logits = logits / scaling
    scale = getattr(inner, "logit_scale", None)
    if isinstance(scale, (int, float)):
        logits = logits * scale
    return logits


def collate(samples: Sequence[Sample], pad_id: int = 0) -> dict[str, Any]:
    """Right-pad a batch: ``input_ids``, ``attention_mask``, ``position_ids`` (B, T) and ``labels`` (B, T)
    with IGNORE_INDEX on pads."""
    import torch

    t_max = max(len(s.input_ids) for s in samples)
    b = len(samples)
    ids = torch.full((b, t_max), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((b, t_max), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    mask = torch.zeros((b, t_max), dtype=torch.long)  # (B, T)
    for r, s in enumerate(samples):
        n = len(s.input_ids)
        ids[r, :n] = torch.from_numpy(
            np.array(s.input_ids, dtype=np.int64)
        )  # copy: Arrow views are read-only
        labels[r, :n] = torch.from_numpy(np.array(s.labels, dtype=np.int64))
        mask[r, :n] = 1
    pos = torch.arange(t_max, dtype=torch.long).unsqueeze(0).expand(b, t_max)  # (B, T); real tokens 0..n-1
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "labels": labels}


def _targets(labels: Any) -> tuple[Any, Any, Any]:
    """``(rows, logit_cols, target_ids)`` of every trained position of a (B, T) label tensor (alignment rule:
    the token at ``j`` is predicted by the logits at ``j - 1``)."""
    import torch

    rows_l, cols_l = [], []
    for r in range(labels.shape[0]):
        pos = trained_positions(labels[r].numpy())  # (n_r,) token positions j >= 1
        rows_l.append(np.full(len(pos), r, dtype=np.int64))
        cols_l.append(logit_positions(pos))  # (n_r,) j - 1
    rows = torch.from_numpy(np.concatenate(rows_l))  # (N,)
    cols = torch.from_numpy(np.concatenate(cols_l))  # (N,)
    return rows, cols, labels[rows, cols + 1]  # target ids (N,)


def _split(rows: Any, cols: Any, losses: Any, samples: Sequence[Sample]) -> list[SampleLosses]:
    """Per-sample results from the flat (N,) losses, rows in batch order."""
    rows_np, pos_np = rows.numpy(), cols.numpy() + 1
    out = []
    for r, s in enumerate(samples):
        sel = rows_np == r
        out.append(SampleLosses(s.index, pos_np[sel], losses[sel]))
    return out


def batch_token_losses(
    model: Any, samples: Sequence[Sample], pad_id: int = 0, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> list[SampleLosses]:
    """Losses at every trained position of each sample, computed in one padded batch without full logits.

    Equals :func:`naive_token_losses` (fp32: to ~1e-6; bf16: up to bf16 rounding of the head matmul)."""
    import torch

    decoder, head, inner = model_parts(model)
    batch = collate(samples, pad_id)
    rows, cols, tgt = _targets(batch["labels"])  # (N,), (N,), (N,)
    device = head.weight.device
    with torch.inference_mode():
        out = decoder(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            position_ids=batch["position_ids"].to(device),
            use_cache=False,
        )
        hidden = out.last_hidden_state  # (B, T, H), final norm applied
        h = hidden[rows.to(device), cols.to(device)]  # (N, H) hidden states at logit positions j-1
        del hidden, out
        tgt_d = tgt.to(device)
        losses = torch.empty(len(tgt), dtype=torch.float32, device=device)  # (N,)
        for lo in range(0, len(tgt), chunk_rows):
            logits = head(h[lo : lo + chunk_rows]).float()  # (C, V) fp32
            logits = _head_transform(inner, logits)
            lse = torch.logsumexp(logits, dim=-1)  # (C,)
            tl = logits.gather(1, tgt_d[lo : lo + chunk_rows, None]).squeeze(1)  # (C,)
            losses[lo : lo + chunk_rows] = lse - tl
    return _split(rows, cols, losses.cpu().numpy(), samples)


def naive_token_losses(model: Any, samples: Sequence[Sample], pad_id: int = 0) -> list[SampleLosses]:
    """The naive twin: full ``[B, T, V]`` logits from ``model(...)``, ``log_softmax`` in fp32, ``gather``.
    Slow and memory-hungry; used by tests and the self-check only."""
    import torch

    batch = collate(samples, pad_id)
    rows, cols, tgt = _targets(batch["labels"])
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            position_ids=batch["position_ids"].to(device),
            use_cache=False,
        ).logits  # (B, T, V)
        logp = logits.float().log_softmax(-1)  # (B, T, V)
        picked = logp[rows.to(device), cols.to(device)].gather(1, tgt.to(device)[:, None])  # (N, 1)
        losses = (-picked.squeeze(1)).cpu().numpy()
    return _split(rows, cols, losses, samples)


def iter_token_losses(
    model: Any,
    samples: Sequence[Sample],
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    pad_id: int = 0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Iterator[list[SampleLosses]]:
    """Score ``samples`` in length-bucketed batches; yields each batch's results (batch order, not input
    order). Every sample appears exactly once."""
    for idx in make_batches([len(s.input_ids) for s in samples], batch_tokens):
        yield batch_token_losses(model, [samples[i] for i in idx], pad_id, chunk_rows)
