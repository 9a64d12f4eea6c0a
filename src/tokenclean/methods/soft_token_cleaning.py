"""Soft Token Cleaning (tokenclean's extension): the fixed-model scores mapped to per-token weights
``w = sigmoid((score - tau) / T)``, tau at the global top-k cut (``tokenclean select --weights sigmoid``),
trained with the ``weights`` policy (``loss = sum w*l / sum w`` over the step on all ranks)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenclean.config import check_fields, setting
from tokenclean.methods.spec import MethodSpec
from tokenclean.runtime import rank_zero_first


@dataclass(frozen=True)
class SoftWeightsSettings:
    temperature: float = setting(1.0, "T of w = sigmoid((score - tau) / T), nats of score", bounds="> 0")

    def __post_init__(self) -> None:
        check_fields(self)


@rank_zero_first
def _soft_select(scores: Path, out: Path, ratio: float, temperature: float) -> None:
    from tokenclean.selection import select

    select(
        str(scores), ratio, "global", str(out), weights="sigmoid", temperature=temperature, replace_stale=True
    )


def run(run: Any, spec: MethodSpec) -> None:
    from tokenclean.pipelines import fixed_model
    from tokenclean.pipelines.peers import train_with_policy

    scores = fixed_model.pool_scores(run)
    out = run.root / "methods" / spec.name / "cleaned"
    _soft_select(scores, out, run.cfg.selection.ratio, run.cfg.peers.soft_token_cleaning.temperature)
    train_with_policy(run, spec, data=out, policy="weights", scores=scores)


SPEC = MethodSpec(
    "soft_token_cleaning",
    "Soft Token Cleaning",
    "soft",
    "every token trained with weight sigmoid((score - tau) / T) of its fixed-model score",
    run="tokenclean.methods.soft_token_cleaning:run",
    settings=SoftWeightsSettings,
    scored=True,
)
