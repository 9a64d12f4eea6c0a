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


def test_assemble_checks_lengths_and_writes_dataset(tmp_path: Path) -> None:
    import datasets

    out = tmp_path / "o"
    store.prepare_out(out, _plan(), force=False)
    store.write_part(out, _part(0, "base"), {})
    store.write_part(out, _part(0, "ref"), {})
    with pytest.raises(store.StoreError, match="do not match"):
        store.assemble(out, ["a", "b"], np.array([3, 4]), "token_cleaning", 1, with_ref=True)
    counts = store.assemble(out, ["a", "b"], np.array([3, 3]), "token_cleaning", 1, with_ref=True)
    assert counts == {"scored_positions": 3, "total_positions": 6}
    ds = datasets.load_from_disk(str(out))
    assert ds["sample_id"] == ["a", "b"]
    np.testing.assert_allclose(ds[1]["score"], [np.nan, np.nan, 0.25])


def test_chunks_in_any_row_order_assemble_in_prepared_order() -> None:
    """Chunks are runs of the global length order; assembly puts every sample back at its prepared row."""
    lengths = np.array([2, 5, 3, 5, 1])
    order = store.length_order(lengths)
    assert order.tolist() == [1, 3, 2, 0, 4]  # longest first, ties by row
    assert store.chunk_rows(lengths, 2, 1).tolist() == [2, 0]
    flat = [np.arange(n, dtype=np.float32) + 10 * r for r, n in enumerate(lengths)]  # sample r: 10r + j
    parts = []
    for k in range(3):
        rows = store.chunk_rows(lengths, 2, k)
        offsets = np.concatenate([[0], np.cumsum(lengths[rows])])
        parts.append(store.Part(k, "base", rows, offsets, np.concatenate([flat[r] for r in rows])))
    got = store._in_prepared_order(Path("o"), parts, lengths, "base")
    np.testing.assert_array_equal(got, np.concatenate(flat))
    with pytest.raises(store.StoreError, match="exactly once"):
        store._in_prepared_order(Path("o"), parts[:2], lengths, "base")
