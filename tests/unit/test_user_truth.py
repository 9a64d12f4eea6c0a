"""User-supplied token truth: span checks, the mapping rule on multi-turn data, decisive tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tokenclean.data.formats import Message
from tokenclean.data.labels import encode_conversation, tokenize_rendered
from tokenclean.data.templates import render
from tokenclean.errors import DataError
from tokenclean.groundtruth.user_truth import (
    UNLABELLED,
    Span,
    build_truth,
    map_spans,
    parse_spans,
    read_truth_file,
)

CONV = [
    Message("user", "hello there"),
    Message("assistant", "Paris is big. Rome is old."),
    Message("user", "and now"),
    Message("assistant", "Berlin is cold."),
]


def test_map_spans_majority_rule_by_hand() -> None:
    # rendered text "xxABCDEFyy": content = [2, 8); three tokens [2,5) [5,7) [7,10)
    offsets = [(0, 2), (2, 5), (5, 7), (7, 10)]
    labels = [-100, 1, 1, 1]
    spans = [Span(0, 0, 2, "a", 0), Span(0, 2, 4, "b", 3)]  # "AB" -> a, "CD" -> b (decisive at D)
    names = {UNLABELLED: 0, "a": 1, "b": 2}
    lab, dec = map_spans(offsets, labels, [(2, 8)], spans, names)
    # token 1 = "ABC": a covers 2, b covers 1 -> a; token 2 = "DE": b 1, unlabelled 1 -> tie to the span -> b;
    # token 3 = "F" + 2 template chars: unlabelled 3 -> unlabelled; prompt token -> -1
    assert lab.tolist() == [-1, 1, 2, 0]
    assert dec.tolist() == [-1, 1, 2, -1]  # a decided at "A" (token 1), b at "D" (token 2)


def _write(tmp_path: Path, rows: list[dict]) -> Path:
    p = tmp_path / "truth.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_multi_turn_spans_land_on_the_right_tokens(tmp_path: Path, tiny_tok) -> None:
    from tokenclean.data.formats import Record

    enc = encode_conversation(CONV, tiny_tok, "tulu", None)
    prepared = [{"sample_id": "s1", "input_ids": enc.input_ids, "labels": enc.labels}]
    spans = [[0, 0, 5, "informative"], [0, 14, 18, "hallucination"], [1, 0, 6, "informative"]]
    ann = read_truth_file(_write(tmp_path, [{"id": "s1", "spans": spans, "decisive": [[0, 15]]}]))
    tt = build_truth([Record("s1", "x:1", tuple(CONV))], ann, prepared, tiny_tok, "tulu")
    st = tt.samples["s1"]
    r = render(CONV, tiny_tok, "tulu")
    _, offsets = tokenize_rendered(r, tiny_tok)
    text = {name: "" for name in tt.names}
    for j, k in enumerate(st.labels):
        if k >= 0:
            a, b = offsets[j]
            text[tt.names[k]] += r.text[a:b]
    assert text["informative"].replace(" ", "") == "ParisBerlin"
    assert text["hallucination"].strip() == "Rome"
    resp = np.asarray(enc.labels) != -100
    assert ((st.labels >= 0) == resp).all()  # every response token is labelled, nothing else
    hall = tt.names.index("hallucination")
    a, b = offsets[int(np.flatnonzero(st.decisive == hall)[0])]  # its decisive token holds "o" of Rome
    assert a <= r.contents[0][0] + 15 < b


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": "s1", "spans": [[0, 0, 5, "x"], [0, 3, 8, "y"]]}, "overlap"),
        ({"id": "s1", "spans": [[1, 0, 99, "x"]]}, "exceeds assistant message 1"),
        ({"id": "s1", "spans": [[2, 0, 1, "x"]]}, "outside the 2 assistant message"),
        ({"id": "s1", "spans": [[0, 5, "x"]]}, "write [turn, start, end, label]"),
        ({"id": "s1", "spans": [[0, 4, 2, "x"]]}, "start <= end"),
        ({"id": "nope", "spans": []}, "not in the data"),
    ],
)
def test_bad_spans_name_file_line_id_and_span(tmp_path: Path, tiny_tok, row: dict, message: str) -> None:
    from tokenclean.data.formats import Record

    enc = encode_conversation(CONV, tiny_tok, "tulu", None)
    prepared = [{"sample_id": "s1", "input_ids": enc.input_ids, "labels": enc.labels}]
    path = _write(tmp_path, [{"id": "other", "spans": []}, row])
    records = [Record("s1", "x:1", tuple(CONV)), Record("other", "x:2", tuple(CONV))]
    with pytest.raises(DataError) as e:
        build_truth(records, read_truth_file(path), prepared, tiny_tok, "tulu")
    assert message in str(e.value) and f"{path}:2" in str(e.value)


def test_parse_spans_decisive_must_fall_inside_a_span() -> None:
    with pytest.raises(DataError, match="decisive"):
        parse_spans([[0, 3, "x"]], [5], 1, "f:1")
    assert parse_spans([[0, 3, "x"]], [2], 1, "f:1")[0].decisive == 2


def test_generator_truth_decisive_is_where_the_wrong_fact_departs(tmp_path: Path, tiny_tok) -> None:
    import datasets

    from tokenclean.data.prepare import prepare
    from tokenclean.groundtruth.generator import PoolConfig, departure, generate_pool
    from tokenclean.groundtruth.truth import pool_truth

    assert departure("Qarbel", "Qaristan") == 3 and departure("Zen", "Kal") == 0
    generate_pool(PoolConfig(n_facts=6, repeats=4, noise_rate=1.0, wrong_fact_share=1.0, seed=2), tmp_path)
    facts = json.loads((tmp_path / "facts.json").read_text())["facts"]
    prepare(tmp_path / "pool.jsonl", tiny_tok, tmp_path / "prep", progress=False)
    tt = pool_truth(tmp_path / "pool.jsonl", tmp_path / "prep", tiny_tok)
    ds = datasets.load_from_disk(str(tmp_path / "prep"))
    rows = {json.loads(x)["id"]: json.loads(x) for x in (tmp_path / "pool.jsonl").read_text().splitlines()}
    for ex in ds:
        row, st = rows[ex["sample_id"]], tt.samples[ex["sample_id"]]
        s, d = next(t[0] for t in row["truth"] if t[2] == "noise"), row["decisive"][0]
        content = row["messages"][1]["content"]
        true = facts[row["fact"]]["object"]
        assert content[s:d] == true[: d - s] and content[d] != true[d - s]  # shared prefix, then departs
        noise_id = tt.names.index("noise:wrong_fact")
        (j,) = np.flatnonzero(st.decisive == noise_id)  # one decisive token per wrong fact
        assert j == _token_at(ex, tiny_tok, row, d)


def _token_at(ex: dict, tok, row: dict, char: int) -> int:
    """The position of the prepared token holding content character ``char`` (tulu, single turn)."""
    msgs = [Message(m["role"], m["content"]) for m in row["messages"]]
    r = render(msgs, tok, "tulu")
    _, offsets = tokenize_rendered(r, tok)
    pos = r.contents[0][0] + char
    return next(j for j, (a, b) in enumerate(offsets) if a <= pos < b and ex["labels"][j] != -100)
