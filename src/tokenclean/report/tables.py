"""Result tables in the paper's layout (Table 1: methods x tasks + Average; Table 2: rounds x tasks), token
recovery and held-out tables, with the best value per column marked. Pure functions over summary dicts;
renderers to Markdown, CSV and JSON (HTML lives in :mod:`tokenclean.report.html`).

Best-per-column rule: the maximum (or the minimum where lower is better: losses, noise rate of kept tokens)
over the rows that have a value; every row within 1e-9 (relative) of it is marked. A column where lower or
higher is not meaningful (the noise rate of all tokens, a property of the data) marks nothing.

The Average column is recomputed as the mean of the row's task values. A row missing some of the table's
tasks gets the mean of the tasks it has, a ``*`` in Markdown, ``average_partial`` in JSON, and is never
marked best for the average.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenclean.utils import get_logger

log = get_logger("report")

PAPER_TASKS = ("mmlu", "truthfulqa_mc2", "hellaswag", "arc_challenge", "boolq", "logiqa", "tydiqa")
TASK_LABELS = {
    "mmlu": "MMLU",
    "truthfulqa_mc2": "TruthfulQA",
    "truthfulqa": "TruthfulQA",
    "hellaswag": "HellaSwag",
    "arc_challenge": "ARC-C",
    "boolq": "BoolQ",
    "logiqa": "LogiQA",
    "tydiqa": "TyDiQA",
    "average": "Average",
}
METHOD_ORDER = ("base", "warmup", "ds2", "full", "random", "rho", "fixed_model", "self_evolving")
METHOD_LABELS = {
    "base": "Base",
    "warmup": "DS2 (warm-up)",
    "ds2": "DS2 (warm-up)",
    "full": "Full tokens",
    "random": "Uniform random",
    "rho": "RHO",
    "fixed_model": "Fixed-model cleaning",
    "self_evolving": "Self-evolving cleaning",
}
RECOVERY = (  # key, label, higher is better
    ("precision", "Precision", True),
    ("recall", "Recall", True),
    ("auroc", "AUROC", True),
    ("noise_rate_kept", "Noise rate (kept)", False),
    ("noise_rate_all", "Noise rate (all)", None),
)
HELDOUT = (("loss", "Held-out loss", False), ("exact_match", "Exact match", True))


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    higher_is_better: bool | None  # None: no best marked
    digits: int = 2
    scale: float = 1.0  # display multiplier (100 for accuracies shown in %)
    info: Mapping[str, Any] = field(default_factory=dict)  # metric, shots, n (eval tasks)


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    values: Mapping[str, float | None]
    best: Mapping[str, bool]
    partial: frozenset[str] = frozenset()  # columns computed from incomplete data (the average)


@dataclass(frozen=True)
class Table:
    name: str  # file stem: results, recovery, heldout, rounds, sweep
    title: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()


def method_order(keys: Iterable[str]) -> list[str]:
    """Unique keys in the paper's method order (``run/method`` keys by their method), others after, stable."""
    uniq = list(dict.fromkeys(keys))

    def rank(k: str) -> tuple[int, int]:
        m = k.rsplit("/", 1)[-1]
        return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), uniq.index(k))

    return sorted(uniq, key=rank)


def method_label(key: str) -> str:
    prefix, _, m = key.rpartition("/")
    label = METHOD_LABELS.get(m, m)
    return f"{prefix}: {label}" if prefix else label


def task_label(task: str) -> str:
    return TASK_LABELS.get(task, task)


def mark_best(values: Sequence[float | None], higher_is_better: bool | None) -> list[bool]:
    """Flags for the best value(s); ties (relative 1e-9) are all marked; None values never are."""
    vals = [v for v in values if v is not None]
    if higher_is_better is None or not vals:
        return [False] * len(values)
    best = max(vals) if higher_is_better else min(vals)
    return [v is not None and math.isclose(v, best, rel_tol=1e-9, abs_tol=1e-12) for v in values]


def finite(v: Any) -> float | None:
    """``v`` as a float, or None when missing, not a number or not finite."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


_num = finite


def _finish(
    name: str,
    title: str,
    cols: list[Column],
    raw: list[tuple[str, str, dict[str, Any], frozenset[str]]],
    notes: Sequence[str] = (),
) -> Table:
    """Mark best per column (partial cells excluded) and freeze the table."""
    best: dict[str, list[bool]] = {}
    for c in cols:
        vals = [None if c.key in p else v.get(c.key) for _, _, v, p in raw]
        best[c.key] = mark_best(vals, c.higher_is_better)
    rows = tuple(
        Row(k, lab, {c.key: v.get(c.key) for c in cols}, {c.key: best[c.key][i] for c in cols}, p)
        for i, (k, lab, v, p) in enumerate(raw)
    )
    return Table(name, title, tuple(cols), rows, tuple(notes))


# -- evaluation columns (Table 1 / Table 2 layout) -----------------------------------------------------
def eval_tasks(evals: Iterable[Mapping[str, Any] | None]) -> list[str]:
    """Task keys over all evals: the paper's order first, then others in order of appearance."""
    seen: list[str] = []
    for ev in evals:
        for t in (ev or {}).get("tasks", {}):
            if t not in seen:
                seen.append(t)
    return [t for t in PAPER_TASKS if t in seen] + [t for t in seen if t not in PAPER_TASKS]


def eval_values(
    ev: Mapping[str, Any] | None, tasks: Sequence[str], where: str = ""
) -> tuple[dict[str, float | None], bool]:
    """Task values plus the recomputed ``average``; second item: True when some table task is missing."""
    tv = (ev or {}).get("tasks", {})
    vals: dict[str, float | None] = {t: _num(tv.get(t, {}).get("value")) for t in tasks}
    present = [v for v in vals.values() if v is not None]
    avg = sum(present) / len(present) if present else None
    reported = _num((ev or {}).get("average"))
    own = [v for v in (_num(x.get("value")) for x in tv.values()) if v is not None]
    if (
        reported is not None
        and own
        and not math.isclose(reported, sum(own) / len(own), rel_tol=1e-6, abs_tol=1e-9)
    ):
        log.warning(
            "%s: reported average %.6g differs from the mean of its tasks %.6g; using the mean",
            where,
            reported,
            sum(own) / len(own),
        )
    vals["average"] = avg
    return vals, bool(present) and len(present) < len(tasks)


def _eval_columns(evals: list[Mapping[str, Any] | None]) -> list[Column]:
    tasks = eval_tasks(evals)
    all_vals = [_num(t.get("value")) for ev in evals for t in (ev or {}).get("tasks", {}).values()]
    scale = 100.0 if all_vals and all(v is None or 0.0 <= v <= 1.0 for v in all_vals) else 1.0
    cols = []
    for t in tasks:
        infos = [(ev or {}).get("tasks", {}).get(t) for ev in evals]
        infos = [i for i in infos if i]
        info = {
            k: sorted({str(i.get(k)) for i in infos if i.get(k) is not None})
            for k in ("metric", "shots", "n")
        }
        cols.append(Column(t, task_label(t), True, 2, scale, {k: ", ".join(v) for k, v in info.items() if v}))
    cols.append(Column("average", "Average", True, 2, scale))
    return cols


def _eval_notes(cols: Sequence[Column]) -> list[str]:
    parts = []
    for c in cols:
        if c.info:
            bits = [c.info.get("metric", "")]
            if c.info.get("shots"):
                bits.append(f"{c.info['shots']}-shot")
            if c.info.get("n"):
                bits.append(f"n={c.info['n']}")
            parts.append(f"{c.label}: {' '.join(b for b in bits if b)}")
    notes = ["Metrics: " + "; ".join(parts) + "."] if parts else []
    if cols and cols[0].scale == 100.0:
        notes.append("Scores in %. Average = mean over the tasks.")
    return notes


def results_table(methods: Mapping[str, Mapping[str, Any]]) -> Table | None:
    """Paper Table 1: one row per method with an ``eval``; columns the tasks + Average. None if no eval."""
    keys = [k for k in method_order(methods) if methods[k].get("eval")]
    if not keys:
        return None
    cols = _eval_columns([methods[k]["eval"] for k in keys])
    tasks = [c.key for c in cols[:-1]]
    raw = []
    for k in keys:
        vals, partial = eval_values(methods[k]["eval"], tasks, f"methods.{k}.eval")
        raw.append((k, method_label(k), dict(vals), frozenset({"average"}) if partial else frozenset()))
    notes = _eval_notes(cols)
    if any(p for *_, p in raw):
        notes.append("* average over the tasks this method was evaluated on only (not comparable).")
    return _finish("results", "Results (paper Table 1 layout)", cols, raw, notes)


def _flat_table(
    name: str,
    title: str,
    methods: Mapping[str, Mapping[str, Any]],
    field_: str,
    spec: Sequence[tuple[str, str, bool | None]],
    digits: int,
) -> Table | None:
    keys = [k for k in method_order(methods) if methods[k].get(field_)]
    if not keys:
        return None
    present = {c for k in keys for c in methods[k][field_]}
    cols = [Column(c, lab, hb, digits) for c, lab, hb in spec if c in present]
    cols += [Column(c, c, None, digits) for c in sorted(present - {s[0] for s in spec})]
    raw = [
        (k, method_label(k), {c.key: _num(methods[k][field_].get(c.key)) for c in cols}, frozenset[str]())
        for k in keys
    ]
    return _finish(name, title, cols, raw)


def recovery_table(methods: Mapping[str, Mapping[str, Any]]) -> Table | None:
    """Token recovery against the known truth: precision, recall, AUROC of the score, noise rates."""
    return _flat_table("recovery", "Token recovery (ground truth)", methods, "recovery", RECOVERY, 3)


def heldout_table(methods: Mapping[str, Mapping[str, Any]]) -> Table | None:
    """Held-out response loss (lower is better) and exact match per method."""
    return _flat_table("heldout", "Held-out set", methods, "heldout", HELDOUT, 4)


def mixed_columns(entries: Sequence[Mapping[str, Any]]) -> list[Column]:
    """Columns for rows with an ``eval`` and/or ``heldout``: tasks + Average, then held-out columns with data."""
    evals = [e.get("eval") for e in entries]
    cols = _eval_columns(evals) if any(evals) else []
    for c, lab, hb in HELDOUT:
        if any((e.get("heldout") or {}).get(c) is not None for e in entries):
            cols.append(Column(f"heldout_{c}", lab, hb, 4))
    return cols


def entry_values(
    e: Mapping[str, Any], cols: Sequence[Column], where: str = ""
) -> tuple[dict[str, float | None], bool]:
    """Values of a round/sweep entry for :func:`mixed_columns`; second item: the average is partial."""
    tasks = [c.key for c in cols if c.key != "average" and not c.key.startswith("heldout_")]
    vals, partial = eval_values(e.get("eval"), tasks, where) if tasks else ({}, False)
    for c in cols:
        if c.key.startswith("heldout_"):
            vals[c.key] = _num((e.get("heldout") or {}).get(c.key.removeprefix("heldout_")))
    return vals, partial


def _mixed_table(name: str, title: str, entries: list[tuple[str, str, Mapping[str, Any]]]) -> Table | None:
    cols = mixed_columns([e for _, _, e in entries])
    if not cols:
        return None
    raw = []
    for k, lab, e in entries:
        vals, partial = entry_values(e, cols, k)
        raw.append((k, lab, vals, frozenset({"average"}) if partial else frozenset()))
    return _finish(name, title, cols, raw, _eval_notes(cols))


def rounds_table(rounds: Sequence[Mapping[str, Any]]) -> Table | None:
    """Paper Table 2: self-evolving results per round (rows), tasks + Average and/or held-out columns."""
    entries = [e for e in rounds if e.get("eval") or e.get("heldout")]
    multi = len({e.get("key") for e in entries}) > 1
    rows = [
        (
            f"{e.get('key')}@{e.get('round')}",
            (f"{method_label(str(e.get('key')))} " if multi else "") + f"Round {e.get('round')}",
            e,
        )
        for e in entries
    ]
    return _mixed_table("rounds", "Self-evolving cleaning per round (paper Table 2 layout)", rows)


def sweep_table(sweep: Sequence[Mapping[str, Any]]) -> Table | None:
    """Token-proportion sweep: one row per (method, ratio)."""
    entries = [e for e in sweep if e.get("eval") or e.get("heldout")]
    order = method_order(str(e.get("method")) for e in entries)
    entries.sort(key=lambda e: (order.index(str(e.get("method"))), float(e.get("ratio") or 0)))
    rows = [
        (f"{e.get('method')}@{e.get('ratio')}", f"{method_label(str(e.get('method')))} k={e.get('ratio')}", e)
        for e in entries
    ]
    return _mixed_table("sweep", "Token-proportion sweep (paper Figure 2 data)", rows)


# -- renderers -------------------------------------------------------------------------------------------
def fmt_value(v: float | None, col: Column) -> str:
    return "–" if v is None else f"{v * col.scale:.{col.digits}f}"


def _md_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(t: Table) -> str:
    """GitHub Markdown: best values in bold, partial averages with ``*``, notes below."""
    head = ["Method", *(c.label for c in t.columns)]
    lines = [f"### {t.title}", "", "| " + " | ".join(map(_md_escape, head)) + " |"]
    lines.append("|" + "---|" + "---:|" * len(t.columns))
    for r in t.rows:
        cells = [_md_escape(r.label)]
        for c in t.columns:
            s = fmt_value(r.values[c.key], c) + ("*" if c.key in r.partial else "")
            cells.append(f"**{s}**" if r.best[c.key] else s)
        lines.append("| " + " | ".join(cells) + " |")
    if t.notes:
        lines += ["", *t.notes]
    return "\n".join(lines) + "\n"


def to_csv(t: Table) -> str:
    """CSV with raw (unscaled) values and a ``COL_best`` 0/1 flag column after each value column."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["key", "label", *(x for c in t.columns for x in (c.key, f"{c.key}_best"))])
    for r in t.rows:
        cells: list[Any] = [r.key, r.label]
        for c in t.columns:
            v = r.values[c.key]
            cells += ["" if v is None else repr(float(v)), int(r.best[c.key])]
        w.writerow(cells)
    return buf.getvalue()


def to_json(t: Table) -> dict[str, Any]:
    return {
        "name": t.name,
        "title": t.title,
        "columns": [
            {
                "key": c.key,
                "label": c.label,
                "higher_is_better": c.higher_is_better,
                "display_scale": c.scale,
                **dict(c.info),
            }
            for c in t.columns
        ],
        "rows": [
            {
                "key": r.key,
                "label": r.label,
                "values": dict(r.values),
                "best": dict(r.best),
                **({"partial": sorted(r.partial)} if r.partial else {}),
            }
            for r in t.rows
        ],
        "notes": list(t.notes),
    }
