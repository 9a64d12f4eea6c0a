"""The training loss: weighted cross-entropy on counted tokens, normalised over the whole step on all ranks.

THE LOSS RULE. A token policy (:mod:`tokenclean.training.policies`) gives every candidate token ``j`` of
an optimizer step a weight ``w_j >= 0`` (hard selection: 0 or 1). The loss of the step is

    loss_step = sum_{rank} sum_{micro-batch m} sum_{j in m} w_j * m_j * (-log P(x_j | x_<j))  /  W_step

with ``W_step = sum of w_j over every micro-batch of every rank`` (all-reduced before the first backward) and
``m_j`` the policy's in-forward multiplier (1 unless the policy sets one). With hard weights this is the
mean over all kept tokens of the step, *not* a mean of per-micro-batch (or per-rank) means. Each
micro-batch calls ``backward(sum_m * world / W_step)``: DDP averages gradients over ``world`` ranks, so the
accumulated gradient equals that of one big batch holding every sample of the step, whatever the
micro-batching and the number of processes. Gradients are synchronised once, on a rank's last micro-batch.
A step with ``W_step = 0`` does no backward pass on any rank and reports no loss (never NaN).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.signals import TokenBatch, naive_token_signals, token_signals
from tokenclean.training.collate import MicroBatch
from tokenclean.training.distributed import LOCAL, StepDist


def kept_token_ce_sum(model: Any, mb: MicroBatch, weights: np.ndarray | None = None) -> Any:
    """``sum_j w_j * -log P(x_j | x_<j)`` over the micro-batch's tokens with ``w_j > 0`` (default: the
    dataset weights, i.e. every kept label), a float32 scalar with grad. The LM head runs only at the
    counted tokens' logit positions (:func:`tokenclean.signals.token_signals`). Equals
    :func:`naive_kept_token_ce_sum` for unit weights up to float rounding."""
    tb, w = mb.counted(mb.data_weights if weights is None else weights)
    return (w * token_signals(model, tb, ("loss",), grad=True)["loss"]).sum()


def naive_kept_token_ce_sum(model: Any, mb: MicroBatch) -> Any:
    """The textbook twin (unit weights): full logits, ``logits[:, :-1]`` against ``labels[:, 1:]``,
    ``ignore_index=-100``, summed."""
    import torch
    import torch.nn.functional as F

    b = mb.batch
    labels = torch.full_like(b.input_ids, IGNORE_INDEX)  # (B, T)
    labels[b.rows, b.pos] = b.input_ids[b.rows, b.pos]
    logits = mb_model_logits(model, b)  # (B, T, V)
    v = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, v).float(),  # (B*(T-1), V)
        labels[:, 1:].reshape(-1),  # (B*(T-1),)
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def mb_model_logits(model: Any, b: TokenBatch) -> Any:
    return model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step's forward/backward passes saw (summed over all ranks)."""

    loss: float | None  # weighted token-mean CE of the step; None when no token counted
    n_kept: int  # tokens counted (weight > 0) over all ranks
    n_tokens: int  # non-padding input tokens processed over all ranks (gradient pass)
    weight_sum: float = 0.0  # W_step, the loss denominator
    # this rank's in-forward multipliers (e.g. DFT's sg(p)) of the counted tokens, per micro-batch index in
    # the order of its counted candidates; empty without a multiplier
    multipliers: dict[int, np.ndarray] = field(default_factory=dict)


def accumulate_step(
    model: Any,
    batches: Sequence[MicroBatch],
    weights: Sequence[np.ndarray] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    dist: StepDist = LOCAL,
    multiplier: Callable[[dict[str, Any]], Any] | None = None,
    forward_signals: tuple[str, ...] = (),
) -> StepResult:
    """Forward and backward every micro-batch of this rank's share of one step, accumulating into ``.grad``
    by the loss rule (module doc). ``weights`` default to the dataset weights (every kept label: 1).

    With several ranks every rank takes part in the gradient all-reduce of the step even when it counts no
    token (its last micro-batch runs with weight 0), so no rank waits forever."""
    import torch

    ws = [mb.data_weights for mb in batches] if weights is None else list(weights)
    w_step = dist.sum(sum(float(np.sum(w, dtype=np.float64)) for w in ws))
    n_kept = int(dist.sum(sum(int((w > 0).sum()) for w in ws)))
    n_tokens = int(dist.sum(sum(mb.n_tokens for mb in batches)))
    if w_step <= 0:
        return StepResult(None, 0, n_tokens, 0.0, {})
    work = [(mb, w) for mb, w in zip(batches, ws) if (w > 0).any()]
    if dist.world > 1 and not work and batches:
        mb = batches[-1]  # takes part in the all-reduce with a zero contribution
        work = [(mb, np.where(np.arange(mb.n_candidates) == 0, 1.0, 0.0).astype(np.float32))]
        zero = True
    else:
        zero = False
    total = 0.0
    mults: dict[int, np.ndarray] = {}
    index = {id(mb): k for k, mb in enumerate(batches)}
    for i, (mb, w) in enumerate(work):
        ctx = contextlib.nullcontext() if i == len(work) - 1 else dist.no_sync()
        with ctx:
            tb, wt = mb.counted(w)
            with autocast():
                sig = token_signals(model, tb, ("loss", *forward_signals), grad=True)
            m = multiplier(sig) if multiplier is not None else None
            if m is not None and not zero:
                n = len(wt)
                mults[index[id(mb)]] = np.broadcast_to(
                    torch.as_tensor(m).detach().float().cpu().numpy(), (n,)
                )
            contrib = (wt * sig["loss"] * (1.0 if m is None else m)).sum()
            if zero:
                contrib = contrib * 0.0
            dist.backward(contrib * (dist.world / w_step))
        total += float(contrib.detach())
    return StepResult(dist.sum(total) / w_step, n_kept, n_tokens, w_step, mults)


__all__ = [
    "StepResult",
    "accumulate_step",
    "kept_token_ce_sum",
    "naive_kept_token_ce_sum",
    "naive_token_signals",
]
