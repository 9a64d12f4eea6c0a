"""Plain-text tables of truth-based results (the demo's and ``tokenclean run``'s printed tables): every
number is a mean with its 95% interval (``mean [lo, hi]``, :mod:`tokenclean.stats`), and every row carries
its budget."""

from __future__ import annotations

from typing import Any

import numpy as np

from tokenclean.report.tables import method_order
from tokenclean.stats import Interval, overlap_sentence


def text_table(cols: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns under a header and a rule."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def fmt(x: Any, ci: list[float] | None = None, pct: bool = False, digits: int = 3) -> str:
    """``x`` (as a percentage when ``pct``) followed by ``[lo, hi]`` when an interval is given."""
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"

    def one(v: float) -> str:
        return f"{100 * v:.1f}" if pct else f"{v:.{digits}f}"

    s = one(x) + ("%" if pct else "")
    if ci is not None:
        s += f" [{one(ci[0])}, {one(ci[1])}]"
    return s


def fmt_count(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e4 else f"{x:.0f}"


def results_table(summary: dict[str, Any]) -> str:
    """Token recovery, held-out results and the budget per method, with 95% intervals."""
    cols = ["method", "precision", "recall", "AUROC", "noise kept", "noise all", "test loss", "answer loss"]
    cols += ["exact match", "updates", "trained tok", "fwd tok", "bwd tok"]
    rows = []
    methods = summary.get("methods", {})
    for name in method_order(methods):
        m = methods[name]
        rec, rci = m.get("recovery") or {}, m.get("recovery_ci") or {}
        ho, hci = m.get("heldout") or {}, m.get("heldout_ci") or {}
        b = m.get("budget") or {}
        rows.append(
            [
                name,
                fmt(rec.get("precision"), rci.get("precision"), True),
                fmt(rec.get("recall"), rci.get("recall"), True),
                fmt(rec.get("auroc"), rci.get("auroc"), digits=2),
                fmt(rec.get("noise_rate_kept"), rci.get("noise_rate_kept"), True),
                fmt(rec.get("noise_rate_all"), None, True),
                fmt(ho.get("loss"), hci.get("loss"), digits=2),
                fmt(ho.get("answer_loss"), hci.get("answer_loss"), digits=2),
                fmt(ho.get("exact_match"), hci.get("exact_match"), True),
                fmt_count(b.get("updates")),
                fmt_count(b.get("trained_tokens")),
                fmt_count(b.get("forward_tokens")),
                fmt_count(b.get("backward_tokens")),
            ]
        )
    return text_table(cols, rows)


CLASS_LABELS = {
    "informative": "fact",
    "uninformative": "boilerplate",
    "noise:wrong_fact": "wrong fact",
    "noise:gibberish": "gibberish",
}


def class_labels(methods: dict[str, Any]) -> list[str]:
    """The truth labels of the methods' ``classes`` breakdowns: the known ones in order, then the rest."""
    seen: list[str] = []
    for m in methods.values():
        for k in m.get("classes") or {}:
            if k not in seen:
                seen.append(k)
    known = [k for k in CLASS_LABELS if k in seen]
    return known + sorted(k for k in seen if k not in CLASS_LABELS and k != "unlabelled")


def class_table(summary: dict[str, Any]) -> str:
    """Per method and truth label: the share of the label's tokens kept [95% interval] / its mean score; for
    soft methods (soft Token Cleaning, DFT) the label's mean training weight ``w`` instead of the share kept."""
    methods = summary.get("methods", {})
    labels = class_labels(methods)
    cols = ["method", *(CLASS_LABELS.get(k, k) for k in labels)]
    rows = []
    for name in method_order(methods):
        m = methods[name]
        classes, ci = m.get("classes"), m.get("classes_ci") or {}
        if not classes:
            continue
        row = [name]
        for key in labels:
            c = classes.get(key)
            if c is None:
                row.append("-")
                continue
            cell = fmt(c["kept"], (ci.get(key) or {}).get("kept"), True)
            if c.get("mean_weight") is not None:  # soft methods: the mean training weight says more
                cell = f"w {fmt(c['mean_weight'], (ci.get(key) or {}).get('mean_weight'), digits=2)}"
            row.append(cell if c.get("mean_score") is None else f"{cell} / {c['mean_score']:.2f}")
        rows.append(row)
    return text_table(cols, rows)


def decisive_table(summary: dict[str, Any]) -> str:
    """Per method and noise label: token-level removal (share of its tokens dropped) next to decisive-token
    removal (share of decisive tokens dropped = share of spans removed) and the AUROC of the score for
    informative tokens against all the label's tokens and against its decisive tokens."""
    methods = summary.get("methods", {})
    noise = [
        k
        for k in class_labels(methods)
        if any("decisive_dropped" in ((m.get("classes") or {}).get(k) or {}) for m in methods.values())
    ]
    cols = ["method"]
    for k in noise:
        n = CLASS_LABELS.get(k, k)
        cols += [f"{n}: tokens dropped", "spans removed", "AUROC tok", "AUROC decisive"]
    rows = []
    for name in method_order(methods):
        m = methods[name]
        classes, ci = m.get("classes") or {}, m.get("classes_ci") or {}
        if not classes:
            continue
        row = [name]
        for k in noise:
            c, cc = classes.get(k) or {}, ci.get(k) or {}
            row += [
                fmt(c.get("dropped"), cc.get("dropped"), True),
                fmt(c.get("decisive_dropped"), cc.get("decisive_dropped"), True),
                fmt(c.get("auroc_tokens"), cc.get("auroc_tokens"), digits=2),
                fmt(c.get("auroc_decisive"), cc.get("auroc_decisive"), digits=2),
            ]
        rows.append(row)
    return text_table(cols, rows)


HELDOUT_WORDS = (
    ("answer_loss", "answer loss", True),
    ("exact_match", "exact match", False),
    ("loss", "test loss", True),
)


def overlap_notes(summary: dict[str, Any]) -> list[str]:
    """In words, per held-out metric: which methods' 95% intervals are apart and that the others overlap."""
    methods = summary.get("methods", {})
    out = []
    for key, words, lower in HELDOUT_WORDS:
        ivs = {}
        for name in method_order(methods):
            m = methods[name]
            v, ci = (m.get("heldout") or {}).get(key), (m.get("heldout_ci") or {}).get(key)
            if v is not None and ci is not None:
                ivs[name] = Interval(v, ci[0], ci[1])
        if len(ivs) > 1:
            out.append(overlap_sentence(words, ivs, lower))
    return out


def interval_note(summary: dict[str, Any]) -> str:
    seeds = summary.get("seeds_used") or []
    n_q = next(
        (m["heldout"].get("questions") for m in summary.get("methods", {}).values() if m.get("heldout")), None
    )
    what = f"{len(seeds)} seed(s) {list(seeds)}"
    q = f", {n_q} held-out questions" if n_q else ""
    units = {
        "facts": "facts (each with all its held-out questions / pool samples: a cluster bootstrap)",
    }.get(summary.get("interval_units", ""), "held-out questions / pool samples")
    level = units + (" and seeds" if len(seeds) > 1 else " only (one seed)")
    return f"[lo, hi] = 95% percentile-bootstrap interval over {level}; {what}{q}."


def print_all(summary: dict[str, Any]) -> None:
    """The results, per-class, decisive-token tables and the overlap sentences (``run`` and ``demo``)."""
    print(results_table(summary))
    print(interval_note(summary))
    for line in overlap_notes(summary):
        print("- " + line)
    print("\nPer truth label: share of its tokens kept [95% interval] / mean score")
    print(class_table(summary))
    if decisive_table(summary).count("\n") > 1:
        print(
            "\nNoise removal: token level vs decisive token (a wrong span counts as removed when its decisive"
        )
        print("token, where it departs from the truth, is dropped)")
        print(decisive_table(summary))
