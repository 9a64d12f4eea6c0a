"""Training on tokenclean's outputs with the Hugging Face ``Trainer`` / TRL ``SFTTrainer``.

A cleaned dataset (``tokenclean select``) is consumed as is: its ``labels`` are the kept tokens, and both
trainers' default loss (token-mean over ``labels != -100`` of the accumulation window, ``num_items_in_batch``)
already honours them. :func:`token_loss` is that rule written out, for ``compute_loss_func=``.

A weighted dataset (``tokenclean select --weights``) has a per-token ``weights`` column; the loss of an
optimizer step is then ``sum w*l / sum w`` over the step on all devices. Use :func:`weights_collator` and
put :class:`TokenWeightsMixin` before the trainer class::

    from trl import SFTConfig, SFTTrainer
    from tokenclean.interop import TokenWeightsMixin, weights_collator

    class WeightedSFTTrainer(TokenWeightsMixin, SFTTrainer):
        pass

    args = SFTConfig(..., remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})
    trainer = WeightedSFTTrainer(model=model, args=args, train_dataset=ds,
                                 data_collator=weights_collator(tokenizer.pad_token_id))

The mixin overrides two public ``Trainer`` methods: ``get_batch_samples`` (the normaliser of the window
becomes the sum of the shifted weights, gathered over devices like ``num_items_in_batch``) and
``compute_loss`` (weighted token cross-entropy from the model's logits).
"""

from __future__ import annotations

from collections.abc import Callable
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


def weights_collator(pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Right-pad ``input_ids`` (pad id), ``attention_mask`` (0), ``labels`` (-100) and, when present,
    ``weights`` (0.0) into ``token_weights``; other columns are dropped."""
    import torch

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(r["input_ids"]) for r in rows)
        out = {}
        for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
            vals = [list(r.get(key) or [1] * len(r["input_ids"])) for r in rows]
            out[key] = torch.tensor([v + [fill] * (width - len(v)) for v in vals], dtype=torch.long)
        if "weights" in rows[0]:
            out["token_weights"] = torch.tensor(
                [list(r["weights"]) + [0.0] * (width - len(r["weights"])) for r in rows], dtype=torch.float32
            )
        return out

    return collate


class TokenWeightsMixin:
    """Mix into ``transformers.Trainer`` / ``trl.SFTTrainer`` (first in the bases) to train on a
    ``token_weights`` batch key with the step rule ``sum w*l / sum w`` (see the module doc)."""

    loss_is_scaled_for_ga = True  # our loss is already normalised over the whole accumulation window

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        batches, n = super().get_batch_samples(epoch_iterator, num_batches, device)  # type: ignore[misc]
        if batches and "token_weights" in batches[0]:
            w = sum(b["token_weights"][..., 1:].sum() for b in batches).to(device)  # shifted like labels
            args = self.args  # type: ignore[attr-defined]
            if args.average_tokens_across_devices and args.world_size > 1:
                w = self.accelerator.gather(w).sum()  # type: ignore[attr-defined]
            n = w
        return batches, n

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        weights = inputs.pop("token_weights", None)
        if weights is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)  # type: ignore[misc]
        labels = inputs.pop("labels")
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        norm = num_items_in_batch if num_items_in_batch is not None else weights[:, 1:].sum()
        loss = weighted_token_loss(outputs.logits, labels, weights, norm)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:  # type: ignore[attr-defined]
            loss = loss * self.accelerator.num_processes  # type: ignore[attr-defined]  # DDP averages grads
        return (loss, outputs) if return_outputs else loss


__all__ = ["TokenWeightsMixin", "token_loss", "weighted_token_loss", "weights_collator"]
