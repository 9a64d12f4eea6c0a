"""Step-level scores (:mod:`tokenclean.selection.steps`): the vectorised form equals its loop twin on random
tables (NaN, +-inf, ties, prompts, several turns per sample); a hand-made trace cut at its worst step; and
``select --steps`` over a pool cut into record batches keeps what the twin's scores and the plain global
top-K keep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokenclean import IGNORE_INDEX
from tokenclean.errors import ConfigError
from tokenclean.selection import select, select_global
from tokenclean.selection.steps import (
    STEP_MODES,
    separator_vocab,
    step_scores,
    step_scores_naive,
    stepped,
)
from tokenclean.selection.table import TokenTable, load_token_table
from tokenclean.testing.stores import write_prepared, write_score_store

NL = 7  # the "newline" token of these tests
VOCAB = 40


class FakeTokenizer:
    """Just what :func:`separator_vocab` asks of a tokenizer: ids 7 and 9 contain a newline."""

    def __len__(self) -> int:
        return VOCAB

    def get_vocab(self) -> dict[str, int]:
        return {f"t{i}": i for i in range(VOCAB)}

    def batch_decode(self, ids: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        text = {NL: "\n", 9: ".\n\n"}
        return [text.get(i[0], f"w{i[0]}") for i in ids]


ENDS = separator_vocab(FakeTokenizer(), "\n")


def random_table(seed: int) -> TokenTable:
    rng = np.random.default_rng(seed)
    values = np.array([0.0, 1.0, -1.0, 2.5, np.inf, -np.inf, np.nan, 0.25], dtype=np.float32)
    ids, labels, scores, lens = [], [], [], []
    for _ in range(int(rng.integers(1, 12))):
        n = int(rng.integers(0, 30))
        row = rng.choice([NL, 9, 3, 4, 5, 6, 11, 12], n, p=[0.15, 0.05, 0.16, 0.16, 0.16, 0.16, 0.08, 0.08])
        lab = np.where(rng.random(n) < 0.25, IGNORE_INDEX, row)  # prompts, and gaps: several turns
        s = rng.choice(values, n) if seed % 2 else rng.standard_normal(n).astype(np.float32)
        s[rng.random(n) < 0.1] = np.nan
        s[lab == IGNORE_INDEX] = np.nan
        ids.append(row)
        labels.append(lab)
        scores.append(s)
        lens.append(n)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return TokenTable(
        np.array([f"s{i}" for i in range(len(lens))], dtype=object),
        offsets,
        np.concatenate([*ids, np.zeros(0)]).astype(np.int32),
        np.concatenate([*labels, np.zeros(0)]).astype(np.int32),
        np.concatenate([*scores, np.zeros(0)]).astype(np.float32),
    )


def test_separator_vocab_marks_every_token_that_contains_the_separator() -> None:
    assert np.flatnonzero(ENDS).tolist() == [NL, 9]
    assert np.flatnonzero(separator_vocab(FakeTokenizer(), ".")).tolist() == [9]
    with pytest.raises(ConfigError, match="empty"):
        separator_vocab(FakeTokenizer(), "")


@pytest.mark.parametrize("mode", STEP_MODES)
@pytest.mark.parametrize("seed", range(12))
def test_step_scores_equal_the_loop_twin(mode: str, seed: int) -> None:
    t = random_table(seed)
    got, want = step_scores(t, ENDS, mode), step_scores_naive(t, ENDS, mode)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    assert np.isnan(got[t.labels == IGNORE_INDEX]).all()  # prompts stay unscored
    assert np.isnan(got[np.isnan(t.score)]).all()  # unscored tokens stay unscored
    if not np.isinf(t.score).any():  # (a step mean of +inf and -inf is undefined: NaN)
        assert np.array_equal(np.isnan(got), np.isnan(t.score))


def test_a_trace_is_cut_at_its_worst_step_so_far() -> None:
    # prompt | step A (3 tokens, ends with NL) | step B, the mistake (2) | step C (2) | a second turn (2)
    ids = np.array([1, 3, 4, NL, 5, NL, 6, NL, 2, 3, 4], dtype=np.int32)
    labels = np.where(np.arange(11) == 0, IGNORE_INDEX, ids).astype(np.int32)
    labels[8] = IGNORE_INDEX  # the user's second turn
    score = np.array([np.nan, 2, 3, 4, -1, 1, 5, 1, np.nan, 0.5, np.nan], dtype=np.float32)
    t = TokenTable(np.array(["a"], dtype=object), np.array([0, 11]), ids, labels, score)
    mean = step_scores(t, ENDS, "mean")
    np.testing.assert_allclose(mean[[1, 2, 3, 4, 5, 6, 7, 9]], [3, 3, 3, 0, 0, 3, 3, 0.5])
    cut = step_scores(t, ENDS, "cut_mean")
    np.testing.assert_allclose(cut[[1, 2, 3, 4, 5, 6, 7, 9]], [3, 3, 3, 0, 0, 0, 0, 0])
    cmin = step_scores(t, ENDS, "cut_min")
    np.testing.assert_allclose(cmin[[1, 2, 3, 4, 5, 6, 7, 9]], [2, 2, 2, -1, -1, -1, -1, -1])
    assert np.isnan(cut[[0, 8, 10]]).all()


def test_the_running_minimum_restarts_at_each_sample() -> None:
    ids = np.array([3, NL, 4, NL, 3, NL, 4], dtype=np.int32)
    score = np.array([-5, -5, 1, 1, 2, 2, 3], dtype=np.float32)
    t = TokenTable(np.array(["a", "b"], dtype=object), np.array([0, 4, 7]), ids, ids.copy(), score)
    np.testing.assert_allclose(step_scores(t, ENDS, "cut_mean"), [-5, -5, -5, -5, 2, 2, 2])


def pool(root: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    import datasets

    t = random_table(100 + seed)
    rows = [slice(int(a), int(b)) for a, b in zip(t.offsets[:-1], t.offsets[1:])]
    with monkeypatch.context() as m:
        m.setattr(datasets.config, "DEFAULT_MAX_BATCH_SIZE", 2)  # several blocks
        prep = write_prepared(
            root / "prep",
            [t.input_ids[r] for r in rows],
            [t.labels[r] for r in rows],
            sample_ids=list(t.sample_ids),
        )
        m.setattr(datasets.config, "DEFAULT_MAX_BATCH_SIZE", 3)
        return write_score_store(root / "scores", prep, scores=[t.score[r] for r in rows])


@pytest.mark.parametrize("mode", ["cut_mean", "min"])
@pytest.mark.parametrize("seed", range(3))
def test_select_with_steps_keeps_the_global_top_k_of_the_step_scores(
    mode: str, seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    store = pool(tmp_path, seed, monkeypatch)
    table = load_token_table(store)
    if np.isnan(table.response_scores).all():
        pytest.skip("no scored token in this draw")
    stats = select(store, 0.5, "global", tmp_path / "out", steps=mode, tokenizer=FakeTokenizer())
    twin = TokenTable(
        table.sample_ids, table.offsets, table.input_ids, table.labels, step_scores_naive(table, ENDS, mode)
    )
    want = select_global(twin.response_scores, 0.5)
    dropped = np.concatenate(
        [np.asarray(lab) != np.asarray(resp) for lab, resp in _rows(tmp_path / "out", datasets)]
        + [np.zeros(0, dtype=bool)]
    )
    kept_rows = {r["sample_id"] for r in datasets.load_from_disk(str(tmp_path / "out"))}
    assert stats["kept_tokens"] == int(want.sum())
    assert np.array_equal(dropped, _positions(twin, want, kept_rows))
    assert stats["steps"] == {"mode": mode, "separator": "\n"}
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (m["steps"], m["step_separator"]) == (mode, "\n")
    # the same settings reuse the output; token scores are other settings: refused
    again = select(store, 0.5, "global", tmp_path / "out", steps=mode, tokenizer=FakeTokenizer())
    assert again.get("reused")
    with pytest.raises(Exception, match="other"):
        select(store, 0.5, "global", tmp_path / "out", tokenizer=FakeTokenizer())


def _rows(out: Path, datasets: Any) -> list[tuple[list[int], list[int]]]:
    """(labels, response_labels) of each kept row; a response token was dropped where they differ."""
    ds = datasets.load_from_disk(str(out))
    return [(r["labels"], r["response_labels"]) for r in ds]


def _positions(t: TokenTable, keep: np.ndarray, kept_rows: set[str]) -> np.ndarray:
    """The dropped-mask over every position of the rows the cleaned set holds (False off the response)."""
    flat = np.zeros(t.labels.size, dtype=bool)
    flat[t.response_positions[~keep]] = True
    parts = [
        flat[int(a) : int(b)]
        for sid, a, b in zip(t.sample_ids, t.offsets[:-1], t.offsets[1:])
        if sid in kept_rows
    ]
    return np.concatenate([*parts, np.zeros(0, dtype=bool)])


def test_steps_refuses_the_random_level_and_unknown_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = pool(tmp_path, 0, monkeypatch)
    with pytest.raises(ConfigError, match="random level ignores scores"):
        select(store, 0.5, "random", tmp_path / "r", steps="mean", tokenizer=FakeTokenizer())
    with pytest.raises(ConfigError, match="unknown step mode 'avg'"):
        select(store, 0.5, "global", tmp_path / "g", steps="avg", tokenizer=FakeTokenizer())


def test_stepped_blocks_do_not_depend_on_how_the_pool_is_cut() -> None:
    from tokenclean.selection.blocks import Block

    t = random_table(5)
    whole = step_scores(t, ENDS, "cut_min")
    cut = int(t.offsets.size // 2)
    a = TokenTable(t.sample_ids[:cut], t.offsets[: cut + 1], t.input_ids, t.labels, t.score)
    o = t.offsets[cut:] - t.offsets[cut]
    end = int(t.offsets[cut])
    b = TokenTable(t.sample_ids[cut:], o, t.input_ids[end:], t.labels[end:], t.score[end:])
    a = TokenTable(a.sample_ids, a.offsets, t.input_ids[:end], t.labels[:end], t.score[:end])
    blocks = stepped(lambda: iter([Block(0, 0, a), Block(cut, 0, b)]), ENDS, "cut_min")
    got = np.concatenate([blk.table.score for blk in blocks()])
    np.testing.assert_array_equal(got, whole)


def test_a_typed_backslash_n_is_a_newline() -> None:
    from tokenclean.selection.cleaned import step_settings

    base = {"level": "global"}
    assert step_settings(base, "cut_min", "\\n")["step_separator"] == "\n"
    assert np.array_equal(separator_vocab(FakeTokenizer(), "\\n"), ENDS)  # what select searches for
    assert step_settings(base, "cut_min", ". ")["step_separator"] == ". "
    with pytest.raises(ConfigError, match="step_separator: empty"):
        step_settings(base, "mean", "")


def test_cli_steps_needs_the_prepared_tokenizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokenclean.cli import main

    store = pool(tmp_path, 1, monkeypatch)
    rc = main(
        [
            "select",
            "--scores",
            str(store),
            "--ratio",
            "0.5",
            "--steps",
            "cut_mean",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc != 0
    err = capsys.readouterr().err
    assert "manifest.json" in err and "records no tokenizer" in err
    assert not (tmp_path / "o").exists()


def test_separator_vocab_of_a_byte_level_tokenizer(tiny_tok: Any) -> None:
    ends = separator_vocab(tiny_tok, "\n")
    ids = tiny_tok("Step one.\nStep two\n\nend", add_special_tokens=False)["input_ids"]
    marked = [tiny_tok.decode([i]) for i in ids if ends[i]]
    assert marked and all("\n" in t for t in marked)
    assert not any(ends[i] for i in tiny_tok("Step one. Step two", add_special_tokens=False)["input_ids"])


def test_a_tokenizer_other_than_the_prepared_datas_is_refused(
    tmp_path: Path, tiny_tok: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokenclean.errors import DataError

    t = random_table(3)
    rows = [slice(int(a), int(b)) for a, b in zip(t.offsets[:-1], t.offsets[1:])]
    other = {"name": "some-other-tokenizer", "hash": "0" * 64}
    prep = write_prepared(
        tmp_path / "prep", [t.input_ids[r] for r in rows], [t.labels[r] for r in rows], tokenizer=other
    )
    store = write_score_store(tmp_path / "scores", prep, scores=[t.score[r] for r in rows])
    with pytest.raises(DataError, match="not the same tokenizer"):
        select(store, 0.5, "global", tmp_path / "o", steps="cut_min", tokenizer=tiny_tok)
    assert not (tmp_path / "o").exists()
