"""What a training run carries between steps (:class:`TrainState`, checkpointed as ``state.json``) and what
it was set up with (:class:`TrainRun`, built once by :func:`tokenclean.training.loop.train`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenclean.models.loader import ModelSpec
from tokenclean.training.config import TrainConfig
from tokenclean.training.data import TrainData
from tokenclean.training.model import portable_base_name
from tokenclean.training.policies import Policy
from tokenclean.utils import sha256_tree


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


# kept in memory only: the counters of this process's session (a resumed run starts them at 0)
_SESSION = ("session_seconds", "session_tokens", "session_kept")


@dataclass
class TrainState:
    """The counters of a run; everything but the ``session_*`` fields is saved in a checkpoint."""

    identity: dict[str, Any]  # tokenclean.training.loop.run_identity
    world_size: int
    step: int = 0  # optimizer steps done = the data position
    tokens_input: int = 0  # non-padding input tokens of the gradient passes, all ranks
    tokens_kept: int = 0  # counted tokens, all ranks
    tokens_computed: int = 0  # tokens the gradient passes computed (padding included), all ranks
    seconds: float = 0.0  # training-loop seconds over every session
    skipped_steps: int = 0  # steps with no counted token
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss or gradient norm
    last_loss: float | None = None
    session_seconds: float = 0.0
    session_tokens: int = 0
    session_kept: int = 0

    def to_json(self) -> dict[str, Any]:
        """The checkpoint's ``state.json``."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _SESSION}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainState:
        names = {f.name for f in dataclasses.fields(cls)} - set(_SESSION)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainRun:
    """Everything one process set up for a run: inputs, the accelerator, model, policy, optimizer."""

    cfg: TrainConfig
    spec: ModelSpec
    data_dir: Path
    out: Path
    init_adapter: str | None
    data: TrainData
    acc: Any  # accelerate.Accelerator
    net: Any  # the PEFT model (unwrapped)
    policy: Policy
    model: Any = None  # the signal model as accelerate prepared it (DDP/FSDP-wrapped)
    optimizer: Any = None
    scheduler: Any = None
    n_steps: int = 0
    global_batch: int = 0  # samples per optimizer step over all ranks
    row_tokens: int | None = -1  # packed micro-batch rows (None: one row; -1: not packed, right-padded)
    resumed_from: int | None = None

    @property
    def is_main(self) -> bool:
        return bool(self.acc.is_main_process)

    @property
    def world(self) -> int:
        return int(self.acc.num_processes)


__all__ = ["TrainRun", "TrainState", "run_identity"]
