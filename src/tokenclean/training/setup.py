"""The checks and objects a training run is set up with before its first step: the accelerator, the data
against the model (tokenizer, vocabulary), the learning-rate schedule and the autocast context."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tokenclean.errors import ConfigError, DataError, ModelError
from tokenclean.models.loader import ModelSpec, load_tokenizer, resolve_device, tokenizer_identity
from tokenclean.training.checkpoint import CHECKPOINT
from tokenclean.training.config import TrainConfig
from tokenclean.training.data import TrainData
from tokenclean.utils import get_logger

log = get_logger("training")


def accelerator(device: str) -> Any:
    """The Accelerator of this process: CPU when asked (or when no GPU), else the launcher's GPU."""
    from accelerate import Accelerator

    from tokenclean.runtime import init_kwargs

    dev = resolve_device(device)
    # mixed precision is tokenclean's own setting (train.bf16, autocast); None keeps an accelerate state
    # that this process already set up (e.g. an lm-eval or TRL run before this one in the same process).
    # The process-group timeout is --group-timeout (tokenclean.runtime) when this creates the group.
    acc = Accelerator(cpu=dev == "cpu", mixed_precision=None, kwargs_handlers=[init_kwargs()])
    check_distributed_type(acc)
    if acc.mixed_precision != "no":
        log.warning(
            "accelerate mixed precision '%s' is active (from an accelerate config or an earlier Accelerator "
            "in this process); the forward passes run under it in addition to train.bf16",
            acc.mixed_precision,
        )
    return acc


def check_distributed_type(acc: Any) -> None:
    """DeepSpeed is refused: accelerate steps a DeepSpeed engine whenever ``sync_gradients`` is set, and the
    loop accumulates a step's micro-batches itself (``no_sync``), so the engine would step every micro-batch
    and its own accumulation, clipping and loss scaling would replace the loop's loss rule."""
    kind = str(acc.distributed_type).split(".")[-1]
    if kind == "DEEPSPEED":
        raise ConfigError(
            "accelerate config: distributed_type DEEPSPEED is not supported by tokenclean train (the engine "
            "would step every micro-batch instead of once per optimizer step); use DDP (MULTI_GPU) or FSDP "
            "(configs/accelerate/)"
        )


def check_world_size(saved: dict[str, Any], world: int, out: Path) -> None:
    """A checkpoint resumes only with the number of processes that wrote it (the data shards, RNG streams
    and sharded optimizer states are per rank)."""
    was = int(saved.get("world_size", 1))
    if was != world:
        raise ConfigError(
            f"{out / CHECKPOINT} was written by a run with {was} process(es); this run has {world}. Resume "
            f"with {was} processes (accelerate launch --num_processes {was}), or delete {out / CHECKPOINT} "
            "to start over"
        )


def scheduler(optimizer: Any, cfg: TrainConfig, n_steps: int) -> Any:
    """Linear warm-up over ``ceil(warmup_ratio * n_steps)`` steps, then linear decay to 0."""
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * n_steps), n_steps)


def global_batch(cfg: TrainConfig, world: int) -> int:
    """Samples per optimizer step on ``world`` processes (:meth:`TrainConfig.step_batch`); warns when the
    Hugging Face convention makes it grow with the processes."""
    batch, accum = cfg.step_batch(world)
    if world > 1 and cfg.global_batch is None and cfg.grad_accum is not None:
        log.warning(
            "global batch %d = batch_size %d x grad_accum %d x %d processes (it grows with the processes); "
            "set train.global_batch to train the same steps on any number of processes",
            *(batch, cfg.batch_size, accum, world),
        )
    return batch


def check_updates(cfg: TrainConfig, n_samples: int, world: int, data_dir: Path) -> None:
    """Stop before any model loads when no optimizer step of the schedule would update the adapter."""
    from tokenclean.training.collate import total_steps
    from tokenclean.training.schedule import no_update_message

    n_steps = total_steps(n_samples, global_batch(cfg, world), cfg.epochs, cfg.max_steps)
    msg = no_update_message(n_samples, cfg, n_steps, world)
    if msg is not None:
        raise ConfigError(f"{data_dir}: {msg} (--allow-no-update trains anyway)")


def check_vocab(data: TrainData, net: Any, data_dir: Path) -> None:
    """Every token id of the data must be inside the model's embedding table."""
    vocab = net.get_input_embeddings().num_embeddings
    top = data.max_id if data.max_id is not None else max(int(x.max()) for x in data.input_ids if len(x))
    if top >= vocab:
        raise DataError(
            str(data_dir),
            f"token id {top} >= the model's vocabulary size {vocab}; the data was tokenised with a "
            "different tokenizer than this model's",
            field="input_ids",
        )


def check_tokenizer(manifest: dict[str, Any], spec: ModelSpec, data_dir: Path) -> None:
    """The data's tokenizer (from its manifest) must be the model's; skipped when either is unknown."""
    want = (manifest.get("tokenizer") or {}).get("hash")
    if not want:
        return
    try:
        tok = load_tokenizer(ModelSpec(spec.name, spec.path, spec.gguf_file, None))
    except ModelError as e:
        log.warning("cannot load the tokenizer of %s to check it against the data's: %s", spec.name, e)
        return
    got = tokenizer_identity(tok)
    if got["hash"] != want:
        info = manifest.get("tokenizer") or {}
        raise ModelError(
            f"{data_dir} was tokenised with '{info.get('source') or info.get('name')}', which differs from "
            f"the tokenizer of model '{spec.name}' (vocab {got['vocab_size']}); prepare the data with the "
            "model's tokenizer"
        )


def packed_rows(net: Any, cfg: TrainConfig, data: TrainData) -> int | None:
    """How training micro-batches are laid out: :data:`~tokenclean.training.collate.NOT_PACKED` (right-
    padded) unless ``cfg.pack``, the data has no ``attention_mask`` and the model keeps packed samples apart
    (:func:`tokenclean.packing.packing_works`, probed in eval mode); else the packed row length
    (:func:`tokenclean.packing.row_tokens_for`: None = one row for flash-attention varlen)."""
    from tokenclean.packing import packing_works, row_tokens_for
    from tokenclean.training.collate import NOT_PACKED

    if not cfg.pack or data.attention_mask is not None:
        return NOT_PACKED
    was_training = net.training
    net.eval()  # no dropout in the probe
    try:
        ok = packing_works(net)
    finally:
        net.train(was_training)
    if not ok:
        log.warning("this model mixes packed samples (attention ignores position_ids); training pads instead")
        return NOT_PACKED
    attn = getattr(getattr(net, "config", None), "_attn_implementation", None)
    return row_tokens_for(attn, cfg.batch_size * cfg.max_length)


def autocast(dev: str, bf16: bool) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A factory of the forward passes' autocast context (a no-op without ``bf16``)."""
    dev_type = dev.split(":")[0]
    if not bf16:
        return contextlib.nullcontext
    if dev_type == "cpu" and not _cpu_has_native_bf16():
        log.warning(
            "bf16 autocast on a CPU without AVX512-BF16 or AMX: matrix products are emulated and training is "
            "many times slower than fp32 (measured ~13x on an AVX2 EPYC); consider dropping --bf16"
        )
    return lambda: torch.autocast(device_type=dev_type, dtype=torch.bfloat16)


def _cpu_has_native_bf16() -> bool:
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not all(callable(c) for c in checks):
        return True  # cannot tell: do not warn
    return any(c() for c in checks if callable(c))


__all__ = ["accelerator", "autocast", "check_tokenizer", "check_vocab", "check_world_size", "scheduler"]
