"""Score store building blocks: atomic chunk files with completion markers, disjoint process shards, and
refusal to mix results of different runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tokenclean.scoring import store

BASE = np.array([np.nan, 1.0, 2.0, np.nan, np.nan, 0.5], dtype=np.float32)


def _part(k: int = 0, phase: str = "base") -> store.Part:
    return store.Part(k, phase, 4 * k, np.array([0, 3, 6]), BASE if phase == "base" else BASE - 0.25)


def _plan(**kw) -> dict:
    plan = {"dtype": "fp32", "n_samples": 2, **kw}
    return dict(plan, run_key=json.dumps(plan, sort_keys=True))


def test_chunk_roundtrip_and_marker(tmp_path: Path) -> None:
    store.prepare_out(tmp_path / "o", _plan(), force=False)
    assert not store.part_done(tmp_path / "o", 0, "base")
    store.write_part(tmp_path / "o", _part(0), {"tokens": 6})
    assert store.part_done(tmp_path / "o", 0, "base") and not store.part_done(tmp_path / "o", 0, "ref")
    got = store.read_part(tmp_path / "o", 0, "base")
    np.testing.assert_array_equal(got.values, BASE)
    assert got.offsets.tolist() == [0, 3, 6] and got.start == 0 and got.phase == "base"
    assert not list((tmp_path / "o" / ".work").glob("*.tmp"))  # no temporary left behind


def test_partial_or_corrupt_chunk_is_not_done(tmp_path: Path) -> None:
    out = tmp_path / "o"
    store.prepare_out(out, _plan(), force=False)
    store.write_part(out, _part(1), {})
    npz, marker = store.part_paths(out, 1, "base")
    npz.write_bytes(npz.read_bytes()[:-10])  # torn data file under a valid-looking marker
    assert not store.part_done(out, 1, "base")
    store.write_part(out, _part(1), {})
    marker.unlink()  # killed between data file and marker
    assert not store.part_done(out, 1, "base")


def test_shards_are_disjoint_contiguous_and_cover_all_chunks() -> None:
    n, size, procs = 103, 10, 3
    parts = [store.my_chunks(n, size, i, procs) for i in range(procs)]
    assert [k for p in parts for k in p] == list(range(store.n_chunks(n, size))) == list(range(11))
    assert all(p == list(range(p[0], p[-1] + 1)) for p in parts)  # each a block of consecutive chunks
    assert store.my_chunks(3, 10, 0, 2) == [] and store.my_chunks(3, 10, 1, 2) == [0]  # 1 chunk, 2 processes
    with pytest.raises(store.StoreError):
        store.my_chunks(n, size, 3, 3)


def test_work_of_a_different_run_is_refused_then_discarded_with_force(tmp_path: Path) -> None:
    out = tmp_path / "o"
    store.prepare_out(out, _plan(), force=False)
    store.write_part(out, _part(0), {})
    with pytest.raises(store.StoreError, match="differs in: dtype"):
        store.prepare_out(out, _plan(dtype="bf16"), force=False)
    store.prepare_out(out, _plan(), force=False)  # same run: resumes, keeps the part
    assert store.part_done(out, 0, "base")
    store.prepare_out(out, _plan(dtype="bf16"), force=True)
    assert not store.part_done(out, 0, "base")


def test_non_store_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    with pytest.raises(store.StoreError, match="not a tokenclean score store"):
        store.prepare_out(tmp_path / "o", _plan(), force=False)
    assert (tmp_path / "o" / "notes.txt").exists()


def test_shard_files_and_index_check_lengths_and_make_one_dataset(tmp_path: Path) -> None:
    import datasets

    out = tmp_path / "o"
    store.prepare_out(out, _plan(), force=False)
    for k in (0, 1):
        store.write_part(out, _part(k, "base"), {})
        store.write_part(out, _part(k, "ref"), {})
    ids, lengths = ["a", "b", "c", "d"], np.array([3, 3, 3, 3])
    with pytest.raises(store.StoreError, match="do not match"):
        store.write_shard(out, 0, 2, ids, np.array([3, 4, 3, 3]), 2, "token_cleaning", with_ref=True)
    assert store.shard_done(out, 0, 2) is None
    with pytest.raises(store.StoreError, match="missing for processes"):
        store.write_index(out, 2, "f" * 16)
    m0 = store.write_shard(out, 0, 2, ids, lengths, 2, "token_cleaning", with_ref=True)
    store.write_shard(out, 1, 2, ids, lengths, 2, "token_cleaning", with_ref=True)
    assert m0["chunks"] == [0] and m0["rows"] == 2 and store.shard_done(out, 0, 2) == m0
    files, counts = store.write_index(out, 2, "f" * 16)
    assert counts == {"scored_positions": 6, "total_positions": 12}
    assert sorted(files) == [
        "data-00000-of-00002.arrow",
        "data-00001-of-00002.arrow",
        "dataset_info.json",
        "state.json",
    ]
    assert files["data-00000-of-00002.arrow"]["sha256"] == m0["sha256"]  # from the writer, not re-read
    ds = datasets.load_from_disk(str(out))
    assert ds["sample_id"] == ids
    np.testing.assert_allclose(ds[1]["score"], [np.nan, np.nan, 0.25])
    np.testing.assert_allclose(ds[3]["base_loss"], [np.nan, np.nan, 0.5])
