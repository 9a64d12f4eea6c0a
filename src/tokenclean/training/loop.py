"""The training stage: LoRA fine-tuning driven by an ``accelerate.Accelerator`` (PEFT + torch AdamW + the
transformers linear warm-up/decay schedule), one process or N (``accelerate launch`` / ``torchrun``: DDP by
default, FSDP or DeepSpeed through an accelerate config).

An Accelerator-driven loop rather than ``transformers.Trainer`` (docs/training.md says why): a token policy
decides *inside* each step which tokens count (a no-grad signal pass, a top-k over all ranks, then the
gradient pass), and the loss rule needs the step's weight sum over all ranks before the first backward
(:mod:`tokenclean.training.loss`). Accelerate supplies the process group, DDP/FSDP wrapping, ``no_sync``,
collectives and sharded checkpoints; tokenclean writes none of those itself.

Data: optimizer step ``s`` takes the same samples whatever the number of processes
(:func:`tokenclean.training.collate.step_samples`); rank ``r`` of ``N`` takes every N-th of them after a
length sort (:func:`tokenclean.training.collate.rank_share`), so ``N`` processes with micro-batch ``b``
train the same steps as one process with micro-batch ``N * b``. Only rank 0 writes files and logs.

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

import numpy as np
import torch

from tokenclean.config import DEFAULT_DEVICE
from tokenclean.errors import ConfigError, DataError, ModelError, TokencleanError
from tokenclean.models.loader import (
    ModelSpec,
    load_tokenizer,
    resolve_device,
    resolve_model,
    tokenizer_identity,
)
from tokenclean.outputs import file_digests, guarded
from tokenclean.signals import signal_model
from tokenclean.training.checkpoint import (
    CHECKPOINT,
    check_same_run,
    is_sharded,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
)
from tokenclean.training.collate import (
    MicroBatch,
    collate,
    micro_batches,
    rank_share,
    step_samples,
    steps_per_epoch,
    total_steps,
)
from tokenclean.training.config import TrainConfig
from tokenclean.training.data import TrainData, load_train_data
from tokenclean.training.distributed import StepDist
from tokenclean.training.integrity import check_finished, log_lines
from tokenclean.training.loss import accumulate_step
from tokenclean.training.model import (
    adapter_path,
    build_lora_model,
    lora_settings,
    portable_base_name,
    trainable_parameters,
)
from tokenclean.training.policies import Policy, StepView, build_policy
from tokenclean.training.schedule import warn_if_no_update
from tokenclean.utils import (
    RESULT,
    apply_threads,
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


@guarded("train", inputs=("data_dir", "init_adapter", "model"), in_place=True, before=check_finished)
def train(
    data_dir: str | Path,
    model: str,
    out: str | Path,
    cfg: TrainConfig = TrainConfig(),  # noqa: B008  (frozen, immutable default)
    init_adapter: str | None = None,
    progress: bool = True,
    *,
    device: str = DEFAULT_DEVICE,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    threads: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """LoRA-fine-tune ``model`` on the counted tokens of ``data_dir``; write OUT/adapter and OUT/done.json.

    ``data_dir`` is a prepared dataset (every response token trained), a cleaned one (kept tokens only) or
    one with a ``weights`` column. Samples with no kept token are dropped first (counted in ``done.json``).
    ``cfg.policy`` decides inside every step which candidate tokens count and with what weight; the step's
    loss is normalised over the counted weight of all micro-batches of all ranks (not a mean of means).
    With ``init_adapter`` an existing LoRA adapter is trained further (its own r/alpha). Re-running a
    finished run returns its ``done.json`` at once; re-running an interrupted one resumes from
    OUT/checkpoint (same number of processes) and ends with the same adapter as an uninterrupted run.
    Under ``accelerate launch``/``torchrun`` every process calls this; rank 0 writes. ``on_step`` is called
    (rank 0) with each step's log record. Returns the ``done.json`` contents. ``force``: start over, removing
    a finished or interrupted training output in OUT (refused for a directory that is not one).
    """
    out, data_dir = Path(out), Path(data_dir)
    if force:
        _discard_train_output(out)
    if threads:
        apply_threads(threads)
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
    acc = _accelerator(device)
    dev = str(acc.device)
    if saved is not None:
        check_world_size(saved, acc.num_processes, out)
    net = build_lora_model(spec, cfg, init_adapter, dev)
    if acc.process_index > 0:
        torch.manual_seed(cfg.seed + acc.process_index)  # per-rank dropout streams (docs/training.md)
    _check_vocab(data, net, data_dir)
    policy = build_policy(cfg.policy, cfg.policy_settings, data)
    policy.check_model(net)
    if policy.uses_data_weights and data.weights is None:
        raise DataError(
            str(data_dir), "policy 'weights' needs a weights column (tokenclean select --weights)"
        )
    wrapped = signal_model(net)
    optimizer = torch.optim.AdamW(trainable_parameters(net), lr=cfg.lr, weight_decay=cfg.weight_decay)
    wrapped, optimizer = acc.prepare(wrapped, optimizer)
    global_batch = cfg.effective_batch_size * acc.num_processes  # HF convention: per-device x accum x N
    n_steps = total_steps(len(data), global_batch, cfg.epochs, cfg.max_steps)
    warn_if_no_update(len(data), cfg, n_steps, global_batch)
    scheduler = _scheduler(optimizer, cfg, n_steps)
    state: dict[str, Any] = {
        "step": 0,
        "tokens_input": 0,
        "tokens_kept": 0,
        "seconds": 0.0,
        "skipped_steps": 0,
    }
    state |= {"nonfinite_steps": 0, "last_loss": None, "identity": identity, "world_size": acc.num_processes}
    if saved is not None:
        state = load_checkpoint(out, acc, wrapped, net, optimizer, scheduler, policy)
        log.info("resuming %s from step %d of %d", out, state["step"], n_steps)
    resumed_from = state["step"] if saved is not None else None
    if acc.is_main_process:
        _trim_log(out / "log.jsonl", state["step"])
        out.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    loop = _Loop(acc, wrapped, net, policy, data, cfg, optimizer, scheduler, out, progress, on_step)
    state = loop.run(n_steps, state)
    return _finish(
        acc, wrapped, net, data, cfg, spec, init_adapter, data_dir, out, n_steps, state, resumed_from
    )


def _accelerator(device: str) -> Any:
    """The Accelerator of this process: CPU when asked (or when no GPU), else the launcher's GPU."""
    from accelerate import Accelerator

    dev = resolve_device(device)
    # mixed precision is tokenclean's own setting (train.bf16, autocast); None keeps an accelerate state
    # that this process already set up (e.g. an lm-eval or TRL run before this one in the same process)
    acc = Accelerator(cpu=dev == "cpu", mixed_precision=None)
    if acc.mixed_precision != "no":
        log.warning(
            "accelerate mixed precision '%s' is active (from an accelerate config or an earlier Accelerator "
            "in this process); the forward passes run under it in addition to train.bf16",
            acc.mixed_precision,
        )
    return acc


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


class _Loop:
    """The optimizer-step loop of one process (see :func:`train`)."""

    def __init__(
        self,
        acc: Any,
        model: Any,
        net: Any,
        policy: Policy,
        data: TrainData,
        cfg: TrainConfig,
        optimizer: Any,
        scheduler: Any,
        out: Path,
        progress: bool,
        on_step: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.acc, self.model, self.net, self.policy, self.data, self.cfg = acc, model, net, policy, data, cfg
        self.optimizer, self.scheduler, self.out, self.on_step = optimizer, scheduler, out, on_step
        self.progress = progress and acc.is_main_process
        self.dist = StepDist(acc if acc.num_processes > 1 else None, model)
        self.autocast = _autocast(str(acc.device), cfg.bf16)
        self.params = [p for p in model.parameters() if p.requires_grad]

    def micro_batches(self, step: int) -> tuple[list[MicroBatch], MicroBatch | None]:
        """This rank's micro-batches of ``step``, and a stand-in (counted with weight 0) when it has none."""
        cfg, data, dev = self.cfg, self.data, str(self.acc.device)
        idx = step_samples(len(data), cfg.effective_batch_size * self.acc.num_processes, cfg.seed, step)
        mine = rank_share(
            idx, data.lengths, self.acc.process_index, self.acc.num_processes, cfg.group_by_length
        )
        mbs = [collate(data, b, dev) for b in micro_batches(mine, data.lengths, cfg.batch_size, False)]
        return mbs, (collate(data, idx[:1], dev) if not mbs else None)

    def step_weights(self, step: int, mbs: list[MicroBatch]) -> list[Any]:
        view = StepView(
            self.acc.unwrap_model(self.model), mbs, step, self.dist.rank, self.dist.gather, self.autocast
        )
        was_training = self.net.training
        self.net.eval()  # online policies read signals without dropout
        try:
            return self.policy.weights(view)
        finally:
            self.net.train(was_training)

    def run(self, n_steps: int, state: dict[str, Any]) -> dict[str, Any]:
        """Optimizer steps from ``state['step']`` to ``n_steps``; returns the updated state."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        interrupt = int(os.environ.get(INTERRUPT_ENV, "0") or 0)
        t0, tok0, kept0 = time.perf_counter(), state["tokens_input"], state["tokens_kept"]
        secs0 = state["seconds"]
        bar = tqdm(total=n_steps, initial=state["step"], desc="train", unit="step", disable=not self.progress)
        for step in range(state["step"], n_steps):
            mbs, stand_in = self.micro_batches(step)
            weights = self.step_weights(step, mbs)
            if stand_in is not None:
                mbs, weights = [stand_in], [stand_in.data_weights * 0.0]
            lr = self.scheduler.get_last_lr()[0]
            res = accumulate_step(
                self.model,
                mbs,
                weights,
                self.autocast,
                self.dist,
                self.policy.multiplier,
                self.policy.forward_signals,
            )
            self.record_counted(step, n_steps, mbs, weights, res.multipliers)
            grad_norm = self.optimizer_step(res.loss, state)
            self.policy.on_step_end(self.net)
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - t0
            state["step"] = step + 1
            state["tokens_input"] += res.n_tokens
            state["tokens_kept"] += res.n_kept
            state["seconds"] = secs0 + elapsed
            state["last_loss"] = res.loss if res.loss is not None else state["last_loss"]
            rate = (state["tokens_input"] - tok0) / max(elapsed, 1e-9)
            rec = {"step": step + 1, "loss": res.loss, "lr": lr, "kept_tokens": res.n_kept}
            rec |= {"tokens": res.n_tokens, "grad_norm": grad_norm, "tokens_per_s": round(rate, 2)}
            if cfg.policy == "weights":
                rec["weight_sum"] = round(res.weight_sum, 6)
            rec["seconds"] = round(state["seconds"], 3)
            self.log_step(rec, step, n_steps, state)
            bar.update(1)
            bar.set_postfix(loss=f"{res.loss:.4f}" if res.loss is not None else "-", tok_s=f"{rate:.0f}")
            if interrupt and step + 1 == interrupt:
                bar.close()
                raise TrainingInterrupted(f"training interrupted after step {interrupt} by {INTERRUPT_ENV}")
        bar.close()
        state["session_seconds"] = time.perf_counter() - t0
        state["session_tokens"] = state["tokens_input"] - tok0
        state["session_kept"] = state["tokens_kept"] - kept0
        return state

    def record_counted(
        self, step: int, n_steps: int, mbs: list[MicroBatch], weights: list[Any], mults: dict[int, Any]
    ) -> None:
        """Online policies: which tokens counted (and their effective weights: the policy's weight times an
        in-forward multiplier such as DFT's ``sg(p)``) in each step of the last epoch, gathered
        from every rank into OUT/counted/step-NNNNN.npz by rank 0 (a resumed step overwrites its file);
        :func:`counted_tokens` assembles them. Offline policies count what the dataset says: nothing kept."""
        if self.cfg.policy in ("labels", "weights"):
            return
        spe = steps_per_epoch(len(self.data), self.cfg.effective_batch_size * self.acc.num_processes)
        if step < n_steps - spe:
            return
        keys = np.concatenate([mb.keys[w > 0] for mb, w in zip(mbs, weights)] or [np.zeros((0, 2), np.int64)])
        eff = [w[w > 0] * mults[k] if k in mults else w[w > 0] for k, w in enumerate(weights)]
        ws = np.concatenate(eff or [np.zeros(0, np.float32)]).astype(np.float32)
        all_keys = np.concatenate([k.reshape(-1, 2) for k in self.dist.gather(keys.reshape(-1))])
        all_w = np.concatenate(self.dist.gather(ws))
        if self.acc.is_main_process:
            d = self.out / "counted"
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".step-{step:05d}.npz"
            with open(tmp, "wb") as f:
                np.savez(f, keys=all_keys, weights=all_w)
            os.replace(tmp, d / f"step-{step:05d}.npz")

    def log_step(self, rec: dict[str, Any], step: int, n_steps: int, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if self.acc.is_main_process and ((step + 1) % cfg.logging_steps == 0 or step + 1 == n_steps):
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
        if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < n_steps:
            save_checkpoint(
                self.out,
                self.acc,
                self.model,
                self.net,
                self.optimizer,
                self.scheduler,
                state,
                self.policy.state(),
            )
        if self.on_step is not None and self.acc.is_main_process:
            self.on_step(rec)

    def optimizer_step(self, loss: float | None, state: dict[str, Any]) -> float | None:
        return _optimizer_step(
            loss, self.params, self.optimizer, self.cfg.max_grad_norm, state, self.acc.clip_grad_norm_
        )


def _optimizer_step(
    loss: float | None,
    params: list[Any],
    optimizer: Any,
    max_grad_norm: float,
    state: dict[str, Any],
    clip: Callable[..., Any] = torch.nn.utils.clip_grad_norm_,
) -> float | None:
    """Clip and apply the accumulated (all-reduced) gradient. A step with no counted token or a non-finite
    loss or gradient norm is skipped (on every rank: loss and norm are the same on all of them), so the
    adapter never takes a NaN update."""
    if loss is None:
        state["skipped_steps"] += 1
        log.warning("a step had no counted token; skipped")
        return None
    norm = float(clip(params, max_grad_norm if max_grad_norm > 0 else math.inf))
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
    keep = [ln for ln in log_lines(path) if json.loads(ln)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(ln + "\n" for ln in keep))
    os.replace(tmp, path)


def _finish(
    acc: Any,
    model: Any,
    net: Any,
    data: TrainData,
    cfg: TrainConfig,
    spec: Any,
    init_adapter: str | None,
    data_dir: Path,
    out: Path,
    n_steps: int,
    state: dict[str, Any],
    resumed_from: int | None,
) -> dict[str, Any]:
    """Save the adapter, then done.json (last), then remove the checkpoint (rank 0; the others wait)."""
    full = acc.get_state_dict(model) if is_sharded(acc) else None  # every rank takes part in the gather
    done = _done_record(acc, net, data, cfg, spec, init_adapter, data_dir, out, n_steps, state, resumed_from)
    if acc.is_main_process:
        lm_state = None if full is None else {k.removeprefix("lm."): v for k, v in full.items()}
        with atomic_dir(out / "adapter") as tmp:  # never resized; no Hub lookup
            net.save_pretrained(str(tmp), save_embedding_layers=False, state_dict=lm_state)
        done["adapter_files"] = file_digests(out / "adapter")  # verified before a finished run is reused
        write_json_atomic(out / "done.json", done)
        shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
        log.info(
            "trained %d steps on %d kept tokens (final loss %s, %.1f tokens/s) -> %s",
            n_steps,
            state["tokens_kept"],
            "-" if state["last_loss"] is None else f"{state['last_loss']:.4f}",
            done["tokens_per_s"],
            out / "adapter",
            extra=RESULT,
        )
    acc.wait_for_everyone()
    return done


def _discard_train_output(out: Path) -> None:
    """``--force``: empty OUT (a finished or interrupted training output) on rank 0 before any rank reads
    it. The stage guard has already refused a directory that is not a training output, and holds its lock;
    its ownership mark stays."""
    from tokenclean.outputs import OWNER_FILE
    from tokenclean.training.distributed import launched_world

    if not out.is_dir():
        return
    if launched_world()[0] == 0:
        log.info("discarding the previous training output in %s (--force)", out)
        for child in out.iterdir():
            if child.name == OWNER_FILE:
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:  # the other ranks wait until rank 0 has emptied it, so none reads the old state
        while (out / "done.json").exists() or (out / CHECKPOINT).exists():
            time.sleep(0.05)


def counted_tokens(train_dir: str | Path, data_dir: str | Path) -> dict[str, dict[int, float]]:
    """The tokens an online policy counted in the last epoch of a finished run: sample_id -> {position:
    weight} (a token seen in several steps keeps its last weight)."""
    from tokenclean.training.data import load_train_data

    done = read_json(Path(train_dir) / "done.json")
    data = load_train_data(data_dir, int(done["config"]["max_length"]))
    out: dict[str, dict[int, float]] = {}
    for f in sorted((Path(train_dir) / "counted").glob("step-*.npz")):
        with np.load(f) as z:
            for (i, pos), w in zip(z["keys"], z["weights"]):
                out.setdefault(data.sample_ids[int(i)], {})[int(pos)] = float(w)
    return out


def _done_record(
    acc: Any,
    net: Any,
    data: TrainData,
    cfg: TrainConfig,
    spec: Any,
    init_adapter: str | None,
    data_dir: Path,
    out: Path,
    n_steps: int,
    state: dict[str, Any],
    resumed_from: int | None,
) -> dict[str, Any]:
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
        "epochs": round(
            n_steps / steps_per_epoch(len(data), cfg.effective_batch_size * acc.num_processes), 4
        ),
        "global_batch_size": cfg.effective_batch_size * acc.num_processes,
        "skipped_steps": state["skipped_steps"],
        "nonfinite_steps": state["nonfinite_steps"],
        "tokens": {"input": state["tokens_input"], "kept": state["tokens_kept"]},
        "final_loss": state["last_loss"],
        "tokens_per_s": round(state["session_tokens"] / max(secs, 1e-9), 2),
        "kept_tokens_per_s": round(state["session_kept"] / max(secs, 1e-9), 2),
        "seconds": round(state["seconds"], 3),
        "resumed_from_step": resumed_from,
        "device": str(acc.device),
        "world_size": acc.num_processes,
        "distributed_type": str(acc.distributed_type).split(".")[-1],
        "policy": {"name": cfg.policy, "settings": dict(cfg.policy_settings)},
        "bf16": cfg.bf16,
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
    }
    return done


__all__ = ["INTERRUPT_ENV", "TrainingInterrupted", "train"]
