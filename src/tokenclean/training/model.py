"""The trainable model: a frozen base with a LoRA adapter (a new one, or an existing one to continue)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from tokenclean.errors import ConfigError
from tokenclean.models.loader import ALIASES, ModelSpec, load_model
from tokenclean.training.config import TrainConfig


def portable_base_name(spec: ModelSpec) -> str:
    """What ``adapter_config.json`` should name as the base so :func:`resolve_model` finds it again:
    the alias or Hub id as written, else an absolute path (the ``.gguf`` file for GGUF models)."""
    if spec.name.lower() in ALIASES:
        return spec.name
    if spec.gguf_file:
        return str(Path(spec.path, spec.gguf_file).resolve())
    return str(Path(spec.path).resolve()) if Path(spec.path).exists() else spec.name


def build_lora_model(spec: ModelSpec, cfg: TrainConfig, init_adapter: str | None, device: str) -> Any:
    """Load the base in ``cfg.model_dtype`` and wrap it in PEFT LoRA, in train mode.

    With ``init_adapter`` the existing adapter is loaded trainable (``PeftModel.from_pretrained(...,
    is_trainable=True)``) and training continues from its weights and LoRA settings; otherwise a new adapter
    is created from ``cfg`` (seeded by ``cfg.seed``). Base weights are frozen either way.
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    base_spec = ModelSpec(spec.name, spec.path, spec.gguf_file, None)
    model = load_model(
        base_spec, dtype=cfg.model_dtype, device=device, adapter=init_adapter, adapter_trainable=True
    )
    if init_adapter is None:
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]  # PEFT annotates int; floats work
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, lora)
        except ValueError as e:
            raise ConfigError(f"train.target_modules: {e}") from None
    model.peft_config["default"].base_model_name_or_path = portable_base_name(spec)
    if cfg.gradient_checkpointing:
        base = model.get_base_model()
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x name
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def lora_settings(model: Any) -> dict[str, Any]:
    """The LoRA settings actually trained (those of ``init_adapter`` when continuing one)."""
    c = model.peft_config["default"]
    return {
        "r": c.r,
        "alpha": c.lora_alpha,
        "dropout": c.lora_dropout,
        "target_modules": sorted(c.target_modules) if c.target_modules else None,
    }


def trainable_parameters(model: Any) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def adapter_path(init_adapter: str | None) -> str | None:
    return None if init_adapter is None else os.path.abspath(init_adapter)


def no_split_modules(model: Any) -> list[str]:
    """The layer classes the model says must stay whole (transformers' ``_no_split_modules``, e.g.
    ``LlamaDecoderLayer``, ``MistralDecoderLayer``): FSDP's transformer auto-wrap shards by them when the
    accelerate config names no class. Empty when no module of ``model`` declares any."""
    for m in model.modules():
        names = getattr(m, "_no_split_modules", None)
        if names:
            return list(names)
    return []


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) parameters by name, whole and on the CPU. Under FSDP2 each is a sharded
    ``DTensor``: only these small matrices are gathered (every rank must call this), never the frozen
    base weights."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            t = p.detach()
            out[name] = (t.full_tensor() if hasattr(t, "full_tensor") else t).cpu()
    return out
