"""``tokenclean run``: execute the configured methods in one run directory, then score them against the
ground truth (synthetic pools) and build the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tokenclean import methods
from tokenclean.pipelines.budget import self_evolving_updates
from tokenclean.pipelines.config import RunConfig
from tokenclean.pipelines.stages import Run, get_logger, open_run, prepare_pool, report_stage
from tokenclean.runtime import rank_zero_only

log = get_logger("pipeline")


def run(cfg: RunConfig, adopt: bool = False) -> dict[str, Any]:
    """Run every method of ``cfg`` (finished stages whose identity matches are reused); returns the
    summary. An existing ``run_dir`` that tokenclean did not make is refused before any work (unless
    ``adopt``, the CLI's ``--adopt-run-dir``). The run directory is locked and marked as a run's: a second
    ``tokenclean run`` on it stops with "in use by PID". With ``seeds`` every method runs once per seed
    (:mod:`tokenclean.pipelines.seeds`): the top-level directory is locked for the whole seeds run, each
    seed's directory by its own run. Models and data files are checked first: a typo creates nothing."""
    from tokenclean.outputs import check_run_dir, mark_owned, output_lock
    from tokenclean.pipelines.inputs import check_inputs

    check_run_dir(cfg.run_dir, adopt)
    with output_lock(cfg.run_dir):
        check_inputs(cfg)  # before anything is written into the run directory
        mark_owned(Path(cfg.run_dir), "run")
        if cfg.seeds:
            from tokenclean.pipelines.seeds import run_seeds

            return run_seeds(cfg, run)
        return _run(cfg)


def _run(cfg: RunConfig) -> dict[str, Any]:
    t0 = time.time()
    r = open_run(cfg)
    prepare_pool(r)
    timings = r.summary.setdefault("seconds", {})
    for name in _order(cfg):
        t = time.time()
        log.info("== %s ==", name)
        spec = methods.get(name)
        spec.pipeline()(r, spec)
        timings[name] = round(time.time() - t, 1)
        if spec.rounds and cfg.budget.match_updates:
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
    """The methods in config order; the one with rounds (self-evolving) first when the others must match its
    updates."""
    names = list(cfg.methods)
    if cfg.budget.match_updates:
        names.sort(key=lambda n: not methods.get(n).rounds)  # stable: config order otherwise
    return names
