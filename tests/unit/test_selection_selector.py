"""The offline selector base: a subclass gives ``keep(table)``, the base writes the cleaned set once; the one
top-k rounding rule (``n_keep``) shared by the offline levels and the online policies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from tokenclean import IGNORE_INDEX
from tokenclean.errors import DataError
from tokenclean.methods.sstoken import top_per_sample
from tokenclean.selection import select
from tokenclean.selection.levels import GlobalTopK, SoftWeights, selector_for, settings
from tokenclean.selection.masks import n_keep, select_global
from tokenclean.selection.selector import Selection, Selector, write_selection
from tokenclean.selection.table import load_token_table
from tokenclean.testing.stores import write_prepared, write_score_store
from tokenclean.training.policies import top_k_over_ranks

X = IGNORE_INDEX
IDS = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12]]
LABELS = [[X, X, 3, 4, 5], [X, 7, 8], [X, X, X, 12]]
SCORES = [[np.nan, np.nan, 3.0, 1.0, 2.0], [np.nan, 0.5, 0.4], [np.nan, np.nan, np.nan, -1.0]]


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    prep = write_prepared(tmp_path / "prep", IDS, LABELS)
    return write_score_store(tmp_path / "scores", prep, scores=SCORES)


class EveryOther(Selector):
    """A new method in a few lines: keep every other response token, weighted."""

    level: ClassVar[str] = "every_other"

    def keep(self, table):  # type: ignore[no-untyped-def]
        keep = np.arange(table.response_scores.size) % 2 == 0
        return Selection(
            keep=keep, weights=keep.astype(np.float32) / 2, record={"note": {"n": int(keep.sum())}}
        )


def test_a_subclass_gets_the_cleaned_set_stats_dropped_and_manifest(store: Path, tmp_path: Path) -> None:
    import datasets

    table = load_token_table(store)
    out = tmp_path / "every_other"
    stats = write_selection(EveryOther(), table, out, "k" * 64, {"level": "every_other"}, 0.0)
    assert stats["kept_tokens"] == 3 and stats["total_response_tokens"] == 6 and stats["note"] == {"n": 3}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "select" and manifest["note"] == {"n": 3}
    assert manifest["counts"]["kept_tokens"] == 3 and set(manifest["files"]) >= {"dropped.jsonl"}
    ds = datasets.load_from_disk(str(out))
    assert ds["labels"] == [[X, X, 3, X, 5], [X, X, 8]]  # response tokens 0, 2, 4 kept
    assert ds["weights"][0] == [0.0, 0.0, 0.5, 0.0, 0.5]
    assert [json.loads(line)["sample_id"] for line in (out / "dropped.jsonl").read_text().splitlines()] == [
        "s000002"
    ]


def test_an_empty_selection_is_refused_by_the_base(store: Path, tmp_path: Path) -> None:
    class Nothing(Selector):
        level: ClassVar[str] = "nothing"

        def keep(self, table):  # type: ignore[no-untyped-def]
            return np.zeros(table.response_scores.size, dtype=bool)

    with pytest.raises(DataError, match="kept no token"):
        write_selection(Nothing(), load_token_table(store), tmp_path / "o", "k" * 64, {}, 0.0)


def test_the_levels_are_the_selectors_of_their_settings(store: Path, tmp_path: Path) -> None:
    table = load_token_table(store)
    assert type(selector_for(settings("global", 0.5, 0, None, "score"))) is GlobalTopK
    soft = selector_for(dict(settings("global", 0.5, 0, None, "score"), weights="sigmoid", temperature=2.0))
    assert isinstance(soft, SoftWeights) and soft.temperature == 2.0
    got = GlobalTopK(ratio=0.5).keep(table)
    assert np.array_equal(got, select_global(table.response_scores, 0.5))
    stats = select(store, 0.5, "global", tmp_path / "g")
    assert stats["kept_tokens"] == 3


def test_n_keep_is_exact_and_the_online_policies_use_it() -> None:
    assert n_keep(0.29, 100) == 29  # float arithmetic: floor(0.29 * 100) == 28
    assert n_keep(0.7, 10) == 7 and n_keep(1.0, 3) == 3 and n_keep(0.0, 5) == 0
    score = np.arange(100, dtype=np.float64)
    rows, pos = np.zeros(100, dtype=np.int64), np.arange(100)
    assert int(top_per_sample(score, rows, pos, 0.29).sum()) == 29
    keys = np.stack([rows, pos], axis=1)
    kept = top_k_over_ranks(score, keys, 0.29, lambda a: [a])
    assert int(kept.sum()) == 29 and kept[71:].all()
