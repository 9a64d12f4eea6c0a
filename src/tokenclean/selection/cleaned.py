"""The ``select`` stage: score store + prepared dataset -> cleaned dataset, stats and manifest.

Output directory (``datasets.load_from_disk(DIR)``), one row per sample that keeps at least one token:

- ``sample_id`` (str), ``input_ids`` (int32 list), ``attention_mask`` (int8 list of ones),
  ``labels`` (int32 list: kept tokens keep their id, everything else -100; HF convention, the model shifts),
  ``response_labels`` (the labels before selection), ``score`` (float32 list, NaN where not scored),
  ``completion_mask`` (int8 list, 1 on kept tokens: the mask TRL's SFTTrainer applies when
  ``completion_only_loss=True``; the HF Trainer drops it with the other unused columns);
- ``selection_stats.json``: requested vs achieved ratio, kept/total response tokens, NaN scores,
  per-sample kept-fraction histogram, samples emptied, level, seed, threshold, tie rule;
- ``dropped.jsonl``: the samples emptied by selection (row, sample_id, response tokens);
- ``manifest.json``: stage "select", inputs (paths and hashes of the score store and the prepared data),
  settings, tokenizer identity (so ``tokenclean inspect`` finds it), counts, versions, and the size and
  SHA-256 of every file (``files``), checked before the output is reused.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.errors import ConfigError, DataError
from tokenclean.outputs import check_target, content_id, decide, file_digests, guarded, verify_input
from tokenclean.selection.masks import LEVELS, TIE_RULE, keep_mask, ratio_fraction
from tokenclean.selection.stats import describe, kept_per_sample, selection_stats, tie_decided
from tokenclean.selection.table import TokenTable, load_token_table, resolve_prepared_dir
from tokenclean.utils import (
    RESULT,
    atomic_dir,
    get_logger,
    package_versions,
    read_json,
    sha256_file,
    sha256_json,
    sha256_tree,
    write_json_atomic,
)

log = get_logger("select")

SELECT_VERSION = 1  # bump when the output of select changes for the same inputs
TIE_WARN_SHARE = 0.1  # warn when ties at the cut chose at least this share of the kept tokens
MAX_CHUNK_TOKENS = 1 << 30  # Arrow list offsets are int32: keep every chunk well below 2**31 values


def cleaned_features(with_weights: bool = False) -> Any:
    import datasets

    ints = datasets.Sequence(datasets.Value("int32"))
    extra = {"weights": datasets.Sequence(datasets.Value("float32"))} if with_weights else {}
    return datasets.Features(
        {
            "sample_id": datasets.Value("string"),
            "input_ids": ints,
            "attention_mask": datasets.Sequence(datasets.Value("int8")),
            "labels": ints,
            "response_labels": ints,
            "score": datasets.Sequence(datasets.Value("float32")),
            "completion_mask": datasets.Sequence(datasets.Value("int8")),
            **extra,
        }
    )


def position_labels(table: TokenTable, keep: np.ndarray) -> np.ndarray:
    """Labels after selection, per position: (T,) int32; ``keep`` is the (N,) mask over response tokens."""
    kept_pos = table.response_positions[keep]  # (n_kept,) flat positions
    out = np.full(table.labels.size, IGNORE_INDEX, dtype=np.int32)
    out[kept_pos] = table.labels[kept_pos]
    return out


def list_array(values: np.ndarray, lengths: np.ndarray) -> Any:
    """A list column from flat values and row lengths, chunked so no chunk overflows int32 offsets."""
    import pyarrow as pa

    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])  # (S+1,)
    bounds = [0]  # row boundaries of the chunks
    while bounds[-1] < lengths.size:
        start = bounds[-1]
        end = int(np.searchsorted(offsets, offsets[start] + MAX_CHUNK_TOKENS, side="right")) - 1
        bounds.append(max(end, start + 1))
    if len(bounds) == 1:
        bounds.append(0)  # no rows: one empty chunk
    chunks = [
        pa.ListArray.from_arrays(
            pa.array((offsets[a : b + 1] - offsets[a]).astype(np.int32)),
            pa.array(values[offsets[a] : offsets[b]]),
        )
        for a, b in itertools.pairwise(bounds)
    ]
    return pa.chunked_array(chunks)


def cleaned_arrow(
    table: TokenTable, keep: np.ndarray, weights: np.ndarray | None = None
) -> tuple[Any, np.ndarray]:
    """The cleaned rows as a pyarrow Table, and the (S,) bool mask of rows kept (>= 1 kept token).
    With ``weights`` ((N,) over response tokens) a ``weights`` column holds them per position (0 elsewhere)."""
    import pyarrow as pa

    kept_rows = kept_per_sample(keep, table.response_offsets) > 0  # (S,)
    lengths = np.diff(table.offsets)  # (S,)
    pos_rows = np.repeat(kept_rows, lengths)  # (T,) positions of kept rows
    new_labels = position_labels(table, keep)[pos_rows]  # (T_kept,)
    lens = lengths[kept_rows]
    ones = np.ones(int(lens.sum()), dtype=np.int8)
    cols = {
        "sample_id": pa.array(table.sample_ids[kept_rows].tolist(), type=pa.string()),
        "input_ids": list_array(table.input_ids[pos_rows], lens),
        "attention_mask": list_array(ones, lens),
        "labels": list_array(new_labels, lens),
        "response_labels": list_array(table.labels[pos_rows], lens),
        "score": list_array(table.score[pos_rows], lens),
        "completion_mask": list_array((new_labels != IGNORE_INDEX).astype(np.int8), lens),
    }
    if weights is not None:
        flat_w = np.zeros(table.labels.size, dtype=np.float32)  # (T,)
        flat_w[table.response_positions] = np.where(keep, weights, 0.0)
        cols["weights"] = list_array(flat_w[pos_rows], lens)
    return pa.table(cols, schema=cleaned_features(weights is not None).arrow_schema), kept_rows


def _emptied_records(table: TokenTable, kept_rows: np.ndarray) -> list[dict[str, Any]]:
    n_resp = np.diff(table.response_offsets)
    return [
        {
            "kind": "emptied",
            "row": int(i),
            "sample_id": str(table.sample_ids[i]),
            "response_tokens": int(n_resp[i]),
        }
        for i in np.flatnonzero(~kept_rows)
    ]


def _inputs(scores_dir: Path, prep: Path) -> dict[str, Any]:
    """The identities of the two inputs, after checking their files and that they belong together."""
    sm = verify_input(scores_dir, hint="re-run tokenclean score (with --force)")
    pm = verify_input(prep, hint="re-run tokenclean prepare (with --force)")
    return {
        "scores": {
            "dir": str(scores_dir.resolve()),
            "sha256": content_id(sm["files"]) if sm.get("files") else sha256_tree(scores_dir),
            "scorer": sm.get("scorer"),
            "base": sm.get("base"),
            "reference": sm.get("reference"),
            "dtype": sm.get("dtype"),
        },
        "prepared": {
            "dir": str(prep.resolve()),
            "cache_key": pm.get("cache_key"),
            "manifest_sha256": sha256_file(prep / "manifest.json"),
            "content": content_id(pm["files"]) if pm.get("files") else None,
        },
        "tokenizer": pm.get("tokenizer"),
        "template": pm.get("template"),
    }


def check_same_data(scores_dir: Path, prep: Path) -> None:
    """The store must come from this prepared dataset: equal sample ids and lengths are not enough, the
    prepared key the store recorded must be the key in ``prep``'s manifest."""
    sm, pm = read_json(scores_dir / "manifest.json"), read_json(prep / "manifest.json")
    want, got = sm.get("prepared_cache_key"), pm.get("cache_key")
    if want and got and want != got:
        raise DataError(
            str(prep),
            f"is not the prepared data the score store {scores_dir} was computed from: the store records "
            f"prepared key {want}, {prep}/manifest.json has key {got} (same sample ids and lengths do not "
            f"make the same data); pass the store's own prepared dataset ({sm.get('prepared_dir')})",
            field="cache_key",
        )


def _settings(level: str, ratio: float | None, seed: int, threshold: float | None, column: str) -> dict:
    """Checked settings; ``ratio`` is recorded as None for ``threshold`` and ``threshold`` as None otherwise."""
    if level not in LEVELS:
        raise ConfigError(f"level: unknown '{level}' (valid: {', '.join(LEVELS)})")
    if level == "threshold":
        if threshold is None or not math.isfinite(float(threshold)):
            raise ConfigError(
                f"threshold: level 'threshold' needs a finite threshold value, got {threshold!r}"
            )
        ratio = None
    else:
        if ratio is None:
            raise ConfigError(f"ratio: level '{level}' needs a ratio in [0, 1]")
        ratio_fraction(ratio)
        threshold = None
    return {"level": level, "ratio": ratio, "seed": seed, "threshold": threshold, "column": column}


def write_cleaned(
    out: str | Path,
    table: TokenTable,
    keep: np.ndarray,
    stats: dict[str, Any],
    manifest: dict[str, Any],
    weights: np.ndarray | None = None,
) -> None:
    """Write the cleaned dataset, its stats, emptied samples and manifest atomically into ``out``."""
    import datasets

    arrow, kept_rows = cleaned_arrow(table, keep, weights)
    features = cleaned_features(weights is not None)
    ds = datasets.Dataset(
        arrow, info=datasets.DatasetInfo(features=features), fingerprint=manifest["cache_key"][:32]
    )
    with atomic_dir(out) as tmp:
        ds.save_to_disk(str(tmp))
        with open(tmp / "dropped.jsonl", "w") as f:
            for rec in _emptied_records(table, kept_rows):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        write_json_atomic(tmp / "selection_stats.json", stats)
        write_json_atomic(tmp / "manifest.json", dict(manifest, files=file_digests(tmp)))


def _select_one(
    table: TokenTable,
    keep: np.ndarray,
    settings: dict,
    inputs: dict,
    key: str,
    out: Path,
    t0: float,
    weights: np.ndarray | None = None,
) -> dict[str, Any]:
    s = settings
    if not keep.any():
        raise DataError(
            str(out),
            f"selection kept no token ({s['level']}, ratio={s['ratio']}, threshold={s['threshold']}); "
            "nothing to train on",
        )
    stats = selection_stats(
        keep, table.response_scores, table.response_offsets, s["level"], s["ratio"], s["seed"], s["threshold"]
    )
    stats["tie_decided_tokens"] = tie_decided(keep, table.response_scores, table.response_offsets, s["level"])
    warn_if_ties_decide(stats, out)
    manifest = dict(
        stage="select",
        cache_key=key,
        **s,
        **inputs,
        counts={
            k: stats[k] for k in ("kept_tokens", "total_response_tokens", "samples_kept", "samples_emptied")
        },
        versions=package_versions(),
    )
    if weights is not None:
        stats["weights"] = weight_stats(weights, keep, s)
        manifest["weights"] = stats["weights"]
    write_cleaned(out, table, keep, stats, dict(manifest, seconds=round(time.time() - t0, 3)), weights)
    log.info("%s -> %s", describe(stats, s["level"]), out, extra=RESULT)
    return stats


def _reusable(out: Path, identity: dict, force: bool, replace_stale: bool) -> dict[str, Any] | None:
    old = decide(out, "select", identity, force=force, replace_stale=replace_stale)
    if old is None:
        return None
    return dict(read_json(out / "selection_stats.json"), reused=True)


def warn_if_ties_decide(stats: dict[str, Any], out: Path) -> None:
    """Warn when equal scores, not the scores, chose a large share of the kept tokens."""
    n, kept = stats.get("tie_decided_tokens", 0), stats["kept_tokens"]
    if kept and n >= TIE_WARN_SHARE * kept:
        log.warning(
            "%s: ties decided %d of the %d kept tokens (%.0f%%): that many tokens share the score at the cut "
            "and were taken in dataset order (%s), not by score; the scores may carry little information "
            "(all zero when the reference equals the base)",
            out,
            n,
            kept,
            100 * n / kept,
            TIE_RULE,
        )


def select(
    scores_dir: str | Path,
    ratio: float | None,
    level: str,
    out: str | Path,
    seed: int = 42,
    threshold: float | None = None,
    prepared_dir: str | Path | None = None,
    column: str = "score",
    force: bool = False,
    weights: str | None = None,
    temperature: float = 1.0,
    replace_stale: bool = False,
) -> dict[str, Any]:
    """Select tokens from a score store and write the cleaned dataset to ``out``. Returns the stats dict.

    ``level``: global | sample | random | threshold (see :mod:`tokenclean.selection.masks`); ``ratio`` is
    K in [0, 1] (unused by threshold); ``seed`` drives ``random``; ``threshold`` keeps ``score > value``.
    The same inputs and settings reuse an existing ``out`` (its files verified) unless ``force``; an
    ``out`` that is not a selection, or one of other inputs or settings, is refused unless ``force`` (or
    ``replace_stale``, for a pipeline's own stage directory); see :mod:`tokenclean.outputs`.
    """
    return select_many(
        scores_dir,
        [ratio],
        [out],
        level,
        seed,
        threshold,
        prepared_dir,
        column,
        force,
        weights,
        temperature,
        replace_stale,
    )[0]


@guarded("select", out="outs", inputs=("scores_dir", "prepared_dir"))
def select_many(
    scores_dir: str | Path,
    ratios: Sequence[float | None],
    outs: Sequence[str | Path],
    level: str = "global",
    seed: int = 42,
    threshold: float | None = None,
    prepared_dir: str | Path | None = None,
    column: str = "score",
    force: bool = False,
    weights: str | None = None,
    temperature: float = 1.0,
    replace_stale: bool = False,
) -> list[dict[str, Any]]:
    """Score once, select many: one cleaned dataset per ratio from one load of the store and the data.
    Masks of a global sweep are nested (a larger K keeps a superset). With ``weights="sigmoid"`` (soft
    Token Cleaning, level global only) every scored response token is kept with the weight
    ``sigmoid((score - tau) / temperature)``, ``tau`` the score at the global top-K cut (see
    :func:`soft_weights`), written as a ``weights`` column for ``train.policy: weights``."""
    if len(ratios) != len(outs):
        raise ConfigError(f"ratios/outs: {len(ratios)} ratios but {len(outs)} output directories")
    t0 = time.time()
    scores_dir = Path(scores_dir)
    prep = resolve_prepared_dir(scores_dir, prepared_dir)
    for o in outs:
        check_target(o, "select", [scores_dir, prep])
    inputs = _inputs(scores_dir, prep)
    jobs = []
    for r, o in zip(ratios, outs):
        settings = _settings(level, r, seed, threshold, column)
        if weights is not None:
            settings = _weight_settings(settings, weights, temperature)
        identity = {
            "v": SELECT_VERSION,
            "settings": settings,
            "inputs": inputs["scores"]["sha256"],
            "prep": inputs["prepared"],
        }
        key = sha256_json(identity)
        reused = _reusable(Path(o), identity, force, replace_stale)
        jobs.append((settings, key, identity, Path(o), reused))
    if all(j[4] is not None for j in jobs):
        return [j[4] for j in jobs]  # type: ignore[misc]
    table = load_token_table(scores_dir, prep, column)
    check_same_data(scores_dir, prep)
    scores, offsets = table.response_scores, table.response_offsets
    if scores.size and np.isnan(scores).all():
        raise DataError(
            str(scores_dir),
            f"every one of the {scores.size} response-token scores (column '{column}') is NaN: the store "
            "holds no usable score, whatever the level; re-run tokenclean score (with --force)",
            field=column,
        )
    if weights is not None and scores.size and not np.isfinite(scores).any():
        n_inf = int(np.isinf(scores).sum())
        raise DataError(
            str(scores_dir),
            f"no response-token score (column '{column}') is finite ({n_inf} are +-inf, the rest NaN): soft "
            "weights place their cut between finite scores; re-run tokenclean score, or select without --weights",
            field=column,
        )
    results = []
    for settings, key, identity, out, reused in jobs:
        if reused is not None:
            results.append(reused)
            continue
        keep = keep_mask(level, scores, offsets, settings["ratio"], seed, threshold)  # O(N) for global
        w = None
        if weights is not None:
            w = soft_weights(scores, keep, temperature)
            keep = w > 0
        results.append(_select_one(table, keep, settings, dict(inputs, identity=identity), key, out, t0, w))
    return results


WEIGHT_MAPPINGS = ("sigmoid",)


def _weight_settings(settings: dict, mapping: str, temperature: float) -> dict:
    if mapping not in WEIGHT_MAPPINGS:
        raise ConfigError(f"weights: unknown mapping '{mapping}' (valid: {', '.join(WEIGHT_MAPPINGS)})")
    if settings["level"] != "global":
        raise ConfigError(
            f"weights: the '{mapping}' mapping centres on the global top-K cut; use --level global"
        )
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ConfigError(f"temperature: expected a positive number, got {temperature!r}")
    return dict(settings, weights=mapping, temperature=t)


def soft_weights(scores: np.ndarray, hard_keep: np.ndarray, temperature: float) -> np.ndarray:
    """Soft Token Cleaning: ``w = sigmoid((score - tau) / temperature)`` per response token, float32 (N,).

    ``tau`` is the midpoint between the lowest kept and the highest dropped score of the hard global top-K
    selection ``hard_keep``, so a token at the cut gets ~0.5, the hard-kept tokens mostly above it and the
    dropped ones below; ``temperature`` (nats of score) sets how soft the cut is (-> 0: the hard selection).
    Unscored (NaN) tokens get 0. The training loss is then ``sum w*l / sum w`` (policy ``weights``)."""
    ok = ~np.isnan(scores)
    finite = np.isfinite(scores)  # the cut sits between finite scores; +-inf get weight 1 / 0
    kept, dropped = scores[hard_keep & finite], scores[~hard_keep & finite]
    if kept.size and dropped.size:
        tau = 0.5 * (float(kept.min()) + float(dropped.max()))
    elif kept.size:
        tau = float(kept.min())
    else:
        tau = float(dropped.max()) if dropped.size else 0.0
    with np.errstate(invalid="ignore"):  # NaN scores: weight 0 below
        z = (scores.astype(np.float64) - tau) / temperature
    w = 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))
    return np.where(ok, w, 0.0).astype(np.float32)


def weight_stats(weights: np.ndarray, keep: np.ndarray, settings: dict) -> dict[str, Any]:
    w = weights[keep]
    return {
        "mapping": settings.get("weights"),
        "temperature": settings.get("temperature"),
        "sum": float(w.sum()),
        "mean": float(w.mean()) if w.size else None,
        "share_above_half": float((w > 0.5).mean()) if w.size else None,
        "effective_tokens": float(w.sum()),
    }
