"""``tokenclean run``: execute the configured methods in one run directory, then score them against the
ground truth (synthetic pools) and build the report."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tokenclean.pipelines import baselines, fixed_model, peers, self_evolving
from tokenclean.pipelines.config import RunConfig
from tokenclean.pipelines.stages import Run, get_logger, open_run, prepare_pool
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
    summary. The run directory is locked: a second ``tokenclean run`` on it stops with "in use by PID"."""
    from tokenclean.outputs import output_lock

    with output_lock(cfg.run_dir):
        return _run(cfg)


def _run(cfg: RunConfig) -> dict[str, Any]:
    t0 = time.time()
    r = open_run(cfg)
    prepare_pool(r)
    timings = r.summary.setdefault("seconds", {})
    for name in cfg.methods:
        t = time.time()
        log.info("== %s ==", name)
        PIPELINES[name](r)
        timings[name] = round(time.time() - t, 1)
        r.save_summary()
    if cfg.data.synthetic is not None:
        from tokenclean.pipelines.groundtruth import evaluate_ground_truth

        rank_zero_only(evaluate_ground_truth)(r)  # rank 0 measures; the others skip
        r.save_summary()
    r.summary["total_seconds"] = round(time.time() - t0, 1)
    r.save_summary()
    if cfg.report:
        _report(r)
    return r.summary


@rank_zero_only
def _report(r: Run) -> None:
    try:
        from tokenclean.report import build_report
    except ImportError:  # the report extra (matplotlib) may be missing
        log.warning("report skipped: install tokenclean[report]")
        return
    paths = build_report([str(r.root)], tokenizer=r.tokenizer)
    r.summary["report"] = {k: str(v) for k, v in paths.items()}
    r.save_summary()
