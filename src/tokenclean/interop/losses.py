"""The textbook twins of tokenclean's loss on full logits (``logits[:, :-1]`` against ``labels[:, 1:]``).

:func:`token_loss` is the default rule of ``transformers.Trainer``/TRL's ``SFTTrainer`` written out
(token mean over ``labels != -100`` of the accumulation window, ``num_items_in_batch``), usable as
``compute_loss_func=``; :func:`weighted_token_loss` is ``sum w*l / normaliser``. Both build the full
``(B, T, V)`` logits; the TRL plug-in (:mod:`tokenclean.interop.trl_trainer`) does not, and tests check it
against these.
"""

from __future__ import annotations

from typing import Any

from tokenclean import IGNORE_INDEX


def token_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """``compute_loss_func`` for cleaned labels: the sum of ``-log P(x_j | x_<j)`` over ``labels != -100``
    (logits at ``j - 1``), divided by ``num_items_in_batch`` (the window's kept tokens) when given, else by
    this batch's kept tokens."""
    import torch.nn.functional as F

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    v = logits.shape[-1]
    ce = F.cross_entropy(
        logits[:, :-1].reshape(-1, v).float(),  # (B*(T-1), V)
        labels[:, 1:].reshape(-1).to(logits.device),  # (B*(T-1),)
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    n = num_items_in_batch if num_items_in_batch is not None else (labels[:, 1:] != IGNORE_INDEX).sum()
    return ce / n


def weighted_token_loss(logits: Any, labels: Any, weights: Any, normaliser: Any) -> Any:
    """``sum_j w_j * -log P(x_j | x_<j) / normaliser`` with ``w`` and ``labels`` indexed like ``input_ids``."""
    import torch.nn.functional as F

    v = logits.shape[-1]
    ce = F.cross_entropy(
        logits[:, :-1].reshape(-1, v).float(),  # (B*(T-1), V)
        labels[:, 1:].reshape(-1).to(logits.device),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )  # (B*(T-1),) 0 where ignored
    w = weights[:, 1:].reshape(-1).to(ce.device).float()
    return (w * ce).sum() / normaliser


__all__ = ["token_loss", "weighted_token_loss"]
