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
from pathlib import Path
from typing import Any

from tokenclean import IGNORE_INDEX
from tokenclean.data.formats import read_records
from tokenclean.data.labels import encode_conversation
from tokenclean.errors import DataError
from tokenclean.outputs import decide, file_digests, guarded
from tokenclean.utils import (
    RESULT,
    atomic_dir,
    get_logger,
    package_versions,
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
) -> dict[str, Any]:
    """Tokenise ``data`` and write the prepared dataset to ``out``. Returns the manifest.

    ``out`` follows :mod:`tokenclean.outputs`: reused when it holds this identity (files verified),
    refused when it is not a prepared dataset, when it holds other inputs or settings (unless ``force``,
    or ``replace_stale`` for a pipeline's own stage directory) or while another process writes it."""
    from tqdm.auto import tqdm

    from tokenclean.models.loader import tokenizer_identity

    if max_length < 2:
        raise DataError("max_length", f"must be >= 2, got {max_length}")
    out = Path(out)
    ident = input_identity(data)
    identity = {
        "v": PREPARE_VERSION,
        "input": ident["sha256"] or ident["path"],
        "tok": tokenizer_fingerprint(tokenizer),
        "template": template,
        "max_length": max_length,
        "format": fmt,
        "skip_invalid": skip_invalid,
    }
    key = sha256_json(identity)
    old = decide(
        out,
        "prepare",
        identity,
        force=force,
        replace_stale=replace_stale,
        reusable=bool(ident["sha256"]),
    )
    if old is not None:
        return dict(old, reused=True)

    t0 = time.time()
    skipped: list[dict[str, Any]] = []
    counts = {
        "read": 0,
        "written": 0,
        "truncated": 0,
        "dropped_no_trained_tokens": 0,
        "skipped_invalid": 0,
        "special_text_in_content": 0,
    }

    def on_error(err: DataError, row: dict[str, Any] | None) -> None:
        counts["skipped_invalid"] += 1
        skipped.append(
            {
                "kind": "invalid",
                "location": err.location,
                "field": err.field,
                "reason": err.reason,
                "row": row,
            }
        )

    cols: dict[str, list[Any]] = {k: [] for k in prepared_features()}
    n_tokens = n_trained_total = 0
    records = read_records(data, fmt, on_error if skip_invalid else None)
    total = _row_count(data) if progress else None
    for rec in tqdm(records, desc="prepare", unit="sample", total=total, disable=not progress):
        counts["read"] += 1
        enc = encode_conversation(rec.messages, tokenizer, template, max_length)
        labels = list(enc.labels)
        labels[0] = IGNORE_INDEX  # position 0 is never predicted (alignment rule)
        n_tr = sum(1 for x in labels if x != IGNORE_INDEX)
        counts["truncated"] += int(enc.truncated)
        counts["special_text_in_content"] += int(enc.special_text_in_content)
        if n_tr == 0:
            counts["dropped_no_trained_tokens"] += 1
            reason = "no trained token after truncation" if enc.truncated else "no trained token"
            skipped.append(
                {"kind": "dropped", "location": rec.location, "reason": reason, "sample_id": rec.sample_id}
            )
            continue
        for k, v in (
            ("sample_id", rec.sample_id),
            ("input_ids", enc.input_ids),
            ("labels", labels),
            ("n_trained", n_tr),
            ("length", len(enc.input_ids)),
            ("truncated", enc.truncated),
            ("location", rec.location),
        ):
            cols[k].append(v)
        n_tokens += len(enc.input_ids)
        n_trained_total += n_tr
    counts["read"] += counts["skipped_invalid"]
    counts["written"] = len(cols["sample_id"])
    if counts["written"] == 0:
        raise DataError(str(data), "no sample left to write (every row was invalid or had no trained token)")

    if counts["special_text_in_content"]:
        log.warning(
            "%d samples contain special-token text (e.g. a literal EOS string) in a message; it is "
            "tokenised as the special token, as the HF stack does",
            counts["special_text_in_content"],
        )
    manifest = {
        "stage": "prepare",
        "cache_key": key,
        "identity": identity,
        "input": ident,
        "format": fmt,
        "tokenizer": dict(tokenizer_identity(tokenizer), source=tokenizer_name or tokenizer.name_or_path),
        "template": template,
        "max_length": max_length,
        "counts": counts,
        "tokens": {"total": n_tokens, "trained": n_trained_total},
        "versions": package_versions(),
        "seconds": round(time.time() - t0, 3),
    }
    write_prepared_dir(out, cols, manifest, skipped)
    log.info(
        "prepared %d samples (%d read, %d truncated, %d dropped with no trained token, %d invalid skipped) "
        "-> %s in %.1fs",
        counts["written"],
        counts["read"],
        counts["truncated"],
        counts["dropped_no_trained_tokens"],
        counts["skipped_invalid"],
        out,
        manifest["seconds"],
        extra=RESULT,
    )
    return manifest


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
