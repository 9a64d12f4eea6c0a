"""EAFT, entropy-adaptive fine-tuning (Diao et al. 2026, arXiv 2601.02151; LLaMA-Factory ``use_eaft_loss``,
axolotl ``eaft_k``/``eaft_alpha``), policy ``eaft``.

Every response token counts; its loss is multiplied, without gradient, by the entropy of the softmax over
the current model's ``k`` largest logits at its position, raised to ``alpha``:

    loss = sum_j H_k(j)^alpha * -log p_j  /  N      H_k(j) = -sum_{i in top-k} q_i log q_i,  q = softmax(top-k)

It damps "confident conflicts": tokens the model finds unlikely while it is sure of another answer (low
entropy). The paper writes the gate as a *normalised* top-k entropy (``H_k / ln k``, in [0, 1]); the
frameworks' implementations (LLaMA-Factory, axolotl) use ``H_k`` itself. The default follows the
frameworks, so a user gets the same weights here as there (``normalize: true`` divides by ``ln k``, which
only rescales the loss by a constant). The normaliser is the token count (``sum w`` with ``w = 1``), as the
frameworks' ``sum / num_items_in_batch``. No extra pass: the entropy comes from the gradient pass's logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tokenclean.config import check_fields, setting
from tokenclean.methods.spec import MethodSpec
from tokenclean.training.policies import Policy


@dataclass(frozen=True)
class EaftSettings:
    k: int = setting(
        20, "top-k logits whose softmax entropy gates each token (axolotl eaft_k)", bounds=">= 2"
    )
    alpha: float = setting(1.0, "exponent of the entropy gate H_k^alpha (axolotl eaft_alpha)", bounds="> 0")
    normalize: bool = setting(
        False, "divide H_k by ln k (the paper's normalised entropy; the frameworks do not)"
    )

    def __post_init__(self) -> None:
        check_fields(self)


def eaft_weight(topk_entropy: Any, s: EaftSettings) -> Any:
    """The gate ``(H_k / (ln k if normalize else 1)) ** alpha`` of (N,) top-k entropies (a tensor)."""
    h = topk_entropy / math.log(s.k) if s.normalize else topk_entropy
    return h.clamp_min(0.0) ** s.alpha


class EaftPolicy(Policy):
    name = "eaft"
    Settings = EaftSettings
    soft = True

    def __init__(self, settings: EaftSettings, train_data: Any = None) -> None:
        super().__init__(settings, train_data)
        self.forward_signals = (f"topk_entropy:{settings.k}",)  # type: ignore[misc]

    def multiplier(self, signals: dict[str, Any]) -> Any:
        return eaft_weight(signals[f"topk_entropy:{self.settings.k}"], self.settings)


SPEC = MethodSpec(
    "eaft",
    "EAFT",
    "soft",
    "every token's loss weighted by the entropy of the current model's top-k logits (damps confident conflicts)",
    settings=EaftSettings,
    policy=EaftPolicy,
    recovery="counted",
)
