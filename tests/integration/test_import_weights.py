"""``tokenclean import-weights``: axolotl-style message weights, span masks and per-token weight columns become
tokenclean labels/weights on the prepared tokens (through the truth-span mapping of ``data.truth``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokenclean import IGNORE_INDEX
from tokenclean.errors import DataError
from tokenclean.interop.imports import import_weights

ROWS = [
    {"id": "a", "messages": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris.", "weight": 0},
        {"role": "user", "content": "And of Spain?"},
        {"role": "assistant", "content": "Madrid is the capital of Spain."}]},
    {"id": "b", "messages": [
        {"role": "user", "content": "Give me three primary colours."},
        {"role": "assistant", "content": "Red, yellow and blue.", "weight": 0.5}]},
    {"id": "c", "messages": [
        {"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello there."}]},
]  # fmt: skip


def runs(labels: list[int]) -> list[list[int]]:
    """Positions of each contiguous run of trained labels (one per assistant turn)."""
    out: list[list[int]] = []
    for j, x in enumerate(labels):
        if x == IGNORE_INDEX:
            continue
        if out and out[-1][-1] == j - 1:
            out[-1].append(j)
        else:
            out.append([j])
    return out


def prepared(
    tmp_path: Path, tok: Any, tok_dir: Path, rows: list[dict[str, Any]], name: str
) -> tuple[Path, Path]:
    from tokenclean.data.prepare import prepare

    src = tmp_path / f"{name}.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(src, tok, tmp_path / f"{name}-prep", template="tulu", max_length=256, tokenizer_name=str(tok_dir))
    return src, tmp_path / f"{name}-prep"


def by_id(path: Path) -> dict[str, dict[str, Any]]:
    import datasets

    return {r["sample_id"]: r for r in datasets.load_from_disk(str(path))}


def test_message_weights(tmp_path: Path, tiny_tok: Any, tiny_tok_dir: Path) -> None:
    from tokenclean.training.data import load_train_data

    src, prep = prepared(tmp_path, tiny_tok, tiny_tok_dir, ROWS, "msg")
    m = import_weights(prep, "messages", src, tmp_path / "out", tokenizer=tiny_tok)
    before, after = by_id(prep), by_id(tmp_path / "out")
    first, second = runs(before["a"]["labels"])
    assert all(after["a"]["labels"][j] == IGNORE_INDEX for j in first)  # weight 0: content and its EOS
    assert [after["a"]["labels"][j] for j in second] == [before["a"]["labels"][j] for j in second]
    wb = np.asarray(after["b"]["weights"])
    resp = np.asarray(before["b"]["labels"]) != IGNORE_INDEX
    assert (wb[resp] == 0.5).all() and (wb[~resp] == 0).all()
    assert after["c"]["labels"] == before["c"]["labels"] and set(after["c"]["weights"]) <= {0.0, 1.0}
    assert m["counts"]["samples_weighted"] == 2 and m["counts"]["tokens_zero_weight"] == len(first)
    assert load_train_data(tmp_path / "out", 256).weights is not None  # trains with --policy weights
    sharegpt = [
        {
            "id": "s",
            "conversations": [
                {"from": "human", "value": "Hi."},
                {"from": "gpt", "value": "Hello.", "weight": 0},
            ],
        }
    ]
    src, prep = prepared(
        tmp_path,
        tiny_tok,
        tiny_tok_dir,
        [
            *sharegpt,
            {
                "id": "t",
                "conversations": [{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Yes."}],
            },
        ],
        "sg",
    )
    import_weights(prep, "messages", src, tmp_path / "sg-out", tokenizer=tiny_tok)
    assert set(by_id(tmp_path / "sg-out")) == {"t"}  # "s" has no trained token left: dropped


def test_span_masks_exclude_the_spanned_tokens(tmp_path: Path, tiny_tok: Any, tiny_tok_dir: Path) -> None:
    _, prep = prepared(tmp_path, tiny_tok, tiny_tok_dir, [ROWS[0], ROWS[2]], "span")
    spans = tmp_path / "spans.jsonl"
    spans.write_text(json.dumps({"id": "a", "spans": [[0, 4, 11, "exclude"], [1, 0, 6, "0.25"]]}) + "\n")
    import_weights(prep, "spans", spans, tmp_path / "out", tokenizer=tiny_tok)
    before, after = by_id(prep), by_id(tmp_path / "out")
    gone = [j for j, (x, y) in enumerate(zip(before["a"]["labels"], after["a"]["labels"])) if x != y]
    assert tiny_tok.decode([before["a"]["input_ids"][j] for j in gone]).strip() == "capital"
    w = np.asarray(after["a"]["weights"])
    second = runs(before["a"]["labels"])[1]
    assert tiny_tok.decode([before["a"]["input_ids"][j] for j in second if w[j] == 0.25]).strip() == "Madrid"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "spans": [[0, 0, 3, "maybe"]]}) + "\n")
    with pytest.raises(DataError, match="expected exclude, include or a weight"):
        import_weights(prep, "spans", bad, tmp_path / "out2", tokenizer=tiny_tok)


def test_token_weight_columns(tmp_path: Path, tiny_tok: Any, tiny_tok_dir: Path) -> None:
    _, prep = prepared(tmp_path, tiny_tok, tiny_tok_dir, [ROWS[2]], "tok")
    n = len(by_id(prep)["c"]["input_ids"])
    f = tmp_path / "w.jsonl"
    f.write_text(json.dumps({"id": "c", "weights": [0.25] * n}) + "\n")
    m = import_weights(prep, "tokens", f, tmp_path / "out")
    row, resp = by_id(tmp_path / "out")["c"], np.asarray(by_id(prep)["c"]["labels"]) != IGNORE_INDEX
    assert (np.asarray(row["weights"])[resp] == 0.25).all() and m["counts"]["prompt_weights_ignored"] == (
        ~resp
    ).sum()
    f.write_text(json.dumps({"id": "c", "weights": [0.25] * (n - 1)}) + "\n")
    with pytest.raises(DataError, match=r"w\.jsonl:1: field 'weights'"):
        import_weights(prep, "tokens", f, tmp_path / "out3")


def test_bad_records_are_named_by_file_line_and_field(
    tmp_path: Path, tiny_tok: Any, tiny_tok_dir: Path
) -> None:
    src, prep = prepared(tmp_path, tiny_tok, tiny_tok_dir, ROWS, "bad")
    rows = [dict(r) for r in ROWS]
    rows[1] = {"id": "b", "messages": [dict(m) for m in ROWS[1]["messages"]]}
    rows[1]["messages"][1]["weight"] = "heavy"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'messages\[1\]\.weight': expected a finite"):
        import_weights(prep, "messages", src, tmp_path / "out", tokenizer=tiny_tok)
    src.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"id": "x", "text": "no messages"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'messages'"):
        import_weights(prep, "messages", src, tmp_path / "out", tokenizer=tiny_tok)
    n = len(by_id(prep)["c"]["input_ids"])
    f = tmp_path / "w.jsonl"
    good = json.dumps({"id": "c", "weights": [1.0] * n}) + "\n"
    f.write_text(good + good)
    with pytest.raises(
        DataError, match=r"w\.jsonl:2: field 'id': duplicate id 'c' \(first at .*w\.jsonl:1\)"
    ):
        import_weights(prep, "tokens", f, tmp_path / "out")
    f.write_text(json.dumps({"id": "c", "weights": [-1.0] * n}) + "\n")
    with pytest.raises(DataError, match=r"w\.jsonl:1: field 'weights\[0\]': expected a finite number >= 0"):
        import_weights(prep, "tokens", f, tmp_path / "out")
    f.write_text(json.dumps({"id": "zz", "weights": [1.0] * n}) + "\n")
    with pytest.raises(DataError, match=r"w\.jsonl:1: .*not in the prepared set"):
        import_weights(prep, "tokens", f, tmp_path / "out")
