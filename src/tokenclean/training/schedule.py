"""The learning-rate schedule's arithmetic, checked before training: a run whose every optimizer step has
learning rate 0 (one step, all of it warm-up) leaves the adapter at its initialisation; say so, with the
numbers, instead of writing an untrained adapter as if it were trained."""

from __future__ import annotations

import math

from tokenclean.training.config import TrainConfig
from tokenclean.utils import get_logger

log = get_logger("training")


def warmup_steps(cfg: TrainConfig, n_steps: int) -> int:
    """Warm-up steps of the linear schedule: ``ceil(warmup_ratio * n_steps)``."""
    return math.ceil(cfg.warmup_ratio * n_steps)


def lr_factor(step: int, n_steps: int, n_warmup: int) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based), as
    ``transformers.get_linear_schedule_with_warmup`` computes it: ``step / W`` in the warm-up, then linear
    decay to 0 at ``n_steps``."""
    if step < n_warmup:
        return step / max(1, n_warmup)
    return max(0.0, (n_steps - step) / max(1, n_steps - n_warmup))


def updating_steps(n_steps: int, n_warmup: int) -> int:
    """How many of the ``n_steps`` optimizer steps have a learning rate above 0 (closed form of
    ``sum(lr_factor(s, n_steps, n_warmup) > 0 for s in range(n_steps))``)."""
    if n_steps <= 0:
        return 0
    if n_warmup >= n_steps:
        return n_steps - 1  # steps 1..n-1 of the warm-up
    return max(0, n_warmup - 1) + (n_steps - n_warmup)


def no_update_message(n_samples: int, cfg: TrainConfig, n_steps: int, world: int = 1) -> str | None:
    """A warning when no optimizer step updates the adapter, else None. ``world``: processes."""
    w = warmup_steps(cfg, n_steps)
    if updating_steps(n_steps, w) > 0:
        return None
    batch, accum = cfg.step_batch(world)
    per = f" x {world} processes" if world > 1 else ""
    how = (
        f"max_steps {cfg.max_steps}"
        if cfg.max_steps is not None
        else f"{n_samples} samples / effective batch {batch} (batch_size "
        f"{cfg.batch_size} x grad_accum {accum}{per}) x {cfg.epochs} epoch(s)"
    )
    return (
        f"this schedule gives no update: {how} = {n_steps} optimizer step(s), and with warm-up "
        f"ceil(warmup_ratio {cfg.warmup_ratio} x {n_steps}) = {w} step(s) every step runs at learning rate 0; "
        "the adapter will stay at its initialisation (LoRA B = 0: the same model as the base). Lower "
        "global_batch, train more epochs or max_steps, or set warmup_ratio 0"
    )


def warn_if_no_update(n_samples: int, cfg: TrainConfig, n_steps: int, world: int = 1) -> str | None:
    """Log :func:`no_update_message` as a warning when there is one; return it."""
    msg = no_update_message(n_samples, cfg, n_steps, world)
    if msg is not None:
        log.warning("%s", msg)
    return msg
