"""The prepare stage: output layout, counts, determinism, caching, and the golden hash of a fixture set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import pytest

from tokenclean import IGNORE_INDEX
from tokenclean.data.prepare import prepare
from tokenclean.errors import DataError
from tokenclean.outputs import OutputError

FORMAT_FILES = ["prompt_completion.jsonl", "alpaca.jsonl", "dolly.jsonl", "messages.jsonl", "sharegpt.jsonl"]


def data_files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.arrow"))}


def token_hash(out: Path) -> str:
    ds = datasets.load_from_disk(str(out))
    h = hashlib.sha256()
    for row in ds:
        h.update(json.dumps([row["sample_id"], row["input_ids"], row["labels"]]).encode())
    return h.hexdigest()


def test_output_layout_and_labels(tmp_path: Path, fixtures_dir: Path, tiny_tok) -> None:
    m = prepare(fixtures_dir / "messages.jsonl", tiny_tok, tmp_path / "out", progress=False)
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert set(ds.column_names) >= {"sample_id", "input_ids", "labels", "n_trained", "length", "truncated"}
    row = ds[0]
    assert len(row["input_ids"]) == len(row["labels"]) == row["length"]
    assert all(lab in (IGNORE_INDEX, tid) for lab, tid in zip(row["labels"], row["input_ids"]))
    assert row["n_trained"] == sum(lab != IGNORE_INDEX for lab in row["labels"]) > 0
    assert m["counts"] == {
        "read": 1,
        "written": 1,
        "truncated": 0,
        "dropped_no_trained_tokens": 0,
        "skipped_invalid": 0,
        "special_text_in_content": 0,
    }
    for key in ("input", "tokenizer", "template", "max_length", "cache_key"):
        assert key in m
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["written"] == 1


def test_same_input_gives_byte_identical_data(tmp_path: Path, fixtures_dir: Path, tiny_tok) -> None:
    prepare(fixtures_dir / "sharegpt.jsonl", tiny_tok, tmp_path / "a", progress=False)
    prepare(fixtures_dir / "sharegpt.jsonl", tiny_tok, tmp_path / "b", progress=False)
    a, b = data_files(tmp_path / "a"), data_files(tmp_path / "b")
    assert a and a == b
    assert (tmp_path / "a" / "state.json").read_bytes() == (tmp_path / "b" / "state.json").read_bytes()


def test_cache_reused_and_invalidated(tmp_path: Path, fixtures_dir: Path, tiny_tok) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes((fixtures_dir / "alpaca.jsonl").read_bytes())
    m1 = prepare(src, tiny_tok, tmp_path / "out", progress=False)
    assert not m1.get("reused")
    assert prepare(src, tiny_tok, tmp_path / "out", progress=False)["reused"]
    # other settings: an existing output of other settings is replaced only with force (or by a pipeline)
    with pytest.raises(OutputError, match=r"differs in: max_length\); pass --force"):
        prepare(src, tiny_tok, tmp_path / "out", max_length=64, progress=False)
    assert not prepare(src, tiny_tok, tmp_path / "out", max_length=64, progress=False, force=True).get(
        "reused"
    )
    m = prepare(src, tiny_tok, tmp_path / "out", max_length=64, template="chat", replace_stale=True)
    assert not m.get("reused")
    src.write_text(src.read_text() + json.dumps({"instruction": "x", "output": "y"}) + "\n")
    m = prepare(src, tiny_tok, tmp_path / "out", max_length=64, template="chat", progress=False, force=True)
    assert not m.get("reused") and m["counts"]["written"] == 3


def test_truncation_and_drops_are_counted(tmp_path: Path, tiny_tok) -> None:
    src = tmp_path / "in.jsonl"
    rows = [
        {"prompt": "hello " * 40, "completion": "world"},
        {"prompt": "hi", "completion": "the answer " * 10},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = prepare(src, tiny_tok, tmp_path / "out", max_length=30, progress=False)
    assert m["counts"]["read"] == 2
    assert m["counts"]["truncated"] == 2
    assert m["counts"]["dropped_no_trained_tokens"] == 1
    assert m["counts"]["written"] == 1
    dropped = [json.loads(x) for x in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert dropped[0]["reason"] == "no trained token after truncation" and dropped[0]["location"].endswith(
        ":1"
    )
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert ds[0]["length"] == 30 and ds[0]["truncated"]


def test_skip_invalid_writes_reasons(tmp_path: Path, tiny_tok) -> None:
    src = tmp_path / "in.jsonl"
    rows = [
        {"prompt": "a", "completion": "b"},
        {"prompt": "a", "completion": 3},
        {"prompt": "c", "completion": "d"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"in\.jsonl:2: field 'completion'"):
        prepare(src, tiny_tok, tmp_path / "strict", progress=False)
    assert not (tmp_path / "strict").exists()  # nothing half-written
    m = prepare(src, tiny_tok, tmp_path / "out", skip_invalid=True, progress=False)
    assert m["counts"]["skipped_invalid"] == 1 and m["counts"]["written"] == 2 and m["counts"]["read"] == 3
    skipped = [json.loads(x) for x in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert skipped == [
        {
            "kind": "invalid",
            "location": f"{src}:2",
            "field": "completion",
            "reason": "expected a string, got int",
            "row": rows[1],
        }
    ]


# Golden hash of the tokenised fixture set (every format, tulu template, tiny byte-level tokenizer seed 0).
# It changes only if tokenisation or label building changes: update it deliberately, never to silence a test.
GOLDEN = "7fd9340655b21d7fca399501e64f3662"


def test_golden_hash_of_fixture_set(tmp_path: Path, fixtures_dir: Path, tiny_tok) -> None:
    from tokenclean.data.formats import read_records

    combined = tmp_path / "all.jsonl"
    with open(combined, "w") as f:
        for name in FORMAT_FILES:
            for rec in read_records(fixtures_dir / name):
                f.write(
                    json.dumps({"messages": [{"role": m.role, "content": m.content} for m in rec.messages]})
                    + "\n"
                )
    for tpl in ("tulu", "chat", "plain"):
        prepare(combined, tiny_tok, tmp_path / tpl, template=tpl, progress=False)
    digest = hashlib.sha256("".join(token_hash(tmp_path / t) for t in ("tulu", "chat", "plain")).encode())
    assert digest.hexdigest()[:32] == GOLDEN


def test_smollm2_tokenizer_on_bundled_sample(tmp_path: Path, smollm_tok) -> None:
    m = prepare("builtin:sample", smollm_tok, tmp_path / "out", template="tulu", progress=False)
    assert m["counts"]["written"] == 20
    m2 = prepare("builtin:sample", smollm_tok, tmp_path / "chat", template="chat", progress=False)
    ds = datasets.load_from_disk(str(tmp_path / "chat"))
    row = ds[4]  # a two-turn conversation
    trained = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != IGNORE_INDEX]
    text = smollm_tok.decode(trained)
    assert text == "A spider has eight legs.<|im_end|>An insect has six legs.<|im_end|>"
    assert m2["tokens"]["trained"] > 0


def _rows(out: Path) -> list[dict]:
    return datasets.load_from_disk(str(out)).to_list()


def test_streamed_in_record_batches_and_in_worker_processes(
    tmp_path: Path, fixtures_dir: Path, tiny_tok, monkeypatch
) -> None:
    """Rows leave in record batches of ``BATCH_ROWS`` (memory: one batch, not the input), and two worker
    processes (each its block of records, one data file each) write the same rows, counts and tokens."""
    import pyarrow as pa

    import tokenclean.engines.prepare as ep

    src = tmp_path / "in.jsonl"
    rows = [
        {"instruction": f"question {i} " * (1 + i % 4), "output": f"answer {i} " * (1 + i % 3)}
        for i in range(23)
    ]
    rows.insert(7, {"instruction": "", "output": ""})  # invalid: skipped and recorded by the last task
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one = prepare(src, tiny_tok, tmp_path / "one", skip_invalid=True, progress=False)
    monkeypatch.setattr(ep, "BATCH_ROWS", 5)
    small = prepare(src, tiny_tok, tmp_path / "small", skip_invalid=True, progress=False)
    (f,) = sorted((tmp_path / "small").glob("data-*.arrow"))
    with pa.memory_map(str(f)) as mm:
        batches = [b.num_rows for b in pa.ipc.open_stream(mm)]
    assert batches == [5, 5, 5, 5, 3]  # 23 valid rows, 5 per batch
    two = prepare(src, tiny_tok, tmp_path / "two", skip_invalid=True, progress=False, workers=2)
    assert len(list((tmp_path / "two").glob("data-*.arrow"))) == 2
    assert _rows(tmp_path / "one") == _rows(tmp_path / "small") == _rows(tmp_path / "two")
    for m in (small, two):
        assert m["counts"] == one["counts"] and m["tokens"] == one["tokens"]
        assert m["identity"] == one["identity"]
    assert one["counts"]["skipped_invalid"] == 1 and one["counts"]["written"] == 23
    dropped = [json.loads(x) for x in (tmp_path / "two" / "dropped.jsonl").read_text().splitlines()]
    assert [d["location"].rsplit(":", 1)[1] for d in dropped] == ["8"]
