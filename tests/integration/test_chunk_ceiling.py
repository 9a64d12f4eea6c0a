"""No 2**31 ceiling: with the chunk limits lowered (monkeypatched) a tiny pool crosses them, and every stage
(prepare, score, select, train's data loading, reference losses, report) gives the results it gives with
the default limits.

Two limits are lowered: ``tokenclean.columns.MAX_CHUNK_TOKENS`` (values per chunk our writers build, the
guard against int32 list offsets) and ``datasets.config.DEFAULT_MAX_BATCH_SIZE`` (rows per record batch
``save_to_disk`` writes, hence the chunks a reader sees), so every list column on disk and in memory is many
chunks, as a pool past 2**31 tokens is. A reader that concatenated a whole column would overflow there; the
source check below keeps them from doing it at all.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import numpy as np
import pytest

import tokenclean
from tokenclean import columns
from tokenclean.data.prepare import prepare
from tokenclean.methods.online_rho1 import load_reference_losses
from tokenclean.report.runs import View
from tokenclean.report.tokens import load_token_arrays
from tokenclean.scoring.run import score_dataset
from tokenclean.selection import select
from tokenclean.testing import make_tiny_llama
from tokenclean.testing.tiny import tiny_corpus
from tokenclean.training.data import load_train_data

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, tiny_tok) -> tuple[Path, Path]:
    """24 conversations and a second tiny model (another seed) as the reference, so scores differ."""
    d = tmp_path_factory.mktemp("pool")
    lines = tiny_corpus(seed=3, n=48)
    with open(d / "data.jsonl", "w") as f:
        for i in range(24):
            msgs = [
                {"role": "user", "content": lines[2 * i]},
                {"role": "assistant", "content": lines[2 * i + 1]},
            ]
            f.write(json.dumps({"messages": msgs}) + "\n")
    make_tiny_llama(tiny_tok, d / "ref", seed=7)
    return d / "data.jsonl", d / "ref"


def _stages(root: Path, pool: tuple[Path, Path], tok, model_dir: Path) -> dict:
    prep = root / "prep"
    prepare(pool[0], tok, prep, progress=False)
    store = root / "scores"
    score_dataset(
        prep,
        str(model_dir),
        out=store,
        reference=str(pool[1]),
        batch_tokens=200,
        progress=False,
        shard_size=3,
        device="cpu",
    )
    out = {"prep": prep, "store": store}
    for level in ("global", "sample"):
        select(store, 0.4, level, root / level, seed=0)
        out[level] = root / level
    data = load_train_data(root / "global", max_length=64)
    ref = load_reference_losses(str(store), data.sample_ids)
    arrays = load_token_arrays(View("g", None, "r", root, store, root / "global"))
    return {"dirs": out, "train": data, "ref": ref, "arrays": arrays}


def _columns(d: Path) -> dict:
    ds = datasets.load_from_disk(str(d))
    return {c: ds[c] for c in ds.column_names}


def _same(x: object, y: object) -> bool:
    if isinstance(x, list):
        return np.array_equal(
            np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), equal_nan=True
        )
    return x == y


def _chunks(d: Path, col: str) -> int:
    return int(datasets.load_from_disk(str(d)).data.column(col).num_chunks)


def test_every_stage_agrees_when_the_pool_crosses_the_chunk_limit(
    tmp_path: Path, pool: tuple[Path, Path], tiny_tok, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = _stages(tmp_path / "default", pool, tiny_tok, tiny_model_dir)
    monkeypatch.setattr(columns, "MAX_CHUNK_TOKENS", 7)
    monkeypatch.setattr(datasets.config, "DEFAULT_MAX_BATCH_SIZE", 2)
    got = _stages(tmp_path / "small", pool, tiny_tok, tiny_model_dir)
    d = got["dirs"]
    # the limit was crossed: every list column on disk is several chunks
    assert _chunks(d["prep"], "input_ids") > 1 and _chunks(d["store"], "score") > 1
    assert _chunks(d["global"], "labels") > 1
    for name in ("prep", "store", "global", "sample"):
        a, b = _columns(ref["dirs"][name]), _columns(d[name])
        assert a.keys() == b.keys(), name
        for c in a:
            assert len(a[c]) == len(b[c]) and all(map(_same, a[c], b[c])), f"{name}.{c}"
    for x, y in ((ref["train"], got["train"]),):
        assert x.sample_ids == y.sample_ids and np.array_equal(x.n_kept, y.n_kept)
        assert all(np.array_equal(p, q) for p, q in zip(x.input_ids, y.input_ids))
        assert all(np.array_equal(p, q) for p, q in zip(x.labels, y.labels))
    assert all(np.array_equal(p, q, equal_nan=True) for p, q in zip(ref["ref"], got["ref"]))
    ra, ga = ref["arrays"], got["arrays"]
    assert ra is not None and ga is not None
    for f in ("score", "base", "ref", "kept"):
        np.testing.assert_array_equal(getattr(ra, f), getattr(ga, f), err_msg=f)


def test_list_array_chunks_never_exceed_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(columns, "MAX_CHUNK_TOKENS", 10)
    lengths = np.array([3, 4, 0, 12, 2, 5, 5, 1], dtype=np.int64)
    values = np.arange(lengths.sum(), dtype=np.int32)
    arr = columns.list_array(values, lengths)
    assert arr.num_chunks > 1
    for c in arr.chunks:  # a row longer than the limit gets its own chunk
        assert len(c.values) <= 10 or len(c) == 1
    flat, lens = columns.flat_list(arr, np.int32)
    assert np.array_equal(flat, values) and np.array_equal(lens, lengths)
    assert np.array_equal(columns.list_lengths(arr), lengths)
    sliced, slens = columns.flat_list(arr.slice(2, 3), np.int32)  # a slice across chunks
    assert np.array_equal(slens, lengths[2:5]) and np.array_equal(sliced, values[7:21])


def test_no_reader_concatenates_a_whole_list_column() -> None:
    """``combine_chunks`` on a list column overflows past 2**31 values; only tokenclean.columns reads them."""
    src = Path(tokenclean.__file__).parent
    hits = [
        f"{p.relative_to(src)}:{i + 1}"
        for p in sorted(src.rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines())
        if re.search(r"\.combine_chunks\(", line)
    ]
    assert hits == []
