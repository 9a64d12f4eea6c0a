"""What one optimizer step needs from the process group, over accelerate (never our own collectives).

:class:`StepDist` wraps an ``accelerate.Accelerator`` (or nothing, for one process without accelerate) with
the four operations the loss rule and the token policies use: a float sum over ranks, an all-gather of
variable-length arrays, ``no_sync`` for the micro-batches before the last of a step (gradients are
synchronised once per step) and ``backward``.

Seeds (documented in docs/training.md): every rank seeds ``train.seed`` before building the LoRA adapter,
so the initial adapters are identical (DDP also broadcasts rank 0's at wrap time); after that, rank ``r > 0``
reseeds ``train.seed + r`` so LoRA dropout draws differ between ranks; rank 0 keeps the single-process stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class StepDist:
    """Collectives of one training process; ``accelerator=None`` is a single process."""

    accelerator: Any = None
    model: Any = None

    @property
    def world(self) -> int:
        return 1 if self.accelerator is None else int(self.accelerator.num_processes)

    @property
    def rank(self) -> int:
        return 0 if self.accelerator is None else int(self.accelerator.process_index)

    def sum(self, value: float) -> float:
        """``value`` summed over ranks (float64)."""
        if self.world == 1:
            return float(value)
        import torch

        t = torch.tensor([float(value)], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(t, reduction="sum")[0])

    def gather(self, arr: np.ndarray) -> list[np.ndarray]:
        """Every rank's 1-D ``arr`` (lengths may differ), in rank order."""
        if self.world == 1:
            return [np.asarray(arr)]
        import torch

        acc = self.accelerator
        t = torch.from_numpy(np.ascontiguousarray(arr)).to(acc.device)
        n = acc.gather(torch.tensor([len(arr)], device=acc.device)).cpu().numpy()  # (world,)
        padded = acc.pad_across_processes(t, dim=0)  # (max n,)
        got = acc.gather(padded).cpu().numpy().reshape(self.world, -1)  # (world, max n)
        return [got[r, : n[r]] for r in range(self.world)]

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate gradients locally (no all-reduce) inside; a no-op for one process."""
        if self.accelerator is None or self.world == 1:
            yield
            return
        with self.accelerator.no_sync(self.model):
            yield

    def backward(self, loss: Any) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)


LOCAL = StepDist()
