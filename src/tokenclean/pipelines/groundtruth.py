"""For runs on a synthetic ground-truth pool: how well each method's kept tokens recover the truth, and how
each trained model does on the clean held-out set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.groundtruth.metrics import class_breakdown, heldout_metrics, recovery_metrics
from tokenclean.groundtruth.truth import token_truth
from tokenclean.pipelines.stages import Run, get_logger
from tokenclean.report.tables import method_order

log = get_logger("groundtruth")


def _keep_by_id(cleaned: Path) -> dict[str, np.ndarray]:
    import datasets

    ds = datasets.load_from_disk(str(cleaned))
    return {sid: np.asarray(lab) != IGNORE_INDEX for sid, lab in zip(ds["sample_id"], ds["labels"])}


def _scores_by_id(scores_dir: Path) -> dict[str, np.ndarray]:
    import datasets

    ds = datasets.load_from_disk(str(scores_dir))
    return {r["sample_id"]: np.asarray(r["score"], dtype=np.float64) for r in ds}


def _recovery(
    truth: dict[str, np.ndarray], noise: dict[str, str], cleaned: list[Path], scores: list[Path] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Recovery metrics and the per-class breakdown over the samples a method scored (all pool samples when
    it has no score)."""
    keep: dict[str, np.ndarray] = {}
    for c in cleaned:
        keep.update(_keep_by_id(c))
    score: dict[str, np.ndarray] = {}
    for s in scores or []:
        score.update(_scores_by_id(s))
    ids = sorted(score) if scores else sorted(truth)
    t = [truth[i] for i in ids]
    k = [keep.get(i, np.zeros(len(truth[i]), dtype=bool)) for i in ids]  # emptied samples keep nothing
    sc = [score[i] for i in ids] if scores else None
    return recovery_metrics(t, k, sc), class_breakdown(t, k, [noise[i] for i in ids], sc)


def evaluate_ground_truth(run: Run) -> None:
    import datasets

    from tokenclean.models.loader import load_model

    src = run.root / "data" / "source"
    pool, heldout = run.root / "data" / "pool", run.root / "data" / "heldout"
    pool_ds = datasets.load_from_disk(str(pool))
    truth = dict(zip(pool_ds["sample_id"], token_truth(src / "pool.jsonl", pool, run.tokenizer)))
    with open(src / "pool.jsonl") as f:
        noise = {str(r["id"]): r["noise"] for r in map(json.loads, f)}
    test_ds = datasets.load_from_disk(str(heldout))
    test_truth = token_truth(src / "test.jsonl", heldout, run.tokenizer)
    for name, m in run.summary.get("methods", {}).items():
        if name == "self_evolving":  # over the splits it cleaned (1..T), with each round's own scores
            rounds = run.summary.get("rounds", [])
            m["recovery"], m["classes"] = _recovery(
                truth,
                noise,
                [run.root / r["cleaned"] for r in rounds],
                [run.root / r["scores"] for r in rounds],
            )
        elif name in ("fixed_model", "rho"):
            m["recovery"], m["classes"] = _recovery(
                truth, noise, [run.root / m["cleaned"]], [run.root / m["scores"]]
            )
        elif name in ("random", "full"):
            m["recovery"], m["classes"] = _recovery(truth, noise, [run.root / m["cleaned"]], None)
        if m.get("heldout") is None:
            model = load_model(
                run.cfg.model.base,
                device=run.cfg.model.device,
                adapter=str(run.root / m["adapter"]) if m.get("adapter") else None,
            )
            m["heldout"] = heldout_metrics(model, test_ds["input_ids"], test_ds["labels"], test_truth)
            del model
        log.info("%s: recovery: %s; held-out: %s", name, _brief(m.get("recovery")), _brief(m["heldout"]))
        run.save_summary()


def _brief(metrics: dict[str, Any] | None) -> str:
    """``k=v`` pairs with 4 significant digits, for one readable log line per method."""
    if not metrics:
        return "-"
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def _text_table(cols: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns under a header and a rule."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def results_table(summary: dict[str, Any]) -> str:
    """One plain-text table: token recovery and held-out results per method."""
    cols = [
        "method",
        "kept",
        "precision",
        "recall",
        "AUROC",
        "noise kept",
        "noise all",
        "test loss",
        "answer loss",
        "exact match",
    ]
    rows = []
    methods = summary.get("methods", {})
    for name in method_order(methods):  # summary.json stores keys sorted; tables use the paper's order
        m = methods[name]
        rec, ho = m.get("recovery") or {}, m.get("heldout") or {}

        def f(x: Any, pct: bool = False) -> str:
            if x is None or (isinstance(x, float) and np.isnan(x)):
                return "-"
            return f"{100 * x:.1f}%" if pct else f"{x:.3f}"

        rows.append(
            [
                name,
                str(rec.get("kept_tokens", "-")),
                f(rec.get("precision"), True),
                f(rec.get("recall"), True),
                f(rec.get("auroc")),
                f(rec.get("noise_rate_kept"), True),
                f(rec.get("noise_rate_all"), True),
                f(ho.get("loss")),
                f(ho.get("answer_loss")),
                f(ho.get("exact_match"), True),
            ]
        )
    return _text_table(cols, rows)


CLASS_LABELS = {
    "informative": "fact",
    "uninformative": "boilerplate",
    "noise:wrong_fact": "wrong fact",
    "noise:gibberish": "gibberish",
}


def class_table(summary: dict[str, Any]) -> str:
    """Per method and token class: the share of the class's tokens kept, and its mean score."""
    cols = ["method", *CLASS_LABELS.values()]
    rows = []
    methods = summary.get("methods", {})
    for name in method_order(methods):  # summary.json stores keys sorted; tables use the paper's order
        m = methods[name]
        classes = m.get("classes")
        if not classes:
            continue
        row = [name]
        for key in CLASS_LABELS:
            c = classes.get(key)
            if c is None:
                row.append("-")
            elif c["mean_score"] is None:
                row.append(f"{100 * c['kept']:.1f}%")
            else:
                row.append(f"{100 * c['kept']:.1f}% / {c['mean_score']:.2f}")
        rows.append(row)
    return _text_table(cols, rows)
