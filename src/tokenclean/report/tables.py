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
import dataclasses
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenclean import methods
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
    "heldout_loss": "Held-out loss",
    "heldout_perplexity": "Held-out perplexity",
    "heldout_exact_match": "Held-out EM",
}
# the registered methods in registry order, with their labels (tokenclean.methods)
METHOD_ORDER = methods.names()
METHOD_LABELS = {m.name: m.label for m in methods.specs()}
RECOVERY = (  # key, label, higher is better
    ("precision", "Precision", True),
    ("recall", "Recall", True),
    ("auroc", "AUROC", True),
    ("noise_rate_kept", "Noise rate (kept)", False),
    ("noise_rate_all", "Noise rate (all)", None),
)
HELDOUT = (("loss", "Held-out loss", False), ("exact_match", "Exact match", True))
HELDOUT_PREFIX = "heldout."  # columns of an entry's ``heldout`` field in the rounds/sweep tables


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    higher_is_better: bool | None  # None: no best marked
    digits: int = 2
    scale: float = 1.0  # display multiplier (100 for accuracies shown in %)
    info: Mapping[str, Any] = field(default_factory=dict)  # metric, shots, n (eval tasks)
    averaged: bool = False  # an eval task that counts in the Average column


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    values: Mapping[str, float | None]
    best: Mapping[str, bool]
    partial: frozenset[str] = frozenset()  # columns computed from incomplete data (the average)
    intervals: Mapping[str, Sequence[float]] = field(default_factory=dict)  # 95% [lo, hi] per column


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
    """Flags for the best value(s); ties (relative 1e-9) are all marked; None values never are, and nothing
    is marked when every value ties (an all-zero column has no best)."""
    vals = [v for v in values if v is not None]
    if higher_is_better is None or not vals:
        return [False] * len(values)
    if len(vals) > 1 and math.isclose(max(vals), min(vals), rel_tol=1e-9, abs_tol=1e-12):
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
LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "error", "bpb", "bits_per_byte")


def task_direction(task: str, entries: Iterable[Mapping[str, Any]]) -> bool:
    """True when higher is better: an entry's ``higher_is_better`` wins, else the metric name decides."""
    entries = list(entries)
    for e in entries:
        if isinstance(e.get("higher_is_better"), bool):
            return bool(e["higher_is_better"])
    names = [task, *(str(e.get("metric", "")) for e in entries)]
    return not any(any(w in n.lower() for w in LOWER_IS_BETTER) for n in names)


def averaged_tasks(ev: Mapping[str, Any] | None) -> list[str]:
    """The tasks an eval's average is over: its ``average_over`` list when given, else every task that is
    not held-out data (``heldout_*``) and where higher is better."""
    ev = ev or {}
    tasks = ev.get("tasks", {})
    if isinstance(ev.get("average_over"), list):
        return [t for t in ev["average_over"] if t in tasks]
    return [t for t, e in tasks.items() if not t.startswith("heldout_") and task_direction(t, [e])]


def eval_tasks(evals: Iterable[Mapping[str, Any] | None]) -> list[str]:
    """Task keys over all evals: the paper's order first, then others in order of appearance."""
    seen: list[str] = []
    for ev in evals:
        for t in (ev or {}).get("tasks", {}):
            if t not in seen:
                seen.append(t)
    return [t for t in PAPER_TASKS if t in seen] + [t for t in seen if t not in PAPER_TASKS]


def eval_values(
    ev: Mapping[str, Any] | None, cols: Sequence[Column], where: str = ""
) -> tuple[dict[str, float | None], bool]:
    """Values of the task columns plus the recomputed ``average`` (mean over the averaged columns the row
    has); second item: True when the row lacks one of the table's averaged tasks (a partial average)."""
    tv = (ev or {}).get("tasks", {})
    tasks = [c for c in cols if c.key != "average" and not c.key.startswith(HELDOUT_PREFIX)]
    vals: dict[str, float | None] = {c.key: _num(tv.get(c.key, {}).get("value")) for c in tasks}
    avg_cols = [c.key for c in cols if c.averaged]
    present = [vals[t] for t in avg_cols if vals.get(t) is not None]
    avg = sum(present) / len(present) if present else None  # type: ignore[arg-type]
    reported = _num((ev or {}).get("average"))
    own = [_num(tv[t].get("value")) for t in averaged_tasks(ev)]
    own_vals = [v for v in own if v is not None]
    if reported is not None and own_vals:
        mean = sum(own_vals) / len(own_vals)
        if not math.isclose(reported, mean, rel_tol=1e-6, abs_tol=1e-9):
            log.warning(
                "%s: reported average %.6g differs from the mean of its tasks %.6g", where, reported, mean
            )
    if avg_cols:
        vals["average"] = avg
    return vals, bool(present) and len(present) < len(avg_cols)


def _eval_columns(evals: Sequence[Mapping[str, Any] | None]) -> list[Column]:
    """Averaged task columns (paper order), Average, then the other tasks (e.g. held-out loss)."""
    tasks = eval_tasks(evals)
    averaged = {t for ev in evals for t in averaged_tasks(ev)}
    avg_vals = [
        _num(e.get("value")) for ev in evals for t, e in (ev or {}).get("tasks", {}).items() if t in averaged
    ]
    scale = 100.0 if avg_vals and all(v is None or 0.0 <= v <= 1.0 for v in avg_vals) else 1.0
    head, tail = [], []
    for t in tasks:
        infos = [i for i in ((ev or {}).get("tasks", {}).get(t) for ev in evals) if i]
        info = {
            k: sorted({str(i.get(k)) for i in infos if i.get(k) is not None})
            for k in ("metric", "shots", "n")
        }
        meta = {k: ", ".join(v) for k, v in info.items() if v}
        if t in averaged:
            head.append(Column(t, task_label(t), True, 2, scale, meta, averaged=True))
        else:
            tail.append(Column(t, task_label(t), task_direction(t, infos), 4, 1.0, meta))
    return head + ([Column("average", "Average", True, 2, scale)] if head else []) + tail


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
    if any(c.averaged for c in cols):
        pct = "Scores in %. " if any(c.averaged and c.scale == 100.0 for c in cols) else ""
        names = ", ".join(c.label for c in cols if c.averaged)
        notes.append(f"{pct}Average = mean over {names}.")
    return notes


def results_table(methods: Mapping[str, Mapping[str, Any]]) -> Table | None:
    """Paper Table 1: one row per method with an ``eval``; columns the tasks + Average. None if no eval."""
    keys = [k for k in method_order(methods) if (methods[k].get("eval") or {}).get("tasks")]
    if not keys:
        return None
    cols = _eval_columns([methods[k]["eval"] for k in keys])
    raw = []
    for k in keys:
        vals, partial = eval_values(methods[k]["eval"], cols, f"methods.{k}.eval")
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
    t = _finish(name, title, cols, raw)
    cis = {k: methods[k].get(f"{field_}_ci") or {} for k in keys}
    if not any(cis.values()):
        return t
    rows = tuple(dataclasses.replace(r, intervals=cis[r.key]) for r in t.rows)
    note = "[lo, hi]: 95% bootstrap interval over pool samples / held-out questions and seeds (tokenclean.stats)."
    return dataclasses.replace(t, rows=rows, notes=(*t.notes, note))


def recovery_table(methods: Mapping[str, Mapping[str, Any]]) -> Table | None:
    """Token recovery against the known truth: precision, recall, AUROC of the score, noise rates."""
    return _flat_table("recovery", "Token recovery (ground truth)", methods, "recovery", RECOVERY, 3)


def heldout_table(methods: Mapping[str, Mapping[str, Any]]) -> Table | None:
    """Held-out response loss (lower is better) and exact match per method."""
    return _flat_table("heldout", "Held-out set", methods, "heldout", HELDOUT, 4)


def mixed_columns(entries: Sequence[Mapping[str, Any]]) -> list[Column]:
    """Columns for rows with an ``eval`` and/or ``heldout``: tasks + Average, then held-out columns with data."""
    evals = [e.get("eval") for e in entries]
    cols = _eval_columns(evals)
    for c, lab, hb in HELDOUT:
        if any((e.get("heldout") or {}).get(c) is not None for e in entries):
            cols.append(Column(f"{HELDOUT_PREFIX}{c}", lab, hb, 4))
    return cols


def entry_values(
    e: Mapping[str, Any], cols: Sequence[Column], where: str = ""
) -> tuple[dict[str, float | None], bool]:
    """Values of a round/sweep entry for :func:`mixed_columns`; second item: the average is partial."""
    vals, partial = eval_values(e.get("eval"), cols, where)
    for c in cols:
        if c.key.startswith(HELDOUT_PREFIX):
            vals[c.key] = _num((e.get("heldout") or {}).get(c.key.removeprefix(HELDOUT_PREFIX)))
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
def fmt_value(v: float | None, col: Column, ci: Sequence[float] | None = None) -> str:
    """The value in the column's scale and digits, followed by ``[lo, hi]`` when an interval is given."""
    if v is None:
        return "–"
    s = f"{v * col.scale:.{col.digits}f}"
    return s if not ci else s + f" [{ci[0] * col.scale:.{col.digits}f}, {ci[1] * col.scale:.{col.digits}f}]"


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
            s = fmt_value(r.values[c.key], c, r.intervals.get(c.key)) + ("*" if c.key in r.partial else "")
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
