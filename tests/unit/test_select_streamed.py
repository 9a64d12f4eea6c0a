"""``select`` streams: the cut from the streaming selection, the cleaned set written block by block, and the
files equal, byte for byte, to what the in-memory path writes (the whole table, the level's selector,
``Dataset.save_to_disk``), kept here as the naive twin. Randomized pools with ties, NaN, +-inf and -0.0,
cut into several record batches (different in the store and the prepared set) and written into several
data files of several record batches (lowered ``datasets`` limits), with list columns cut into chunks
(lowered :data:`tokenclean.columns.MAX_CHUNK_TOKENS`)."""

from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokenclean import IGNORE_INDEX, columns
from tokenclean.errors import DataError
from tokenclean.outputs import file_digests
from tokenclean.selection import cleaned, levels, select_many
from tokenclean.selection.selector import write_selection
from tokenclean.selection.table import TokenTable, load_token_table
from tokenclean.selection.writer import CleanedSize, cleaned_arrow, cleaned_features
from tokenclean.testing.stores import write_prepared, write_score_store
from tokenclean.utils import atomic_dir, write_json_atomic

VALUES = np.array([0.0, -0.0, 1.0, -1.0, 0.5, 2.5, np.inf, -np.inf, np.nan, 1e-30, -3.25], dtype=np.float32)
CONFIGS = [  # (level, ratio, threshold, weights)
    ("global", 0.3, None, None),
    ("global", 0.71, None, None),
    ("sample", 0.5, None, None),
    ("threshold", None, 0.25, None),
    ("random", 0.4, None, None),
    ("global", 0.6, None, "sigmoid"),
]


def old_write_cleaned(
    out: Path,
    table: TokenTable,
    keep: np.ndarray,
    stats: dict[str, Any],
    manifest: dict[str, Any],
    weights: np.ndarray | None = None,
) -> None:
    """The writer before streaming: one in-memory table saved with ``save_to_disk``."""
    import datasets

    arrow, kept_rows = cleaned_arrow(table, keep, weights)
    info = datasets.DatasetInfo(features=cleaned_features(weights is not None))
    ds = datasets.Dataset(arrow, info=info, fingerprint=manifest["cache_key"][:32])
    n_resp = np.diff(table.response_offsets)
    with atomic_dir(out) as tmp:
        ds.save_to_disk(str(tmp))
        with open(tmp / "dropped.jsonl", "w") as f:
            for i in np.flatnonzero(~kept_rows):
                rec = {"kind": "emptied", "row": int(i), "sample_id": str(table.sample_ids[i])}
                rec["response_tokens"] = int(n_resp[i])
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        write_json_atomic(tmp / "selection_stats.json", stats)
        write_json_atomic(tmp / "manifest.json", dict(manifest, files=file_digests(tmp)))


def in_memory(
    blocks: Any, settings: dict, out: Path, key: str, fields: dict, t0: float, scores_dir: Path
) -> dict[str, Any]:
    """The select job before streaming: the whole table, its checks, the level's selector."""
    table = load_token_table(scores_dir, fields["prepared"]["dir"], settings["column"])
    scores = table.response_scores
    if scores.size and np.isnan(scores).all():
        raise DataError(str(scores_dir), "every one of the response-token scores is NaN")
    return write_selection(levels.selector_for(settings), table, out, key, fields, t0)


def make_pool(root: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A random pool written in record batches of 3 (prepared) and 5 (store) rows."""
    import datasets

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    lens = rng.integers(1, 12, n)
    ids = [rng.integers(3, 500, k).tolist() for k in lens]
    labels, scores = [], []
    tied = seed % 2 == 0
    for row in ids:
        lab = [IGNORE_INDEX if (j == 0 or rng.random() < 0.3) else t for j, t in enumerate(row)]
        s = rng.choice(VALUES, len(row)) if tied else rng.standard_normal(len(row)).astype(np.float32)
        s[rng.random(len(row)) < 0.1] = np.nan
        s[np.asarray(lab) == IGNORE_INDEX] = np.nan
        labels.append(lab)
        scores.append(s)
    names = [f"s{i:03d}" + ("é" * int(rng.integers(0, 3))) for i in range(n)]
    with monkeypatch.context() as m:
        m.setattr(datasets.config, "DEFAULT_MAX_BATCH_SIZE", 3)
        prep = write_prepared(root / "prep", ids, labels, sample_ids=names)
        m.setattr(datasets.config, "DEFAULT_MAX_BATCH_SIZE", 5)
        return write_score_store(root / "scores", prep, scores=scores)


def outputs_equal(a: Path, b: Path) -> None:
    """Every file byte-equal, the manifest equal but its ``seconds``."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name == "manifest.json":
            ma, mb = (json.loads((d / name).read_text()) for d in (a, b))
            ma.pop("seconds"), mb.pop("seconds")
            assert ma == mb
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("seed", range(8))
def test_streamed_select_writes_the_in_memory_files(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    store = make_pool(tmp_path, seed, monkeypatch)
    monkeypatch.setattr(datasets.config, "MAX_SHARD_SIZE", "1KB")  # several data files...
    monkeypatch.setattr(datasets.config, "DEFAULT_MAX_BATCH_SIZE", 4)  # ...of several record batches
    if seed % 4 in (1, 2):  # list columns cut into chunks of at most 13 values (the 2**30 limit, lowered)
        monkeypatch.setattr(columns, "MAX_CHUNK_TOKENS", 13)
    for i, (level, ratio, threshold, weights) in enumerate(CONFIGS):
        kw: dict[str, Any] = {"level": level, "threshold": threshold, "weights": weights, "seed": seed}
        new, old = tmp_path / f"new{i}", tmp_path / f"old{i}"
        try:
            st_new = select_many(store, [ratio], [new], **kw)[0]
        except DataError as e:  # nothing kept: the in-memory path refuses it too
            with monkeypatch.context() as m:
                m.setattr(cleaned, "write_streamed", in_memory)
                m.setattr(cleaned, "write_cleaned", old_write_cleaned)
                with pytest.raises(DataError, match=r"kept no token|NaN"):
                    select_many(store, [ratio], [old], **kw)
            assert "kept no token" in str(e) or "NaN" in str(e)
            continue
        with monkeypatch.context() as m:
            m.setattr(cleaned, "write_streamed", in_memory)
            m.setattr(cleaned, "write_cleaned", old_write_cleaned)
            st_old = select_many(store, [ratio], [old], **kw)[0]
        assert st_new == st_old
        outputs_equal(new, old)
        if i == 0:  # the in-memory selectors (XTF's path) through the new writer: the same files too
            with monkeypatch.context() as m:
                m.setattr(cleaned, "write_streamed", in_memory)
                select_many(store, [ratio], [tmp_path / "mem"], **kw)
            outputs_equal(tmp_path / "mem", old)
        n_files = len(json.loads((new / "state.json").read_text())["_data_files"])
        if st_new["samples_kept"] > 4:
            assert n_files > 1  # the lowered limits did cut the set


def test_cleaned_size_is_the_in_memory_tables_nbytes() -> None:
    rng = np.random.default_rng(0)
    for with_weights in (False, True):
        lens = rng.integers(1, 9, 30)
        off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        t = int(off[-1])
        labels = np.where(rng.random(t) < 0.6, 7, IGNORE_INDEX).astype(np.int32)
        ids = np.array([f"x{i}" + "ü" * (i % 3) for i in range(30)], dtype=object)
        score = np.where(labels != IGNORE_INDEX, rng.standard_normal(t), np.nan).astype(np.float32)
        table = TokenTable(ids, off, np.full(t, 7, np.int32), labels, score)
        keep = rng.random(table.response_positions.size) < 0.5
        w = np.ones(keep.size, np.float32) if with_weights else None
        arrow, kept_rows = cleaned_arrow(table, keep, w)
        size = CleanedSize()
        size.add(table, kept_rows)
        assert size.nbytes(with_weights) == arrow.nbytes


def test_weight_sum_does_not_depend_on_blocks() -> None:
    rng = np.random.default_rng(1)
    w = rng.random(10_001).astype(np.float32) ** 8
    whole = levels.WeightTally()
    whole.add(w)
    parts = levels.WeightTally()
    for piece in np.array_split(w, 7):
        parts.add(piece)
    assert whole.result("sigmoid", 1.0) == parts.result("sigmoid", 1.0)
    exact = sum(Fraction(float(x)) for x in w)  # the exact sum, rounded once
    assert whole.result("sigmoid", 1.0)["sum"] == float(exact)
    assert whole.result("sigmoid", 1.0)["mean"] == float(exact / w.size)


def test_errors_name_the_pool_row_in_a_later_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    ids = [[1, 2, 3]] * 9
    labels = [[IGNORE_INDEX, 2, 3]] * 9
    scores = [[np.nan, 0.5, 1.0]] * 9
    bad = [*scores[:7], [0.1, 0.5, 1.0], scores[8]]  # row 7: a score at the untrained position 0
    with monkeypatch.context() as m:
        m.setattr(datasets.config, "DEFAULT_MAX_BATCH_SIZE", 3)
        prep = write_prepared(tmp_path / "prep", ids, labels)
        store = write_score_store(tmp_path / "s", prep, scores=bad)
    t0 = time.time()
    with pytest.raises(DataError, match=r"\[row 7\].*score at position 0"):
        select_many(store, [0.5], [tmp_path / "o"])
    assert time.time() - t0 < 60
