"""``tokenclean truth from-steps``: step-annotated traces (first-mistake index, per-step ratings) as SFT
samples plus span truth, mapped onto tokens by the one truth rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenclean.errors import DataError
from tokenclean.groundtruth.steps import Split, StepFields, read_traces
from tokenclean.groundtruth.steps_io import from_steps
from tokenclean.outputs import OutputError

FIRST = [
    {"input": "sort: b a", "steps": ["first b", "then a\nand b", "so: a b"], "mistake_index": 1},
    {"input": "sort: c d", "steps": ["c before d", "so: c d"], "mistake_index": None},
    {"input": "sort: e f", "steps": ["e", "", "f"], "mistake_index": 0},
]
RATED = [
    {"question": "1+1?", "trace": ["one plus one", "is 3", "or 2"], "rating": [1, -1, 0], "uid": "q1"},
    {"question": "2+2?", "trace": ["4"], "rating": [None], "uid": "q2"},
]


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _spans(path: Path) -> dict[str, list]:
    return {r["id"]: r["spans"] for r in map(json.loads, path.read_text().splitlines())}


def _texts(path: Path) -> dict[str, str]:
    return {r["id"]: r["messages"][1]["content"] for r in map(json.loads, path.read_text().splitlines())}


def test_first_mistake_style_labels_and_spans(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "bbm.jsonl", FIRST)
    m = from_steps([src], tmp_path / "out")
    spans, texts = _spans(tmp_path / "out" / "truth.jsonl"), _texts(tmp_path / "out" / "data.jsonl")
    assert set(spans) == {"bbm-1", "bbm-2", "bbm-3"}
    # a step holding the separator keeps one span over all its characters (spans come from the join)
    assert spans["bbm-1"] == [[0, 7, "correct"], [8, 20, "mistake"], [21, 28, "after"]]
    t = texts["bbm-1"]
    assert [t[s:e] for s, e, _ in spans["bbm-1"]] == FIRST[0]["steps"]
    assert spans["bbm-2"] == [[0, 10, "correct"], [11, 18, "correct"]]  # no mistake: every step correct
    assert spans["bbm-3"] == [[0, 1, "mistake"], [2, 2, "after"], [3, 4, "after"]]  # an empty step
    assert m["steps_by_label"] == {"after": 3, "correct": 3, "mistake": 2}
    user = json.loads((tmp_path / "out" / "data.jsonl").read_text().splitlines()[0])["messages"][0]
    assert user == {"role": "user", "content": "sort: b a"}


def test_ratings_style_with_configured_fields(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "prm.jsonl", RATED)
    f = StepFields(input="question", steps="trace", ratings="rating", id="uid")
    from_steps([src], tmp_path / "out", f, sep=" | ")
    spans, texts = _spans(tmp_path / "out" / "truth.jsonl"), _texts(tmp_path / "out" / "data.jsonl")
    assert texts["q1"] == "one plus one | is 3 | or 2"
    assert spans["q1"] == [[0, 12, "correct"], [15, 19, "wrong"], [22, 26, "neutral"]]
    assert spans["q2"] == []  # unrated steps carry no label


@pytest.mark.parametrize(
    ("row", "field", "what"),
    [
        ({"input": "x", "steps": ["a"], "mistake_index": 1}, "mistake_index", "[0, 1)"),
        ({"input": "x", "steps": ["a"], "mistake_index": True}, "mistake_index", "true"),
        ({"input": "x", "steps": "a b", "mistake_index": 0}, "steps", "list"),
        ({"input": "x", "steps": ["a", 3], "mistake_index": 0}, "steps", "[1]"),
        ({"input": "", "steps": ["a"], "mistake_index": 0}, "input", "non-empty"),
        ({"input": "x", "steps": ["a", "b"], "ratings": [1]}, "ratings", "2 ratings"),
        ({"input": "x", "steps": ["a"], "ratings": [2]}, "ratings", "-1, 0, +1"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path: Path, row: dict, field: str, what: str) -> None:
    src = _jsonl(tmp_path / "bad.jsonl", [FIRST[1], row])
    with pytest.raises(DataError) as e:
        list(read_traces([src]))
    assert f"{src}:2" in str(e.value) and field in str(e.value) and what in str(e.value)


def test_no_annotation_and_bad_json_are_named(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "bad.jsonl", [FIRST[0], {"input": "x", "steps": ["a"]}])
    with pytest.raises(DataError, match=r"bad.jsonl:2.*neither 'mistake_index'.*nor 'ratings'"):
        list(read_traces([src]))
    src = _jsonl(tmp_path / "bad2.jsonl", ["{oops"])
    with pytest.raises(DataError, match=r"bad2.jsonl:1.*malformed JSON"):
        list(read_traces([src]))
    with pytest.raises(DataError, match="mistake_index"):
        list(
            read_traces(
                [_jsonl(tmp_path / "r.jsonl", RATED[:1])],
                StepFields(input="question", steps="trace"),
                style="first_mistake",
            )
        )


def test_duplicate_ids_across_files_are_refused(tmp_path: Path) -> None:
    a = _jsonl(tmp_path / "a.jsonl", [dict(FIRST[0], id="x")])
    b = _jsonl(tmp_path / "b.jsonl", [dict(FIRST[1], id="x")])
    with pytest.raises(DataError, match=r"b.jsonl:1.*duplicate id 'x' \(first at .*a.jsonl:1\)"):
        from_steps([a, b], tmp_path / "out", StepFields(id="id"))


def test_heldout_and_limit_per_file(tmp_path: Path) -> None:
    rows = [dict(FIRST[i % 3], input=f"q{i}") for i in range(12)]
    a = _jsonl(tmp_path / "a.jsonl", rows)
    b = _jsonl(tmp_path / "b.jsonl", rows)
    m = from_steps([a, b], tmp_path / "out", split=Split(heldout=2, limit=(3, 5), seed=1))
    held = [json.loads(x) for x in (tmp_path / "out" / "heldout.jsonl").read_text().splitlines()]
    assert len(held) == 4 and all(r["messages"][1]["content"] == "c before d\nso: c d" for r in held)
    pool = set(_spans(tmp_path / "out" / "truth.jsonl"))
    assert not pool & {r["id"] for r in held}  # held-out traces are not in the pool
    assert [m["per_file"][str(p)]["pool"] for p in (a, b)] == [3, 5]
    with pytest.raises(DataError, match="one per --data file"):
        from_steps([a, b], tmp_path / "o2", split=Split(limit=(1, 2, 3)))


def test_output_is_reused_refused_when_stale_and_never_foreign(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "bbm.jsonl", FIRST)
    from_steps([src], tmp_path / "out")
    assert from_steps([src], tmp_path / "out").get("reused") is True
    with pytest.raises(OutputError, match="differs in: sep"):
        from_steps([src], tmp_path / "out", sep="\n\n")
    assert from_steps([src], tmp_path / "out", sep="\n\n", force=True).get("reused") is None
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a tokenclean output"):
        from_steps([src], tmp_path / "foreign")


def test_truth_maps_onto_prepared_tokens(tmp_path: Path, tiny_tok) -> None:
    """The written pair goes through the project's truth rule: the wrong step's first token is decisive."""
    from tokenclean.data.formats import read_records
    from tokenclean.data.labels import encode_conversation
    from tokenclean.groundtruth.user_truth import build_truth, read_truth_file

    from_steps([_jsonl(tmp_path / "bbm.jsonl", FIRST)], tmp_path / "out")
    recs = list(read_records(tmp_path / "out" / "data.jsonl", "auto"))
    prepared = []
    for r in recs:
        enc = encode_conversation(list(r.messages), tiny_tok, "tulu", None)
        prepared.append({"sample_id": r.sample_id, "input_ids": enc.input_ids, "labels": enc.labels})
    tt = build_truth(recs, read_truth_file(tmp_path / "out" / "truth.jsonl"), prepared, tiny_tok, "tulu")
    st = tt.samples["bbm-1"]
    names = tt.names
    got = {names[i] for i in st.labels.tolist() if i >= 0}
    assert {"correct", "mistake", "after"} <= got
    dec = [names[i] for i in st.decisive.tolist() if i >= 0]
    assert dec.count("mistake") == 1
    first_mistake = next(j for j, i in enumerate(st.labels.tolist()) if i >= 0 and names[i] == "mistake")
    assert names[st.decisive[first_mistake]] == "mistake"


def test_cli_from_steps(tmp_path: Path, capsys) -> None:
    from tokenclean.cli import main

    src = _jsonl(tmp_path / "bbm.jsonl", FIRST)
    assert (
        main(["truth", "from-steps", "--data", str(src), "--out", str(tmp_path / "o"), "--sep", "\\n\\n"])
        == 0
    )
    assert "3 samples" in capsys.readouterr().out
    assert _texts(tmp_path / "o" / "data.jsonl")["bbm-2"] == "c before d\n\nso: c d"
    bad = _jsonl(tmp_path / "bad.jsonl", [{"input": "x", "steps": ["a"], "mistake_index": 5}])
    assert main(["truth", "from-steps", "--data", str(bad), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1" in err and "mistake_index" in err
