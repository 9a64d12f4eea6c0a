"""The Token Cleaning paper's methods and baselines (Pang et al., ICML 2025, Sec. 4 and 6.1); their
pipelines are the scripts in :mod:`tokenclean.pipelines` (``baselines``, ``fixed_model``,
``self_evolving``)."""

from __future__ import annotations

from tokenclean.methods.spec import MethodSpec

BASE = MethodSpec(
    "base",
    "Base",
    "baseline",
    "the base model, no training",
    run="tokenclean.pipelines.baselines:base",
    recovery="none",
    matchable=False,
)
WARMUP = MethodSpec(
    "warmup",
    "Warm-up reference",
    "baseline",
    "base + LoRA on split 0 with all tokens: the reference of fixed-model cleaning (the paper's DS2 row)",
    run="tokenclean.pipelines.baselines:warmup",
    recovery="none",
    matchable=False,
)
FULL = MethodSpec(
    "full",
    "Full tokens",
    "baseline",
    "base + LoRA on every response token of the pool",
    run="tokenclean.pipelines.baselines:full",
)
RANDOM = MethodSpec(
    "random",
    "Uniform random",
    "baseline",
    "k% of the pool's response tokens drawn uniformly, globally",
    run="tokenclean.pipelines.baselines:random",
)
RHO = MethodSpec(
    "rho",
    "RHO",
    "offline",
    "the Token Cleaning score, top k% of each sample's tokens",
    run="tokenclean.pipelines.baselines:rho",
    scored=True,
)
FIXED_MODEL = MethodSpec(
    "fixed_model",
    "Fixed-model cleaning",
    "offline",
    "score = loss_base - loss_reference, global top k%, then base + LoRA on the kept tokens",
    run="tokenclean.pipelines.fixed_model:run",
    scored=True,
)
SELF_EVOLVING = MethodSpec(
    "self_evolving",
    "Self-evolving cleaning",
    "offline",
    "Algorithm 1: warm-up, then each round scores its split against the latest reference and continues it",
    run="tokenclean.pipelines.self_evolving:run",
    scored=True,
    recovery="rounds",
    rounds=True,
    matchable=False,
)

SPECS = (BASE, WARMUP, FULL, RANDOM, RHO, FIXED_MODEL, SELF_EVOLVING)
