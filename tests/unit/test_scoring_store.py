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
    return store.Part(
        k, phase, np.arange(2 * k, 2 * k + 2), np.array([0, 3, 6]), BASE if phase == "base" else BASE - 0.25
    )


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
    assert got.offsets.tolist() == [0, 3, 6] and got.rows.tolist() == [0, 1] and got.phase == "base"
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


def test_shards_are_disjoint_and_cover_all_chunks() -> None:
    n, size, procs = 103, 10, 3
    parts = [store.my_chunks(n, size, i, procs) for i in range(procs)]
    flat = sorted(k for p in parts for k in p)
    assert flat == list(range(store.n_chunks(n, size))) == list(range(11))
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


def _length_ordered_parts(out: Path, lengths: np.ndarray, size: int) -> list[np.ndarray]:
    """Write base and ref parts of chunks of ``size`` in the global length order; sample r holds 10r + j."""
    flat = [np.arange(n, dtype=np.float32) + 10 * r for r, n in enumerate(lengths)]
    flat = [
        np.where(np.arange(n) == 0, np.float32(np.nan), f) for f, n in zip(flat, lengths)
    ]  # pos 0 unscored
    for k in range(store.n_chunks(len(lengths), size)):
        rows = store.chunk_rows(lengths, size, k)
        offsets = np.concatenate([[0], np.cumsum(lengths[rows])])
        values = np.concatenate([flat[r] for r in rows])
        store.write_part(out, store.Part(k, "base", rows, offsets, values), {})
        store.write_part(out, store.Part(k, "ref", rows, offsets, values - 0.25), {})
    return flat


def test_data_files_and_index_make_one_dataset_in_prepared_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks are runs of the global length order; each process's data file holds its block of prepared
    rows gathered from every chunk (in blocks, here of <= 8 positions), and the index joins the files."""
    import datasets

    out = tmp_path / "o"
    store.prepare_out(out, _plan(), force=False)
    lengths = np.array([2, 5, 3, 5, 1, 4, 2])
    assert store.length_order(lengths).tolist() == [1, 3, 5, 2, 0, 6, 4]  # longest first, ties by row
    flat = _length_ordered_parts(out, lengths, 2)
    ids, total = [f"s{i}" for i in range(7)], store.n_chunks(7, 2)
    monkeypatch.setattr(store, "MAX_BLOCK_TOKENS", 8)
    with pytest.raises(store.StoreError, match="do not match"):
        store.write_shard(out, 0, 2, ids, lengths + 1, total, "token_cleaning", with_ref=True)
    assert store.shard_done(out, 0, 2) is None
    with pytest.raises(store.StoreError, match="missing for processes"):
        store.write_index(out, 2, "f" * 16)
    m0 = store.write_shard(out, 0, 2, ids, lengths, total, "token_cleaning", with_ref=True)
    store.write_shard(out, 1, 2, ids, lengths, total, "token_cleaning", with_ref=True)
    assert m0["rows_range"] == [0, 3] and m0["rows"] == 3 and store.shard_done(out, 0, 2) == m0
    files, counts = store.write_index(out, 2, "f" * 16)
    assert counts == {"scored_positions": int(lengths.sum()) - 7, "total_positions": int(lengths.sum())}
    assert sorted(files) == [
        "data-00000-of-00002.arrow",
        "data-00001-of-00002.arrow",
        "dataset_info.json",
        "state.json",
    ]
    assert files["data-00000-of-00002.arrow"]["sha256"] == m0["sha256"]  # from the writer, not re-read
    ds = datasets.load_from_disk(str(out))
    assert ds["sample_id"] == ids
    for r in range(7):
        np.testing.assert_array_equal(np.asarray(ds[r]["base_loss"], np.float32), flat[r])
        np.testing.assert_allclose(
            np.asarray(ds[r]["score"], np.float32), np.where(np.isnan(flat[r]), np.nan, 0.25)
        )


def test_a_missing_chunk_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "o"
    store.prepare_out(out, _plan(), force=False)
    lengths = np.array([2, 5, 3])
    _length_ordered_parts(out, lengths, 2)
    with pytest.raises(store.StoreError, match="exactly once"):
        store.write_shard(out, 0, 1, ["a", "b", "c"], lengths, 1, "token_cleaning", with_ref=True)
