"""The training stage: LoRA fine-tuning driven by an ``accelerate.Accelerator`` (PEFT + torch AdamW + the
transformers linear warm-up/decay schedule), one process or N (``accelerate launch`` / ``torchrun``: DDP by
default, FSDP through an accelerate config; DeepSpeed is refused, see
:func:`tokenclean.training.setup.check_distributed_type`).

An Accelerator-driven loop rather than ``transformers.Trainer`` (docs/training.md says why): a token policy
decides *inside* each step which tokens count (a no-grad signal pass, a top-k over all ranks, then the
gradient pass), and the loss rule needs the step's weight sum over all ranks before the first backward
(:mod:`tokenclean.training.loss`). Accelerate supplies the process group, DDP/FSDP wrapping, ``no_sync`` and
collectives; sharded (FSDP) checkpoints are ``torch.distributed.checkpoint``s of the trainable state
(:mod:`tokenclean.training.checkpoint`). tokenclean writes none of those mechanisms itself.

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

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenclean.config import DEFAULT_DEVICE
from tokenclean.errors import DataError, TokencleanError
from tokenclean.models.loader import ModelSpec, resolve_model
from tokenclean.outputs import guarded
from tokenclean.signals import signal_model
from tokenclean.training import setup
from tokenclean.training.checkpoint import (
    CHECKPOINT,
    check_same_run,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
)
from tokenclean.training.collate import (
    NOT_PACKED,
    MicroBatch,
    collate,
    micro_batches,
    packed_micro_batches,
    rank_rows,
    rank_share,
    step_samples,
    steps_per_epoch,
    total_steps,
)
from tokenclean.training.config import TrainConfig
from tokenclean.training.counted import write_counted
from tokenclean.training.data import fill_train_data, index_train_data
from tokenclean.training.distributed import StepDist
from tokenclean.training.finish import finish
from tokenclean.training.integrity import check_finished, discard_train_output, trim_log
from tokenclean.training.loss import StepResult, accumulate_step
from tokenclean.training.model import (
    adapter_path,
    build_lora_model,
    no_split_modules,
    trainable_parameters,
)
from tokenclean.training.policies import StepView, build_policy
from tokenclean.training.schedule import warn_if_no_update
from tokenclean.training.state import TrainRun, TrainState, run_identity
from tokenclean.utils import apply_threads, get_logger, read_json

log = get_logger("training")

INTERRUPT_ENV = "TOKENCLEAN_TRAIN_INTERRUPT_AFTER"
"""Fault injection for resume tests: stop with :class:`TrainingInterrupted` after this optimizer step."""


class TrainingInterrupted(TokencleanError):
    """Raised by the ``TOKENCLEAN_TRAIN_INTERRUPT_AFTER`` hook; a re-run resumes from the last checkpoint."""


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
    allow_no_update: bool = True,
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
    ``allow_no_update=False``: a schedule that would never update the adapter is a ConfigError before the
    model loads (the CLI's default), instead of a warning.
    """
    out, data_dir = Path(out), Path(data_dir)
    if force:
        discard_train_output(out)
    if threads:
        apply_threads(threads)
    spec = resolve_model(model, init_adapter)
    init_adapter = adapter_path(spec.adapter)  # a PEFT dir given as the model counts as init_adapter
    identity = run_identity(cfg, data_dir, spec, init_adapter)
    if (out / "done.json").exists():
        prev = read_json(out / "done.json")
        check_same_run(prev["identity"], identity, str(out / "done.json"))
        log.info("%s is finished (%s); nothing to do", out, out / "done.json")
        return dict(prev, reused=True)
    saved = read_checkpoint_state(out)
    if saved is not None:
        check_same_run(saved["identity"], identity, str(out / CHECKPOINT))
    run = _setup_data(cfg, spec, data_dir, out, init_adapter, device, saved)
    if not allow_no_update:
        setup.check_updates(run.cfg, len(run.data), run.acc.num_processes, run.data_dir)
    run = _setup_model(run)
    state = _setup_optimizer(run, identity, saved)
    if run.is_main:
        trim_log(out / "log.jsonl", state.step)
        out.mkdir(parents=True, exist_ok=True)
    run.acc.wait_for_everyone()
    state = _Loop(run, progress, on_step).run(state)
    return finish(run, state)


def _setup_data(
    cfg: TrainConfig,
    spec: ModelSpec,
    data_dir: Path,
    out: Path,
    init_adapter: str | None,
    device: str,
    saved: dict[str, Any] | None,
) -> TrainRun:
    """Load the data, check it against the model's tokenizer, start the accelerator."""
    acc = setup.accelerator(device)
    data = index_train_data(data_dir, cfg.max_length)  # the arrays: after the layout, _load_rows
    setup.check_tokenizer(data.manifest, spec, data_dir)
    if saved is not None:
        setup.check_world_size(saved, acc.num_processes, out)
    policy = build_policy(cfg.policy, cfg.policy_settings, data)
    if policy.uses_data_weights and data.weights is None:
        raise DataError(
            str(data_dir),
            f"policy {policy.name!r} needs a weights column (tokenclean select --weights)",
        )
    return TrainRun(cfg, spec, data_dir, out, init_adapter, data, acc, None, policy)


def _load_rows(run: TrainRun) -> None:
    """Load the token arrays of the samples this process trains on over the run (:func:`rank_rows`, for
    the micro-batch layout chosen), not the whole set."""
    cfg, data, world = run.cfg, run.data, run.acc.num_processes
    args = (run.n_steps, run.global_batch, cfg.seed, cfg.batch_size, cfg.group_by_length)
    packed = run.row_tokens != NOT_PACKED
    fill_train_data(data, rank_rows(len(data), data.lengths, run.acc.process_index, world, *args, packed))


def _setup_model(run: TrainRun) -> TrainRun:
    """The LoRA model on this process's device (identical initial adapters on every rank)."""
    cfg, acc = run.cfg, run.acc
    run.net = build_lora_model(run.spec, cfg, run.init_adapter, str(acc.device))
    if acc.process_index > 0:
        torch.manual_seed(cfg.seed + acc.process_index)  # per-rank dropout streams (docs/training.md)
    setup.check_vocab(run.data, run.net, run.data_dir)
    run.policy.check_model(run.net)
    return run


def _setup_optimizer(run: TrainRun, identity: dict[str, Any], saved: dict[str, Any] | None) -> TrainState:
    """AdamW and the schedule over the run's steps, wrapped by accelerate; restored from a checkpoint when
    there is one. Returns the state to continue from."""
    cfg, acc = run.cfg, run.acc
    optimizer = torch.optim.AdamW(trainable_parameters(run.net), lr=cfg.lr, weight_decay=cfg.weight_decay)
    wrapper = signal_model(run.net)
    wrapper._no_split_modules = no_split_modules(run.net)  # FSDP wraps the model's own layer classes
    run.model, run.optimizer = acc.prepare(wrapper, optimizer)
    run.global_batch = setup.global_batch(cfg, acc.num_processes)
    run.n_steps = total_steps(len(run.data), run.global_batch, cfg.epochs, cfg.max_steps)
    warn_if_no_update(len(run.data), cfg, run.n_steps, acc.num_processes)
    run.scheduler = setup.scheduler(run.optimizer, cfg, run.n_steps)
    run.row_tokens = setup.packed_rows(run.net, cfg, run.data)
    _load_rows(run)
    state = TrainState(identity=identity, world_size=acc.num_processes)
    if saved is not None:
        args = (run.out, acc, run.model, run.net, run.optimizer, run.scheduler, run.policy)
        state = TrainState.from_json(load_checkpoint(*args))
        run.resumed_from = state.step
        log.info("resuming %s from step %d of %d", run.out, state.step, run.n_steps)
    return state


class _Loop:
    """The optimizer-step loop of one process (see :func:`train`)."""

    def __init__(self, run: TrainRun, progress: bool, on_step: Callable[[dict[str, Any]], None] | None):
        self.run_, self.on_step = run, on_step
        self.progress = progress and run.is_main
        self.dist = StepDist(run.acc if run.world > 1 else None, run.model)
        self.autocast = setup.autocast(str(run.acc.device), run.cfg.bf16)
        self.params = [p for p in run.model.parameters() if p.requires_grad]

    def micro_batches(self, step: int) -> tuple[list[MicroBatch], MicroBatch | None]:
        """This rank's micro-batches of ``step``, and a stand-in (counted with weight 0) when it has none."""
        r = self.run_
        cfg, data, dev = r.cfg, r.data, str(r.acc.device)
        idx = step_samples(len(data), r.global_batch, cfg.seed, step)
        rank = r.acc.process_index
        if r.row_tokens == NOT_PACKED:
            mine = rank_share(idx, data.lengths, rank, r.world, cfg.group_by_length)
            parts = micro_batches(mine, data.lengths, cfg.batch_size, False)
        else:
            parts = packed_micro_batches(idx, data.lengths, rank, r.world, cfg.batch_size)
        mbs = [collate(data, b, dev, r.row_tokens) for b in parts]
        return mbs, (collate(data, idx[:1], dev) if not mbs else None)

    def step_weights(self, step: int, mbs: list[MicroBatch]) -> list[Any]:
        r = self.run_
        view = StepView(
            r.acc.unwrap_model(r.model), mbs, step, self.dist.rank, self.dist.gather, self.autocast
        )
        was_training = r.net.training
        r.net.eval()  # online policies read signals without dropout
        try:
            return r.policy.weights(view)
        finally:
            r.net.train(was_training)

    def step(self, step: int, state: TrainState) -> tuple[StepResult, float | None, float]:
        """One optimizer step: the policy's weights, the accumulated gradient, the update."""
        r = self.run_
        mbs, stand_in = self.micro_batches(step)
        weights = self.step_weights(step, mbs)
        if stand_in is not None:
            mbs, weights = [stand_in], [stand_in.data_weights * 0.0]
        lr = r.scheduler.get_last_lr()[0]
        state.tokens_computed += int(self.dist.sum(sum(mb.n_computed for mb in mbs)))
        pol = r.policy
        res = accumulate_step(
            r.model, mbs, weights, self.autocast, self.dist, pol.multiplier, pol.forward_signals
        )
        if pol.records_counted:
            self.record_counted(step, mbs, weights, res.multipliers)
        grad_norm = _optimizer_step(
            res.loss, self.params, r.optimizer, r.cfg.max_grad_norm, state, r.acc.clip_grad_norm_
        )
        pol.on_step_end(r.net)
        r.scheduler.step()
        r.optimizer.zero_grad(set_to_none=True)
        return res, grad_norm, lr

    def run(self, state: TrainState) -> TrainState:
        """Optimizer steps from ``state.step`` to the run's last; returns the updated state."""
        from tqdm.auto import tqdm

        n_steps = self.run_.n_steps
        interrupt = int(os.environ.get(INTERRUPT_ENV, "0") or 0)
        t0, tok0, kept0, secs0 = time.perf_counter(), state.tokens_input, state.tokens_kept, state.seconds
        bar = tqdm(total=n_steps, initial=state.step, desc="train", unit="step", disable=not self.progress)
        for step in range(state.step, n_steps):
            res, grad_norm, lr = self.step(step, state)
            elapsed = time.perf_counter() - t0
            state.step, state.seconds = step + 1, secs0 + elapsed
            state.tokens_input += res.n_tokens
            state.tokens_kept += res.n_kept
            state.last_loss = res.loss if res.loss is not None else state.last_loss
            rate = (state.tokens_input - tok0) / max(elapsed, 1e-9)
            rec = {"step": step + 1, "loss": res.loss, "lr": lr, "kept_tokens": res.n_kept}
            rec |= {"tokens": res.n_tokens, "grad_norm": grad_norm, "tokens_per_s": round(rate, 2)}
            rec["padding_efficiency"] = round(state.tokens_input / max(state.tokens_computed, 1), 4)
            rec |= self.run_.policy.metrics(res)
            rec["seconds"] = round(state.seconds, 3)
            self.log_step(rec, step, state)
            bar.update(1)
            bar.set_postfix(loss=f"{res.loss:.4f}" if res.loss is not None else "-", tok_s=f"{rate:.0f}")
            if interrupt and step + 1 == interrupt:
                bar.close()
                raise TrainingInterrupted(f"training interrupted after step {interrupt} by {INTERRUPT_ENV}")
        bar.close()
        state.session_seconds = time.perf_counter() - t0
        state.session_tokens = state.tokens_input - tok0
        state.session_kept = state.tokens_kept - kept0
        return state

    def record_counted(
        self, step: int, mbs: list[MicroBatch], weights: list[Any], mults: dict[int, Any]
    ) -> None:
        """Which tokens counted (and their effective weights: the policy's weight times an in-forward
        multiplier such as DFT's ``sg(p)``) and which samples each step trained on, in every step from the
        start of the epoch that holds each sample's last visit, gathered from every rank into OUT/counted/ by
        rank 0 (:mod:`tokenclean.training.counted`)."""
        r = self.run_
        spe = steps_per_epoch(len(r.data), r.global_batch)
        if step < (max(0, r.n_steps - spe) // spe) * spe:  # before the epoch holding every last visit
            return
        keys = np.concatenate([mb.keys[w > 0] for mb, w in zip(mbs, weights)] or [np.zeros((0, 2), np.int64)])
        rows = np.concatenate([mb.sample_rows for mb in mbs] or [np.zeros(0, np.int64)]).astype(np.int64)
        all_rows = np.concatenate(self.dist.gather(rows))
        eff = [w[w > 0] * mults[k] if k in mults else w[w > 0] for k, w in enumerate(weights)]
        ws = np.concatenate(eff or [np.zeros(0, np.float32)]).astype(np.float32)
        all_keys = np.concatenate([k.reshape(-1, 2) for k in self.dist.gather(keys.reshape(-1))])
        all_w = np.concatenate(self.dist.gather(ws))
        if r.is_main:
            write_counted(r.out, step, all_keys, all_w, all_rows)

    def log_step(self, rec: dict[str, Any], step: int, state: TrainState) -> None:
        r = self.run_
        cfg, n_steps = r.cfg, r.n_steps
        if r.is_main and ((step + 1) % cfg.logging_steps == 0 or step + 1 == n_steps):
            with open(r.out / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
        if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < n_steps:
            args = (r.out, r.acc, r.model, r.net, r.optimizer, r.scheduler)
            save_checkpoint(*args, state.to_json(), r.policy.state())
        if self.on_step is not None and r.is_main:
            self.on_step(rec)


def _optimizer_step(
    loss: float | None,
    params: list[Any],
    optimizer: Any,
    max_grad_norm: float,
    state: TrainState,
    clip: Callable[..., Any] = torch.nn.utils.clip_grad_norm_,
) -> float | None:
    """Clip and apply the accumulated (all-reduced) gradient. A step with no counted token or a non-finite
    loss or gradient norm is skipped (on every rank: loss and norm are the same on all of them), so the
    adapter never takes a NaN update. ``clip`` may return None (DeepSpeed clips inside its engine step and
    accelerate returns no norm): the step is then taken on a finite loss and no norm is logged."""
    if loss is None:
        state.skipped_steps += 1
        log.warning("a step had no counted token; skipped")
        return None
    got = clip(params, max_grad_norm if max_grad_norm > 0 else math.inf)
    norm = None if got is None else float(got)
    if not math.isfinite(loss) or (norm is not None and not math.isfinite(norm)):
        state.nonfinite_steps += 1
        log.warning("non-finite loss %s or gradient norm %s; step skipped", loss, norm)
        return None
    optimizer.step()
    return norm


__all__ = ["INTERRUPT_ENV", "TrainingInterrupted", "run_identity", "train"]
