"""Evaluation over the launched ranks: each rank evaluates its share, and the sums are reduced.

Under ``accelerate launch`` / ``torchrun`` with N processes every rank runs :func:`tokenclean.evaluation.evaluate`
with its own copy of the model on its own device (:func:`eval_group`). The held-out loss
(:mod:`tokenclean.evaluation.quick`) shards the samples over the ranks and all-reduces its sums; the harness
(:mod:`tokenclean.evaluation.harness`) shards each task's requests through lm-evaluation-harness's own
data-parallel protocol (``rank``, ``world_size``, ``all_gather``, ``barrier``, ``gather_object``). Only
rank 0 writes the result; every rank returns it (:meth:`EvalGroup.broadcast`). The collectives here only
wait for skew between ranks doing their own share (the group timeout, ``tokenclean.runtime``).

One process (no launcher): :data:`SINGLE`, every operation a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EvalGroup:
    """This process's place in the evaluation: ``rank`` of ``world`` (``state``: accelerate's
    ``PartialState`` of the launched group, None for one process)."""

    rank: int = 0
    world: int = 1
    state: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: np.ndarray) -> np.ndarray:
        """``values`` (1-D) summed over ranks in float64 (exact for integer counts below 2**53)."""
        values = np.asarray(values, dtype=np.float64)
        if self.world == 1:
            return values
        import torch
        from accelerate.utils import reduce

        t = torch.from_numpy(values.copy()).to(self.state.device)  # (K,)
        return np.asarray(reduce(t, reduction="sum").cpu().numpy())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order (on every rank)."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return list(gather_object([obj]))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's picklable ``obj`` on every rank."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()


SINGLE = EvalGroup()


def eval_group(device: str) -> tuple[EvalGroup, str]:
    """(the group, this rank's device). Launched with several processes: accelerate's process state (created
    with the group timeout when needed) and, on GPUs, the rank's own GPU for ``auto``/``cuda``."""
    from tokenclean.runtime import launched_world, process_group

    if launched_world()[1] <= 1:
        return SINGLE, device
    import torch

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    state = process_group(cpu=cpu)
    if device in ("cuda", "auto") and str(state.device).startswith("cuda"):
        device = str(state.device)
    return EvalGroup(int(state.process_index), int(state.num_processes), state), device


def rank_samples(lengths: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Indices of the samples ``rank`` evaluates: every ``world``-th sample by decreasing length, so the
    ranks get about the same number of samples and of tokens (and each rank still batches by length)."""
    order = np.argsort(np.asarray(lengths), kind="stable")[::-1]  # (N,)
    return np.sort(order[rank::world])


__all__ = ["SINGLE", "EvalGroup", "eval_group", "rank_samples"]
