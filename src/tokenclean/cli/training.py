"""CLI commands of the training stage: ``tokenclean train`` and ``tokenclean merge`` (heavy imports inside).
Every :class:`~tokenclean.training.config.TrainConfig` setting is a flag of ``train``, generated from it."""

from __future__ import annotations

import argparse
from typing import Any

from tokenclean.cli.args import (
    Command,
    add_runtime,
    add_settings,
    apply_runtime,
    existing,
    model_name,
    settings_from_args,
)
from tokenclean.training.config import TrainConfig
from tokenclean.training.merging import MERGE_DTYPES


def train_config_from_args(a: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of the flags (a flag not given keeps the config default)."""
    return settings_from_args(
        TrainConfig, a, "train", policy_settings=_policy_settings(a.policy_set) if a.policy_set else {}
    )


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


def _train(a: argparse.Namespace) -> int:
    cfg = train_config_from_args(a)
    rt = apply_runtime(a)
    from tokenclean.runtime import launched_world
    from tokenclean.training.loop import train

    d = train(
        a.data,
        a.model,
        a.out,
        cfg,
        init_adapter=a.adapter,
        progress=not a.quiet,
        device=rt.device,
        threads=rt.threads,
        force=a.force,
        allow_no_update=a.allow_no_update,
    )
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


def _merge(a: argparse.Namespace) -> int:
    rt = apply_runtime(a)
    from tokenclean.training.merging import merge

    m = merge(a.model, a.adapter, a.out, dtype=a.dtype, device=rt.device)
    print(f"merged {m['adapter']} into {m['base']} ({m['dtype']}) -> {a.out}")
    return 0


def _train_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--data",
        required=True,
        type=existing("prepared or cleaned dataset"),
        help="prepared (all response tokens) or cleaned (kept tokens) dataset directory",
    )
    s.add_argument(
        "--model",
        required=True,
        type=model_name("model"),
        help="base model: Hub id, local dir, .gguf file or alias (smollm2)",
    )
    s.add_argument(
        "--adapter",
        default=None,
        type=existing("adapter directory"),
        help="continue training this LoRA adapter (PEFT dir)",
    )
    s.add_argument("--out", required=True, help="output dir (adapter/, done.json); re-running resumes")
    s.add_argument(
        "--force", action="store_true", help="start over: discard a finished or interrupted training in --out"
    )
    s.add_argument(
        "--allow-no-update",
        action="store_true",
        help="train even when the schedule gives no update (too few samples for the global batch, or every "
        "step in the warm-up); without it such a run stops before the model loads",
    )
    add_settings(s, TrainConfig, "train", skip=("policy_settings",))
    s.add_argument(
        "--policy-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the policy, repeatable (rho1: ratio=0.6 reference=base|store scores=DIR; "
        "docs/settings.md lists every policy's settings)",
    )
    add_runtime(s)
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def _merge_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--model", required=True, type=model_name("model"), help="base model the adapter was trained on"
    )
    s.add_argument(
        "--adapter",
        required=True,
        type=existing("adapter directory"),
        help="PEFT adapter dir (e.g. RUN/adapter)",
    )
    s.add_argument("--out", required=True, help="output directory of the merged model")
    s.add_argument(
        "--dtype",
        default="model",
        choices=list(MERGE_DTYPES),
        help="dtype of the merged weights (model: the base's own)",
    )
    add_runtime(s)


COMMANDS = (
    Command(
        "train",
        "LoRA fine-tuning on the kept labels of a prepared or cleaned dataset",
        _train_args,
        _train,
        example="tokenclean train --data runs/clean --model smollm2 --out runs/train --max-steps 20",
    ),
    Command(
        "merge",
        "merge a LoRA adapter into its base model (writes a full model)",
        _merge_args,
        _merge,
        example="tokenclean merge --model smollm2 --adapter runs/train/adapter --out runs/merged",
    ),
)
