"""``tokenclean split``: a held-out file and seeded parts, rows unchanged, the run's own cut of its pool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenclean.cli import main
from tokenclean.data.split import split_file, split_indices
from tokenclean.outputs import OutputError


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_split_holds_out_and_cuts_parts_like_the_run(tmp_path: Path) -> None:
    src = tmp_path / "my.jsonl"
    rows = [
        {"id": f"s{i}", "messages": [{"role": "user", "content": [{"type": "text", "text": f"q{i}"}]}]}
        for i in range(23)
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert (
        main(["split", "--data", str(src), "--heldout", "0.1", "--parts", "3", "--out", str(tmp_path / "s")])
        == 0
    )
    out = tmp_path / "s"
    held, train = _rows(out / "heldout.jsonl"), _rows(out / "train.jsonl")
    assert len(held) == 2 and len(train) == 21
    assert sorted(r["id"] for r in held + train) == sorted(r["id"] for r in rows)  # disjoint, complete
    assert all(r in rows for r in held + train)  # records copied unchanged (content parts too)
    parts = [_rows(out / f"part_{i}.jsonl") for i in range(3)]
    expected = [[train[j] for j in ix] for ix in split_indices(len(train), 3, 42)]  # tokenclean run's cut
    assert parts == expected and [len(p) for p in parts] == [7, 7, 7]
    again = split_file(str(src), tmp_path / "s2", heldout=0.1, parts=3)
    assert again["files"] == json.loads((out / "split.json").read_text())["files"]
    assert (tmp_path / "s2" / "part_0.jsonl").read_bytes() == (out / "part_0.jsonl").read_bytes()


def test_split_refuses_a_foreign_output(tmp_path: Path) -> None:
    src = tmp_path / "my.jsonl"
    src.write_text('{"prompt": "a", "completion": "b"}\n' * 4)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match="not a tokenclean output, not a split output"):
        split_file(str(src), tmp_path / "mine", parts=2)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(OutputError, match="is the input"):
        split_file(str(src), src, parts=2)
