"""Score store building blocks: atomic chunk files with completion markers, disjoint process shards, and
refusal to mix results of different runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tokenclean.scoring import store


def _chunk(k: int = 0) -> store.Chunk:
    base = np.array([np.nan, 1.0, 2.0, np.nan, np.nan, 0.5], dtype=np.float32)
    return store.Chunk(k, 4 * k, np.array([0, 3, 6]), base, base - 0.25)


def _plan(**kw) -> dict:
    plan = {"dtype": "fp32", "n_samples": 2, **kw}
    return dict(plan, run_key=json.dumps(plan, sort_keys=True))


def test_chunk_roundtrip_and_marker(tmp_path: Path) -> None:
    store.prepare_out(tmp_path / "o", _plan(), force=False)
    assert not store.chunk_done(tmp_path / "o", 0)
    store.write_chunk(tmp_path / "o", _chunk(0), {"tokens": 6})
    assert store.chunk_done(tmp_path / "o", 0)
    got = store.read_chunk(tmp_path / "o", 0)
    np.testing.assert_array_equal(got.base, _chunk().base)
    np.testing.assert_array_equal(got.ref, _chunk().ref)
    assert got.offsets.tolist() == [0, 3, 6] and got.start == 0
    assert not list((tmp_path / "o" / ".work").glob("*.tmp"))  # no temporary left behind


def test_partial_or_corrupt_chunk_is_not_done(tmp_path: Path) -> None:
    out = tmp_path / "o"
    store.prepare_out(out, _plan(), force=False)
    store.write_chunk(out, _chunk(1), {})
    npz, marker = store.chunk_paths(out, 1)
    npz.write_bytes(npz.read_bytes()[:-10])  # torn data file under a valid-looking marker
    assert not store.chunk_done(out, 1)
    store.write_chunk(out, _chunk(1), {})
    marker.unlink()  # killed between data file and marker
    assert not store.chunk_done(out, 1)


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
    store.write_chunk(out, _chunk(0), {})
    with pytest.raises(store.StoreError, match="differs in: dtype"):
        store.prepare_out(out, _plan(dtype="bf16"), force=False)
    store.prepare_out(out, _plan(), force=False)  # same run: resumes, keeps the chunk
    assert store.chunk_done(out, 0)
    store.prepare_out(out, _plan(dtype="bf16"), force=True)
    assert not store.chunk_done(out, 0)


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
    store.write_chunk(out, _chunk(0), {})
    with pytest.raises(store.StoreError, match="do not match"):
        store.assemble(out, ["a", "b"], np.array([3, 4]), "token_cleaning", 1)
    counts = store.assemble(out, ["a", "b"], np.array([3, 3]), "token_cleaning", 1)
    assert counts == {"scored_positions": 3, "total_positions": 6}
    ds = datasets.load_from_disk(str(out))
    assert ds["sample_id"] == ["a", "b"]
    np.testing.assert_allclose(ds[1]["score"], [np.nan, np.nan, 0.25])
