"""``prepare`` as engine tasks: task ``r`` of ``n`` tokenises its contiguous block of records and writes one
shard (:mod:`.shardfiles`); the index step writes the prepared dataset's ``state.json``,
``dataset_info.json``, ``dropped.jsonl`` and ``manifest.json`` (last).

The result is the prepared dataset :func:`tokenclean.data.prepare.prepare` writes for the same inputs: the
same rows in the same order, the same identity (so either one reuses the other), split into ``n`` data
files instead of one. Every task reads the input from its start (the file formats have no random access)
and tokenises only its block; the last task, which reads to the end, records the invalid rows skipped
with ``skip_invalid`` and sees every duplicate sample id.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenclean.data.formats import read_records
from tokenclean.data.labels import encode_conversation
from tokenclean.data.prepare import _row_count, _Tally, input_identity, prepared_features
from tokenclean.engines.shardfiles import ShardWriter, done_markers, drop_work, write_dataset_index
from tokenclean.errors import DataError
from tokenclean.scoring.store import shard_done, shard_rows
from tokenclean.utils import get_logger, package_versions, sha256_file, sha256_json, write_json_atomic

log = get_logger("engine")

COUNTS = ("read", "truncated", "dropped_no_trained_tokens", "skipped_invalid", "special_text_in_content")


@dataclass(frozen=True)
class PrepareJob:
    """What every prepare task needs (plain values: the job travels to the workers)."""

    data: str
    tokenizer: str  # loaded by each task (name, dir or alias)
    out: str  # the prepared dataset directory
    num_tasks: int
    n_records: int | None  # valid records of ``data`` (:func:`count_records`); None: one task, all
    identity: dict[str, Any]  # :func:`tokenclean.data.prepare._identity` of the inputs and settings
    input: dict[str, Any]  # :func:`tokenclean.data.prepare.input_identity` of ``data``
    tokenizer_entry: dict[str, Any]  # the manifest's ``tokenizer`` entry
    fmt: str = "auto"
    template: str = "tulu"
    max_length: int = 2048
    skip_invalid: bool = False


def count_records(data: str, fmt: str, skip_invalid: bool) -> int:
    """The records of ``data`` that tasks split between them (invalid rows skipped or raised as in
    ``prepare``)."""
    on_error = (lambda err, row: None) if skip_invalid else None
    return sum(1 for _ in read_records(data, fmt, on_error))


BATCH_ROWS = 1000  # rows tokenised before they are written as one record batch (memory: one batch)


def prepare_shard(job: PrepareJob, rank: int, tok: Any = None, progress: bool = False) -> dict[str, Any]:
    """Task ``rank``: tokenise records ``[lo, hi)`` (:func:`~tokenclean.scoring.store.shard_rows`; all of
    them when ``job.n_records`` is None, for one task) and write its shard one record batch at a time, so
    a task's memory does not grow with its shard. ``tok``: the tokenizer (default: loaded from
    ``job.tokenizer``). A finished shard is kept (a task rerun after its shard was written does nothing)."""
    from tqdm.auto import tqdm

    out = Path(job.out)
    done = shard_done(out, rank, job.num_tasks)
    if done is not None:
        return done
    if tok is None:
        from tokenclean.models.loader import load_tokenizer

        tok = load_tokenizer(job.tokenizer)
    if job.n_records is None:
        if job.num_tasks != 1:
            raise ValueError("prepare_shard: n_records is needed to split the records between tasks")
        lo, hi = 0, None
    else:
        lo, hi = shard_rows(job.n_records, rank, job.num_tasks)
    last = rank == job.num_tasks - 1
    tally = _Tally()
    on_error = (tally.invalid if last else lambda err, row: None) if job.skip_invalid else None
    writer = ShardWriter(out, rank, job.num_tasks, prepared_features())
    total = (_row_count(job.data) if progress else None) if hi is None else hi - lo
    bar = tqdm(desc="prepare", unit="sample", total=total, disable=not progress)
    mine = 0  # records of [lo, hi) read
    try:
        for i, rec in enumerate(read_records(job.data, job.fmt, on_error)):
            if hi is not None and i >= hi and not last:
                break
            if i >= lo and (hi is None or i < hi):
                tally.add(rec, encode_conversation(rec.messages, tok, job.template, job.max_length))
                mine += 1
                bar.update(1)
                if tally.buffered >= BATCH_ROWS:
                    writer.write(tally.flush())
        writer.write(tally.flush())
        info = {
            "rows": tally.written,
            "records": [lo, lo + mine],
            "counts": {k: tally.counts[k] for k in COUNTS},
            "tokens": {"total": tally.n_tokens, "trained": tally.n_trained},
            "skipped": tally.skipped,
        }
        return writer.close(info)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()


def prepare_index(job: PrepareJob, rank: int = 0, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The index step (one task, after every prepare task): the dataset files and the manifest, whose
    counts are the shards' summed (plus ``extra`` entries). Returns the manifest."""
    t0 = time.time()
    out = Path(job.out)
    markers = done_markers(out, job.num_tasks, "prepare")
    counts = {k: sum(int(m["counts"][k]) for m in markers) for k in COUNTS}
    counts["written"] = sum(int(m["rows"]) for m in markers)
    counts["read"] += counts["skipped_invalid"]
    if counts["written"] == 0:
        raise DataError(job.data, "no sample left to write (every row was invalid or had no trained token)")
    key = sha256_json(job.identity)
    files = write_dataset_index(out, markers, prepared_features(), key)
    skipped = [s for m in markers for s in m["skipped"]]
    if skipped:
        with open(out / "dropped.jsonl", "w") as f:
            f.writelines(json.dumps(s, ensure_ascii=False, default=str) + "\n" for s in skipped)
        dropped = out / "dropped.jsonl"
        files["dropped.jsonl"] = {"size": dropped.stat().st_size, "sha256": sha256_file(dropped)}
    manifest = {
        "stage": "prepare",
        "cache_key": key,
        "identity": job.identity,
        "input": job.input,
        "format": job.fmt,
        "tokenizer": job.tokenizer_entry,
        "template": job.template,
        "max_length": job.max_length,
        "counts": counts,
        "tokens": {k: sum(int(m["tokens"][k]) for m in markers) for k in ("total", "trained")},
        "versions": package_versions(),
        "engine": {"tasks": job.num_tasks, "index_seconds": round(time.time() - t0, 3)},
        **(extra or {}),
        "files": files,
    }
    write_json_atomic(out / "manifest.json", manifest)
    drop_work(out)
    return manifest


def identity_of(
    data: str, tok: Any, fmt: str, template: str, max_length: int, skip: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The input's identity and the identity ``prepare`` gives these inputs and settings (the input
    hashed once)."""
    from tokenclean.data.prepare import _identity

    ident = input_identity(data)
    return ident, _identity(ident, tok, template, max_length, fmt, skip)
