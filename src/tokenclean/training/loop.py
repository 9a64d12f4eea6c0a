"""The training stage: an explicit LoRA fine-tuning loop over kept tokens (PEFT + torch AdamW + the
transformers linear warm-up/decay schedule).

An explicit loop rather than ``transformers.Trainer``: the loss rule (mean over every kept token of an
optimizer step, see :mod:`tokenclean.training.loss`) needs the step's kept-token count before the first
micro-batch's backward pass, which Trainer does not expose without overriding its internals.

Output directory:

- ``adapter/``: the LoRA adapter (PEFT format; ``adapter_config.json`` names the base model). Never a merged
  model: ``tokenclean merge`` writes one on request.
- ``done.json``: written last; marks a finished run (config, data hash, steps, tokens, final loss, tokens/s).
- ``log.jsonl``: one line per ``logging_steps`` optimizer steps (loss, lr, kept tokens, grad norm).
- ``checkpoint/``: the last resumable checkpoint while the run is unfinished (removed at the end).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tokenclean.errors import DataError, ModelError, TokencleanError
from tokenclean.models.loader import (
    ModelSpec,
    load_tokenizer,
    resolve_device,
    resolve_model,
    tokenizer_identity,
)
from tokenclean.training.checkpoint import (
    CHECKPOINT,
    check_same_run,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
)
from tokenclean.training.collate import (
    collate,
    micro_batches,
    step_samples,
    steps_per_epoch,
    total_steps,
)
from tokenclean.training.config import TrainConfig
from tokenclean.training.data import TrainData, load_train_data
from tokenclean.training.loss import accumulate_step, supports_logits_to_keep
from tokenclean.training.model import (
    adapter_path,
    build_lora_model,
    lora_settings,
    portable_base_name,
    trainable_parameters,
)
from tokenclean.utils import (
    atomic_dir,
    get_logger,
    package_versions,
    read_json,
    sha256_file,
    sha256_tree,
    write_json_atomic,
)

log = get_logger("training")

INTERRUPT_ENV = "TOKENCLEAN_TRAIN_INTERRUPT_AFTER"
"""Fault injection for resume tests: stop with :class:`TrainingInterrupted` after this optimizer step."""


class TrainingInterrupted(TokencleanError):
    """Raised by the ``TOKENCLEAN_TRAIN_INTERRUPT_AFTER`` hook; a re-run resumes from the last checkpoint."""


def run_identity(
    cfg: TrainConfig, data_dir: Path, spec: ModelSpec, init_adapter: str | None
) -> dict[str, Any]:
    """What makes two runs the same run: result-affecting config, data bytes, base model, initial adapter."""
    return {
        "config": cfg.identity(),
        "data_sha256": sha256_tree(data_dir),
        "model": portable_base_name(spec),
        "init_adapter_sha256": sha256_tree(init_adapter) if init_adapter else None,
    }


def train(
    data_dir: str | Path,
    model: str,
    out: str | Path,
    cfg: TrainConfig = TrainConfig(),  # noqa: B008  (frozen, immutable default)
    init_adapter: str | None = None,
    progress: bool = True,
    *,
    device: str = "auto",
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """LoRA-fine-tune ``model`` on the kept labels of ``data_dir``; write OUT/adapter and OUT/done.json.

    ``data_dir`` is a prepared dataset (every response token trained) or a cleaned one (kept tokens only).
    Samples with no kept token are dropped first (counted in ``done.json``). Each optimizer step's loss is
    the mean cross-entropy over all kept tokens of its ``grad_accum`` micro-batches (not a mean of
    micro-batch means). With ``init_adapter`` an existing LoRA adapter is trained further (its own r/alpha).
    Re-running a finished run returns its ``done.json`` at once; re-running an interrupted one resumes from
    OUT/checkpoint and ends with the same adapter as an uninterrupted run. ``on_step`` is called with each
    step's log record. Returns the ``done.json`` contents.
    """
    out, data_dir = Path(out), Path(data_dir)
    spec = resolve_model(model, init_adapter)
    init_adapter = adapter_path(spec.adapter)  # a PEFT dir given as the model counts as init_adapter
    identity = run_identity(cfg, data_dir, spec, init_adapter)
    done_path = out / "done.json"
    if done_path.exists():
        prev = read_json(done_path)
        check_same_run(prev["identity"], identity, str(done_path))
        log.info("%s is finished (%s); nothing to do", out, done_path)
        return dict(prev, reused=True)
    saved = read_checkpoint_state(out)
    if saved is not None:
        check_same_run(saved["identity"], identity, str(out / CHECKPOINT))

    data = load_train_data(data_dir, cfg.max_length)
    _check_tokenizer(data.manifest, spec, data_dir)
    dev = resolve_device(device)
    net = build_lora_model(spec, cfg, init_adapter, dev)
    _check_vocab(data, net, data_dir)
    params = trainable_parameters(net)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_steps = total_steps(len(data), cfg.effective_batch_size, cfg.epochs, cfg.max_steps)
    scheduler = _scheduler(optimizer, cfg, n_steps)
    state: dict[str, Any] = {
        "step": 0,
        "tokens_input": 0,
        "tokens_kept": 0,
        "seconds": 0.0,
        "skipped_steps": 0,
    }
    state |= {"nonfinite_steps": 0, "last_loss": None, "identity": identity}
    if saved is not None:
        state = load_checkpoint(out, net, optimizer, scheduler)
        log.info("resuming %s from step %d of %d", out, state["step"], n_steps)
    resumed_from = state["step"] if saved is not None else None
    _trim_log(out / "log.jsonl", state["step"])
    out.mkdir(parents=True, exist_ok=True)
    state = _run_steps(net, data, cfg, n_steps, state, optimizer, scheduler, out, dev, progress, on_step)
    return _finish(net, data, cfg, spec, init_adapter, data_dir, out, n_steps, state, dev, resumed_from)


def _scheduler(optimizer: Any, cfg: TrainConfig, n_steps: int) -> Any:
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * n_steps), n_steps)


def _check_vocab(data: TrainData, net: Any, data_dir: Path) -> None:
    vocab = net.get_input_embeddings().num_embeddings
    top = max(int(x.max()) for x in data.input_ids if len(x))
    if top >= vocab:
        raise DataError(
            str(data_dir),
            f"token id {top} >= the model's vocabulary size {vocab}; the data was tokenised with a "
            "different tokenizer than this model's",
            field="input_ids",
        )


def _check_tokenizer(manifest: dict[str, Any], spec: ModelSpec, data_dir: Path) -> None:
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
        name = (manifest.get("tokenizer") or {}).get("source") or (manifest.get("tokenizer") or {}).get(
            "name"
        )
        raise ModelError(
            f"{data_dir} was tokenised with '{name}', which differs from the tokenizer of model "
            f"'{spec.name}' (vocab {got['vocab_size']}); prepare the data with the model's tokenizer"
        )


def _run_steps(
    net: Any,
    data: TrainData,
    cfg: TrainConfig,
    n_steps: int,
    state: dict[str, Any],
    optimizer: Any,
    scheduler: Any,
    out: Path,
    dev: str,
    progress: bool,
    on_step: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    """The optimizer-step loop from ``state['step']`` to ``n_steps``; returns the updated state."""
    from tqdm.auto import tqdm

    lengths, use_ltk = data.lengths, supports_logits_to_keep(net)
    params = trainable_parameters(net)
    interrupt = int(os.environ.get(INTERRUPT_ENV, "0") or 0)
    autocast = _autocast(dev, cfg.bf16)
    t0, tok0, kept0 = time.perf_counter(), state["tokens_input"], state["tokens_kept"]
    secs0 = state["seconds"]
    bar = tqdm(total=n_steps, initial=state["step"], desc="train", unit="step", disable=not progress)
    for step in range(state["step"], n_steps):
        idx = step_samples(len(data), cfg.effective_batch_size, cfg.seed, step)
        mbs = [
            collate(data, b, dev) for b in micro_batches(idx, lengths, cfg.batch_size, cfg.group_by_length)
        ]
        lr = scheduler.get_last_lr()[0]
        res = accumulate_step(net, mbs, autocast, use_ltk)
        grad_norm = _optimizer_step(res.loss, params, optimizer, cfg.max_grad_norm, state)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        state["step"] = step + 1
        state["tokens_input"] += res.n_tokens
        state["tokens_kept"] += res.n_kept
        state["seconds"] = secs0 + elapsed
        state["last_loss"] = res.loss if res.loss is not None else state["last_loss"]
        rate = (state["tokens_input"] - tok0) / max(elapsed, 1e-9)
        rec = {"step": step + 1, "loss": res.loss, "lr": lr, "kept_tokens": res.n_kept}
        rec |= {"tokens": res.n_tokens, "grad_norm": grad_norm, "tokens_per_s": round(rate, 2)}
        rec["seconds"] = round(state["seconds"], 3)
        if (step + 1) % cfg.logging_steps == 0 or step + 1 == n_steps:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
        if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < n_steps:
            save_checkpoint(out, net, optimizer, scheduler, state)
        bar.update(1)
        bar.set_postfix(loss=f"{res.loss:.4f}" if res.loss is not None else "-", tok_s=f"{rate:.0f}")
        if on_step is not None:
            on_step(rec)
        if interrupt and step + 1 == interrupt:
            bar.close()
            raise TrainingInterrupted(f"training interrupted after step {interrupt} by {INTERRUPT_ENV}")
    bar.close()
    state["session_seconds"] = time.perf_counter() - t0
    state["session_tokens"] = state["tokens_input"] - tok0
    state["session_kept"] = state["tokens_kept"] - kept0
    return state


def _optimizer_step(
    loss: float | None, params: list[Any], optimizer: Any, max_grad_norm: float, state: dict[str, Any]
) -> float | None:
    """Clip and apply the accumulated gradient. A step with no kept token or a non-finite loss or gradient
    norm is skipped (the adapter never takes a NaN update)."""
    if loss is None:
        state["skipped_steps"] += 1
        log.warning("a step had no kept token; skipped")
        return None
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf))
    if not (math.isfinite(loss) and math.isfinite(norm)):
        state["nonfinite_steps"] += 1
        log.warning("non-finite loss %s or gradient norm %s; step skipped", loss, norm)
        return None
    optimizer.step()
    return norm


def _autocast(dev: str, bf16: bool) -> Callable[[], contextlib.AbstractContextManager[Any]]:
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


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines past the resumed step (they are recomputed)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(ln + "\n" for ln in keep))
    os.replace(tmp, path)


def _finish(
    net: Any,
    data: TrainData,
    cfg: TrainConfig,
    spec: Any,
    init_adapter: str | None,
    data_dir: Path,
    out: Path,
    n_steps: int,
    state: dict[str, Any],
    dev: str,
    resumed_from: int | None,
) -> dict[str, Any]:
    """Save the adapter, then done.json (last), then remove the checkpoint."""
    with atomic_dir(out / "adapter") as tmp:
        net.save_pretrained(str(tmp), save_embedding_layers=False)  # never resized; no Hub lookup
    secs = state["session_seconds"]
    manifest = data_dir / "manifest.json"
    done = {
        "stage": "train",
        "identity": state["identity"],
        "config": cfg.to_dict(),
        "data": {
            "path": str(data_dir.resolve()),
            "stage": data.manifest.get("stage"),
            "sha256": state["identity"]["data_sha256"],
            "manifest_sha256": sha256_file(manifest) if manifest.exists() else None,
            "counts": data.counts,
        },
        "model": {"name": spec.name, "base_model_name_or_path": portable_base_name(spec)},
        "init_adapter": init_adapter,
        "lora": lora_settings(net),
        "trainable_params": sum(p.numel() for p in trainable_parameters(net)),
        "adapter": str((out / "adapter").resolve()),
        "steps": n_steps,
        "epochs": round(n_steps / steps_per_epoch(len(data), cfg.effective_batch_size), 4),
        "skipped_steps": state["skipped_steps"],
        "nonfinite_steps": state["nonfinite_steps"],
        "tokens": {"input": state["tokens_input"], "kept": state["tokens_kept"]},
        "final_loss": state["last_loss"],
        "tokens_per_s": round(state["session_tokens"] / max(secs, 1e-9), 2),
        "kept_tokens_per_s": round(state["session_kept"] / max(secs, 1e-9), 2),
        "seconds": round(state["seconds"], 3),
        "resumed_from_step": resumed_from,
        "device": dev,
        "bf16": cfg.bf16,
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
    }
    write_json_atomic(out / "done.json", done)
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    log.info(
        "trained %d steps on %d kept tokens (final loss %s, %.1f tokens/s) -> %s",
        n_steps,
        state["tokens_kept"],
        "-" if state["last_loss"] is None else f"{state['last_loss']:.4f}",
        done["tokens_per_s"],
        out / "adapter",
    )
    return done


__all__ = ["INTERRUPT_ENV", "TrainingInterrupted", "train"]
