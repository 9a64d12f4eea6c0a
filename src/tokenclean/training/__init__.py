"""The training stage: LoRA supervised fine-tuning on kept tokens.

- :class:`TrainConfig` (light import): the typed, frozen, strict config with the paper's defaults.
- :func:`train` (``tokenclean.training.loop``): the explicit PEFT LoRA loop; loss = mean over all kept tokens
  of an optimizer step; resumable; writes OUT/adapter and OUT/done.json.
- :func:`merge` (``tokenclean.training.merging``): base + adapter -> merged model, on request.

``train`` and ``merge`` are imported lazily so that reading a config does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokenclean.training.config import TrainConfig

if TYPE_CHECKING:
    from tokenclean.training.loop import TrainingInterrupted, train
    from tokenclean.training.merging import merge

__all__ = ["TrainConfig", "TrainingInterrupted", "merge", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainingInterrupted"):
        from tokenclean.training import loop

        return getattr(loop, name)
    if name == "merge":
        from tokenclean.training.merging import merge

        return merge
    raise AttributeError(f"module 'tokenclean.training' has no attribute {name!r}")
