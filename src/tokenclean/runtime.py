"""The launched process group as every stage sees it: which rank this process is, and who runs what.

Below ``scoring``, ``training`` and ``pipelines`` (none of them imports another for these helpers). Under
``accelerate launch`` / ``torchrun`` every process runs the same command; without a launcher there is one
process and every helper here is a no-op.
"""

from __future__ import annotations

import functools
import os
from typing import Any


def launched_world() -> tuple[int, int]:
    """``(rank, world_size)`` from the launcher's environment (torchrun / accelerate launch), else (0, 1)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def process_group(cpu: bool | None = None) -> Any:
    """accelerate's process state of a launched run (created on first use; CPU when no GPU or ``cpu``)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=(not torch.cuda.is_available()) if cpu is None else cpu)


def rank_zero_first(fn: Any) -> Any:
    """Run ``fn`` on rank 0 first; the other ranks run it after (and find its output ready to reuse).
    For stages whose output is written once (prepare, subset, select, evaluation). No-op for one process."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if launched_world()[1] <= 1:
            return fn(*args, **kwargs)
        with process_group().main_process_first():
            return fn(*args, **kwargs)

    return wrapper


def rank_zero_only(fn: Any) -> Any:
    """Run ``fn`` on rank 0 only (summaries, reports); other ranks return None. No-op for one process."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if launched_world()[0] == 0 else None

    return wrapper


__all__ = ["launched_world", "process_group", "rank_zero_first", "rank_zero_only"]
