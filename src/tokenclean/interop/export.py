"""``tokenclean export``: a cleaned or weighted dataset in the form another trainer reads without code.

Every target is pre-tokenized (the tokens tokenclean scored, never re-rendered by the other tool), so a
kept token is trained there exactly when it is kept here:

- ``trl``: ``data/`` (``save_to_disk``: ``input_ids``, ``attention_mask``, ``labels`` and ``weights``
  when the set has them) for :func:`tokenclean.interop.sft_trainer`; token level, weights included.
- ``jsonl-weights``: ``data.jsonl``, one sample a line (``sample_id``, ``input_ids``, ``labels``,
  ``weights``; weight 1.0 on every kept token of a set without weights): token level, for other tools.
- ``axolotl``: ``train.jsonl`` with exactly ``input_ids``, ``attention_mask``, ``labels`` (axolotl's
  pre-tokenized form: a dataset entry without ``type:``).
- ``llamafactory``: ``tokenized/`` (a ``DatasetDict`` with a ``train`` split of the same three columns),
  read by LLaMA-Factory's ``tokenized_path``, which skips its own preprocessing.

axolotl and LLaMA-Factory have token-level masks (``labels``) but no per-token loss weights: a weighted
set goes to them as a 0/1 mask (tokens with weight >= ``min_weight`` count with weight 1), which loses
the weights' magnitudes; the manifest and README say how much weight mass that moved. Beside the data,
``README.md`` and a config file (``axolotl.yaml``, ``llamafactory.yaml``, ``train_trl.py``) hold the exact
lines to train on it. Samples with no counted token are left out (counted). ``manifest.json`` (stage
``export``) is written last; the output follows :mod:`tokenclean.outputs` (refused when foreign, reused
when the same, atomic).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.errors import ConfigError
from tokenclean.outputs import decide, file_digests, guarded
from tokenclean.utils import atomic_dir, get_logger, package_versions, sha256_json, sha256_tree

log = get_logger("export")

TARGETS = ("trl", "jsonl-weights", "axolotl", "llamafactory")
EXPORT_VERSION = 1


def _rows(data: Any, min_weight: float, target: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per sample its exported columns, and what the export kept and lost."""
    soft = data.weights is not None
    token_weights = target in ("trl", "jsonl-weights")
    rows, mass, moved, dropped = [], 0.0, 0.0, 0
    for i, sid in enumerate(data.sample_ids):
        ids = np.asarray(data.input_ids[i], dtype=np.int64)
        lab = np.asarray(data.labels[i], dtype=np.int64).copy()
        w = (
            np.asarray(data.weights[i], dtype=np.float64)
            if soft
            else (lab != IGNORE_INDEX).astype(np.float64)
        )
        w[0], lab[0] = 0.0, IGNORE_INDEX  # position 0 is never trained
        if soft and not token_weights:  # weights -> a 0/1 mask
            keep = w >= min_weight
            moved += float(np.abs(np.where(keep, 1.0, 0.0) - w).sum())
            lab, w = np.where(keep, lab, IGNORE_INDEX), keep.astype(np.float64)
        mass += float(w.sum())
        if not (lab != IGNORE_INDEX).any():
            dropped += 1
            continue
        att = np.ones(len(ids), np.int64) if data.attention_mask is None else data.attention_mask[i]
        row = {"sample_id": sid, "input_ids": ids.tolist(), "attention_mask": np.asarray(att).tolist()}
        row["labels"] = lab.tolist()
        if token_weights and (soft or target == "jsonl-weights"):
            row["weights"] = w.astype(np.float32).tolist()
        rows.append(row)
    stats = {"samples": len(rows), "samples_left_out_no_kept_token": dropped, "weight_sum": round(mass, 6)}
    stats["kept_tokens"] = int(sum(sum(x != IGNORE_INDEX for x in r["labels"]) for r in rows))
    stats["max_length"] = max((len(r["input_ids"]) for r in rows), default=0)
    if soft and not token_weights:
        stats["weight_mass_moved"] = round(moved, 6)  # sum |mask - w|: what the 0/1 mask changed
    return rows, stats


def _loss_note(target: str, soft: bool, min_weight: float, stats: dict[str, Any]) -> str:
    if target in ("trl", "jsonl-weights"):
        return "nothing: token-level labels" + (" and per-token weights" if soft else "")
    if not soft:
        return "nothing: token-level labels (the kept tokens) as pre-tokenized labels"
    return (
        f"the soft weights' magnitudes: {target} has no per-token loss weights, so tokens with weight >= "
        f"{min_weight} count with weight 1 and the others not at all (sum |mask - weight| = "
        f"{stats['weight_mass_moved']}). For the exact weights train with --to trl (tokenclean.interop."
        "sft_trainer) or `tokenclean train --policy weights`"
    )


@guarded("export", inputs=("data",))
def export(
    data: str | Path, target: str, out: str | Path, min_weight: float = 0.5, force: bool = False
) -> dict[str, Any]:
    """Write ``data`` (a prepared, cleaned or weighted dataset) for ``target`` into ``out``; returns the
    manifest (see the module doc)."""
    from tokenclean.training.data import load_train_data

    if target not in TARGETS:
        raise ConfigError(f"--to: unknown target {target!r} (valid: {', '.join(TARGETS)})")
    if not 0 < min_weight <= 1:
        raise ConfigError(f"--min-weight: expected 0 < min_weight <= 1, got {min_weight}")
    out, data = Path(out), Path(data)
    identity = {"v": EXPORT_VERSION, "data": sha256_tree(data), "to": target, "min_weight": min_weight}
    old = decide(out, "export", identity, force=force)
    if old is not None:
        return dict(old, reused=True)
    src = load_train_data(data, 1 << 30)  # validated; nothing truncated
    rows, stats = _rows(src, min_weight, target)
    tok = (src.manifest.get("tokenizer") or {}).get("source") or "MODEL"
    manifest = {
        "stage": "export",
        "identity": identity,
        "key": sha256_json(identity),
        "input": str(data.resolve()),
        "to": target,
        "tokenizer": tok,
        "counts": stats,
        "lost": _loss_note(target, src.weights is not None, min_weight, stats),
        "versions": package_versions(),
    }
    from tokenclean.interop.export_targets import WRITERS

    with atomic_dir(out) as tmp:
        WRITERS[target](tmp, rows, out.resolve(), manifest)
        manifest["files"] = file_digests(tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info(
        "exported %d samples (%d kept tokens) for %s -> %s",
        stats["samples"],
        stats["kept_tokens"],
        target,
        out,
    )
    return manifest


__all__ = ["TARGETS", "export"]
