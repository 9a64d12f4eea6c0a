"""``tokenclean truth from-steps``: write annotated reasoning traces as SFT data plus span truth, through
the one output mechanism (:mod:`tokenclean.outputs`): the output is locked, built atomically, refused when
it is not a truth output, reused when its identity (inputs, fields, style, separator, split) matches."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tokenclean.errors import DataError
from tokenclean.groundtruth.steps import (
    Split,
    StepFields,
    Style,
    Trace,
    _label_counts,
    _pick,
    _write_jsonl,
    read_traces,
    sample_and_truth,
)
from tokenclean.outputs import decide, file_digests, guarded
from tokenclean.utils import atomic_dir, get_logger, sha256_file

log = get_logger("truth")

STEPS_VERSION = 1  # bump when the output changes for the same inputs


def _read(paths: Sequence[str | Path], f: StepFields, style: Style) -> dict[str, list[Trace]]:
    by_file: dict[str, list[Trace]] = {str(p): [] for p in paths}  # input order, empty files too
    seen: dict[str, str] = {}
    for loc, t in read_traces(paths, f, style):
        if t.sample_id in seen:
            raise DataError(
                loc, f"duplicate id '{t.sample_id}' (first at {seen[t.sample_id]})", field=f.id or "id"
            )
        seen[t.sample_id] = loc
        by_file.setdefault(loc.rsplit(":", 1)[0], []).append(t)
    if not seen:
        raise DataError(str(paths[0]), "no trace found (the file is empty)")
    return by_file


@guarded("truth", inputs=("data",))
def from_steps(
    data: Sequence[str | Path],
    out: str | Path,
    fields: StepFields | None = None,
    style: Style = "auto",
    sep: str = "\n",
    split: Split | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write ``out/data.jsonl`` (SFT samples), ``out/truth.jsonl`` (their span truth), ``out/heldout.jsonl``
    (error-free held-out traces, when ``split.heldout``) and ``out/manifest.json``; returns the manifest."""
    out = Path(out)
    fields = fields or StepFields()
    split = split or Split()
    identity = {
        "v": STEPS_VERSION,
        "inputs": [sha256_file(p) for p in data],
        "fields": asdict(fields),
        "style": style,
        "sep": sep,
        "split": asdict(split),
    }
    old = decide(out, "truth", identity, force=force)
    if old is not None:
        return dict(old, reused=True)
    by_file = _read(data, fields, style)
    pool: list[Trace] = []
    held: list[Trace] = []
    per_file: dict[str, Any] = {}
    if len(split.limit) > 1 and len(split.limit) != len(data):
        raise DataError(
            "--limit", f"give one value or one per --data file ({len(data)}), got {len(split.limit)}"
        )
    for k, (path, traces) in enumerate(by_file.items()):
        p, h, skipped = _pick(traces, split, sep, k)
        pool += p
        held += h
        per_file[path] = {
            "traces": len(traces),
            "pool": len(p),
            "pool_with_error": sum(t.has_error for t in p),
            "heldout": len(h),
            "skipped_too_long": skipped,
        }
    if not pool:
        raise DataError(str(data[0]), "no trace is left for the pool (check --limit, --max-chars, --heldout)")
    rows = [sample_and_truth(t, sep) for t in pool]
    manifest: dict[str, Any] = {
        "stage": "truth",
        "identity": identity,
        "inputs": [str(p) for p in data],
        "files": {},
        "per_file": per_file,
        "steps_by_label": _label_counts(pool),
        "samples": len(pool),
        "heldout": len(held),
    }
    with atomic_dir(out) as tmp:
        _write_jsonl(tmp / "data.jsonl", [s for s, _ in rows])
        _write_jsonl(tmp / "truth.jsonl", [t for _, t in rows])
        if split.heldout:
            _write_jsonl(tmp / "heldout.jsonl", [sample_and_truth(t, sep)[0] for t in held])
        manifest["files"] = file_digests(tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info("wrote %s: %d samples, %d held out", out, len(pool), len(held))
    return manifest
