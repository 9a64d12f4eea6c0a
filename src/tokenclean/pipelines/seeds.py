"""``seeds: [0, 1, 2]``: every method trains once per seed, then one summary of means and 95% intervals.

Seed ``s`` runs the whole config in ``RUN_DIR/seed_s`` with ``train.seed = s`` and ``selection.seed = s``
(the random baseline's draw); the pool, its held-out set and the pool splits stay fixed
(``selection.split_seed`` keeps the config's split seed), so every seed scores and is tested on the same
samples and questions. ``RUN_DIR/summary.json`` then holds, per method, the mean over seeds and the
interval of the two-level bootstrap (:mod:`tokenclean.stats`), plus ``per_seed`` with each seed's run
directory. Re-running reuses every finished seed. With ``report: true`` the seeds run's own report holds the
aggregated tables and figures and, for its token view, the first seed's cleaned sets and counted tokens.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenclean.pipelines.config import RunConfig
from tokenclean.pipelines.stages import Run, get_logger, open_run, report_stage
from tokenclean.summary import write_summary

log = get_logger("seeds")


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """The config of seed ``seed``: its own run directory, training and random-selection seed."""
    sel = cfg.selection
    split = sel.seed if sel.split_seed is None else sel.split_seed
    return dataclasses.replace(
        cfg,
        run_dir=str(Path(cfg.run_dir) / f"seed_{seed}"),
        seeds=(),
        report=False,
        train=dataclasses.replace(cfg.train, seed=seed),
        selection=dataclasses.replace(sel, seed=seed, split_seed=split),
    )


def run_seeds(cfg: RunConfig, run_one: Callable[[RunConfig], dict[str, Any]]) -> dict[str, Any]:
    """Run ``cfg`` once per seed with ``run_one`` and write the aggregated summary to ``cfg.run_dir``."""
    runs = []
    for s in cfg.seeds:
        log.info("==== seed %d ====", s)
        sc = seed_config(cfg, s)
        run_one(sc)
        runs.append(open_run(sc))
    return aggregate_seeds(cfg, runs)


def aggregate_seeds(cfg: RunConfig, runs: list[Run]) -> dict[str, Any]:
    """Means and intervals over the seed runs (truth-based metrics where the runs have truth)."""
    root = Path(cfg.run_dir)
    summary: dict[str, Any] = {
        "name": cfg.name,
        "pipeline": ",".join(cfg.methods),
        "model": cfg.model.base,
        "ratio": cfg.selection.ratio,
        "seeds_used": list(cfg.seeds),
        "per_seed": {str(s): str(r.root) for s, r in zip(cfg.seeds, runs)},
    }
    if cfg.data.synthetic is not None or cfg.data.truth is not None:
        from tokenclean.pipelines.groundtruth import aggregate, interval_units, load_truth

        summary["methods"] = aggregate(runs, load_truth(runs[0]))
        summary["interval_units"] = interval_units(runs[0])
        _first_seed_paths(summary["methods"], runs[0], root)
    write_summary(root, summary)
    if cfg.report:
        report_stage(root, summary)
    return summary


def _first_seed_paths(methods: dict[str, Any], first: Run, root: Path) -> None:
    """Point every aggregated method at its first seed's cleaned set, score store and counted tokens
    (relative to the seeds' run directory), so the report can show that seed's tokens beside the tables."""
    for name, entry in methods.items():
        src = first.summary.get("methods", {}).get(name) or {}
        for key in ("cleaned", "scores", "counted"):
            if src.get(key):
                entry[key] = os.path.relpath(first.root / src[key], root)
        if src.get("policy"):
            entry["policy"] = src["policy"]
