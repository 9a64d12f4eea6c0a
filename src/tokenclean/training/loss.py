"""The training loss: cross-entropy on kept tokens, normalised over the whole optimizer step.

THE LOSS RULE. The loss of an optimizer step is the mean over *all kept tokens of all its accumulated
micro-batches*::

    loss_step = sum_{micro-batch m} sum_{kept token j in m} -log P(x_j | x_<j)  /  N_step

where ``N_step`` is the number of kept tokens of the whole step. It is *not* the mean of per-micro-batch
means (which would weight a token of a micro-batch with few kept tokens more than one of a micro-batch with
many). :func:`accumulate_step` counts ``N_step`` first, then calls ``backward(ce_sum_m / N_step)`` for each
micro-batch, so the accumulated gradient equals the gradient of one big batch holding every sample of the
step, whatever the micro-batch size. A step with no kept token does no backward pass and reports no loss
(never NaN).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tokenclean import IGNORE_INDEX
from tokenclean.training.collate import MicroBatch


def supports_logits_to_keep(model: Any) -> bool:
    """Whether the (PEFT-wrapped) causal LM's forward accepts ``logits_to_keep`` (transformers >= 4.50)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def kept_token_ce_sum(model: Any, mb: MicroBatch, logits_to_keep: bool = True) -> torch.Tensor:
    """Sum of ``-log P(x_j | x_<j)`` over the kept tokens of one micro-batch, a float32 scalar.

    The LM head runs only at logit positions some row needs (``logits_to_keep``, the union over rows), and
    the cross-entropy is taken in float32 on the ``(N, V)`` rows of kept tokens only, so a full
    ``(B, T, V)`` float32 tensor is never built. Equals :func:`naive_kept_token_ce_sum` (full logits,
    labels shifted by one) up to float rounding.
    """
    if logits_to_keep:
        pos, col = torch.unique(mb.logit_pos, sorted=True, return_inverse=True)  # (K,), (N,)
        out = model(
            input_ids=mb.input_ids, attention_mask=mb.attention_mask, logits_to_keep=pos, use_cache=False
        )
        picked = out.logits[mb.rows, col]  # (B, K, V) -> (N, V)
    else:
        out = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False)
        picked = out.logits[mb.rows, mb.logit_pos]  # (B, T, V) -> (N, V)
    del out
    return F.cross_entropy(picked.float(), mb.targets, reduction="sum")


def naive_kept_token_ce_sum(model: Any, mb: MicroBatch) -> torch.Tensor:
    """The textbook twin of :func:`kept_token_ce_sum`: full logits, ``logits[:, :-1]`` against
    ``labels[:, 1:]``, ``ignore_index=-100``, summed."""
    logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False).logits
    v = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, v).float(),  # (B*(T-1), V)
        mb.labels[:, 1:].reshape(-1),  # (B*(T-1),)
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step's forward/backward passes saw."""

    loss: float | None  # token-mean CE over the step's kept tokens; None when the step had none
    n_kept: int  # kept tokens of the step (the loss denominator)
    n_tokens: int  # non-padding input tokens processed


def accumulate_step(
    model: Any,
    batches: Sequence[MicroBatch],
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    logits_to_keep: bool = True,
) -> StepResult:
    """Forward and backward every micro-batch of one optimizer step, accumulating into ``.grad``.

    Applies the loss rule: ``N_step`` (kept tokens of all micro-batches) is counted first, then each
    micro-batch contributes ``backward(ce_sum / N_step)``. Micro-batches with no kept token are skipped;
    a step with none at all leaves the gradients untouched and returns ``loss=None``.
    """
    n_step = sum(mb.n_kept for mb in batches)
    n_tokens = sum(mb.n_tokens for mb in batches)
    if n_step == 0:
        return StepResult(None, 0, n_tokens)
    total = 0.0
    for mb in batches:
        if mb.n_kept == 0:
            continue
        with autocast():
            ce_sum = kept_token_ce_sum(model, mb, logits_to_keep)
        (ce_sum / n_step).backward()
        total += float(ce_sum.detach())
    return StepResult(total / n_step, n_step, n_tokens)
