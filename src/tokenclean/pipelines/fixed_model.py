"""Fixed-model cleaning (paper Sec. 4.3.1), as a script.

1. Reference: the warm-up model (base + LoRA trained on split 0 with all tokens, or on ``warmup.data``;
   also the DS2 baseline), cross-fitted warm-up references (``warmup.cross_fit``, see
   :mod:`tokenclean.pipelines.references`), or an external model with the same tokenizer
   (``model.reference``).
2. Score every pool sample once: ``score = loss_base - loss_reference`` (one loaded model when the
   reference is an adapter: adapter off for the base pass, on for the reference pass).
3. Keep the global top-k% of response tokens (``selection.ratio``).
4. Fine-tune the *base* on the cleaned labels; evaluate.
5. For each ratio in ``selection.sweep``: select again from the same scores, train, evaluate (Fig. 2).
"""

from __future__ import annotations

from pathlib import Path

from tokenclean.methods.spec import MethodSpec
from tokenclean.pipelines.stages import (
    Run,
    eval_stage,
    matched_train_dir,
    prepare_pool,
    score_stage,
    select_stage,
    train_stage,
    warmup_adapter,
)


def pool_scores(run: Run) -> Path:
    """The pool scored once against the fixed reference (shared by fixed_model, rho and random); with
    ``warmup.cross_fit`` each fold is scored by a reference that never trained on it."""
    pool = prepare_pool(run)
    if run.cfg.warmup.cross_fit:
        from tokenclean.pipelines.references import cross_fit_scores

        return cross_fit_scores(run)
    if run.cfg.model.reference:
        return score_stage(run, pool, run.root / "scores" / "pool", reference=run.cfg.model.reference)
    return score_stage(run, pool, run.root / "scores" / "pool", adapter=warmup_adapter(run))


def run(run: Run, spec: MethodSpec) -> None:
    scores = pool_scores(run)
    d = run.root / "methods" / spec.name
    cleaned = select_stage(run, scores, d / "cleaned", level="global")
    out, steps = matched_train_dir(run, d)
    adapter = train_stage(run, cleaned, out, max_steps=steps)
    m = run.method(spec.name)
    m.update(adapter=run.rel(adapter), cleaned=run.rel(cleaned), scores=run.rel(scores))
    m["eval"] = eval_stage(run, spec.name, adapter, d / "eval.json")
    run.save_summary()

    sweep = run.summary.setdefault("sweep", [])
    for ratio in run.cfg.selection.sweep:
        s = run.root / "sweep" / f"ratio_{ratio:g}"
        cleaned_k = select_stage(run, scores, s / "cleaned", level="global", ratio=ratio)
        adapter_k = train_stage(run, cleaned_k, s / "train")
        entry = {
            "ratio": ratio,
            "method": spec.name,
            "adapter": run.rel(adapter_k),
            "cleaned": run.rel(cleaned_k),
            "eval": eval_stage(run, f"sweep {ratio:g}", adapter_k, s / "eval.json"),
            "heldout": None,
        }
        sweep[:] = [e for e in sweep if not (e["ratio"] == ratio and e["method"] == spec.name)] + [entry]
        run.save_summary()
