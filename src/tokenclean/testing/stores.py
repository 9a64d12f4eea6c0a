"""Prepared datasets and score stores from token ids and scores, written by the stages' own writers.

- :func:`write_prepared`: the columns ``prepare`` writes, through its writer
  (:func:`tokenclean.data.prepare.write_prepared_dir`): same schema, fingerprint rule, ``dropped.jsonl`` and
  manifest keys (``files`` included), with a cache key of the ids and labels instead of a source file.
- :func:`write_score_store`: losses go through the scoring stage's own path: chunk parts
  (:func:`tokenclean.scoring.store.write_part`), assembly with the registered scorer and the manifest of
  :func:`tokenclean.scoring.run.merge_parts`, so the store is what ``tokenclean score`` writes for the same
  losses. Give ``scores`` (stored as ``base_loss = score``, ``ref_loss = 0`` where scored, so the
  ``token_cleaning`` score ``base - ref`` is exactly ``score``), or ``base_loss`` and ``ref_loss``.
- :func:`write_arrays`: both at once from flat arrays (benchmarks at millions of tokens).

The data are made up; the manifests say so (``"synthetic": true``, model names ``synthetic``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX

SYNTHETIC = "synthetic (tokenclean.testing)"


def digest(ids: Sequence[str], arrays: Sequence[np.ndarray]) -> str:
    """SHA-256 of sample ids and arrays (their sizes and bytes): the content key of made-up data."""
    h = hashlib.sha256("\x00".join(ids).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(np.int64(a.size).tobytes())
        h.update(a.tobytes())
    return h.hexdigest()


def _flat(rows: Sequence[Any], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list of rows: (sum n,) ``dtype`` and (S+1,) int64."""
    arrays = [np.asarray(r, dtype=dtype) for r in rows]
    lengths = np.array([a.size for a in arrays], dtype=np.int64)
    values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)
    return values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def per_sample_sums(flags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Number of True ``flags`` of each sample: (S,) int64 (empty samples give 0)."""
    c = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    return c[offsets[1:]] - c[offsets[:-1]]


def _prepared_columns(
    names: Sequence[str], off: np.ndarray, ids: np.ndarray, lab: np.ndarray, locations: Sequence[str]
) -> tuple[dict[str, Any], np.ndarray]:
    """The ``prepare`` columns of rows given as flat (T,) int32 ``ids``/``lab`` and (S+1,) int64 ``off``, and
    the trained tokens per row (S,)."""
    import pyarrow as pa

    from tokenclean.columns import list_array

    lengths = np.diff(off)  # (S,)
    trained = per_sample_sums(lab != IGNORE_INDEX, off)  # (S,)
    cols = {
        "sample_id": pa.array(list(names), pa.string()),
        "input_ids": list_array(ids, lengths),
        "labels": list_array(lab, lengths),
        "n_trained": pa.array(trained.astype(np.int32)),
        "length": pa.array(lengths.astype(np.int32)),
        "truncated": pa.array(np.zeros(len(names), dtype=bool)),
        "location": pa.array(list(locations), pa.string()),
    }
    return cols, trained


def prepared_from_arrays(
    out: str | Path,
    sample_ids: Sequence[str],
    offsets: np.ndarray,
    input_ids: np.ndarray,
    labels: np.ndarray,
    locations: Sequence[str] | None = None,
    tokenizer: dict[str, Any] | None = None,
) -> Path:
    """A prepared dataset from flat (T,) ``input_ids``/``labels`` and (S+1,) ``offsets``, through the
    ``prepare`` stage's writer."""
    from tokenclean.data.prepare import PREPARE_VERSION, write_prepared_dir
    from tokenclean.utils import package_versions, sha256_json

    off = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(off)  # (S,)
    ids, lab = np.asarray(input_ids, dtype=np.int32), np.asarray(labels, dtype=np.int32)
    n = len(sample_ids)
    identity = {"v": PREPARE_VERSION, "synthetic": digest(list(sample_ids), [off, ids, lab])}
    where = list(locations or (f"synthetic:{i + 1}" for i in range(n)))
    cols, trained = _prepared_columns(sample_ids, off, ids, lab, where)
    manifest = {
        "stage": "prepare",
        "synthetic": True,
        "cache_key": sha256_json(identity),
        "identity": identity,
        "input": {"path": "synthetic", "sha256": identity["synthetic"], "kind": "synthetic"},
        "format": "synthetic",
        "tokenizer": tokenizer or {"name": "none"},
        "template": "none",
        "max_length": int(lengths.max(initial=0)),
        "counts": {
            "read": n,
            "written": n,
            "truncated": 0,
            "dropped_no_trained_tokens": 0,
            "skipped_invalid": 0,
            "special_text_in_content": 0,
        },
        "tokens": {"total": int(off[-1]), "trained": int(trained.sum())},
        "versions": package_versions(),
        "engine": {"tasks": 1, "index_seconds": 0.0},  # as prepare's manifest (its rows are one task's)
        "seconds": 0.0,
    }
    write_prepared_dir(out, cols, manifest)
    return Path(out)


def prepared_from_blocks(
    out: str | Path,
    blocks: Iterable[tuple[Sequence[str], np.ndarray, np.ndarray, np.ndarray]],
    tokenizer: dict[str, Any] | None = None,
) -> Path:
    """A prepared dataset from blocks of rows ``(sample_ids, offsets, input_ids, labels)`` (flat arrays per
    block, as in :func:`prepared_from_arrays`), written as the ``prepare`` stage streams: one record batch
    per block (:class:`tokenclean.engines.shardfiles.ShardWriter`) and its index step, so memory is one
    block, whatever the pool. The cache key hashes every block."""
    import pyarrow as pa

    from tokenclean.data.prepare import PREPARE_VERSION, prepared_features
    from tokenclean.engines.prepare import PrepareJob, prepare_index
    from tokenclean.engines.shardfiles import ShardWriter

    out = Path(out)
    writer = ShardWriter(out, 0, 1, prepared_features())
    h = hashlib.sha256()
    rows = total = trained_total = longest = 0
    for names, offsets, input_ids, labels in blocks:
        off = np.asarray(offsets, dtype=np.int64)
        lengths = np.diff(off)
        ids, lab = np.asarray(input_ids, dtype=np.int32), np.asarray(labels, dtype=np.int32)
        h.update(digest(list(names), [off, ids, lab]).encode())
        n = len(names)
        where = [f"synthetic:{rows + i + 1}" for i in range(n)]
        cols, trained = _prepared_columns(names, off, ids, lab, where)
        writer.write(pa.table(cols))
        rows, total, trained_total = rows + n, total + int(off[-1]), trained_total + int(trained.sum())
        longest = max(longest, int(lengths.max(initial=0)))
    counts = dict.fromkeys(
        ("read", "truncated", "dropped_no_trained_tokens", "skipped_invalid", "special_text_in_content"), 0
    )
    counts["read"] = rows
    writer.close(
        {
            "rows": rows,
            "records": [0, rows],
            "counts": counts,
            "tokens": {"total": total, "trained": trained_total},
            "skipped": [],
        }
    )
    identity = {"v": PREPARE_VERSION, "synthetic": h.hexdigest()}
    job = PrepareJob(
        "synthetic", "none", str(out), 1, rows, identity,
        {"path": "synthetic", "sha256": identity["synthetic"], "kind": "synthetic"},
        tokenizer or {"name": "none"}, "synthetic", "none", longest,
    )  # fmt: skip
    prepare_index(job, extra={"synthetic": True, "seconds": 0.0})
    return out


def write_prepared(
    out: str | Path,
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    sample_ids: Sequence[str] | None = None,
    tokenizer: dict[str, Any] | None = None,
    locations: Sequence[str] | None = None,
) -> Path:
    """A prepared dataset (the ``prepare`` stage's columns, manifest and writer) from token id and label
    lists; ``sample_ids`` default to ``s000000``, ``s000001``, ..."""
    ids = list(sample_ids) if sample_ids is not None else [f"s{i:06d}" for i in range(len(input_ids))]
    flat_ids, off = _flat(input_ids, np.int32)
    flat_lab, off_lab = _flat(labels, np.int32)
    if not np.array_equal(off, off_lab):
        raise ValueError("input_ids and labels differ in length")
    return prepared_from_arrays(out, ids, off, flat_ids, flat_lab, locations, tokenizer)


def random_scores(labels: Sequence[Sequence[int]], seed: int = 0) -> list[np.ndarray]:
    """Standard-normal float32 scores at trained positions, NaN elsewhere (the store layout)."""
    rng = np.random.default_rng(seed)
    out = []
    for lab in labels:
        lab_a = np.asarray(lab)
        s = np.full(lab_a.size, np.nan, dtype=np.float32)
        m = lab_a != IGNORE_INDEX
        s[m] = rng.standard_normal(int(m.sum())).astype(np.float32)
        out.append(s)
    return out


def store_from_arrays(
    out: str | Path,
    prepared_dir: str | Path,
    offsets: np.ndarray,
    base_loss: np.ndarray,
    ref_loss: np.ndarray | None,
    scorer: str = "token_cleaning",
    sample_ids: Sequence[str] | None = None,
    shard_size: int | None = None,
) -> Path:
    """A score store for ``prepared_dir`` from flat (T,) float32 losses (NaN where not scored) and (S+1,)
    ``offsets``, through the scoring stage's parts, assembly and manifest. ``ref_loss`` None scores base
    only (a scorer without a reference); ``sample_ids`` (default: the prepared ids) and the row lengths in
    ``offsets`` are written as given, so a store that disagrees with its prepared data can be built."""
    from tokenclean.scoring import store
    from tokenclean.scoring.run import (
        DEFAULT_SHARD_SIZE,
        PreparedData,
        merge_parts,
        scoring_plan,
        store_manifest,
        store_settings,
    )

    t0 = time.time()
    out = Path(out).resolve()
    data = PreparedData(prepared_dir)
    ids = list(sample_ids) if sample_ids is not None else data.sample_ids
    off = np.asarray(offsets, dtype=np.int64)
    shard = shard_size or DEFAULT_SHARD_SIZE
    phases = {"base": np.asarray(base_loss, dtype=np.float32)}
    if ref_loss is not None:
        phases["ref"] = np.asarray(ref_loss, dtype=np.float32)
    models = {
        "base": {"name": SYNTHETIC, "losses": digest(ids, [off, phases["base"]])},
        "reference": {"name": SYNTHETIC, "losses": digest(ids, [off, phases["ref"]])}
        if "ref" in phases
        else None,
        "mode": "one_model" if "ref" in phases else "base_only",
    }
    plan = scoring_plan(models, **store_settings(data, shard, scorer, "fp32", "cpu"))
    store.prepare_out(out, plan, force=True)
    total = store.n_chunks(len(ids), shard)
    for k in range(total):
        a, b = k * shard, min((k + 1) * shard, len(ids))
        for phase, values in phases.items():
            rows = np.arange(a, b, dtype=np.int64)  # prepared order (any permutation assembles the same)
            part = store.Part(k, phase, rows, off[a : b + 1] - off[a], values[off[a] : off[b]])
            info = {"n": b - a, "tokens": int(off[b] - off[a]), "seconds": 0.0, "cpu_seconds": 0.0}
            store.write_part(out, part, info)
    manifest = store_manifest(plan, data, "cpu", 0, 1, None, False)
    manifest.update(synthetic=True, packing=None, attn_implementation=None)  # no model ran: no batch layout
    merge_parts(out, ids, np.diff(off), manifest, total, t0)
    return out


def write_score_store(
    out: str | Path,
    prepared_dir: str | Path,
    scores: Sequence[Sequence[float] | np.ndarray] | None = None,
    seed: int = 0,
    sample_ids: Sequence[str] | None = None,
    base_loss: Sequence[Sequence[float] | np.ndarray] | None = None,
    ref_loss: Sequence[Sequence[float] | np.ndarray] | None = None,
    scorer: str = "token_cleaning",
) -> Path:
    """A score store for ``prepared_dir`` written by the scoring stage's own code (see the module doc).

    ``scores``: per-position lists (NaN where not scored), stored exactly; ``base_loss``/``ref_loss``:
    per-position losses scored by ``scorer`` (as ``tokenclean score`` would); neither: :func:`random_scores`
    drawn from ``seed``. ``sample_ids`` overrides the prepared ids (to build a mismatching store in tests)."""
    import datasets

    if base_loss is not None:
        base, off = _flat(base_loss, np.float32)
        ref = _flat(ref_loss, np.float32)[0] if ref_loss is not None else None
    else:
        rows = scores
        if rows is None:
            rows = random_scores(datasets.load_from_disk(str(prepared_dir))["labels"], seed)
        base, off = _flat(rows, np.float32)
        ref = np.where(np.isnan(base), np.float32(np.nan), np.float32(0.0)).astype(np.float32)
    return store_from_arrays(out, prepared_dir, off, base, ref, scorer, sample_ids)


def write_arrays(
    out: str | Path,
    prepared_out: str | Path,
    offsets: np.ndarray,
    input_ids: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
) -> tuple[Path, Path]:
    """A prepared dataset and its score store from flat (T,) arrays and (S+1,) offsets, without Python lists
    of tokens (for benchmarks at millions of tokens). Returns (score store dir, prepared dir)."""
    off = np.asarray(offsets, dtype=np.int64)
    ids = [f"s{i:08d}" for i in range(off.size - 1)]
    prepared_from_arrays(prepared_out, ids, off, input_ids, labels)
    base = np.asarray(scores, dtype=np.float32)
    ref = np.where(np.isnan(base), np.float32(np.nan), np.float32(0.0)).astype(np.float32)
    store_from_arrays(out, prepared_out, off, base, ref)
    return Path(out), Path(prepared_out)
