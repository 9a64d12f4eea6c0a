"""What a method declares about itself, once (:class:`MethodSpec`); everything else derives from it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tokenclean.training.policies import Policy

Kind = Literal["baseline", "offline", "online", "soft"]
"""baseline: the paper's reference points (no selection or all tokens); offline: a keep-mask chosen before
training from a score store or a filter; online: a token policy chooses inside every optimizer step; soft:
tokens count with weights between 0 and 1 (a weight column or an in-forward multiplier)."""

Recovery = Literal["none", "cleaned", "rounds", "counted"]
"""Where ground-truth recovery is measured: none; the method's cleaned set (``cleaned``, with its score store
when ``scored``); every round's cleaned split (``rounds``); the tokens its policy counted in the last epoch
(``counted``)."""


def _no_passes(settings: Any) -> int:
    return 0


@dataclass(frozen=True)
class MethodSpec:
    """One method of ``tokenclean run``.

    ``run`` is the pipeline, ``"module:function"`` taking ``(run, spec)`` (resolved lazily, so the registry
    never imports the pipelines); None for an online/soft policy method trained on the whole pool with its
    policy (:func:`tokenclean.pipelines.peers.train_with_policy`). ``settings`` is the dataclass of the run
    config's ``peers.<name>`` section (None: no section); for a policy method it is also the policy's
    settings. ``no_grad_passes(settings)`` is the number of forward passes per input token the policy runs
    without gradient in every step. ``pool_passes``: forward passes over the prepared pool before training
    (XTF's base pass). ``scored``: the kept tokens are ranked by a Token Cleaning score store (its
    reference training and scoring passes are part of the budget; recovery AUROC from its scores).
    ``rounds``: trains a warm-up and rounds (self-evolving): its updates set ``budget.match_updates``.
    ``matchable``: trains one adapter from the base, so ``budget.match_updates`` applies."""

    name: str
    label: str
    kind: Kind
    summary: str
    run: str | None = None
    settings: type | None = None
    policy: type[Policy] | None = None
    no_grad_passes: Callable[[Any], int] = _no_passes
    pool_passes: int = 0
    scored: bool = False
    recovery: Recovery = "cleaned"
    rounds: bool = False
    matchable: bool = True

    def pipeline(self) -> Callable[[Any, MethodSpec], None]:
        """The callable that runs this method in a run directory."""
        if self.run is None:
            from tokenclean.pipelines.peers import train_with_policy

            return train_with_policy
        module, _, fn = self.run.partition(":")
        return getattr(importlib.import_module(module), fn)  # type: ignore[no-any-return]

    def passes(self, settings: dict[str, Any] | Any | None) -> int:
        """No-grad passes per input token and step of the method's policy under ``settings`` (a mapping
        from a summary, or typed; parsed as ``train --policy`` parses them); 0 without a policy."""
        if self.policy is None:
            return 0
        from tokenclean.training.policies import parse_settings

        return int(self.no_grad_passes(parse_settings(self.policy.name, settings, f"peers.{self.name}")))
