"""Synthetic prepared datasets and score stores built from arrays (tests, benchmarks, examples).

They follow the stage contracts (same columns and manifest keys as ``prepare`` and ``score`` write) but hold
made-up data; their manifests say so (``"synthetic": true``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.data.prepare import prepared_features
from tokenclean.outputs import file_digests
from tokenclean.utils import atomic_dir, read_json, sha256_json, write_json_atomic


def _save(out: str | Path, cols: dict[str, list[Any]], features: Any, manifest: dict[str, Any]) -> None:
    import datasets
    import pyarrow as pa

    table = pa.Table.from_pydict(cols, schema=features.arrow_schema)
    ds = datasets.Dataset(
        table, info=datasets.DatasetInfo(features=features), fingerprint=manifest["cache_key"][:32]
    )
    with atomic_dir(out) as tmp:
        ds.save_to_disk(str(tmp))
        write_json_atomic(tmp / "manifest.json", dict(manifest, files=file_digests(tmp)))


def write_prepared(
    out: str | Path,
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    sample_ids: Sequence[str] | None = None,
    tokenizer: dict[str, Any] | None = None,
) -> Path:
    """A prepared dataset (contract columns + manifest) from token id and label lists."""
    ids = list(sample_ids) if sample_ids is not None else [f"s{i:06d}" for i in range(len(input_ids))]
    feats = prepared_features()
    lab = [list(map(int, x)) for x in labels]
    cols: dict[str, list[Any]] = {
        "sample_id": ids,
        "input_ids": [list(map(int, x)) for x in input_ids],
        "labels": lab,
        "n_trained": [sum(1 for v in x if v != IGNORE_INDEX) for x in lab],
        "length": [len(x) for x in lab],
        "truncated": [False] * len(ids),
        "location": [f"synthetic:{i + 1}" for i in range(len(ids))],
    }
    key = sha256_json({"synthetic": [ids, cols["input_ids"], lab]})
    manifest = {
        "stage": "prepare",
        "synthetic": True,
        "cache_key": key,
        "input": {"path": "synthetic", "sha256": key, "kind": "synthetic"},
        "tokenizer": tokenizer or {"name": "none"},
        "template": "none",
        "max_length": max((len(x) for x in lab), default=0),
        "counts": {"written": len(ids)},
        "tokens": {"total": sum(cols["length"]), "trained": sum(cols["n_trained"])},
    }
    _save(out, cols, feats, manifest)
    return Path(out)


def _digest(ids: Sequence[str], arrays: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256("\x00".join(ids).encode())
    for a in arrays:
        h.update(np.int64(a.size).tobytes())
        h.update(a.tobytes())
    return h.hexdigest()


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


def write_score_store(
    out: str | Path,
    prepared_dir: str | Path,
    scores: Sequence[Sequence[float]] | None = None,
    seed: int = 0,
    sample_ids: Sequence[str] | None = None,
) -> Path:
    """A score store for ``prepared_dir`` (contract columns + manifest) holding ``scores`` (per-position lists,
    NaN where not scored) or, when None, :func:`random_scores` drawn from ``seed``. ``sample_ids`` overrides
    the prepared ids (to build a mismatching store in tests)."""
    import datasets

    prep = datasets.load_from_disk(str(prepared_dir))
    ids = list(sample_ids) if sample_ids is not None else list(prep["sample_id"])
    sc = [
        np.asarray(s, dtype=np.float32)
        for s in (scores if scores is not None else random_scores(prep["labels"], seed))
    ]
    ref = [np.where(np.isnan(s), np.nan, 1.0).astype(np.float32) for s in sc]
    from tokenclean.scoring.store import score_features

    feats = score_features()
    cols = {
        "sample_id": ids,
        "base_loss": [(r + s).tolist() for r, s in zip(ref, sc)],
        "ref_loss": [r.tolist() for r in ref],
        "score": [s.tolist() for s in sc],
    }
    pm = read_json(Path(prepared_dir) / "manifest.json")
    manifest = {
        "stage": "score",
        "synthetic": True,
        "scorer": "synthetic",
        "cache_key": _digest(ids, sc),
        "prepared_dir": str(Path(prepared_dir).resolve()),
        "prepared_cache_key": pm.get("cache_key"),
        "base": {"name": "synthetic", "hash": None},
        "reference": {"name": "synthetic", "hash": None, "adapter": None},
        "dtype": "fp32",
        "device": "cpu",
        "versions": {},
        "counts": {"samples": len(ids), "scored_tokens": int(sum(int((~np.isnan(s)).sum()) for s in sc))},
    }
    _save(out, cols, feats, manifest)
    return Path(out)


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
    import datasets
    import pyarrow as pa

    from tokenclean.selection.cleaned import list_array

    off = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(off)  # (S,)
    ids = [f"s{i:08d}" for i in range(lengths.size)]
    trained = (
        np.add.reduceat((labels != IGNORE_INDEX).astype(np.int64), off[:-1]) if lengths.size else lengths
    )
    i32, f32 = datasets.Sequence(datasets.Value("int32")), datasets.Sequence(datasets.Value("float32"))
    pkey = _digest(ids, [input_ids, labels])
    prep_feats = datasets.Features(
        {
            "sample_id": datasets.Value("string"),
            "input_ids": i32,
            "labels": i32,
            "n_trained": datasets.Value("int32"),
        }
    )
    prep_cols = {
        "sample_id": pa.array(ids, pa.string()),
        "input_ids": list_array(input_ids.astype(np.int32), lengths),
        "labels": list_array(labels.astype(np.int32), lengths),
        "n_trained": pa.array(trained.astype(np.int32)),
    }
    prep_manifest = {"stage": "prepare", "synthetic": True, "cache_key": pkey, "tokenizer": {"name": "none"}}
    score_feats = datasets.Features({"sample_id": datasets.Value("string"), "score": f32})
    score_cols = {
        "sample_id": prep_cols["sample_id"],
        "score": list_array(scores.astype(np.float32), lengths),
    }
    score_manifest = {
        "stage": "score",
        "synthetic": True,
        "scorer": "synthetic",
        "cache_key": _digest(ids, [scores]),
        "prepared_dir": str(Path(prepared_out).resolve()),
        "prepared_cache_key": pkey,
    }
    for d, cols, feats, man in (
        (prepared_out, prep_cols, prep_feats, prep_manifest),
        (out, score_cols, score_feats, score_manifest),
    ):
        ds = datasets.Dataset(
            pa.table(cols, schema=feats.arrow_schema), info=datasets.DatasetInfo(features=feats)
        )
        with atomic_dir(d) as tmp:
            ds.save_to_disk(str(tmp))
            write_json_atomic(tmp / "manifest.json", man)
    return Path(out), Path(prepared_out)
