"""XTF (Yang et al., ICLR 2026, arXiv 2602.14536): the pool filtered once with the base model (union of the
knowledge-novelty, attention and task-relevance filters of :mod:`tokenclean.selection.xtf`), then base +
LoRA on the kept tokens. Cost: one base forward pass over the pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenclean.methods.spec import MethodSpec
from tokenclean.runtime import rank_zero_first
from tokenclean.selection.xtf import XtfSettings


@rank_zero_first
def _xtf_select(run: Any, pool: Path, out: Path) -> None:
    from tokenclean.selection.xtf import xtf_select

    xtf_select(
        pool, run.cfg.model.base, out, run.cfg.peers.xtf, device=run.cfg.model.device, replace_stale=True
    )


def run(run: Any, spec: MethodSpec) -> None:
    from tokenclean.pipelines.peers import train_with_policy
    from tokenclean.pipelines.stages import prepare_pool

    out = run.root / "methods" / spec.name / "cleaned"
    _xtf_select(run, prepare_pool(run), out)
    train_with_policy(run, spec, data=out)


SPEC = MethodSpec(
    "xtf",
    "XTF",
    "offline",
    "tokens the base model already knows, that get little attention or are off-task are dropped (union)",
    run="tokenclean.methods.xtf:run",
    settings=XtfSettings,
    pool_passes=1,
)
