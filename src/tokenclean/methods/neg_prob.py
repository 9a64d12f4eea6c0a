"""The -p family (Li et al. 2025, "Beyond Log Likelihood", arXiv 2510.00526), policy ``neg_prob``: the token
loss ``f(p)`` instead of ``-log p``, for the prior-leaning objectives the paper finds better for strong base
models (and worse for weak ones):

- ``shape: p`` -- ``f(p) = -p^k`` (``exponent: k``; ``-p`` and ``-p^10`` are the paper's examples);
- ``shape: log`` -- ``f(p) = -log p`` (with a threshold: the thresholded NLL);
- ``threshold: tau`` -- tokens with ``p < tau`` contribute nothing (the thresholded variants).

Implemented as an in-forward multiplier of the NLL with the same gradient: ``d(-p^k) = k p^k d(-log p)``,
so ``m_j = k * sg(p_j)^k * [p_j >= tau]`` (``shape: log``: ``m_j = [p_j >= tau]``). The logged loss is
therefore the weighted NLL, not ``f(p)``; the gradients (and so the trained adapter) are those of ``f(p)``
(a test checks them against autograd of ``f``). ``-p`` (k = 1, no threshold) has exactly DFT's gradient.
The normaliser is the token count. No extra pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tokenclean.config import check_fields, setting
from tokenclean.methods.spec import MethodSpec
from tokenclean.training.policies import Policy


@dataclass(frozen=True)
class NegProbSettings:
    shape: Literal["p", "log"] = setting("p", "p: f(p) = -p^exponent; log: f(p) = -log p (thresholded)")
    exponent: float = setting(1.0, "k of f(p) = -p^k (shape: p)", bounds="> 0")
    threshold: float = setting(0.0, "tokens with p below this contribute nothing (0: none)", bounds="[0, 1)")

    def __post_init__(self) -> None:
        check_fields(self)


def neg_prob_multiplier(prob: Any, s: NegProbSettings) -> Any:
    """``m`` (N,) with ``m * d(-log p) = d f(p)`` for the (detached) probabilities ``prob`` (N,)."""
    m = s.exponent * prob**s.exponent if s.shape == "p" else prob.new_ones(prob.shape)
    return m * (prob >= s.threshold) if s.threshold > 0 else m


def neg_prob_loss(logp: Any, s: NegProbSettings) -> Any:
    """The literal objective ``f(p)`` per token from log-probabilities (N,) with grad (the twin)."""
    p = logp.exp()
    f = -(p**s.exponent) if s.shape == "p" else -logp
    return f * (p.detach() >= s.threshold) if s.threshold > 0 else f


class NegProbPolicy(Policy):
    name = "neg_prob"
    Settings = NegProbSettings
    forward_signals = ("prob",)
    soft = True

    def multiplier(self, signals: dict[str, Any]) -> Any:
        return neg_prob_multiplier(signals["prob"], self.settings)


SPEC = MethodSpec(
    "neg_prob",
    "-p loss",
    "soft",
    "the loss -p^k (or thresholded -log p) instead of -log p: prior-leaning, tokens the model finds likely weigh more",
    settings=NegProbSettings,
    policy=NegProbPolicy,
    recovery="counted",
)
