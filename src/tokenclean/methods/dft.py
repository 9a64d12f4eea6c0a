"""DFT, Dynamic Fine-Tuning (Wu et al. 2025, arXiv 2508.05629; TRL ``loss_type="dft"``, LLaMA-Factory
``use_dft_loss``), policy ``dft``: every response token counts, its loss multiplied in the same forward pass by
its own detached probability, floored: ``loss = mean_j(max(sg(p_j), floor) * -log p_j)``. No extra pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenclean.config import check_fields, setting
from tokenclean.methods.spec import MethodSpec
from tokenclean.training.policies import Policy


@dataclass(frozen=True)
class DftSettings:
    weight_floor: float = setting(
        0.0,
        "lower bound of the per-token weight max(sg(p), floor) (0: the published DFT; ~0.1 keeps gradients "
        "from vanishing on long, unlikely text)",
        bounds="[0, 1]",
    )

    def __post_init__(self) -> None:
        check_fields(self)


class DftPolicy(Policy):
    """DFT (Wu et al. 2025): every candidate counts (``w = 1``); its loss is multiplied in the same forward
    pass by its own detached probability, floored: ``loss = mean_j(max(sg(p_j), floor) * -log p_j)``."""

    name = "dft"
    Settings = DftSettings
    forward_signals = ("prob",)
    soft = True

    def multiplier(self, signals: dict[str, Any]) -> Any:
        p = signals["prob"]  # detached by the primitive
        return p.clamp_min(self.settings.weight_floor) if self.settings.weight_floor > 0 else p


SPEC = MethodSpec(
    "dft",
    "DFT",
    "soft",
    "every token's loss weighted by its own detached probability sg(p) (floored), in the same forward",
    settings=DftSettings,
    policy=DftPolicy,
    recovery="counted",
)
