"""The one pipeline of every token-policy method: base + LoRA on the pool (or on a method's cleaned set)
with a token policy, then evaluation. Each method's specifics (its policy, its settings, a filter or a
soft selection before training) live in its module of :mod:`tokenclean.methods`.

Online methods record the tokens they counted in their last epoch (``train/counted/``): the ground-truth
recovery of those methods is measured on them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tokenclean.methods import MethodSpec, method_settings, settings_dict
from tokenclean.pipelines.stages import Run, eval_stage, matched_train_dir, prepare_pool, train_stage
from tokenclean.training.policies import LabelsPolicy


def train_with_policy(
    run: Run,
    spec: MethodSpec,
    *,
    data: Path | None = None,
    settings: Any = None,
    policy: str | None = None,
    scores: Path | None = None,
) -> None:
    """Train ``spec``'s method: ``data`` (default: the prepared pool) with ``policy`` (default: the spec's
    own policy with ``settings``, default the run config's ``peers.<name>``; else ``labels``)."""
    data = data if data is not None else prepare_pool(run)
    if spec.policy is not None and policy in (None, spec.policy.name):  # the method's own policy
        policy = spec.policy.name
        settings = settings if settings is not None else method_settings(run.cfg.peers, spec)
    else:  # a generic policy on an offline method's data: it has no settings
        policy, settings = policy or LabelsPolicy.name, None
    d = run.root / "methods" / spec.name
    cfg = dataclasses.replace(run.cfg.train, policy=policy, policy_settings=settings or {})
    out, steps = matched_train_dir(run, d)
    adapter = train_stage(run, data, out, cfg=cfg, max_steps=steps)
    m = run.method(spec.name)
    m.update(
        adapter=run.rel(adapter),
        cleaned=run.rel(data),
        policy={"name": policy, "settings": settings_dict(settings)},
    )
    m["counted"] = run.rel(out) if spec.recovery == "counted" else None
    if scores is not None:
        m["scores"] = run.rel(scores)
    m["eval"] = eval_stage(run, spec.name, adapter, d / "eval.json")
    run.save_summary()


__all__ = ["train_with_policy"]
