"""The training configuration: a typed, frozen, strictly validated dataclass with the paper's defaults.

Defaults follow the Token Cleaning paper's training setup (Appendix D.3, see METHODS.md "Training setup"):
LoRA r 64, alpha 16, dropout 0.1 on the q/k/v/o/gate/up/down projections; lr 1e-4 with linear decay after a
3% warm-up; global batch 48 (micro-batch 4, accumulation derived: 12 on one process, 6 on two); 1 epoch; max length 2048; seed 42.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from tokenclean.config import check_fields, from_dict, setting, settings_dict
from tokenclean.errors import ConfigError

PAPER_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODEL_DTYPES = ("fp32", "bf16", "fp16")

# Fields that do not change what is trained (a run may be resumed after changing them).
NON_RESULT_FIELDS = frozenset({"save_steps", "logging_steps"})
PAPER_GLOBAL_BATCH = 48  # samples per optimizer step (paper: 4 x 12 on one GPU, 6 x 8 on 8)


@dataclass(frozen=True)
class TrainConfig:
    """LoRA supervised fine-tuning on masked labels (kept tokens only)."""

    lora_r: int = setting(64, "LoRA rank (paper: 64)", bounds=">= 1")
    lora_alpha: float = setting(
        16.0, "LoRA scaling alpha; the update is scaled by alpha / r (paper: 16)", bounds="> 0"
    )
    lora_dropout: float = setting(0.1, "dropout on the LoRA input (paper: 0.1)", bounds="[0, 1)")
    target_modules: tuple[str, ...] = setting(
        PAPER_TARGET_MODULES,
        "module names that get LoRA adapters, a list or comma-separated (paper: the attention and MLP projections)",
    )
    lr: float = setting(1e-4, "peak learning rate of AdamW (paper: 1e-4)", bounds="> 0")
    weight_decay: float = setting(0.0, "AdamW weight decay", bounds=">= 0")
    warmup_ratio: float = setting(
        0.03,
        "fraction of the optimizer steps with linear warm-up, ceil(ratio * steps) (paper: 3%); then linear "
        "decay to 0",
        bounds="[0, 1)",
    )
    epochs: int = setting(1, "passes over the data (paper: 1); ignored when max_steps is set", bounds=">= 1")
    batch_size: int = setting(4, "micro-batch size: samples per forward/backward pass", bounds=">= 1")
    grad_accum: int | None = setting(
        None,
        "micro-batches per optimizer step on each process; null: derived, ceil(global_batch / (processes x "
        "batch_size)). When both are set, batch_size x grad_accum x processes must equal global_batch",
        bounds=">= 1",
    )
    global_batch: int | None = setting(
        None,
        "samples per optimizer step over all processes, the same on 1 or N processes (paper: 48); each "
        "process takes global_batch / N of them, in micro-batches of batch_size. null: batch_size x "
        "grad_accum x processes when grad_accum is set (the Hugging Face convention), else 48",
        bounds=">= 1",
    )
    max_length: int = setting(
        2048,
        "samples longer than this are truncated to their first max_length tokens (paper: 2048)",
        bounds=">= 2",
    )
    max_steps: int | None = setting(
        None,
        "train exactly this many optimizer steps (cycling over the data; the schedule spans them) instead of "
        "epochs; null: off",
        bounds=">= 1",
    )
    seed: int = setting(
        42, "seed of the LoRA initialisation, LoRA dropout and data shuffling (paper: 42)", bounds=">= 0"
    )
    bf16: bool = setting(
        False, "run forward and backward under bf16 autocast (LoRA weights and optimizer state stay fp32)"
    )
    model_dtype: Literal["fp32", "bf16", "fp16"] = setting(
        "fp32", "dtype the frozen base weights are loaded in"
    )
    gradient_checkpointing: bool = setting(
        False, "recompute activations in the backward pass (less memory, ~30% slower)"
    )
    max_grad_norm: float = setting(
        1.0, "clip the global gradient norm of each step to this value; 0 disables clipping", bounds=">= 0"
    )
    group_by_length: bool = setting(
        True,
        "sort each optimizer step's samples by length before cutting micro-batches (less padding; same loss)",
    )
    pack: bool = setting(
        True,
        "pack each micro-batch padding-free (samples back to back, position_ids restarting per sample; "
        "flash-attention varlen or a block-diagonal mask) and balance the ranks by tokens; used when the "
        "model keeps packed samples apart (probed once) and the data has no attention_mask column, else "
        "right-padded micro-batches; the loss is the same",
    )
    save_steps: int = setting(
        50,
        "write a resumable checkpoint every this many optimizer steps (0: never; the final adapter is always saved)",
        bounds=">= 0",
    )
    logging_steps: int = setting(
        1, "append a line to OUT/log.jsonl every this many optimizer steps", bounds=">= 1"
    )
    policy: str = setting(
        "labels",
        "token policy in each step: labels, weights or a method's policy (docs/settings.md lists them with "
        "their settings; docs/methods.md)",
    )
    policy_settings: Any = setting(
        factory=dict,
        help="settings of the token policy: a mapping (e.g. rho1: ratio, reference, scores; unknown keys are "
        "errors) or, in code, the policy's typed settings",
    )

    def __post_init__(self) -> None:
        check_fields(self, "train")
        self.validate("train")

    def validate(self, prefix: str = "train") -> None:
        """The rules beyond one field's type and bounds: a non-empty module list, a known policy whose
        settings parse."""
        from tokenclean.training.policies import get_policy_class, parse_settings

        if not self.target_modules or not all(s.strip() for s in self.target_modules):
            raise ConfigError(
                f"{prefix}.target_modules: expected a non-empty list of module names, got {list(self.target_modules)!r}"
            )
        cls = get_policy_class(self.policy, f"{prefix}.policy")
        where = f"{prefix}.policy_settings"
        cls.check_settings(parse_settings(self.policy, self.policy_settings, where), where)

    def step_batch(self, world: int = 1, prefix: str = "train") -> tuple[int, int]:
        """``(global batch, micro-batches per process)`` of an optimizer step on ``world`` processes; a
        :class:`ConfigError` when the settings cannot mean the same step on ``world`` processes."""
        b, a, g = self.batch_size, self.grad_accum, self.global_batch
        if g is None:
            if a is not None:
                return b * a * world, a
            g = PAPER_GLOBAL_BATCH
        if g % world:
            raise ConfigError(
                f"{prefix}.global_batch: {g} samples do not split evenly over {world} processes; choose a "
                f"multiple of {world}"
            )
        if a is not None and b * a * world != g:
            raise ConfigError(
                f"{prefix}.global_batch: {g} differs from batch_size {b} x grad_accum {a} x {world} "
                f"process(es) = {b * a * world}; leave grad_accum unset (it is derived from global_batch) or "
                "make the product equal"
            )
        return g, a if a is not None else -(-(g // world) // b)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, prefix: str = "train") -> TrainConfig:
        """Build from a mapping (e.g. a YAML section) by :func:`tokenclean.config.from_dict`: unknown keys and
        bad values raise :class:`ConfigError` naming the dotted key (``train.lr: must be > 0, got -1``)."""
        return from_dict(cls, d, prefix)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict; ``TrainConfig.from_dict(cfg.to_dict()) == cfg``."""
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["policy_settings"] = settings_dict(self.policy_settings)
        return d

    def identity(self) -> dict[str, Any]:
        """The fields that determine the trained adapter (everything except checkpoint and logging cadence)."""
        from tokenclean.training.policies import LabelsPolicy

        d = {k: v for k, v in self.to_dict().items() if k not in NON_RESULT_FIELDS}
        if d["policy"] == LabelsPolicy.name and not d["policy_settings"]:
            del d["policy"], d["policy_settings"]  # the default policy adds nothing to the identity
        return d

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


__all__ = ["MODEL_DTYPES", "PAPER_GLOBAL_BATCH", "PAPER_TARGET_MODULES", "TrainConfig"]
