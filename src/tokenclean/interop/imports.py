"""``tokenclean import-weights``: loss masks and weights users already have, as tokenclean labels/weights.

Three sources, each onto a prepared dataset (``tokenclean prepare`` of the same data, so the tokens are the
ones the data layer's one label builder made):

- **message weights** (axolotl's ``weight`` on a message: ``{"role": "assistant", "content": ...,
  "weight": 0}`` in ``messages``, or ``{"from": "gpt", "value": ..., "weight": 0}`` in ``conversations``):
  every token of that assistant message's content takes the weight, and the template tokens that close the
  message (end-of-turn, EOS) take the weight of the content before them. Messages without one: 1.
- **span masks** (LLaMA-Factory-style "exclude these paragraphs"): a JSONL in the truth-file format of
  :mod:`tokenclean.groundtruth.user_truth` (``{"id": ..., "spans": [[start, end, label], ...]}``, character
  offsets into an assistant message's content, ``[turn, start, end, label]`` for several) whose labels are
  ``exclude`` (weight 0), ``include`` (1) or a number (that weight). A token takes the label covering most of
  its characters (the same mapping as ``data.truth``); tokens no span covers: 1.
- **per-token weight columns** of other tools (or ``tokenclean export --to jsonl-weights``): rows with an
  ``id``/``sample_id`` and ``weights``, one float per token of the prepared sample (same tokenizer);
  weights on prompt positions are ignored (counted in the manifest).

Output: the prepared columns with ``labels`` -100 wherever the weight is 0 (so any trainer drops those
tokens), plus a ``weights`` column when some weight is neither 0 nor 1 (``tokenclean train --policy
weights``, ``tokenclean export``). Samples left with no trained token are dropped (counted).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.errors import ConfigError, DataError
from tokenclean.outputs import decide, file_digests, guarded, verify_input
from tokenclean.utils import atomic_dir, get_logger, package_versions, read_json, sha256_file, sha256_tree

log = get_logger("import")

KINDS = ("messages", "spans", "tokens")


def _number(v: Any, loc: str, field: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise DataError(loc, f"expected a finite number >= 0, got {json.dumps(v)}", field=field)
    return float(v)


def message_spans(source: str | Path) -> dict[str, tuple[str, Any, Any]]:
    """Truth-style annotations ``{id: (location, [[turn, 0, len, "w=W"], ...], None)}`` from the ``weight``
    field of assistant messages (samples without one are left out)."""
    from tokenclean.data.formats import SHAREGPT_ROLES, iter_raw_rows, row_sample_id

    out: dict[str, tuple[str, Any, Any]] = {}
    for idx, loc, row in iter_raw_rows(source):
        key = "messages" if "messages" in row else "conversations" if "conversations" in row else None
        if key is None:
            raise DataError(
                loc, "message weights need a 'messages' or 'conversations' list", field="messages"
            )
        spans, turn, weighted = [], 0, False
        for i, m in enumerate(row[key] or []):
            role = m.get("role") or SHAREGPT_ROLES.get(str(m.get("from")))
            if role != "assistant":
                continue
            weighted |= "weight" in m
            w = _number(m["weight"], loc, f"{key}[{i}].weight") if "weight" in m else 1.0
            spans.append([turn, 0, len(str(m.get("content", m.get("value", "")))), f"w={w!r}"])
            turn += 1
        if weighted:
            out[row_sample_id(row, idx, loc)] = (loc, spans, None)
    return out


def _span_weight(name: str, where: str) -> float:
    if name.startswith("w="):
        return float(name[2:])
    if name in ("exclude", "include"):
        return 0.0 if name == "exclude" else 1.0
    try:
        w = float(name)
    except ValueError:
        raise DataError(
            where, f"span label {name!r}: expected exclude, include or a weight", "spans"
        ) from None
    if not math.isfinite(w) or w < 0:
        raise DataError(where, f"span label {name!r}: a weight must be finite and >= 0", "spans")
    return w


def truth_weights(truth: Any, fill_forward: bool, where: str) -> dict[str, np.ndarray]:
    """Per annotated sample its weight per position (0 off the response) from a :class:`TokenTruth`."""
    value = {k: _span_weight(n, where) for k, n in enumerate(truth.names) if k > 0}
    out = {}
    for sid, st in truth.samples.items():
        w = np.zeros(len(st.labels), dtype=np.float32)  # (T,)
        last = 1.0
        for j, k in enumerate(st.labels):
            if k < 0:
                continue
            w[j] = value[int(k)] if k > 0 else (last if fill_forward else 1.0)
            last = float(w[j]) if k > 0 or fill_forward else last
        out[sid] = w
    return out


def token_weight_rows(path: str | Path) -> dict[str, tuple[str, list[Any]]]:
    """``{sample_id: (location, weights)}`` of a per-token weights file."""
    from tokenclean.data.formats import iter_raw_rows, row_sample_id

    out: dict[str, tuple[str, list[Any]]] = {}
    for idx, loc, row in iter_raw_rows(path):
        if not isinstance(row.get("weights"), list):
            raise DataError(loc, "expected a list of per-token weights", field="weights")
        sid = row_sample_id(row, idx, loc)
        if sid in out:
            raise DataError(loc, f"duplicate id {sid!r} (first at {out[sid][0]})", field="id")
        out[sid] = (loc, row["weights"])
    return out


def _weights_for(kind: str, src: Path, prepared: Path, ds: Any, tokenizer: Any, fmt: str) -> dict[str, Any]:
    from tokenclean.groundtruth.user_truth import build_truth, read_truth_file

    if kind == "tokens":
        return token_weight_rows(src)
    from tokenclean.data.formats import read_records

    template = read_json(prepared / "manifest.json")["template"]
    data = read_json(prepared / "manifest.json")["input"]["path"]
    ann = message_spans(src) if kind == "messages" else read_truth_file(src)
    records = read_records(src if kind == "messages" else data, fmt)
    truth = build_truth(records, ann, ds, tokenizer, template)
    return truth_weights(truth, kind == "messages", str(src))


@guarded("import", inputs=("prepared", "source"))
def import_weights(
    prepared: str | Path,
    kind: str,
    source: str | Path,
    out: str | Path,
    tokenizer: Any = None,
    fmt: str = "auto",
    force: bool = False,
) -> dict[str, Any]:
    """Write ``prepared`` with the ``kind`` weights of ``source`` (module doc) into ``out``; returns the
    manifest. ``tokenizer``: the prepared set's (needed for messages and spans)."""
    if kind not in KINDS:
        raise ConfigError(f"kind: unknown {kind!r} (valid: {', '.join(KINDS)})")
    prepared, source, out = Path(prepared), Path(source), Path(out)
    pm = verify_input(prepared, hint="re-create it with tokenclean prepare")
    identity = {"prepared": sha256_tree(prepared), "kind": kind, "source": sha256_file(source), "format": fmt}
    old = decide(out, "import", identity, force=force)
    if old is not None:
        return dict(old, reused=True)
    import datasets

    ds = datasets.load_from_disk(str(prepared))
    if kind != "tokens" and tokenizer is None:
        raise ConfigError("tokenizer: message and span weights re-render the samples; pass the tokenizer")
    by_id = _weights_for(kind, source, prepared, ds, tokenizer, fmt)
    cols, counts = _apply(ds, by_id, kind)
    manifest: dict[str, Any] = {"stage": "import", "identity": identity, "kind": kind}
    manifest["source"] = str(source.resolve())
    manifest |= {"prepared": str(prepared.resolve()), "tokenizer": pm.get("tokenizer"), "counts": counts}
    manifest |= {
        "template": pm.get("template"),
        "max_length": pm.get("max_length"),
        "versions": package_versions(),
    }
    with atomic_dir(out) as tmp:
        datasets.Dataset.from_dict(cols).save_to_disk(str(tmp))
        manifest["files"] = file_digests(tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info("imported %s weights for %d samples -> %s", kind, counts["samples_weighted"], out)
    return manifest


def _sample_weights(kind: str, got: Any, lab: np.ndarray, sid: str, counts: dict[str, int]) -> np.ndarray:
    resp = lab != IGNORE_INDEX  # (T,)
    if kind != "tokens":
        return np.asarray(got, dtype=np.float32)
    loc, vals = got
    if len(vals) != len(lab):
        raise DataError(loc, f"{len(vals)} weights for sample {sid!r} of {len(lab)} tokens", field="weights")
    arr = np.array([_number(v, loc, f"weights[{j}]") for j, v in enumerate(vals)], dtype=np.float32)  # (T,)
    counts["prompt_weights_ignored"] += int(((arr != 0) & ~resp).sum())
    return np.where(resp, arr, 0.0).astype(np.float32)


def _apply(ds: Any, by_id: dict[str, Any], kind: str) -> tuple[dict[str, list[Any]], dict[str, int]]:
    """The prepared columns with the weights applied (labels -100 at weight 0), and the counts."""
    missing = sorted(set(by_id) - set(ds["sample_id"]))
    if missing:
        loc = by_id[missing[0]][0] if kind == "tokens" else str(missing[0])
        raise DataError(loc, f"{len(missing)} id(s) are not in the prepared set, e.g. {missing[0]!r}", "id")
    keys = [k for k in ds.column_names if k != "weights"]
    cols: dict[str, list[Any]] = {k: [] for k in keys}
    weights: list[np.ndarray] = []
    counts = {"samples_read": len(ds), "samples_weighted": 0, "samples_dropped_no_trained_token": 0}
    counts |= {"tokens_zero_weight": 0, "prompt_weights_ignored": 0}
    for row in ds:
        lab = np.asarray(row["labels"], dtype=np.int64)  # (T,)
        w = (lab != IGNORE_INDEX).astype(np.float32)
        if row["sample_id"] in by_id:
            w = _sample_weights(kind, by_id[row["sample_id"]], lab, row["sample_id"], counts)
            counts["samples_weighted"] += 1
        counts["tokens_zero_weight"] += int(((lab != IGNORE_INDEX) & (w == 0)).sum())
        lab = np.where(w > 0, lab, IGNORE_INDEX)
        if not (lab[1:] != IGNORE_INDEX).any():
            counts["samples_dropped_no_trained_token"] += 1
            continue
        for k in keys:
            cols[k].append(row[k])
        cols["labels"][-1] = lab.tolist()
        if "n_trained" in cols:
            cols["n_trained"][-1] = int((lab != IGNORE_INDEX).sum())
        weights.append(w)
    if any(((x > 0) & (x != 1)).any() for x in weights):
        cols["weights"] = [x.tolist() for x in weights]
    counts["samples"] = len(weights)
    return cols, counts


__all__ = ["KINDS", "import_weights", "message_spans", "token_weight_rows", "truth_weights"]
