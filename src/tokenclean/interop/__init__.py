"""Training on tokenclean's outputs with other trainers.

- :mod:`tokenclean.interop.trl_trainer`: TRL ``SFTTrainer`` with tokenclean's token policies as the loss
  (:func:`sft_trainer`, :class:`TokenPolicyMixin`): labels and weights through packing, padding-free batches,
  gradient accumulation, data parallelism and evaluation.
- :mod:`tokenclean.interop.trl_data`: the datasets and batches it uses.
- :mod:`tokenclean.interop.losses`: the textbook (full-logits) twins of the loss, for ``compute_loss_func=``
  users and for tests.
- :mod:`tokenclean.interop.export` / :mod:`tokenclean.interop.imports`: files for axolotl, LLaMA-Factory,
  TRL and plain JSONL, and message/span/token weights from those tools into tokenclean.

Heavy imports (torch, trl) happen on use.
"""

from __future__ import annotations

from typing import Any

from tokenclean.interop.losses import token_loss, weighted_token_loss

_LAZY = {
    "TokenPolicyMixin": "tokenclean.interop.trl_trainer",
    "sft_trainer": "tokenclean.interop.trl_trainer",
    "token_collator": "tokenclean.interop.trl_data",
    "token_dataset": "tokenclean.interop.trl_data",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name == "TokenWeightsMixin":  # the earlier name of TokenPolicyMixin
        name = "TokenPolicyMixin"
    if name == "weights_collator":  # the earlier name of the padded token_collator
        return importlib.import_module("tokenclean.interop.trl_data").token_collator
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tokenclean.interop' has no attribute {name!r}")


__all__ = [
    "TokenPolicyMixin",
    "sft_trainer",
    "token_collator",
    "token_dataset",
    "token_loss",
    "weighted_token_loss",
]
