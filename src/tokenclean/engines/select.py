"""``select`` (global top-K, the Token Cleaning level) as engine tasks: the exact two-pass radix select of
:mod:`tokenclean.selection.streaming` as map and reduce steps over files instead of collectives.

1. **high** (``n`` tasks): task ``r`` writes the histogram of the high 16 key bits of its rows' response
   scores (``_pass_high`` over :func:`~tokenclean.selection.streaming.store_chunks`, one batch in memory);
2. **low** (``n`` tasks): each task sums the ``n`` high histograms (what ``stream_global``'s first
   all-reduce gives), finds the bucket of the k-th best token and writes the low-bit histogram of its rows
   inside that bucket;
3. **write** (``n`` tasks): each task sums the low histograms, gets the exact cut and its share of the ties
   at the cut (earlier tasks first: the tie rule of the in-memory selection), and writes its rows of the
   cleaned dataset (:func:`~tokenclean.selection.cleaned.cleaned_arrow`) as one shard with its stats;
4. **index** (one task): the cleaned dataset's files, ``dropped.jsonl``, ``selection_stats.json`` (the
   shards' stats summed) and ``manifest.json``, as ``tokenclean select`` writes them.

Rows ``[r*S/n, (r+1)*S/n)`` of the store belong to task ``r`` (:func:`~tokenclean.scoring.store.shard_rows`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean.engines.shardfiles import done_markers, drop_work, write_arrow_shard, write_dataset_index
from tokenclean.scoring.store import shard_done, shard_rows, work_dir
from tokenclean.selection.masks import n_keep
from tokenclean.selection.streaming import BINS, GlobalCut, _locate, _pass_high, _pass_low, store_chunks
from tokenclean.utils import package_versions, sha256_file, write_json_atomic


@dataclass(frozen=True)
class SelectJob:
    """What every select task needs (plain values: the job travels to the workers)."""

    scores: str
    prepared: str
    out: str  # the cleaned dataset directory
    num_tasks: int
    n_samples: int
    ratio: float
    key: str  # the selection's cache key (as ``tokenclean select`` computes it)
    fields: dict[str, Any]  # its settings, inputs and identity (manifest entries)
    column: str = "score"
    seed: int = 42


def _rows(job: SelectJob, rank: int) -> tuple[int, int]:
    return shard_rows(job.n_samples, rank, job.num_tasks)


def _hist_path(job: SelectJob, what: str, rank: int) -> Path:
    return work_dir(Path(job.out)) / f"{what}-{rank:05d}.npz"


def _save(path: Path, **arrays: Any) -> None:
    """``np.savez`` to a temporary name, fsynced, renamed: a reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_all(job: SelectJob, what: str) -> list[dict[str, np.ndarray]]:
    from tokenclean.engines.shardfiles import ShardError

    out = []
    for r in range(job.num_tasks):
        path = _hist_path(job, what, r)
        if not path.is_file():
            raise ShardError(
                f"{path}: missing; select task {r} ({what}) did not finish: rerun the same command"
            )
        with np.load(path) as z:
            out.append({k: z[k] for k in z.files})
    return out


def _chunks(job: SelectJob, rank: int) -> Any:
    lo, hi = _rows(job, rank)
    return store_chunks(job.scores, job.prepared, lo, hi, job.column)


def select_high(job: SelectJob, rank: int) -> None:
    """Task ``rank``, pass 1: its high-bits histogram, token and NaN counts."""
    path = _hist_path(job, "high", rank)
    if not path.is_file():
        hist, n, nans = _pass_high(_chunks(job, rank))  # (BINS,) int64
        _save(path, hist=hist, counts=np.array([n, nans], dtype=np.int64))


def _bucket(job: SelectJob) -> tuple[int, int, int]:
    """(k, bucket of the k-th best key, tokens in the buckets before it) from every task's pass 1."""
    highs = _load_all(job, "high")
    counts = np.sum([h["counts"] for h in highs], axis=0)  # (2,) tokens, NaNs
    hist = np.sum([h["hist"] for h in highs], axis=0)  # (BINS,)
    k = min(n_keep(job.ratio, int(counts[0])), int(counts[0] - counts[1]))
    if k <= 0:
        return 0, 0, 0
    high, before = _locate(hist, k)
    return k, high, before


def select_low(job: SelectJob, rank: int) -> None:
    """Task ``rank``, pass 2: the low-bits histogram of its keys inside the bucket of the k-th best."""
    path = _hist_path(job, "low", rank)
    if not path.is_file():
        k, high, _ = _bucket(job)
        low = _pass_low(_chunks(job, rank), high) if k > 0 else np.zeros(BINS, dtype=np.int64)
        _save(path, hist=low)


def global_cut(job: SelectJob, rank: int) -> tuple[GlobalCut, int]:
    """Task ``rank``'s cut (as ``stream_global`` gives each rank), and the tokens chosen by the tie rule
    over all tasks (``tie_decided_tokens`` of the stats: the kept ties when some ties were dropped)."""
    k, high, before = _bucket(job)
    if k <= 0:
        return GlobalCut(0, None, 0), 0
    lows = [h["hist"] for h in _load_all(job, "low")]
    low, before_low = _locate(np.sum(lows, axis=0), k - before)
    need = k - before - before_low  # ties at the cut that are kept, over all tasks
    mine = [int(h[low]) for h in lows]  # ties at the cut in each task's rows
    ties = int(min(max(need - sum(mine[:rank]), 0), mine[rank]))
    return GlobalCut(k, (high << 16) | low, ties), (need if sum(mine) > need else 0)


def shard_table(job: SelectJob, lo: int, hi: int) -> Any:
    """Rows ``[lo, hi)`` of the store joined with the prepared dataset, checked as
    :func:`~tokenclean.selection.table.load_token_table` checks the whole pool."""
    import datasets

    from tokenclean.selection.table import TokenTable, check_rows, check_scored_positions, list_column

    st = datasets.load_from_disk(job.scores).with_format("arrow")[lo:hi]  # memory-mapped slices
    pt = datasets.load_from_disk(job.prepared).with_format("arrow")[lo:hi]
    ids_s = np.asarray(st.column("sample_id").to_pylist(), dtype=object)
    ids_p = np.asarray(pt.column("sample_id").to_pylist(), dtype=object)
    score, len_s = list_column(st, job.column, np.float32)
    input_ids, len_p = list_column(pt, "input_ids", np.int32)
    labels, _ = list_column(pt, "labels", np.int32)
    check_rows(job.scores, job.prepared, ids_s, ids_p, len_s, len_p)
    offsets = np.concatenate([[0], np.cumsum(len_p, dtype=np.int64)])  # (S_r + 1,)
    table = TokenTable(ids_p, offsets, input_ids, labels, score)
    check_scored_positions(job.scores, table)
    return table


def select_write(job: SelectJob, rank: int) -> dict[str, Any]:
    """Task ``rank``, the write: its rows of the cleaned dataset, its stats and emptied samples."""
    from tokenclean.selection.cleaned import _emptied_records, cleaned_arrow, cleaned_features
    from tokenclean.selection.stats import selection_stats

    out = Path(job.out)
    done = shard_done(out, rank, job.num_tasks)
    if done is not None:
        return done
    cut, _ = global_cut(job, rank)
    lo, hi = _rows(job, rank)
    table = shard_table(job, lo, hi)
    scores, offsets = table.response_scores, table.response_offsets
    keep, _ = cut.mask(scores, 0)  # (N_r,) the same mask GlobalCut.masks gives chunk by chunk
    stats = selection_stats(keep, scores, offsets, "global", job.ratio, job.seed, None)
    arrow, kept_rows = cleaned_arrow(table, keep)
    emptied = [  # the lines of dropped.jsonl, with rows of the whole pool
        json.dumps(dict(e, row=e["row"] + lo), ensure_ascii=False) for e in _emptied_records(table, kept_rows)
    ]
    info = {"rows": int(arrow.num_rows), "stats": stats, "emptied": emptied}
    return write_arrow_shard(out, rank, job.num_tasks, arrow, cleaned_features(), info)


SUMMED = ("kept_tokens", "total_response_tokens", "dropped_tokens", "nan_scores", "samples_total")
SUMMED_EMPTY = ("samples_emptied", "samples_kept")


def merged_stats(parts: list[dict[str, Any]], ratio: float, tie_decided: int) -> dict[str, Any]:
    """The selection stats of the whole pool from the tasks' stats (counts and histograms summed)."""
    from tokenclean.selection.masks import ratio_count

    stats = dict(parts[0])
    for key in (*SUMMED, *SUMMED_EMPTY):
        stats[key] = sum(int(p[key]) for p in parts)
    hist = dict(parts[0]["kept_fraction_histogram"])
    for key in ("exactly_zero", "exactly_one"):
        hist[key] = sum(int(p["kept_fraction_histogram"][key]) for p in parts)
    hist["counts"] = [int(x) for x in np.sum([p["kept_fraction_histogram"]["counts"] for p in parts], axis=0)]
    total = stats["total_response_tokens"]
    stats.update(
        kept_fraction_histogram=hist,
        requested_tokens=ratio_count(ratio, total),
        achieved_ratio=(stats["kept_tokens"] / total) if total else 0.0,
        tie_decided_tokens=tie_decided,
    )
    return stats


def select_index(job: SelectJob, rank: int = 0) -> dict[str, Any]:
    """The index step: the cleaned dataset's files, ``dropped.jsonl``, ``selection_stats.json`` and
    ``manifest.json`` (last). Returns the stats."""
    from tokenclean.errors import DataError
    from tokenclean.selection.cleaned import cleaned_features
    from tokenclean.selection.selector import COUNT_KEYS, warn_if_ties_decide

    t0 = time.time()
    out = Path(job.out)
    markers = done_markers(out, job.num_tasks, "select")
    _, tie_decided = global_cut(job, 0)
    stats = merged_stats([m["stats"] for m in markers], job.ratio, tie_decided)
    if stats["kept_tokens"] == 0:
        raise DataError(str(out), f"selection kept no token (global, ratio={job.ratio}); nothing to train on")
    warn_if_ties_decide(stats, out)
    files = write_dataset_index(out, markers, cleaned_features(), job.key)
    with open(out / "dropped.jsonl", "w") as f:
        f.writelines(line + "\n" for m in markers for line in m["emptied"])
    write_json_atomic(out / "selection_stats.json", stats)
    for name in ("dropped.jsonl", "selection_stats.json"):
        files[name] = {"size": (out / name).stat().st_size, "sha256": sha256_file(out / name)}
    manifest = {"stage": "select", "cache_key": job.key, **job.fields}
    manifest.update(
        counts={k: stats[k] for k in COUNT_KEYS},
        versions=package_versions(),
        seconds=round(time.time() - t0, 3),
        engine={"tasks": job.num_tasks},
        files=files,
    )
    write_json_atomic(out / "manifest.json", manifest)
    drop_work(out)
    return stats
