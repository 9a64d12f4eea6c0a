"""Report tables from synthetic summaries: layout, recomputed averages, best-per-column marks, renderers,
and reading/merging run directories."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from tokenclean.errors import ConfigError, DataError
from tokenclean.report import tables
from tokenclean.report.runs import load_run, merge


def ev(**values: float) -> dict:
    return {
        "tasks": {
            t: {"metric": "acc", "value": v, "n": 10, "shots": 5 if t == "mmlu" else 0}
            for t, v in values.items()
        },
        "average": sum(values.values()) / len(values),
    }


METHODS = {
    # deliberately not in paper order; fixed_model and rho tie on boolq
    "fixed_model": {
        "eval": ev(mmlu=0.50, boolq=0.70, logiqa=0.30),
        "heldout": {"loss": 1.2, "exact_match": 0.4},
    },
    "base": {"eval": ev(mmlu=0.40, boolq=0.60, logiqa=0.35), "heldout": {"loss": 1.5, "exact_match": 0.2}},
    "rho": {"eval": ev(mmlu=0.45, boolq=0.70, logiqa=0.20), "heldout": {"loss": 1.1, "exact_match": 0.3}},
    "full": {"eval": None, "heldout": None},
}


def test_results_table_layout_average_and_best():
    t = tables.results_table(METHODS)
    assert t is not None
    assert [r.key for r in t.rows] == ["base", "rho", "fixed_model"]  # paper order; no eval -> no row
    assert [c.key for c in t.columns] == ["mmlu", "boolq", "logiqa", "average"]  # paper task order
    avg = {r.key: r.values["average"] for r in t.rows}
    assert avg["base"] == pytest.approx((0.40 + 0.60 + 0.35) / 3)
    assert avg["fixed_model"] == pytest.approx(0.50)
    best = {c.key: [r.key for r in t.rows if r.best[c.key]] for c in t.columns}
    assert best == {
        "mmlu": ["fixed_model"],
        "boolq": ["rho", "fixed_model"],
        "logiqa": ["base"],
        "average": ["fixed_model"],
    }


def test_average_is_recomputed_and_partial_rows_are_never_best():
    methods = {
        "base": {"eval": ev(mmlu=0.4, boolq=0.6)},
        "rho": {
            "eval": {"tasks": {"mmlu": {"metric": "acc", "value": 0.9}}, "average": 0.1}
        },  # wrong average
    }
    t = tables.results_table(methods)
    assert t is not None
    rho = next(r for r in t.rows if r.key == "rho")
    assert rho.values["average"] == pytest.approx(0.9)  # mean of its own tasks, not the reported 0.1
    assert rho.partial == {"average"} and not rho.best["average"]
    assert next(r for r in t.rows if r.key == "base").best["average"]
    md = tables.to_markdown(t)
    assert "90.00*" in md and "**50.00**" in md  # % scale; partial starred; full row bold


def test_lower_is_better_and_unmarked_columns():
    rec = {
        "random": {
            "recovery": {
                "precision": 0.5,
                "recall": 0.6,
                "auroc": 0.5,
                "noise_rate_kept": 0.5,
                "noise_rate_all": 0.45,
            }
        },
        "fixed_model": {
            "recovery": {
                "precision": 0.9,
                "recall": 0.8,
                "auroc": 0.95,
                "noise_rate_kept": 0.1,
                "noise_rate_all": 0.45,
            }
        },
    }
    t = tables.recovery_table(rec)
    assert t is not None
    fm = next(r for r in t.rows if r.key == "fixed_model")
    assert fm.best["noise_rate_kept"] and fm.best["precision"]
    assert not any(r.best["noise_rate_all"] for r in t.rows)  # a property of the data: nothing to win
    h = tables.heldout_table(METHODS)
    assert h is not None
    assert [r.key for r in h.rows if r.best["loss"]] == ["rho"]  # lowest loss
    assert [r.key for r in h.rows if r.best["exact_match"]] == ["fixed_model"]


def test_renderers_mark_best_in_markdown_csv_and_json():
    t = tables.results_table(METHODS)
    assert t is not None
    md = tables.to_markdown(t)
    line = next(ln for ln in md.splitlines() if ln.startswith("| Fixed-model cleaning"))
    assert line.split(" | ")[1] == "**50.00**"  # MMLU best, shown in %
    assert "| Method | MMLU | BoolQ | LogiQA | Average |" in md
    rows = list(csv.DictReader(io.StringIO(tables.to_csv(t))))
    fm = next(r for r in rows if r["key"] == "fixed_model")
    assert fm["mmlu"] == "0.5" and fm["mmlu_best"] == "1" and fm["logiqa_best"] == "0"
    js = json.loads(json.dumps(tables.to_json(t)))
    row = next(r for r in js["rows"] if r["key"] == "base")
    assert row["best"]["logiqa"] is True and row["values"]["mmlu"] == 0.4
    assert next(c for c in js["columns"] if c["key"] == "mmlu")["shots"] == "5"


def test_markdown_escapes_pipes_in_labels():
    t = tables.results_table({"a|b": {"eval": ev(mmlu=0.5)}})
    assert t is not None
    assert "a\\|b" in tables.to_markdown(t)


def test_rounds_and_sweep_tables():
    rounds = [
        {
            "round": 1,
            "key": "self_evolving",
            "eval": ev(mmlu=0.4),
            "heldout": {"loss": 1.3, "exact_match": 0.1},
        },
        {
            "round": 2,
            "key": "self_evolving",
            "eval": ev(mmlu=0.5),
            "heldout": {"loss": 1.2, "exact_match": 0.2},
        },
        {"round": 0, "key": "self_evolving", "eval": None, "heldout": None},  # warm-up without eval: no row
    ]
    t = tables.rounds_table(rounds)
    assert t is not None
    assert [r.label for r in t.rows] == ["Round 1", "Round 2"]
    assert [c.key for c in t.columns] == ["mmlu", "average", "heldout.loss", "heldout.exact_match"]
    assert t.rows[1].best["heldout.loss"] and not t.rows[0].best["heldout.loss"]
    sweep = [
        {"ratio": k, "method": "fixed_model", "eval": None, "heldout": {"loss": 1 + abs(k - 0.6)}}
        for k in (0.9, 0.3, 0.6)
    ]
    s = tables.sweep_table(sweep)
    assert s is not None
    assert [r.label for r in s.rows] == [
        f"Fixed-model cleaning k={k}" for k in (0.3, 0.6, 0.9)
    ]  # sorted by ratio
    assert [c.key for c in s.columns] == ["heldout.loss"]
    assert tables.rounds_table([]) is None and tables.sweep_table([]) is None


def test_no_data_gives_no_table():
    assert tables.results_table({"base": {"eval": None}}) is None
    assert tables.recovery_table(METHODS) is None


def _write_run(d: Path, name: str, methods: dict, **extra) -> Path:
    d.mkdir(parents=True)
    (d / "summary.json").write_text(
        json.dumps(
            {"schema_version": 1, "pipeline": "x", "name": name, "model": "m", "methods": methods, **extra}
        )
    )
    return d


def test_merge_prefixes_clashing_methods(tmp_path: Path):
    a = _write_run(tmp_path / "a", "runA", {"base": {"eval": ev(mmlu=0.4)}, "rho": {"eval": ev(mmlu=0.5)}})
    b = _write_run(
        tmp_path / "b",
        "runB",
        {
            "base": {"eval": ev(mmlu=0.4)},
            "fixed_model": {"eval": ev(mmlu=0.6), "cleaned": "c", "scores": "s"},
        },
        sweep=[{"ratio": 0.5, "method": "base", "eval": ev(mmlu=0.3)}],
    )
    m = merge([load_run(a), load_run(b)])
    assert list(m.methods) == ["runA/base", "rho", "runB/base", "fixed_model"]
    assert m.sweep[0]["method"] == "runB/base"
    assert [(v.key, v.cleaned) for v in m.views] == [("fixed_model", b / "c")]
    t = tables.results_table(m.methods)
    assert t is not None
    assert [r.label for r in t.rows] == ["runA: Base", "runB: Base", "RHO", "Fixed-model cleaning"]


def test_self_evolving_rounds_become_views_without_duplicates(tmp_path: Path):
    methods = {"self_evolving": {"round": 2, "cleaned": "r2/c", "scores": "r2/s"}}
    rounds = [
        {"round": 0, "scores": None, "cleaned": None},
        {"round": 1, "scores": "r1/s", "cleaned": "r1/c"},
        {"round": 2, "scores": "r2/s", "cleaned": "r2/c"},
    ]
    d = _write_run(tmp_path / "r", "se", methods, rounds=rounds)
    m = merge([load_run(d)])
    assert [(v.key, v.round) for v in m.views] == [("self_evolving", 1), ("self_evolving", 2)]


@pytest.mark.parametrize(
    ("summary", "needle"),
    [
        (
            {"methods": {"rho": {"eval": {"tasks": {"mmlu": {"value": "high"}}}}}},
            "methods.rho.eval.tasks.mmlu.value",
        ),
        ({"methods": {"rho": {"cleaned": 3}}}, "methods.rho.cleaned"),
        ({"methods": [], "rounds": []}, "methods"),
        ({"methods": {}, "sweep": [{"ratio": "x"}]}, "sweep[0].ratio"),
    ],
)
def test_bad_summary_names_the_key(tmp_path: Path, summary: dict, needle: str):
    tmp_path.joinpath("summary.json").write_text(json.dumps(dict(summary, schema_version=1)))
    with pytest.raises(DataError, match=re.escape(needle)) as e:
        load_run(tmp_path)
    assert "summary.json" in str(e.value)


def test_missing_summary_and_several_runs_without_out(tmp_path: Path):
    from tokenclean.report import build_report

    with pytest.raises(DataError, match=r"no summary\.json"):
        load_run(tmp_path)
    a = _write_run(tmp_path / "a", "a", {})
    b = _write_run(tmp_path / "b", "b", {})
    with pytest.raises(ConfigError, match="--out"):
        build_report([a, b])


def quick(loss: float, em: float, mmlu: float | None = None) -> dict:
    """An eval as the evaluation stage writes it for the quick suite (+ optionally a benchmark)."""
    tasks = {
        "heldout_loss": {"metric": "loss", "value": loss, "higher_is_better": False, "n": 5, "shots": 0},
        "heldout_exact_match": {
            "metric": "exact_match",
            "value": em,
            "higher_is_better": True,
            "n": 5,
            "shots": 0,
        },
    }
    if mmlu is not None:
        tasks["mmlu"] = {"metric": "acc", "value": mmlu, "n": 5, "shots": 5}
    over = ["mmlu"] if mmlu is not None else []
    return {"tasks": tasks, "average": mmlu, "average_over": over}


def test_quick_suite_losses_are_lower_is_better_and_not_averaged():
    t = tables.results_table({"base": {"eval": quick(2.0, 0.1, 0.3)}, "rho": {"eval": quick(1.5, 0.2, 0.25)}})
    assert t is not None
    assert [c.key for c in t.columns] == ["mmlu", "average", "heldout_loss", "heldout_exact_match"]
    rows = {r.key: r for r in t.rows}
    assert rows["base"].values["average"] == pytest.approx(0.3)  # the loss never enters the average
    assert rows["rho"].best["heldout_loss"] and not rows["base"].best["heldout_loss"]
    assert rows["base"].best["mmlu"] and rows["base"].best["average"]
    md = tables.to_markdown(t)
    assert "| Base | **30.00** | **30.00** | 2.0000 | 0.1000 |" in md  # % only for averaged benchmarks
    only = tables.results_table({"base": {"eval": quick(2.0, 0.1)}, "rho": {"eval": quick(1.5, 0.2)}})
    assert only is not None
    assert [c.key for c in only.columns] == [
        "heldout_loss",
        "heldout_exact_match",
    ]  # no Average without benchmarks


def test_a_column_where_every_value_ties_marks_no_best() -> None:
    """An all-zero exact-match column has no best (it was bolded for every method)."""
    assert tables.mark_best([0.0, 0.0, 0.0], True) == [False, False, False]
    assert tables.mark_best([0.0, None, 0.0], False) == [False, False, False]
    assert tables.mark_best([0.2, 0.5, 0.5], True) == [False, True, True]  # a tie at the top still marks
    assert tables.mark_best([0.7], True) == [True]
