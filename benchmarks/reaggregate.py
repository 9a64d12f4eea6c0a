"""Recompute the truth-based summaries (means, intervals, budgets) of finished seed runs from their run
directories, without running or checking any stage: ``python benchmarks/reaggregate.py RUN_DIR ...``.

RUN_DIR is a run with ``seeds`` (it holds ``seed_S/`` directories). Held-out metrics come from the per-question
values cached in each seed's summary (no model is loaded); recovery metrics are recomputed from the stored
cleaned datasets and scores. Prints the tables the run prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tokenclean.pipelines.config import load_run_config
from tokenclean.pipelines.groundtruth import aggregate, interval_units, load_truth
from tokenclean.pipelines.stages import Run
from tokenclean.report.truth_tables import print_all
from tokenclean.utils import read_json, write_json_atomic


def reaggregate(root: Path) -> dict:
    top = read_json(root / "summary.json")
    runs = []
    for s in top["seeds_used"]:
        d = root / f"seed_{s}"
        cfg = load_run_config(d / "config.yaml")
        runs.append(Run(cfg, d, read_json(d / "summary.json")))
    top["methods"] = aggregate(runs, load_truth(runs[0]))
    top["interval_units"] = interval_units(runs[0])
    write_json_atomic(root / "summary.json", top)
    return top


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"== {arg}")
        print_all(reaggregate(Path(arg)))
