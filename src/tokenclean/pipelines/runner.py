"""``tokenclean run``: execute the configured methods in one run directory, then score them against the
ground truth (synthetic pools) and build the report."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tokenclean.pipelines import baselines, fixed_model, peers, self_evolving
from tokenclean.pipelines.budget import self_evolving_updates
from tokenclean.pipelines.config import RunConfig
from tokenclean.pipelines.stages import Run, get_logger, open_run, prepare_pool, report_stage
from tokenclean.training.distributed import rank_zero_only

log = get_logger("pipeline")

PIPELINES: dict[str, Callable[[Run], None]] = {
    "base": baselines.base,
    "warmup": baselines.warmup,
    "full": baselines.full,
    "random": baselines.random,
    "rho": baselines.rho,
    "fixed_model": fixed_model.run,
    "self_evolving": self_evolving.run,
    "online_rho1": peers.online_rho1,
    "sstoken": peers.sstoken,
    "xtf": peers.xtf,
    "dft": peers.dft,
    "profit": peers.profit,
    "soft_token_cleaning": peers.soft_token_cleaning,
}


def run(cfg: RunConfig) -> dict[str, Any]:
    """Run every method of ``cfg`` (finished stages whose identity matches are reused); returns the
    summary. The run directory is locked: a second ``tokenclean run`` on it stops with "in use by PID".
    With ``seeds`` every method runs once per seed (:mod:`tokenclean.pipelines.seeds`), each seed's
    directory locked by its own run. Models and data files are checked first: a typo creates nothing."""
    from tokenclean.pipelines.inputs import check_inputs

    check_inputs(cfg)
    if cfg.seeds:
        from tokenclean.pipelines.seeds import run_seeds

        return run_seeds(cfg, run)
    from tokenclean.outputs import output_lock

    with output_lock(cfg.run_dir):
        return _run(cfg)


def _run(cfg: RunConfig) -> dict[str, Any]:
    t0 = time.time()
    r = open_run(cfg)
    prepare_pool(r)
    timings = r.summary.setdefault("seconds", {})
    for name in _order(cfg):
        t = time.time()
        log.info("== %s ==", name)
        PIPELINES[name](r)
        timings[name] = round(time.time() - t, 1)
        if name == "self_evolving" and cfg.budget.match_updates:
            r.match_steps = self_evolving_updates(r.root, r.summary.get("rounds", []))
            r.summary["matched_updates"] = r.match_steps
            log.info("budget.match_updates: single-stage methods train %d updates", r.match_steps)
        r.save_summary()
    if cfg.data.synthetic is not None or cfg.data.truth is not None:
        from tokenclean.pipelines.groundtruth import evaluate_ground_truth

        rank_zero_only(evaluate_ground_truth)(r)  # rank 0 measures; the others skip
    else:
        rank_zero_only(_record_budgets)(r)  # (ground-truth runs record theirs with their measurements)
    r.save_summary()
    r.summary["total_seconds"] = round(time.time() - t0, 1)
    r.save_summary()
    if cfg.report:
        report_stage(r.root, r.summary, r.tokenizer)
    return r.summary


def _record_budgets(r: Run) -> None:
    """What every method's result cost (updates, trained tokens, token-passes) into its summary entry."""
    from tokenclean.pipelines.budget import method_budget

    rounds = r.summary.get("rounds", [])
    for name, m in r.summary.get("methods", {}).items():
        m["budget"] = method_budget(r.root, name, m, rounds)


def _order(cfg: RunConfig) -> list[str]:
    """The methods in config order; self-evolving first when the others must match its updates."""
    names = list(cfg.methods)
    if cfg.budget.match_updates:
        names = ["self_evolving", *(n for n in names if n != "self_evolving")]
    return names
