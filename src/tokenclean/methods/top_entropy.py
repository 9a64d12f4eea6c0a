"""Top-entropy tokens (the "80/20 forking tokens" rule, Wang et al. 2025, arXiv 2506.01939; TRL
``top_entropy_quantile``), policy ``top_entropy``.

Before the gradient pass of every step a no-grad pass of the current model (eval mode) gives each
candidate token's predictive entropy; only the top ``floor(quantile * N_step)`` tokens of the step over all
ranks count (ties by sample index and position), so the choice does not depend on the micro-batching or the
number of processes. TRL computes the quantile inside the gradient pass per device batch (for GRPO); the
step-wide rule here is its exact, batching-invariant form. Cost: one no-grad pass per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenclean.config import check_fields, setting
from tokenclean.methods.spec import MethodSpec
from tokenclean.training.policies import Policy, StepView, split_like, step_signal, top_k_over_ranks


@dataclass(frozen=True)
class TopEntropySettings:
    quantile: float = setting(
        0.2,
        "share of each step's tokens (over all ranks) that count: the highest-entropy ones",
        bounds="(0, 1]",
    )

    def __post_init__(self) -> None:
        check_fields(self)


class TopEntropyPolicy(Policy):
    name = "top_entropy"
    Settings = TopEntropySettings

    def weights(self, view: StepView) -> list[np.ndarray]:
        ent = [sig["entropy"] for sig in step_signal(view, ("entropy",))]
        flat = np.concatenate(ent) if ent else np.zeros(0)  # (N_rank,)
        keys = [mb.keys for mb in view.micro_batches]
        flat_keys = np.concatenate(keys) if keys else np.zeros((0, 2), dtype=np.int64)  # (N_rank, 2)
        kept = top_k_over_ranks(flat, flat_keys, self.settings.quantile, view.gather, view.rank)
        return split_like(kept.astype(np.float32), view)


SPEC = MethodSpec(
    "top_entropy",
    "Top-entropy tokens",
    "online",
    "only the top q of each step's tokens by the current model's predictive entropy count (q = 0.2)",
    settings=TopEntropySettings,
    policy=TopEntropyPolicy,
    no_grad_passes=lambda s: 1,
    recovery="counted",
)
