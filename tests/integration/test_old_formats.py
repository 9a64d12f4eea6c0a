"""Issue 18: artifacts written by an older tokenclean. A score store assembled into one data file by one
process (``Dataset.save_to_disk``, before each rank wrote its own file) and a prepared set written the same
way select and train as the current ones do; a store or prepared set that lacks what tokenclean reads fails
with a message that says how to rebuild it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tokenclean import IGNORE_INDEX
from tokenclean.errors import DataError
from tokenclean.outputs import file_digests
from tokenclean.selection import select
from tokenclean.testing.stores import write_prepared, write_score_store
from tokenclean.training.data import load_train_data


def _pool(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    ids = [rng.integers(3, 90, int(rng.integers(3, 15))).tolist() for _ in range(40)]
    labels = [[IGNORE_INDEX if j < 2 else t for j, t in enumerate(r)] for r in ids]
    prep = write_prepared(root / "prep", ids, labels)
    return prep, write_score_store(root / "scores", prep, seed=1)


def _resave(src: Path, dst: Path, drop: str | None = None) -> Path:
    """``src`` written again as an older tokenclean wrote it: one ``save_to_disk`` data file (optionally
    without a column), its manifest with the new files' digests."""
    import datasets

    ds = datasets.load_from_disk(str(src))
    if drop:
        ds = ds.remove_columns(drop)
    ds.save_to_disk(str(dst))
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["files"] = file_digests(dst)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _rows(out: Path) -> dict:
    import datasets

    return datasets.load_from_disk(str(out))[:]


def test_an_old_single_file_store_and_prepared_set_select_and_train_as_new_ones(tmp_path: Path) -> None:
    prep, store = _pool(tmp_path)
    old_prep = _resave(prep, tmp_path / "old_prep")
    old_store = _resave(store, tmp_path / "old_store")
    assert len(list(old_store.glob("data-*.arrow"))) == 1
    new = select(store, 0.5, "global", tmp_path / "new", prepared_dir=prep)
    old = select(old_store, 0.5, "global", tmp_path / "old", prepared_dir=old_prep)
    for k in ("kept_tokens", "total_response_tokens", "samples_kept", "kept_fraction_histogram"):
        assert old[k] == new[k]
    a, b = _rows(tmp_path / "new"), _rows(tmp_path / "old")
    assert a["labels"] == b["labels"] and a["sample_id"] == b["sample_id"]
    d_old, d_new = load_train_data(old_prep, 64), load_train_data(prep, 64)
    assert [x.tolist() for x in d_old.labels] == [x.tolist() for x in d_new.labels]


@pytest.mark.parametrize(
    ("which", "column", "hint"),
    [("store", "score", "tokenclean score"), ("prep", "labels", "tokenclean prepare")],
)
def test_an_unreadable_store_or_prepared_set_says_how_to_rebuild(
    tmp_path: Path, which: str, column: str, hint: str
) -> None:
    prep, store = _pool(tmp_path)
    if which == "store":
        store = _resave(store, tmp_path / "old_store", drop=column)
    else:
        prep = _resave(prep, tmp_path / "old_prep", drop=column)
    with pytest.raises(DataError, match=f"missing column '{column}'.*rebuild.*{hint}.*--force"):
        select(store, 0.5, "global", tmp_path / "o", prepared_dir=prep)
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
