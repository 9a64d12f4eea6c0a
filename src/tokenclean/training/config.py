"""The training configuration: a typed, frozen, strictly validated dataclass with the paper's defaults.

Defaults follow the Token Cleaning paper's training setup (Appendix D.3, see METHODS.md "Training setup"):
LoRA r 64, alpha 16, dropout 0.1 on the q/k/v/o/gate/up/down projections; lr 1e-4 with linear decay after a
3% warm-up; effective batch 48 (micro-batch 4 x gradient accumulation 12); 1 epoch; max length 2048; seed 42.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from tokenclean.errors import ConfigError

PAPER_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODEL_DTYPES = ("fp32", "bf16", "fp16")

# Fields that do not change what is trained (a run may be resumed after changing them).
NON_RESULT_FIELDS = frozenset({"save_steps", "logging_steps"})


@dataclass(frozen=True)
class TrainConfig:
    """LoRA supervised fine-tuning on masked labels (kept tokens only)."""

    lora_r: int = 64
    """LoRA rank (paper: 64)."""
    lora_alpha: float = 16.0
    """LoRA scaling alpha; the update is scaled by alpha / r (paper: 16)."""
    lora_dropout: float = 0.1
    """Dropout on the LoRA input (paper: 0.1)."""
    target_modules: tuple[str, ...] = PAPER_TARGET_MODULES
    """Module names that get LoRA adapters (paper: the attention and MLP projections)."""
    lr: float = 1e-4
    """Peak learning rate of AdamW (paper: 1e-4)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.03
    """Fraction of the optimizer steps with linear warm-up, ceil(ratio * steps) (paper: 3%); then linear decay to 0."""
    epochs: int = 1
    """Passes over the data (paper: 1); ignored when ``max_steps`` is set."""
    batch_size: int = 4
    """Micro-batch size: samples per forward/backward pass."""
    grad_accum: int = 12
    """Micro-batches accumulated per optimizer step; effective batch = batch_size * grad_accum (paper: 48)."""
    max_length: int = 2048
    """Samples longer than this are truncated to their first max_length tokens (paper: 2048)."""
    max_steps: int | None = None
    """Train exactly this many optimizer steps (cycling over the data; the schedule spans them) instead of ``epochs``."""
    seed: int = 42
    """Seed of the LoRA initialisation, LoRA dropout and the per-epoch data shuffling (paper: 42)."""
    bf16: bool = False
    """Run forward and backward under bf16 autocast (LoRA weights and optimizer state stay fp32)."""
    model_dtype: str = "fp32"
    """Dtype the frozen base weights are loaded in: fp32, bf16 or fp16."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about 30% slower)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm of each step to this value; 0 disables clipping."""
    group_by_length: bool = True
    """Sort each optimizer step's samples by length before cutting micro-batches (less padding; same loss)."""
    save_steps: int = 50
    """Write a resumable checkpoint every this many optimizer steps (0: never; the final adapter is always saved)."""
    logging_steps: int = 1
    """Append a line to OUT/log.jsonl every this many optimizer steps."""
    policy: str = "labels"
    """Token policy in each step: labels, weights, rho1, sstoken, dft or profit (docs/methods.md)."""
    policy_settings: dict[str, Any] = field(default_factory=dict)
    """Settings of the token policy (e.g. rho1: ratio, reference, scores); unknown keys are errors."""

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "policy_settings", dict(self.policy_settings or {}))
        validate(dataclasses.asdict(self), "train")

    @property
    def effective_batch_size(self) -> int:
        """Samples per optimizer step (batch_size * grad_accum)."""
        return self.batch_size * self.grad_accum

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, prefix: str = "train") -> TrainConfig:
        """Build from a mapping (e.g. a YAML section). Unknown keys and bad values raise :class:`ConfigError`
        naming the dotted key (``train.lr: expected a positive float, got -1``)."""
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ConfigError(f"{prefix}: expected a mapping of training settings, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in names:
                raise ConfigError(f"{prefix}.{key}: unknown key (valid: {', '.join(names)})")
        values = {k: _coerce(k, v, prefix) for k, v in d.items()}
        validate(values, prefix)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict; ``TrainConfig.from_dict(cfg.to_dict()) == cfg``."""
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["policy_settings"] = dict(self.policy_settings)
        return d

    def identity(self) -> dict[str, Any]:
        """The fields that determine the trained adapter (everything except checkpoint and logging cadence)."""
        d = {k: v for k, v in self.to_dict().items() if k not in NON_RESULT_FIELDS}
        if d["policy"] == "labels" and not d["policy_settings"]:
            del d["policy"], d["policy_settings"]  # the default: identities of older runs stay valid
        return d

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


# ---- validation -------------------------------------------------------------------------------------------

_INT_FIELDS = {
    "lora_r": 1,
    "epochs": 1,
    "batch_size": 1,
    "grad_accum": 1,
    "max_length": 2,
    "seed": 0,
    "save_steps": 0,
    "logging_steps": 1,
}
_BOOL_FIELDS = ("bf16", "gradient_checkpointing", "group_by_length")


def _coerce(key: str, value: Any, prefix: str) -> Any:
    """Normalise representations a YAML file or key=value override produces (no silent type changes)."""
    if key == "target_modules" and isinstance(value, str):
        return tuple(s.strip() for s in value.split(",") if s.strip())
    if key == "target_modules" and isinstance(value, list):
        return tuple(value)
    if key in _FLOAT_CHECKS and isinstance(value, str):
        # PyYAML reads "1e-4" (no dot) as a string; accept numeric strings for float fields only.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{prefix}.{key}: expected a number, got {value!r}") from None
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_FLOAT_CHECKS: dict[str, tuple[str, Any]] = {
    "lr": ("a positive float", lambda v: v > 0),
    "lora_alpha": ("a positive float", lambda v: v > 0),
    "lora_dropout": ("a float in [0, 1)", lambda v: 0 <= v < 1),
    "warmup_ratio": ("a float in [0, 1)", lambda v: 0 <= v < 1),
    "weight_decay": ("a float >= 0", lambda v: v >= 0),
    "max_grad_norm": ("a float >= 0 (0 disables clipping)", lambda v: v >= 0),
}


def _problem(key: str, v: Any) -> str | None:
    """What ``key`` expects when ``v`` is not acceptable, else None."""
    if key in _INT_FIELDS:
        lo = _INT_FIELDS[key]
        return None if _is_int(v) and v >= lo else f"an integer >= {lo}"
    if key in _FLOAT_CHECKS:
        what, ok = _FLOAT_CHECKS[key]
        return None if _is_num(v) and ok(v) else what
    if key in _BOOL_FIELDS:
        return None if isinstance(v, bool) else "true or false"
    if key == "max_steps":
        return None if v is None or (_is_int(v) and v >= 1) else "a positive integer or null"
    if key == "model_dtype":
        return None if v in MODEL_DTYPES else f"one of {', '.join(MODEL_DTYPES)}"
    if key == "target_modules":
        ok = isinstance(v, (tuple, list)) and v and all(isinstance(s, str) and s.strip() for s in v)
        return None if ok else "a non-empty list of module names"
    return None


def validate(values: dict[str, Any], prefix: str) -> None:
    """Check every given field; raise :class:`ConfigError` naming ``prefix.key`` on the first bad one."""
    from tokenclean.training.policies import get_policy_class, parse_settings

    if "policy" in values or "policy_settings" in values:
        name = values.get("policy", "labels")
        if not isinstance(name, str):
            raise ConfigError(f"{prefix}.policy: expected a policy name, got {name!r}")
        get_policy_class(name, f"{prefix}.policy")
        ps = values.get("policy_settings") or {}
        if not isinstance(ps, dict):
            raise ConfigError(f"{prefix}.policy_settings: expected a mapping, got {ps!r}")
        parse_settings(name, ps, f"{prefix}.policy_settings")
    for key, v in values.items():
        if key in ("policy", "policy_settings"):
            continue
        expected = _problem(key, v)
        if expected is not None:
            raise ConfigError(f"{prefix}.{key}: expected {expected}, got {v!r}")


__all__ = ["MODEL_DTYPES", "PAPER_TARGET_MODULES", "TrainConfig"]
