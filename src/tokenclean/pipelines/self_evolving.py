"""Self-evolving cleaning (paper Algorithm 1), as a script.

    split the pool into T+1 seeded, equal parts D_0..D_T
    warm up: fine-tune the base on D_0 with all tokens              -> reference_1 (the DS2 model)
    for t = 1..T:
        score D_t: base (fixed: the original model) vs reference_t  (one model, adapter off / on)
        keep the top-k% of D_t's response tokens                     (global within the split)
        continue training reference_t's adapter on the cleaned D_t  -> reference_{t+1}
    output: reference_{T+1}

Every round's scores, cleaned split and adapter are kept (``rounds/round_t``) for the per-round table
(paper Tab. 2). ``self_evolving.base = previous`` scores against the previous round's model instead of the
original base (Algorithm 1 line 5 read literally).
"""

from __future__ import annotations

from pathlib import Path

from tokenclean.methods.spec import MethodSpec
from tokenclean.pipelines.stages import (
    Run,
    eval_stage,
    pool_splits,
    rebase_scores,
    score_stage,
    select_stage,
    train_stage,
    warmup_adapter,
)


def run(run: Run, spec: MethodSpec) -> None:
    rounds_cfg = run.cfg.self_evolving
    splits = pool_splits(run)
    reference = warmup_adapter(run)
    previous: Path | None = None  # the adapter before `reference` (None: the original base)
    rounds = []
    for t in range(1, rounds_cfg.rounds + 1):
        d = run.root / "rounds" / f"round_{t}"
        scores = score_stage(run, splits[t], d / "scores", adapter=reference)
        if rounds_cfg.base == "previous" and previous is not None:
            prev_scores = score_stage(run, splits[t], d / "scores_previous", adapter=previous)
            scores = rebase_scores(scores, prev_scores, d / "scores_vs_previous")
        cleaned = select_stage(run, scores, d / "cleaned", level="global")
        new_reference = train_stage(run, cleaned, d / "train", init_adapter=reference)
        previous, reference = reference, new_reference
        rounds.append(
            {
                "round": t,
                "scores": run.rel(scores),
                "cleaned": run.rel(cleaned),
                "adapter": run.rel(reference),
                "eval": eval_stage(run, f"round {t}", reference, d / "eval.json"),
            }
        )
        run.summary["rounds"] = rounds
        run.save_summary()
    m = run.method(spec.name)
    m.update(
        adapter=run.rel(reference),
        round=rounds_cfg.rounds,
        cleaned=rounds[-1]["cleaned"],
        scores=rounds[-1]["scores"],
        eval=rounds[-1]["eval"],
    )
    run.save_summary()
