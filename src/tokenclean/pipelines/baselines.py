"""The paper's baselines (Sec. 6.1), each a short script over the same stages.

- ``base``: no training.
- ``warmup`` (DS2): the warm-up model, base + LoRA on split 0 with all tokens.
- ``full``: base + LoRA on every response token of the pool.
- ``random``: k% of the pool's response tokens drawn uniformly at random, globally (seeded).
- ``rho``: the Token Cleaning score, but top-k% *per sample* (each keeps floor(k * n_i) of its tokens).
"""

from __future__ import annotations

from tokenclean.methods.spec import MethodSpec
from tokenclean.pipelines import fixed_model
from tokenclean.pipelines.stages import (
    Run,
    eval_stage,
    matched_train_dir,
    prepare_pool,
    select_stage,
    train_stage,
    warmup_adapter,
)


def base(run: Run, spec: MethodSpec) -> None:
    m = run.method(spec.name)
    m["eval"] = eval_stage(run, spec.name, None, run.root / "methods" / spec.name / "eval.json")
    run.save_summary()


def warmup(run: Run, spec: MethodSpec) -> None:
    adapter = warmup_adapter(run)
    m = run.method(spec.name)
    m.update(adapter=run.rel(adapter), cleaned=run.rel(run.root / "data" / "split_0"))
    m["eval"] = eval_stage(run, spec.name, adapter, run.root / "methods" / spec.name / "eval.json")
    run.save_summary()


def full(run: Run, spec: MethodSpec) -> None:
    pool = prepare_pool(run)
    d = run.root / "methods" / spec.name
    out, steps = matched_train_dir(run, d)
    adapter = train_stage(run, pool, out, max_steps=steps)
    m = run.method(spec.name)
    m.update(adapter=run.rel(adapter), cleaned=run.rel(pool))
    m["eval"] = eval_stage(run, spec.name, adapter, d / "eval.json")
    run.save_summary()


def _selected(run: Run, name: str, level: str) -> None:
    scores = fixed_model.pool_scores(run)
    d = run.root / "methods" / name
    cleaned = select_stage(run, scores, d / "cleaned", level=level)
    out, steps = matched_train_dir(run, d)
    adapter = train_stage(run, cleaned, out, max_steps=steps)
    m = run.method(name)
    m.update(adapter=run.rel(adapter), cleaned=run.rel(cleaned), scores=run.rel(scores))
    m["eval"] = eval_stage(run, name, adapter, d / "eval.json")
    run.save_summary()


def random(run: Run, spec: MethodSpec) -> None:
    _selected(run, spec.name, "random")


def rho(run: Run, spec: MethodSpec) -> None:
    _selected(run, spec.name, "sample")
