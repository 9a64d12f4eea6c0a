"""ProFit (Liu et al. 2026, arXiv 2601.09195), policy ``profit``: a token counts (``w = 1``) when its
probability under the current model (a no-grad pass in eval mode before the gradient pass) is on the chosen
side of ``prob_threshold`` (``higher``, the published recommendation; ``lower`` and ``middle`` are its
ablations). Cost: one no-grad pass per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from tokenclean.config import check_fields, setting
from tokenclean.methods.spec import MethodSpec
from tokenclean.training.policies import Policy, StepView, step_signal


@dataclass(frozen=True)
class ProfitSettings:
    prob_threshold: float = setting(
        0.1,
        "probability under the current model that decides whether a token counts (published default 0.1)",
        bounds="(0, 1)",
    )
    direction: Literal["higher", "lower", "middle"] = setting(
        "higher",
        "higher: keep p > threshold (published, recommended); lower: keep p < threshold; middle: keep "
        "prob_range[0] < p < prob_range[1]",
    )
    prob_range: tuple[float, float] = setting((0.1, 0.9), "the band [low, high] of direction: middle")

    def __post_init__(self) -> None:
        check_fields(self)
        lo, hi = self.prob_range
        if not 0 <= lo < hi <= 1:
            raise ValueError(
                f"prob_range: expected [low, high] with 0 <= low < high <= 1, got {list(self.prob_range)!r}"
            )


class ProfitPolicy(Policy):
    """ProFit (Liu et al. 2026): a token counts (``w = 1``) when its probability under the current model
    (no-grad pass, eval mode) is on the chosen side of ``prob_threshold``."""

    name = "profit"
    Settings = ProfitSettings

    def weights(self, view: StepView) -> list[np.ndarray]:
        s, out = self.settings, []
        for sig in step_signal(view, ("prob",)):
            p = sig["prob"]
            if s.direction == "higher":
                keep = p > s.prob_threshold
            elif s.direction == "lower":
                keep = p < s.prob_threshold
            else:
                keep = (p > s.prob_range[0]) & (p < s.prob_range[1])
            out.append(keep.astype(np.float32))
        return out


SPEC = MethodSpec(
    "profit",
    "ProFit",
    "online",
    "only tokens the current model gives probability above a threshold count (published default 0.1)",
    settings=ProfitSettings,
    policy=ProfitPolicy,
    no_grad_passes=lambda s: 1,
    recovery="counted",
)
