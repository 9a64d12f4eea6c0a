"""The methods that followed Token Cleaning, as pipelines over the same stages (see docs/methods.md).

- ``online_rho1``: base + LoRA on the whole pool, policy ``rho1`` (excess loss against the warm-up
  reference's stored losses, or the base with ``peers.online_rho1.reference: base``), top-k per step.
- ``sstoken``, ``dft``, ``profit``: base + LoRA on the whole pool with that token policy.
- ``soft_token_cleaning``: the fixed-model scores mapped to weights (``select --weights sigmoid``), trained
  with policy ``weights``.
- ``xtf``: the pool filtered by XTF with the base model, then base + LoRA on the kept tokens.

Online methods record the tokens they counted in their last epoch (``train/counted/``): the ground-truth
recovery of those methods is measured on them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tokenclean.pipelines import fixed_model
from tokenclean.pipelines.stages import Run, eval_stage, prepare_pool, train_stage
from tokenclean.runtime import rank_zero_first


def _with_policy(run: Run, name: str, data: Path, policy: str, settings: dict[str, Any]) -> None:
    d = run.root / "methods" / name
    cfg = dataclasses.replace(run.cfg.train, policy=policy, policy_settings=settings)
    adapter = train_stage(run, data, d / "train", cfg=cfg)
    m = run.method(name)
    m.update(adapter=run.rel(adapter), cleaned=run.rel(data), policy={"name": policy, "settings": settings})
    m["counted"] = run.rel(d / "train") if policy not in ("labels", "weights") else None
    m["eval"] = eval_stage(run, name, adapter, d / "eval.json")
    run.save_summary()


def online_rho1(run: Run) -> None:
    c = run.cfg.peers.online_rho1
    settings: dict[str, Any] = {"ratio": c.ratio, "reference": "base" if c.reference == "base" else "store"}
    if c.reference != "base":
        settings["scores"] = str(fixed_model.pool_scores(run))
    _with_policy(run, "online_rho1", prepare_pool(run), "rho1", settings)


def sstoken(run: Run) -> None:
    _with_policy(run, "sstoken", prepare_pool(run), "sstoken", dataclasses.asdict(run.cfg.peers.sstoken))


def dft(run: Run) -> None:
    _with_policy(run, "dft", prepare_pool(run), "dft", dataclasses.asdict(run.cfg.peers.dft))


def profit(run: Run) -> None:
    s = dataclasses.asdict(run.cfg.peers.profit)
    s["prob_range"] = list(s["prob_range"])
    _with_policy(run, "profit", prepare_pool(run), "profit", s)


@rank_zero_first
def _soft_select(scores: Path, out: Path, ratio: float, temperature: float) -> None:
    from tokenclean.selection import select

    select(
        str(scores), ratio, "global", str(out), weights="sigmoid", temperature=temperature, replace_stale=True
    )


def soft_token_cleaning(run: Run) -> None:
    scores = fixed_model.pool_scores(run)
    out = run.root / "methods" / "soft_token_cleaning" / "cleaned"
    _soft_select(scores, out, run.cfg.selection.ratio, run.cfg.peers.soft_weights.temperature)
    _with_policy(run, "soft_token_cleaning", out, "weights", {})
    run.method("soft_token_cleaning")["scores"] = run.rel(scores)
    run.save_summary()


@rank_zero_first
def _xtf_select(run: Run, pool: Path, out: Path) -> None:
    from tokenclean.selection.xtf import xtf_select

    xtf_select(
        pool, run.cfg.model.base, out, run.cfg.peers.xtf, device=run.cfg.model.device, replace_stale=True
    )


def xtf(run: Run) -> None:
    pool = prepare_pool(run)
    out = run.root / "methods" / "xtf" / "cleaned"
    _xtf_select(run, pool, out)
    _with_policy(run, "xtf", out, "labels", {})


__all__ = ["dft", "online_rho1", "profit", "soft_token_cleaning", "sstoken", "xtf"]
