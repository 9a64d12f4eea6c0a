"""Print the reference-choice table (README "Which reference removes noise?") from measured run directories.

Usage: python benchmarks/reference_table.py runs/ref/a runs/ref/b runs/ref/c runs/ref/e
Each directory is a finished ``tokenclean run configs/reference_choices.yaml ...``; the table shows fixed-model
cleaning's means [95% intervals] and whether the choice meets the bar: >= 95% of fact tokens kept while the
noise rate of the kept tokens is at most half the pool's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenclean.report.truth_tables import fmt


def row(run: Path) -> list[str]:
    s = json.loads((run / "summary.json").read_text())
    m = s["methods"]["fixed_model"]
    rec, rci = m["recovery"], m["recovery_ci"]
    cls, cci = m["classes"], m["classes_ci"]
    wf, wfc = cls.get("noise:wrong_fact", {}), cci.get("noise:wrong_fact", {})
    g, gc = cls.get("noise:gibberish", {}), cci.get("noise:gibberish", {})
    ho, hci = m.get("heldout") or {}, m.get("heldout_ci") or {}
    base = s["methods"].get("base", {}).get("heldout") or {}
    fact_kept = cls["informative"]["kept"]
    bar = fact_kept >= 0.95 and rec["noise_rate_kept"] <= rec["noise_rate_all"] / 2
    return [
        run.name,
        str(len(s.get("seeds_used", []))),
        fmt(fact_kept, cci["informative"]["kept"], True),
        fmt(rec["noise_rate_kept"], rci["noise_rate_kept"], True) + f" / {100 * rec['noise_rate_all']:.1f}%",
        fmt(wf.get("kept"), wfc.get("kept"), True),
        fmt(wf.get("decisive_dropped"), wfc.get("decisive_dropped"), True),
        fmt(wf.get("auroc_decisive"), wfc.get("auroc_decisive"), digits=2),
        fmt(g.get("kept"), gc.get("kept"), True),
        fmt(rec.get("auroc"), rci.get("auroc"), digits=2),
        fmt(ho.get("answer_loss"), hci.get("answer_loss"), digits=2)
        + f" (base {base.get('answer_loss', 0):.2f})",
        fmt(ho.get("exact_match"), hci.get("exact_match"), True),
        f"{m['budget']['forward_tokens'] / 1e3:.0f}k",
        "yes" if bar else "no",
    ]


COLS = [
    "choice",
    "seeds",
    "fact kept",
    "noise rate kept / all",
    "wrong-fact tokens kept",
    "wrong facts removed (decisive)",
    "AUROC fact vs decisive",
    "gibberish kept",
    "AUROC fact",
    "answer loss",
    "exact match",
    "fwd token-passes",
    "meets bar",
]


def main(paths: list[str]) -> None:
    print("| " + " | ".join(COLS) + " |")
    print("|" + "---|" * len(COLS))
    for p in paths:
        print("| " + " | ".join(row(Path(p))) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
