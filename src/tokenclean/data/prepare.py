"""The ``prepare`` stage: SFT file -> tokenised dataset with labels, plus a manifest.

Output directory (``datasets.load_from_disk(DIR)`` works on it):

- columns ``sample_id`` (str), ``input_ids`` (int32 list), ``labels`` (int32 list, -100 where not trained),
  ``n_trained`` (int32), ``length`` (int32), ``truncated`` (bool), ``location`` (str, source file:line);
- ``manifest.json``: input hash, tokenizer identity, template, max length, counts of samples read, written,
  truncated, dropped (by reason) and skipped;
- ``dropped.jsonl``: every row not written, with its location and reason (``kind`` "invalid" for rows
  skipped by ``skip_invalid``, "dropped" for samples left with no trained token).

The same inputs give byte-identical data files (the dataset fingerprint is the cache key, not random), and
a directory whose manifest has the same identity is reused instead of recomputed once its files are
verified against the sizes and SHA-256 hashes recorded in ``manifest.json`` (``files``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenclean import IGNORE_INDEX
from tokenclean.errors import DataError
from tokenclean.outputs import decide, file_digests, guarded
from tokenclean.utils import (
    RESULT,
    atomic_dir,
    get_logger,
    sha256_file,
    sha256_json,
    sha256_tree,
)

log = get_logger("prepare")

PREPARE_VERSION = 1  # bump when the output of prepare changes for the same inputs


def input_identity(data: str | Path) -> dict[str, Any]:
    from tokenclean.data.formats import builtin_path

    p = builtin_path(str(data).removeprefix("builtin:")) if str(data).startswith("builtin:") else Path(data)
    if p.is_file():
        return {"path": str(p), "sha256": sha256_file(p), "kind": "file"}
    if p.is_dir():
        return {"path": str(p), "sha256": sha256_tree(p), "kind": "dir"}
    return {"path": str(data), "sha256": None, "kind": "hub"}


def tokenizer_fingerprint(tok: Any) -> str:
    backend = getattr(tok, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    return sha256_json([blob, str(getattr(tok, "chat_template", "")), str(tok.eos_token)])


def prepared_features() -> Any:
    """The schema of a prepared dataset (the contract every later stage reads)."""
    import datasets

    return datasets.Features(
        {
            "sample_id": datasets.Value("string"),
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "labels": datasets.Sequence(datasets.Value("int32")),
            "n_trained": datasets.Value("int32"),
            "length": datasets.Value("int32"),
            "truncated": datasets.Value("bool"),
            "location": datasets.Value("string"),
        }
    )


@dataclass
class _Tally:
    """What reading and tokenising the rows produced: the columns, the skipped rows and the counts."""

    cols: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in prepared_features()})
    skipped: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "read",
                "written",
                "truncated",
                "dropped_no_trained_tokens",
                "skipped_invalid",
                "special_text_in_content",
            ),
            0,
        )
    )
    n_tokens: int = 0
    n_trained: int = 0
    written: int = 0  # rows added (flushed to a writer or still in ``cols``)

    def invalid(self, err: DataError, row: dict[str, Any] | None) -> None:
        self.counts["skipped_invalid"] += 1
        self.skipped.append(
            {
                "kind": "invalid",
                "location": err.location,
                "field": err.field,
                "reason": err.reason,
                "row": row,
            }
        )

    def add(self, rec: Any, enc: Any) -> None:
        """One encoded record: written, or recorded as dropped when it has no trained token."""
        self.counts["read"] += 1
        labels = list(enc.labels)
        labels[0] = IGNORE_INDEX  # position 0 is never predicted (alignment rule)
        n_tr = sum(1 for x in labels if x != IGNORE_INDEX)
        self.counts["truncated"] += int(enc.truncated)
        self.counts["special_text_in_content"] += int(enc.special_text_in_content)
        if n_tr == 0:
            self.counts["dropped_no_trained_tokens"] += 1
            reason = "no trained token after truncation" if enc.truncated else "no trained token"
            self.skipped.append(
                {"kind": "dropped", "location": rec.location, "reason": reason, "sample_id": rec.sample_id}
            )
            return
        row = (rec.sample_id, enc.input_ids, labels, n_tr, len(enc.input_ids), enc.truncated, rec.location)
        for k, v in zip(
            ("sample_id", "input_ids", "labels", "n_trained", "length", "truncated", "location"), row
        ):
            self.cols[k].append(v)
        self.n_tokens += len(enc.input_ids)
        self.n_trained += n_tr
        self.written += 1

    @property
    def buffered(self) -> int:
        return len(self.cols["sample_id"])

    def flush(self) -> Any:
        """The buffered rows as a pyarrow Table in :func:`prepared_features`' schema; the buffer emptied."""
        import pyarrow as pa

        cols = {k: _chunked_lists(v) if k in LIST_COLUMNS else v for k, v in self.cols.items()}
        table = pa.table(cols, schema=prepared_features().arrow_schema)
        self.cols = {k: [] for k in self.cols}
        return table


def _identity(
    ident: dict[str, Any], tokenizer: Any, template: str, max_length: int, fmt: str, skip: bool
) -> dict:
    """What decides the prepared data: the input's content (``ident``, :func:`input_identity`), settings."""
    return {
        "v": PREPARE_VERSION,
        "input": ident["sha256"] or ident["path"],
        "tok": tokenizer_fingerprint(tokenizer),
        "template": template,
        "max_length": max_length,
        "format": fmt,
        "skip_invalid": skip,
    }


@guarded("prepare", inputs=("data",))
def prepare(
    data: str | Path,
    tokenizer: Any,
    out: str | Path,
    fmt: str = "auto",
    template: str = "tulu",
    max_length: int = 2048,
    skip_invalid: bool = False,
    tokenizer_name: str | None = None,
    force: bool = False,
    progress: bool = True,
    replace_stale: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Tokenise ``data`` and write the prepared dataset to ``out``. Returns the manifest.

    Streams: rows are written one record batch at a time, so memory does not grow with the input.
    ``workers`` > 1 tokenises in that many processes, each its contiguous block of records (one data file
    each; the input is read once more first, to count its records); the rows are the same either way.

    ``out`` follows :mod:`tokenclean.outputs`: reused when it holds this identity (files verified),
    refused when it is not a prepared dataset, when it holds other inputs or settings (unless ``force``,
    or ``replace_stale`` for a pipeline's own stage directory) or while another process writes it."""

    if max_length < 2:
        raise DataError("max_length", f"must be >= 2, got {max_length}")
    if workers < 1:
        raise DataError("workers", f"must be >= 1, got {workers}")
    out = Path(out)
    ident = input_identity(data)  # hashes the input once
    identity = _identity(ident, tokenizer, template, max_length, fmt, skip_invalid)
    old = decide(
        out, "prepare", identity, force=force, replace_stale=replace_stale, reusable=bool(ident["sha256"])
    )
    if old is not None:
        return dict(old, reused=True)
    t0 = time.time()
    manifest = _write_prepared(
        data, tokenizer, out, ident, identity, fmt, template, max_length, skip_invalid,
        tokenizer_name, progress, workers,
    )  # fmt: skip
    counts = manifest["counts"]
    if counts["special_text_in_content"]:
        log.warning(
            "%d samples contain special-token text (e.g. a literal EOS string) in a message; it is "
            "tokenised as the special token, as the HF stack does",
            counts["special_text_in_content"],
        )
    log.info(
        "prepared %d samples (%d read, %d truncated, %d dropped with no trained token, %d invalid skipped) "
        "-> %s in %.1fs",
        counts["written"],
        counts["read"],
        counts["truncated"],
        counts["dropped_no_trained_tokens"],
        counts["skipped_invalid"],
        out,
        time.time() - t0,
        extra=RESULT,
    )
    return manifest


def _write_prepared(
    data: str | Path,
    tokenizer: Any,
    out: Path,
    ident: dict[str, Any],
    identity: dict[str, Any],
    fmt: str,
    template: str,
    max_length: int,
    skip_invalid: bool,
    tokenizer_name: str | None,
    progress: bool,
    workers: int,
) -> dict[str, Any]:
    """Tokenise and write, streaming: ``workers`` tasks (:func:`tokenclean.engines.prepare.prepare_shard`,
    each its contiguous block of records, one record batch in memory) write one data file each, then the
    index step writes ``state.json``, ``dataset_info.json``, ``dropped.jsonl`` and the manifest, all in a
    temporary directory moved into place at the end (atomic)."""
    from tokenclean.engines import prepare as ep
    from tokenclean.models.loader import tokenizer_identity

    t0 = time.time()
    src = str(data)
    n = ep.count_records(src, fmt, skip_invalid) if workers > 1 else None
    tok_entry = dict(tokenizer_identity(tokenizer), source=tokenizer_name or tokenizer.name_or_path)
    with atomic_dir(out) as tmp:
        job = ep.PrepareJob(
            src, tokenizer_name or "", str(tmp), workers, n, identity, ident, tok_entry,
            fmt, template, max_length, skip_invalid,
        )  # fmt: skip
        if workers == 1:
            ep.prepare_shard(job, 0, tokenizer, progress=progress)
        else:
            _run_tasks(job, tokenizer, workers)
        return ep.prepare_index(job, extra={"seconds": round(time.time() - t0, 3)})


def _run_tasks(job: Any, tokenizer: Any, workers: int) -> None:
    """The prepare tasks in ``workers`` fresh processes (``spawn``: no forked tokenizer threads), the
    tokenizer sent to each."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from tokenclean.engines import prepare as ep

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
        futures = [ex.submit(ep.prepare_shard, job, r, tokenizer) for r in range(workers)]
        for f in futures:
            f.result()


LIST_COLUMNS = ("input_ids", "labels")


def _chunked_lists(rows: Any) -> Any:
    """A list column of Python lists as chunked int32 Arrow lists (:func:`tokenclean.columns.list_array`, no
    2**31 limit); Arrow arrays pass as they are."""
    if not isinstance(rows, list):
        return rows
    import itertools

    import numpy as np

    from tokenclean.columns import list_array

    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    values = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
    return list_array(values, lengths)


def _row_count(data: str | Path) -> int | None:
    """Rows of a JSONL file (non-blank lines, for the progress bar's total); None for other sources."""
    src = str(data)
    if src.startswith("builtin:"):
        from tokenclean.data.formats import builtin_path

        src = str(builtin_path(src.removeprefix("builtin:")))
    p = Path(src)
    if not (p.is_file() and p.suffix.lower() in (".jsonl", ".ndjson")):
        return None
    with p.open("rb") as f:
        return sum(1 for line in f if line.strip())


def write_prepared_dir(
    out: str | Path, cols: dict[str, Any], manifest: dict[str, Any], skipped: Sequence[dict[str, Any]] = ()
) -> None:
    """Write a prepared dataset atomically: ``cols`` (the :func:`prepared_features` columns, lists or
    Arrow arrays), ``dropped.jsonl`` when ``skipped`` is not empty, and ``manifest.json`` last with the
    size and SHA-256 of every file (``files``, added to ``manifest``). The dataset fingerprint is the
    manifest's ``cache_key``, so the same inputs give byte-identical files."""
    import datasets
    import pyarrow as pa

    features = prepared_features()
    cols = {k: _chunked_lists(v) if k in LIST_COLUMNS else v for k, v in cols.items()}
    table = pa.table(cols, schema=features.arrow_schema)
    key = manifest["cache_key"]
    ds = datasets.Dataset(table, info=datasets.DatasetInfo(features=features), fingerprint=key[:32])
    with atomic_dir(out) as tmp:
        ds.save_to_disk(str(tmp))
        if skipped:
            with open(tmp / "dropped.jsonl", "w") as f:
                for s in skipped:
                    f.write(json.dumps(s, ensure_ascii=False, default=str) + "\n")
        manifest["files"] = file_digests(tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
