"""CLI commands of the training stage: ``tokenclean train`` and ``tokenclean merge`` (heavy imports inside)."""

from __future__ import annotations

import argparse
from typing import Any

from tokenclean.cli import _EXTRA_PARSERS, command

# CLI flag -> TrainConfig field, for the flags that take a value
_VALUE_FLAGS: dict[str, tuple[str, Any, str]] = {
    "lr": ("lr", float, "peak learning rate (1e-4)"),
    "epochs": ("epochs", int, "passes over the data (1)"),
    "batch_size": ("batch_size", int, "micro-batch size (4)"),
    "grad_accum": ("grad_accum", int, "micro-batches per optimizer step (12; effective batch 48)"),
    "lora_r": ("lora_r", int, "LoRA rank (64)"),
    "lora_alpha": ("lora_alpha", float, "LoRA alpha (16)"),
    "lora_dropout": ("lora_dropout", float, "LoRA dropout (0.1)"),
    "target_modules": ("target_modules", str, "comma-separated module names (q,k,v,o,gate,up,down _proj)"),
    "warmup_ratio": ("warmup_ratio", float, "warm-up fraction of the steps (0.03)"),
    "weight_decay": ("weight_decay", float, "AdamW weight decay (0)"),
    "max_grad_norm": ("max_grad_norm", float, "gradient clipping norm, 0 = off (1.0)"),
    "max_length": ("max_length", int, "truncate samples to this many tokens (2048)"),
    "max_steps": ("max_steps", int, "train exactly this many optimizer steps instead of --epochs"),
    "save_steps": ("save_steps", int, "checkpoint every N steps, 0 = never (50)"),
    "logging_steps": ("logging_steps", int, "log every N steps to OUT/log.jsonl (1)"),
    "seed": ("seed", int, "seed of LoRA init, dropout and shuffling (42)"),
    "model_dtype": ("model_dtype", str, "dtype of the frozen base weights: fp32, bf16, fp16 (fp32)"),
}
_BOOL_FLAGS = {
    "bf16": "bf16 autocast for forward/backward",
    "gradient_checkpointing": "recompute activations (less memory, slower)",
    "no_group_by_length": "do not sort a step's samples by length before cutting micro-batches",
}


def train_config_from_args(a: argparse.Namespace) -> Any:
    """Build a TrainConfig from the flags that were given (others keep the paper defaults)."""
    from tokenclean.training.config import TrainConfig

    values: dict[str, Any] = {
        field: getattr(a, flag)
        for flag, (field, _, _) in _VALUE_FLAGS.items()
        if getattr(a, flag) is not None
    }
    if a.bf16:
        values["bf16"] = True
    if a.gradient_checkpointing:
        values["gradient_checkpointing"] = True
    if a.no_group_by_length:
        values["group_by_length"] = False
    if a.policy is not None:
        values["policy"] = a.policy
    if a.policy_set:
        values["policy_settings"] = _policy_settings(a.policy_set)
    return TrainConfig.from_dict(values, prefix="train")


def _policy_settings(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as YAML scalars: 0.6 -> float, base -> str)."""
    import yaml

    from tokenclean.errors import ConfigError

    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"--policy-set {p!r}: expected KEY=VALUE (e.g. ratio=0.6)")
        k, v = p.split("=", 1)
        out[k.strip()] = yaml.safe_load(v) if v.strip() else None
    return out


@command("train")
def _train(a: argparse.Namespace) -> int:
    from tokenclean.training.loop import train
    from tokenclean.utils import apply_threads

    cfg = train_config_from_args(a)
    apply_threads(a.threads)
    d = train(
        a.data,
        a.model,
        a.out,
        cfg,
        init_adapter=a.adapter,
        progress=not a.quiet,
        device=a.device,
        threads=a.threads,
    )
    from tokenclean.training.distributed import launched_world

    if launched_world()[0] != 0:
        return 0  # rank 0 reports
    if d.get("reused"):
        print(f"{a.out} is already trained ({a.out}/done.json); nothing to do")
        return 0
    c = d["data"]["counts"]
    print(
        f"trained {d['steps']} steps on {c['samples']} samples ({c['samples_dropped_no_kept']} dropped with no "
        f"kept token), {d['tokens']['kept']} kept of {d['tokens']['input']} tokens; final loss "
        f"{d['final_loss']:.4f}; {d['tokens_per_s']:.1f} tokens/s; adapter -> {d['adapter']}"
    )
    return 0


@command("merge")
def _merge(a: argparse.Namespace) -> int:
    from tokenclean.training.merging import merge
    from tokenclean.utils import apply_threads

    apply_threads(getattr(a, "threads", None))
    m = merge(a.model, a.adapter, a.out, dtype=a.dtype, device=a.device)
    print(f"merged {m['adapter']} into {m['base']} ({m['dtype']}) -> {a.out}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("train", help="LoRA fine-tuning on the kept labels of a prepared or cleaned dataset")
    s.add_argument(
        "--data", required=True, help="prepared (all response tokens) or cleaned (kept tokens) dir"
    )
    s.add_argument(
        "--model", required=True, help="base model: Hub id, local dir, .gguf file or alias (smollm2)"
    )
    s.add_argument("--adapter", default=None, help="continue training this LoRA adapter (PEFT dir)")
    s.add_argument("--out", required=True, help="output dir (adapter/, done.json); re-running resumes")
    for flag, (_, typ, help_) in _VALUE_FLAGS.items():
        s.add_argument("--" + flag.replace("_", "-"), dest=flag, type=typ, default=None, help=help_)
    for flag, help_ in _BOOL_FLAGS.items():
        s.add_argument("--" + flag.replace("_", "-"), dest=flag, action="store_true", help=help_)
    s.add_argument(
        "--policy",
        default=None,
        help="token policy inside each step: labels (default), weights (the data's weights column), rho1",
    )
    s.add_argument(
        "--policy-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the policy, repeatable (rho1: ratio=0.6 reference=base|store scores=DIR)",
    )
    s.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    s.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per process (default: the cores idle at start; OMP_NUM_THREADS if set)",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("merge", help="merge a LoRA adapter into its base model (writes a full model)")
    s.add_argument("--model", required=True, help="base model the adapter was trained on")
    s.add_argument("--adapter", required=True, help="PEFT adapter dir (e.g. RUN/adapter)")
    s.add_argument("--out", required=True)
    s.add_argument("--dtype", default="model", choices=["model", "fp32", "bf16", "fp16"])
    s.add_argument("--device", default="cpu")
    s.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: the cores idle at start; OMP_NUM_THREADS if set)",
    )


_EXTRA_PARSERS.append(add_parsers)
