"""TOSS, token selection with two references (arXiv 2603.01185, there a safety-degraded and a utility
model): Token Cleaning's offline score with a second reference in place of the base,

    score(j) = loss_ref_a(j) - loss_ref_b(j),

kept at the global top k% (the lowest-scoring tokens are removed), then base + LoRA on the kept tokens.
High score: reference b learned the token and reference a did not. With ``reference_a: base`` it is exactly
fixed-model cleaning against ``reference_b``. Each reference is ``base``, ``warmup`` (the run's fixed
reference, as fixed_model's), ``method:NAME`` (the adapter a method earlier in ``methods`` trained, e.g.
``method:full``), or a model/adapter path. Computed from two score stores of the pool against the base
(``loss_base - loss_ref``), so any two references share the existing store machinery; cost: the scoring
passes of both stores and the trainings behind them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenclean.config import check_fields, setting
from tokenclean.errors import ConfigError
from tokenclean.methods.spec import MethodSpec


@dataclass(frozen=True)
class TossSettings:
    reference_a: str = setting(
        "base", "the reference whose low loss removes a token: base, warmup, method:NAME or a path"
    )
    reference_b: str = setting(
        "warmup", "the reference whose low loss keeps a token: warmup, method:NAME or a path"
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.reference_b == "base":
            raise ValueError("reference_b: must not be base (score = loss_ref_a - loss_base)")
        if self.reference_a == self.reference_b:
            raise ValueError(f"reference_a: equals reference_b ({self.reference_b!r}); TOSS needs two")


def _store(run: Any, ref: str, key: str) -> Path:
    """The pool scored against the base with reference ``ref`` (``loss_base - loss_ref``)."""
    from tokenclean.pipelines import fixed_model
    from tokenclean.pipelines.stages import prepare_pool, score_stage

    if ref == "warmup":
        return fixed_model.pool_scores(run)
    pool, out = prepare_pool(run), run.root / "methods" / "toss" / f"scores_{key}"
    if ref.startswith("method:"):
        name = ref.split(":", 1)[1]
        adapter = ((run.summary.get("methods") or {}).get(name) or {}).get("adapter")
        if not adapter:
            raise ConfigError(
                f"peers.toss.{key}: {ref!r} has no adapter in this run; list {name} before toss in methods"
            )
        return score_stage(run, pool, out, adapter=run.root / adapter)
    return score_stage(run, pool, out, reference=ref)


def run(run: Any, spec: MethodSpec) -> None:
    from tokenclean.pipelines.peers import train_with_policy
    from tokenclean.pipelines.stages import rebase_scores, select_stage

    s: TossSettings = run.cfg.peers.toss
    d = run.root / "methods" / spec.name
    b = _store(run, s.reference_b, "reference_b")
    stores = [b]
    if s.reference_a == "base":
        scores = b  # loss_base - loss_b
    else:
        a = _store(run, s.reference_a, "reference_a")
        stores.append(a)
        scores = rebase_scores(b, a, d / "scores")  # (base - b) - (base - a) = loss_a - loss_b
    cleaned = select_stage(run, scores, d / "cleaned", level="global")
    train_with_policy(run, spec, data=cleaned, scores=scores)
    run.method(spec.name)["score_stores"] = [run.rel(p) for p in stores]
    run.save_summary()


SPEC = MethodSpec(
    "toss",
    "TOSS",
    "offline",
    "Token Cleaning's score with two references, loss_ref_a - loss_ref_b, global top k%",
    run="tokenclean.methods.toss:run",
    settings=TossSettings,
    scored=True,
)
