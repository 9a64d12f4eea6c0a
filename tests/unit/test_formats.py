"""Reading every supported format, auto-detection, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenclean.data.formats import Message, read_records
from tokenclean.errors import DataError


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("prompt_completion.jsonl", [("user", "What is two plus two?"), ("assistant", " Four.")]),
        (
            "alpaca.jsonl",
            [
                ("user", "Summarise the text.\n\nThe cat sat on the mat all day."),
                ("assistant", "A cat sat on a mat."),
            ],
        ),
        (
            "alpaca.json",
            [
                ("user", "Summarise the text.\n\nThe cat sat on the mat all day."),
                ("assistant", "A cat sat on a mat."),
            ],
        ),
        ("dolly.jsonl", [("user", "Who wrote Hamlet?"), ("assistant", "William Shakespeare.")]),
        (
            "sharegpt.jsonl",
            [
                ("user", "What is the capital of France?"),
                ("assistant", "Paris."),
                ("user", "And of Italy?"),
                ("assistant", "Rome."),
            ],
        ),
    ],
)
def test_formats_auto_detected(fixtures_dir: Path, name: str, expected: list[tuple[str, str]]) -> None:
    rec = next(read_records(fixtures_dir / name))
    assert [(m.role, m.content) for m in rec.messages] == expected


def test_prompt_completion_system_and_response_key(fixtures_dir: Path) -> None:
    recs = list(read_records(fixtures_dir / "prompt_completion.jsonl"))
    assert recs[1].messages == (
        Message("system", "Be brief."),
        Message("user", "Name a colour."),
        Message("assistant", " Blue."),
    )
    assert [r.sample_id for r in recs] == ["row-00000000", "row-00000001"]


def test_alpaca_empty_input_has_no_blank_lines(fixtures_dir: Path) -> None:
    recs = list(read_records(fixtures_dir / "alpaca.jsonl"))
    assert recs[1].messages[0] == Message("user", "Say hello.")


def test_ids_and_locations(fixtures_dir: Path) -> None:
    rec = next(read_records(fixtures_dir / "sharegpt.jsonl"))
    assert rec.sample_id == "conv1"
    assert rec.location.endswith("sharegpt.jsonl:1")


def test_parquet_and_saved_dataset(tmp_path: Path, fixtures_dir: Path) -> None:
    import datasets

    rows = [json.loads(x) for x in (fixtures_dir / "messages.jsonl").read_text().splitlines()]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "m.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    a = list(read_records(tmp_path / "m.parquet"))
    b = list(read_records(tmp_path / "saved"))
    c = list(read_records(fixtures_dir / "messages.jsonl"))
    assert [r.messages for r in a] == [r.messages for r in b] == [r.messages for r in c]
    assert len(c[0].messages) == 5


def test_forced_format_overrides_detection(tmp_path: Path) -> None:
    p = write(
        tmp_path / "x.jsonl", json.dumps({"prompt": "p", "response": "r", "instruction": "i", "output": "o"})
    )
    assert next(read_records(p)).messages[0].content == "i"  # auto: instruction wins
    assert next(read_records(p, fmt="prompt_completion")).messages[0].content == "p"


@pytest.mark.parametrize(
    ("content", "fmt", "match"),
    [
        (
            '{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": }\n',
            "auto",
            r"x\.jsonl:2: malformed JSON",
        ),
        ('{"prompt": "a"}\n', "prompt_completion", r"x\.jsonl:1: field 'completion': missing"),
        (
            '{"prompt": 3, "completion": "b"}\n',
            "auto",
            r"x\.jsonl:1: field 'prompt': expected a string, got int",
        ),
        ('{"messages": []}\n', "auto", r"x\.jsonl:1: field 'messages': empty conversation"),
        (
            '{"messages": [{"role": "robot", "content": "x"}]}\n',
            "auto",
            r"x\.jsonl:1: field 'messages\[0\]\.role': unknown role 'robot'",
        ),
        ('{"messages": [{"role": "user", "content": "x"}]}\n', "auto", r"no assistant turn"),
        (
            '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": 5}]}\n',
            "auto",
            r"field 'messages\[1\]\.content': expected a string or a list of text parts, got int",
        ),
        (
            '{"conversations": [{"from": "human", "value": "x"}, {"from": "alien", "value": "y"}]}\n',
            "auto",
            r"field 'conversations\[1\]\.from': unknown role 'alien'",
        ),
        (
            '{"messages": [{"role": "user", "content": [{"type": "image_url", "text": "x"}]}]}\n',
            "auto",
            r"field 'messages\[0\]\.content\[0\]': part type 'image_url' is not text",
        ),
        (
            '{"messages": [{"role": "user", "content": [{"type": "text"}]}]}\n',
            "auto",
            r"field 'messages\[0\]\.content\[0\]': expected a text part",
        ),
        ('{"messages": "hi"}\n', "auto", r"field 'messages': expected a list of turns, got str"),
        ('{"foo": 1}\n', "auto", r"x\.jsonl:1: cannot detect the format"),
        ("[1, 2]\n", "auto", r"x\.jsonl:1: expected a JSON object, got list"),
        (
            '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]}\n',
            "auto",
            r"field 'messages\[1\]': empty assistant content",
        ),
    ],
)
def test_bad_input_names_file_line_and_field(tmp_path: Path, content: str, fmt: str, match: str) -> None:
    p = write(tmp_path / "x.jsonl", content)
    with pytest.raises(DataError, match=match):
        list(read_records(p, fmt=fmt))


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    p = write(
        tmp_path / "x.jsonl",
        b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff\xfe", "completion": "b"}\n',
    )
    with pytest.raises(DataError, match=r"x\.jsonl:2: invalid UTF-8"):
        list(read_records(p))
    q = write(tmp_path / "y.json", b'[\n{"prompt": "a", "completion": "b"},\n{"prompt": "\xff"}\n]')
    with pytest.raises(DataError, match=r"y\.json:3: invalid UTF-8"):
        list(read_records(q))


def test_json_array_errors_name_the_row(tmp_path: Path) -> None:
    p = write(tmp_path / "x.json", json.dumps([{"prompt": "a", "completion": "b"}, {"prompt": "a"}]))
    with pytest.raises(DataError, match=r"x\.json\[row 1\]: field 'completion': missing"):
        list(read_records(p, fmt="prompt_completion"))


def test_duplicate_ids_rejected(tmp_path: Path) -> None:
    row = {"id": "a", "prompt": "p", "completion": "c"}
    p = write(tmp_path / "x.jsonl", json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(
        DataError, match=r"x\.jsonl:2: field 'id': duplicate sample id 'a' \(first at .*x\.jsonl:1\)"
    ):
        list(read_records(p))


def test_on_error_hook_collects_and_continues(tmp_path: Path) -> None:
    rows = [
        {"prompt": "a", "completion": "b"},
        {"prompt": "a", "completion": 7},
        {"prompt": "c", "completion": "d"},
    ]
    p = write(tmp_path / "x.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    errs: list[tuple[DataError, object]] = []
    recs = list(read_records(p, on_error=lambda e, row: errs.append((e, row))))
    assert [r.messages[0].content for r in recs] == ["a", "c"]
    assert len(errs) == 1 and errs[0][0].field == "completion" and errs[0][1] == rows[1]


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        list(read_records(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="unknown file type"):
        list(read_records(write(tmp_path / "x.csv", "a,b")))


def test_openai_content_parts_and_developer_role(tmp_path: Path) -> None:
    """OpenAI chat records: content as a list of text parts (joined in order), `developer` as the system."""
    row = {
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Capital of "}, {"type": "text", "text": "France?"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]},
        ]
    }
    p = write(tmp_path / "x.jsonl", json.dumps(row) + "\n")
    (rec,) = read_records(p)
    assert [(m.role, m.content) for m in rec.messages] == [
        ("system", "Be brief."),
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
    ]
