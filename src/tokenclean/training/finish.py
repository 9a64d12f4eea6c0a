"""The end of a training run: the adapter, then ``done.json`` (written last: it marks a finished run), then
the checkpoint is removed. Rank 0 writes; the other ranks wait."""

from __future__ import annotations

import shutil
from typing import Any

import torch

from tokenclean.config import settings_dict
from tokenclean.outputs import file_digests
from tokenclean.training.checkpoint import CHECKPOINT, is_sharded
from tokenclean.training.collate import steps_per_epoch
from tokenclean.training.model import (
    lora_settings,
    portable_base_name,
    trainable_parameters,
    trainable_state,
)
from tokenclean.training.state import TrainRun, TrainState
from tokenclean.utils import RESULT, atomic_dir, get_logger, package_versions, sha256_file, write_json_atomic

log = get_logger("training")


def finish(run: TrainRun, state: TrainState) -> dict[str, Any]:
    """Save the adapter, then done.json (last), then remove the checkpoint (rank 0; the others wait)."""
    acc, out = run.acc, run.out
    # sharded (FSDP): every rank takes part in gathering the LoRA matrices, never the frozen base weights
    lora = trainable_state(run.net) if is_sharded(acc, run.model) else None
    done = done_record(run, state)
    if run.is_main:
        with atomic_dir(out / "adapter") as tmp:  # never resized; no Hub lookup
            run.net.save_pretrained(str(tmp), save_embedding_layers=False, state_dict=lora)
        done["adapter_files"] = file_digests(out / "adapter")  # verified before a finished run is reused
        write_json_atomic(out / "done.json", done)
        shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
        log.info(
            "trained %d steps on %d kept tokens (final loss %s, %.1f tokens/s) -> %s",
            run.n_steps,
            state.tokens_kept,
            "-" if state.last_loss is None else f"{state.last_loss:.4f}",
            done["tokens_per_s"],
            out / "adapter",
            extra=RESULT,
        )
    acc.wait_for_everyone()
    return done


def done_record(run: TrainRun, state: TrainState) -> dict[str, Any]:
    """The contents of ``done.json`` (``adapter_files`` is added once the adapter is written)."""
    cfg, data, acc = run.cfg, run.data, run.acc
    secs = state.session_seconds
    manifest = run.data_dir / "manifest.json"
    return {
        "stage": "train",
        "identity": state.identity,
        "config": cfg.to_dict(),
        "data": {
            "path": str(run.data_dir.resolve()),
            "stage": data.manifest.get("stage"),
            "sha256": state.identity["data_sha256"],
            "manifest_sha256": sha256_file(manifest) if manifest.exists() else None,
            "counts": data.counts,
        },
        "model": {"name": run.spec.name, "base_model_name_or_path": portable_base_name(run.spec)},
        "init_adapter": run.init_adapter,
        "lora": lora_settings(run.net),
        "trainable_params": sum(p.numel() for p in trainable_parameters(run.net)),
        "adapter": str((run.out / "adapter").resolve()),
        "steps": run.n_steps,
        "epochs": round(run.n_steps / steps_per_epoch(len(data), run.global_batch), 4),
        "global_batch_size": run.global_batch,
        "skipped_steps": state.skipped_steps,
        "nonfinite_steps": state.nonfinite_steps,
        "tokens": {"input": state.tokens_input, "kept": state.tokens_kept},
        "packed": run.row_tokens != -1,
        "padding_efficiency": round(state.tokens_input / max(state.tokens_computed, 1), 4),
        "final_loss": state.last_loss,
        "tokens_per_s": round(state.session_tokens / max(secs, 1e-9), 2),
        "kept_tokens_per_s": round(state.session_kept / max(secs, 1e-9), 2),
        "seconds": round(state.seconds, 3),
        "resumed_from_step": run.resumed_from,
        "device": str(acc.device),
        "world_size": acc.num_processes,
        "distributed_type": str(acc.distributed_type).split(".")[-1],
        "policy": {"name": cfg.policy, "settings": settings_dict(cfg.policy_settings)},
        "bf16": cfg.bf16,
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
    }


__all__ = ["done_record", "finish"]
