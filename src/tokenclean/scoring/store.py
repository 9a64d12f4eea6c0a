"""The score store: crash-safe chunk files while scoring, one ``load_from_disk`` dataset at the end.

Layout of ``OUT`` while a run is in progress (or was killed)::

    OUT/.work/plan.json               what is being computed (run key); a resume must match it
    OUT/.work/chunk-00012.base.npz    base losses of chunk 12: the samples at [12*S, 13*S) of the global
                                      length order (longest first; S = shard_size), their prepared rows
    OUT/.work/chunk-00012.base.json   completion marker: written after the .npz, holds its SHA-256
    OUT/.work/chunk-00012.ref.npz     reference losses of the same samples (+ .ref.json marker)

Every file is written to a temporary name, fsynced and moved into place with ``os.replace``; a part counts
as done only when its marker exists and the hash matches, so a run killed at any moment never reads a
partial file. A restart recomputes exactly the parts without a valid marker, with the same chunk
boundaries and batching, so it ends with bit-identical scores.

Chunk ``k`` belongs to process ``k % num_shards``: processes started with ``shard_index = 0..n-1`` score
disjoint chunks into the same ``OUT`` and whichever finds all chunks done assembles the final store
(under a file lock). Assembly writes the dataset files into ``OUT`` and ``OUT/manifest.json`` last; the
manifest is the mark of a complete store and records the size and SHA-256 of every dataset file, checked
before the store is reused. ``.work`` is removed after assembly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


def complete_manifest(out: Path, plan: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of ``out`` when it already holds this run's complete store and its files are the ones
    recorded when it was written (sizes and SHA-256), else None (a damaged store is recomputed)."""
    manifest = Path(out) / "manifest.json"
    if manifest.exists():
        old = read_json(manifest)
        if old.get("stage") == "score" and old.get("run_key") == plan["run_key"]:
            problem = verify_files(out, old.get("files"), only=_is_store_file)
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


def _list_array(offsets: np.ndarray, values: np.ndarray) -> Any:
    import pyarrow as pa

    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.float32()))


def _in_prepared_order(out: Path, parts: list[Part], lengths: np.ndarray, phase: str) -> np.ndarray:
    """The parts' values as one flat array in prepared row order. Shape (sum T,)."""
    rows = np.concatenate([np.asarray(p.rows, np.int64) for p in parts])  # (n,) chunk order
    got = np.concatenate([np.diff(p.offsets) for p in parts])  # (n,) lengths in chunk order
    lengths = np.asarray(lengths, np.int64)
    if len(rows) != len(lengths) or not np.array_equal(np.sort(rows), np.arange(len(lengths))):
        raise StoreError(f"{work_dir(out)}: {phase} chunks do not hold every prepared sample exactly once")
    if not np.array_equal(got, lengths[rows]):
        raise StoreError(f"{work_dir(out)}: {phase} chunk lengths do not match the prepared input_ids")
    values = np.concatenate([p.values for p in parts])  # (sum T,) chunk order
    start_in_values = np.concatenate([[0], np.cumsum(got)[:-1]])  # (n,) start of each chunk-order sample
    start_of_row = np.empty(len(rows), np.int64)
    start_of_row[rows] = start_in_values  # (n,) indexed by prepared row
    base = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # (n,) prepared-order starts
    gather = np.repeat(start_of_row - base, lengths) + np.arange(int(lengths.sum()))  # (sum T,)
    return values[gather]


def assemble(
    out: Path, sample_ids: list[str], lengths: np.ndarray, scorer: str, total: int, with_ref: bool
) -> dict[str, int]:
    """Build the final dataset from all parts into ``out`` (manifest written by the caller, last).

    Columns: ``sample_id``, ``base_loss``, ``ref_loss``, ``score`` (float32 lists, NaN where not scored), one
    row per prepared sample in prepared order. Returns counts of scored positions."""
    import datasets
    import pyarrow as pa

    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (n + 1,)
    flat = {}
    for phase in PHASES if with_ref else ("base",):
        flat[phase] = _in_prepared_order(
            out, [read_part(out, k, phase) for k in range(total)], lengths, phase
        )
    base = flat["base"]
    ref = flat.get("ref", np.full_like(base, np.nan))
    mask = ~np.isnan(base)
    score = get_scorer(scorer)(base, ref, mask)  # (sum T,)
    table = pa.table(
        {
            "sample_id": pa.array(sample_ids, pa.string()),
            "base_loss": _list_array(offsets, base),
            "ref_loss": _list_array(offsets, ref),
            "score": _list_array(offsets, score),
        }
    )
    features = score_features()
    ds = datasets.Dataset(table.cast(features.arrow_schema), info=datasets.DatasetInfo(features=features))
    tmp = work_dir(out) / "final"
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    _remove_store_files(out)
    names = sorted(p.name for p in tmp.iterdir())
    for name in sorted(names, key=lambda n: n == "state.json"):  # state.json last
        os.replace(tmp / name, out / name)
    return {"scored_positions": int(mask.sum()), "total_positions": len(base)}


def finish(out: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest (the completion mark, with the size and SHA-256 of every dataset file) and drop
    the work directory."""
    manifest["files"] = file_digests(out, only=_is_store_file)
    write_json_atomic(Path(out) / "manifest.json", manifest)
    shutil.rmtree(work_dir(out), ignore_errors=True)
    (Path(out) / ".merge.lock").unlink(missing_ok=True)
