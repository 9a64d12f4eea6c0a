"""The plain-text result table every ``tokenclean run`` prints: per method its evaluation (held-out loss,
benchmarks, Average) and what it cost (updates, tokens trained on, forward/backward token-passes). Runs with
a known truth print :func:`tokenclean.report.truth_tables.print_all` as well."""

from __future__ import annotations

from typing import Any

from tokenclean.report.tables import fmt_value, method_order, results_table
from tokenclean.report.truth_tables import fmt_count, text_table

BUDGET: tuple[tuple[str, str], ...] = (
    ("updates", "updates"),
    ("trained_tokens", "trained tok"),
    ("forward_tokens", "fwd tok"),
    ("backward_tokens", "bwd tok"),
)


def eval_text_table(summary: dict[str, Any]) -> str:
    """One row per method: every evaluated task (best per column marked ``*``) and the budget."""
    methods = summary.get("methods") or {}
    t = results_table(methods)
    cols = t.columns if t else ()
    rows_by_key = {r.key: r for r in (t.rows if t else ())}
    head = ["method", *(c.label for c in cols), *(label for _, label in BUDGET)]
    rows = []
    for name in method_order(methods):
        r = rows_by_key.get(name)
        cells = [name]
        for c in cols:
            v = fmt_value(r.values[c.key], c) if r else "-"
            cells.append(v + (" *" if r and r.best[c.key] and len(rows_by_key) > 1 else ""))
        b = methods[name].get("budget") or {}
        cells += [fmt_count(b.get(k)) for k, _ in BUDGET]
        rows.append(cells)
    notes = list(t.notes) if t else ["No evaluation in this run (eval.suite none)."]
    if t and len(rows_by_key) > 1:
        notes.append("* best in its column.")
    return text_table(head, rows) + "\n" + "\n".join(notes)
