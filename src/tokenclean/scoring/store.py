"""The score store: crash-safe chunk files while scoring, one data file per process, a small index at the end.

Layout of ``OUT`` while a run is in progress (or was killed)::

    OUT/.work/plan.json               what is being computed (run key); a resume must match it
    OUT/.work/chunk-00012.base.npz    base losses of chunk 12: the samples at [12*S, 13*S) of the global
                                      length order (longest first; S = shard_size), their prepared rows
    OUT/.work/chunk-00012.base.json   completion marker: written after the .npz, holds its SHA-256
    OUT/.work/chunk-00012.ref.npz     reference losses of the same samples (+ .ref.json marker)
    OUT/.work/data-00001-of-00004.arrow   process 1's block of prepared rows (+ shard-00001-of-00004.json)

Every file is written to a temporary name, fsynced and moved into place with ``os.replace``; a part counts
as done only when its marker exists and the hash matches, so a run killed at any moment never reads a
partial file. A restart recomputes exactly the parts without a valid marker, with the same chunk
boundaries and batching, so it ends with bit-identical scores.

Chunk ``k`` belongs to process ``k % num_shards``. When every part is done, process ``i`` of ``n`` writes
its own Arrow data file (:func:`write_shard`): the prepared rows ``[i*N/n, (i+1)*N/n)`` gathered from the
parts, in blocks of at most :data:`MAX_BLOCK_TOKENS` positions (one part in memory at a time besides the
block), hashed once by the process that wrote it (the hash goes into its marker). Then one process (rank 0
under a launcher; without one, the process that finds every part done, under a file lock, after writing the
data files nobody wrote) writes the index: the data files moved into ``OUT`` in row order, ``state.json`` and
``dataset_info.json`` (so ``datasets.load_from_disk`` reads the store as one dataset), and
``OUT/manifest.json`` last, the completion mark, with the size and SHA-256 of every file taken from the
markers, not re-read. No process holds the whole store. ``.work`` is removed at the end. A store written by
an older tokenclean (one data file) is read the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean.columns import list_array
from tokenclean.errors import TokencleanError
from tokenclean.outputs import OWNER_FILE, StaleOutputError, file_digests, verify_files
from tokenclean.scoring.scorers import get_scorer
from tokenclean.utils import CorruptFileError, get_logger, read_json, sha256_file, write_json_atomic

log = get_logger("scoring")

DATASET_FILES = ("dataset_info.json", "state.json")  # plus data-*.arrow


class StoreError(TokencleanError):
    """The output directory cannot be used as a score store (or holds another run's partial results)."""


class StaleStoreError(StoreError, StaleOutputError):
    """The output directory holds (partial) results of another scoring run."""


PHASES = ("base", "ref")


@dataclass(frozen=True)
class Part:
    """One model's losses on a chunk of prepared samples, flat and aligned to positions."""

    k: int  # chunk number
    phase: str  # "base" or "ref"
    rows: np.ndarray  # (n,) int64 prepared rows of the chunk's samples, in the order of ``offsets``
    offsets: np.ndarray  # (n + 1,) int64 offsets into ``values``
    values: np.ndarray  # (sum of lengths,) float32 losses, NaN where not scored


def length_order(lengths: np.ndarray) -> np.ndarray:
    """Prepared rows sorted by length, longest first, ties by row (deterministic). Shape (n,).

    Chunks are runs of this order, so a chunk holds samples of similar length and its batches pad little
    (a sort inside each chunk of prepared order left ~40% padding at large ``batch_tokens``)."""
    lengths = np.asarray(lengths)
    return np.lexsort((np.arange(len(lengths)), -lengths))


def chunk_rows(lengths: np.ndarray, shard_size: int, k: int) -> np.ndarray:
    """Prepared rows of chunk ``k``: ``length_order(lengths)[k * S : (k + 1) * S]``. Shape (<= S,)."""
    return length_order(lengths)[k * shard_size : (k + 1) * shard_size]


def work_dir(out: Path) -> Path:
    return Path(out) / ".work"


def part_paths(out: Path, k: int, phase: str) -> tuple[Path, Path]:
    w = work_dir(out)
    return w / f"chunk-{k:05d}.{phase}.npz", w / f"chunk-{k:05d}.{phase}.json"


def n_chunks(n_samples: int, shard_size: int) -> int:
    return (n_samples + shard_size - 1) // shard_size


def my_chunks(n_samples: int, shard_size: int, shard_index: int, num_shards: int) -> list[int]:
    """The chunks process ``shard_index`` of ``num_shards`` computes (disjoint, together all of them)."""
    if not 0 <= shard_index < num_shards:
        raise StoreError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    return [k for k in range(n_chunks(n_samples, shard_size)) if k % num_shards == shard_index]


def _is_store_file(rel: str) -> bool:
    return rel in DATASET_FILES or (rel.startswith("data-") and rel.endswith(".arrow"))


def complete_manifest(out: Path, plan: dict[str, Any], verify: bool = True) -> dict[str, Any] | None:
    """The manifest of ``out`` when it already holds this run's complete store and its files are the ones
    recorded when it was written (sizes and SHA-256; ``verify`` False: trust a store this job just wrote),
    else None (a damaged store is recomputed)."""
    manifest = Path(out) / "manifest.json"
    if manifest.exists():
        old = read_json(manifest)
        if old.get("stage") == "score" and old.get("run_key") == plan["run_key"]:
            problem = verify_files(out, old.get("files"), only=_is_store_file) if verify else None
            if problem is None:
                return dict(old)
            log.warning("recomputing %s: %s", out, problem)
    return None


def _read_plan(w: Path) -> dict[str, Any]:
    try:
        return dict(read_json(w / "plan.json"))
    except CorruptFileError as e:
        raise StoreError(
            f"{w / 'plan.json'}: damaged ({e}); re-run with --force to discard the partial results in {w}"
        ) from None


def prepare_out(out: Path, plan: dict[str, Any], force: bool, replace_stale: bool = False) -> None:
    """Get ``out`` ready to compute ``plan``: keep ``.work`` chunks of the same plan (resume), refuse those of
    a different plan (unless ``force``, which discards them), refuse a non-empty directory that is not a
    store, and refuse a complete store of a different plan (unless ``force``); an older complete store is
    invalidated before anything new is written. ``replace_stale`` (a pipeline's own stage directory)
    discards partial or complete results of another plan like ``force``."""
    out = Path(out)
    manifest = out / "manifest.json"
    w = work_dir(out)
    if force and w.exists():
        shutil.rmtree(w)
    if (w / "plan.json").exists():
        old_plan = _read_plan(w)
        if old_plan["run_key"] != plan["run_key"]:
            diff = sorted(k for k in plan if old_plan.get(k) != plan.get(k) and k != "run_key")
            if not replace_stale:
                raise StaleStoreError(
                    f"{w} holds partial results of a different scoring run (differs in: {', '.join(diff)}); "
                    "re-run with the same settings to resume, or with --force to discard them"
                )
            log.info("discarding partial results in %s: differ in %s", w, ", ".join(diff))
            shutil.rmtree(w)
    elif out.exists() and any(p.name != OWNER_FILE for p in out.iterdir()) and not manifest.exists():
        raise StoreError(
            f"{out} exists, is not empty and is not a tokenclean score store; choose another --out"
        )
    if manifest.exists():  # an older complete store: invalidate it before anything new is written
        old = read_json(manifest)
        if old.get("run_key") != plan["run_key"] and not (force or replace_stale):
            diff = sorted(k for k in plan if old.get(k) != plan.get(k) and k != "run_key")
            raise StaleStoreError(
                f"--out {out} holds a finished score store of other settings or inputs (differs in: "
                f"{', '.join(diff)}); pass --force to replace it, or choose another --out"
            )
        _remove_store_files(out)
    w.mkdir(parents=True, exist_ok=True)
    if not (w / "plan.json").exists():
        write_json_atomic(w / "plan.json", plan)


def _remove_store_files(out: Path) -> None:
    (out / "manifest.json").unlink(missing_ok=True)  # first: from here on the store reads as incomplete
    for p in out.iterdir():
        if p.name in DATASET_FILES or (p.name.startswith("data-") and p.suffix == ".arrow"):
            p.unlink()


def _fsync_replace(tmp: str, final: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)


def write_part(out: Path, part: Part, info: dict[str, Any]) -> None:
    """Write a part's arrays, then its marker (both atomically). ``info`` goes into the marker."""
    npz, marker = part_paths(out, part.k, part.phase)
    fd, tmp = tempfile.mkstemp(dir=npz.parent, prefix=f".{npz.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, offsets=part.offsets, values=part.values, rows=np.asarray(part.rows, np.int64))
        _fsync_replace(tmp, npz)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    write_json_atomic(
        marker, dict(info, k=part.k, phase=part.phase, n_rows=len(part.rows), sha256=sha256_file(npz))
    )


def part_done(out: Path, k: int, phase: str) -> bool:
    """A part is done when its marker exists and names the current .npz content."""
    npz, marker = part_paths(out, k, phase)
    if not (marker.exists() and npz.exists()):
        return False
    try:
        return bool(read_json(marker)["sha256"] == sha256_file(npz))
    except (ValueError, KeyError, OSError):
        return False


def read_part(out: Path, k: int, phase: str) -> Part:
    npz, _ = part_paths(out, k, phase)
    with np.load(npz) as z:
        return Part(k, phase, z["rows"], z["offsets"], z["values"])


def read_markers(out: Path, total: int, phases: tuple[str, ...]) -> list[dict[str, Any]]:
    return [read_json(part_paths(out, k, ph)[1]) for k in range(total) for ph in phases]


@contextlib.contextmanager
def merge_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on ``OUT/.merge.lock`` (POSIX ``flock``; a no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    path = Path(out) / ".merge.lock"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def score_features() -> Any:
    """The schema of a score store: per sample its id and float32 per-position losses and score."""
    import datasets

    f32 = datasets.Sequence(datasets.Value("float32"))
    return datasets.Features(
        {"sample_id": datasets.Value("string"), "base_loss": f32, "ref_loss": f32, "score": f32}
    )


MAX_BLOCK_TOKENS = 1 << 27  # positions of a data file gathered per pass over the parts (~0.5 GB per column)


def _gather_block(out: Path, lo: int, hi: int, lengths: np.ndarray, total: int, phase: str) -> np.ndarray:
    """Values of prepared rows ``[lo, hi)`` in prepared order from every chunk's part (one part in memory
    at a time). Shape (sum of the rows' lengths,)."""
    want = np.asarray(lengths[lo:hi], np.int64)  # (m,)
    starts = np.concatenate([[0], np.cumsum(want)]).astype(np.int64)  # (m+1,) block offsets
    values = np.full(int(starts[-1]), np.nan, dtype=np.float32)
    seen = np.zeros(hi - lo, dtype=np.int64)
    for k in range(total):
        part = read_part(out, k, phase)
        rows = np.asarray(part.rows, np.int64)  # (n,) chunk order
        got = np.diff(part.offsets)  # (n,)
        if not np.array_equal(got, lengths[rows]):
            raise StoreError(
                f"{work_dir(out)}: {phase} chunk {k} lengths do not match the prepared input_ids"
            )
        inside = np.flatnonzero((rows >= lo) & (rows < hi))
        if inside.size == 0:
            continue
        r = rows[inside] - lo  # (j,) rows in the block
        seen[r] += 1
        n = got[inside]
        src = np.repeat(part.offsets[inside], n) + _within(n)  # (sum n,) positions in the part
        dst = np.repeat(starts[r], n) + _within(n)  # (sum n,) positions in the block
        values[dst] = part.values[src]
    if np.any(seen != 1):
        raise StoreError(f"{work_dir(out)}: {phase} chunks do not hold every prepared sample exactly once")
    return values


def _within(n: np.ndarray) -> np.ndarray:
    """Position of each element within its run, for runs of lengths ``n``: (sum n,) int64."""
    n = np.asarray(n, np.int64)
    return np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)


def _blocks(lengths: np.ndarray, lo: int, hi: int) -> list[tuple[int, int]]:
    """Row blocks of ``[lo, hi)`` holding at most ``MAX_BLOCK_TOKENS`` positions each (at least one row)."""
    out, a = [], lo
    csum = np.concatenate([[0], np.cumsum(np.asarray(lengths[lo:hi], np.int64))])
    while a < hi:
        b = lo + int(np.searchsorted(csum, csum[a - lo] + MAX_BLOCK_TOKENS, side="right")) - 1
        b = min(max(b, a + 1), hi)
        out.append((a, b))
        a = b
    return out


def _block_table(
    out: Path,
    lo: int,
    hi: int,
    sample_ids: Sequence[str],
    lengths: np.ndarray,
    total: int,
    scorer: str,
    with_ref: bool,
) -> tuple[Any, dict[str, int]]:
    """Prepared rows ``[lo, hi)`` of the store as a pyarrow Table, and their position counts."""
    import pyarrow as pa

    base = _gather_block(out, lo, hi, lengths, total, "base")
    ref = _gather_block(out, lo, hi, lengths, total, "ref") if with_ref else np.full_like(base, np.nan)
    mask = ~np.isnan(base)
    score = get_scorer(scorer)(base, ref, mask)  # per position
    n = lengths[lo:hi]
    table = pa.table(
        {
            "sample_id": pa.array(sample_ids[lo:hi], pa.string()),
            "base_loss": list_array(base, n, pa.float32()),
            "ref_loss": list_array(ref, n, pa.float32()),
            "score": list_array(score, n, pa.float32()),
        }
    )
    counts = {"scored_positions": int(mask.sum()), "total_positions": int(base.size)}
    return table.cast(score_features().arrow_schema), counts


def shard_rows(n_samples: int, index: int, num: int) -> tuple[int, int]:
    """The prepared rows ``[lo, hi)`` of process ``index``'s data file (contiguous, in order)."""
    return index * n_samples // num, (index + 1) * n_samples // num


def shard_paths(out: Path, index: int, num: int) -> tuple[Path, Path]:
    """Process ``index`` of ``num``: its data file and its marker, in ``.work``."""
    w = work_dir(out)
    return w / f"data-{index:05d}-of-{num:05d}.arrow", w / f"shard-{index:05d}-of-{num:05d}.json"


def shard_done(out: Path, index: int, num: int) -> dict[str, Any] | None:
    """The marker of process ``index``'s data file when it was written completely (marker after file)."""
    path, marker = shard_paths(out, index, num)
    if not marker.exists():
        return None
    try:
        m = dict(read_json(marker))
    except CorruptFileError:
        return None
    if m.get("file") is not None and not (path.exists() and path.stat().st_size == m["size"]):
        return None
    return m


def write_shard(
    out: Path,
    index: int,
    num: int,
    sample_ids: Sequence[str],
    lengths: np.ndarray,
    total: int,
    scorer: str,
    with_ref: bool,
) -> dict[str, Any]:
    """Write process ``index``'s data file: its contiguous block of prepared rows (:func:`shard_rows`),
    gathered from the ``total`` chunks' parts (every part done) in blocks of at most ``MAX_BLOCK_TOKENS``
    positions; hash it once and write its marker. Returns the marker."""
    from datasets.arrow_writer import ArrowWriter

    path, marker = shard_paths(out, index, num)
    lengths = np.asarray(lengths, np.int64)
    lo, hi = shard_rows(len(sample_ids), index, num)
    counts = {"rows": hi - lo, "scored_positions": 0, "total_positions": 0}
    info: dict[str, Any] = {"index": index, "num": num, "rows_range": [lo, hi], "file": None}
    if hi > lo:
        tmp = path.with_name(f".{path.name}.tmp")
        writer = ArrowWriter(features=score_features(), path=str(tmp))
        try:
            for a, b in _blocks(lengths, lo, hi):
                table, c = _block_table(out, a, b, sample_ids, lengths, total, scorer, with_ref)
                writer.write_table(table)
                counts.update({n: counts[n] + c[n] for n in c})
            writer.finalize()
        finally:
            writer.close()
        _fsync_replace(str(tmp), path)
        info.update(file=path.name, size=path.stat().st_size, sha256=sha256_file(path))
    info.update(counts)
    write_json_atomic(marker, info)
    return info


def wait_for_shards(out: Path, num: int, poll_s: float = 0.5) -> None:
    """Wait (outside any collective) until the ``num`` processes' data files are written."""
    import time

    waited = 0.0
    while any(shard_done(out, i, num) is None for i in range(num)):
        time.sleep(poll_s)
        waited += poll_s
        if waited % 300 < poll_s:
            missing = [i for i in range(num) if shard_done(out, i, num) is None]
            log.info("%s: waiting for the data files of processes %s", out, missing)


def write_index(out: Path, num: int, fingerprint: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Move the ``num`` data files (all written) into ``out`` in row order and write ``state.json`` and
    ``dataset_info.json`` beside them. Returns the file digests (data files from their markers) and the
    summed counts. Reads no data."""
    import datasets

    markers = [shard_done(out, i, num) for i in range(num)]
    if any(m is None for m in markers):
        raise StoreError(
            f"{work_dir(out)}: data files missing for processes {[i for i, m in enumerate(markers) if m is None]}"
        )
    tmp = work_dir(out) / "index"
    shutil.rmtree(tmp, ignore_errors=True)
    features = score_features()
    empty = datasets.Dataset.from_dict({k: [] for k in features}, features=features)
    empty.save_to_disk(str(tmp))  # datasets' own state.json and dataset_info.json, for no rows
    state = read_json(tmp / "state.json")
    names = [m["file"] for m in markers if m and m["file"]]
    state["_data_files"] = [{"filename": n} for n in names]
    state["_fingerprint"] = fingerprint[:16]
    write_json_atomic(tmp / "state.json", state)
    _remove_store_files(out)
    files = {n: {"size": m["size"], "sha256": m["sha256"]} for m in markers if m and (n := m["file"])}
    for n in names:
        os.replace(work_dir(out) / n, out / n)
    for name in ("dataset_info.json", "state.json"):  # state.json last: from here the store reads as whole
        os.replace(tmp / name, out / name)
        files[name] = {"size": (out / name).stat().st_size, "sha256": sha256_file(out / name)}
    counts = {c: sum(int(m[c]) for m in markers if m) for c in ("scored_positions", "total_positions")}
    return files, counts


def finish(out: Path, manifest: dict[str, Any], files: dict[str, Any] | None = None) -> None:
    """Write the manifest (the completion mark, with the size and SHA-256 of every dataset file: ``files``
    as recorded by their writers, else hashed now) and drop the work directory."""
    manifest["files"] = files if files is not None else file_digests(out, only=_is_store_file)
    write_json_atomic(Path(out) / "manifest.json", manifest)
    shutil.rmtree(work_dir(out), ignore_errors=True)
    (Path(out) / ".merge.lock").unlink(missing_ok=True)
