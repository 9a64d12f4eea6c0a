"""Map the generator's per-character truth onto token positions of a prepared dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.data.formats import Message
from tokenclean.data.labels import tokenize_rendered
from tokenclean.data.templates import render

NOT_RESPONSE, UNINFORMATIVE, INFORMATIVE, NOISE = -1, 0, 1, 2
LABELS = {"uninformative": UNINFORMATIVE, "informative": INFORMATIVE, "noise": NOISE}


def _row_truth(
    row: dict[str, Any], tokenizer: Any, template: str, input_ids: list[int], labels: list[int]
) -> np.ndarray:
    msgs = [Message(m["role"], m["content"]) for m in row["messages"]]
    r = render(msgs, tokenizer, template)
    ids, offsets = tokenize_rendered(r, tokenizer)
    if ids[: len(input_ids)] != list(input_ids):
        raise ValueError(f"sample {row.get('id')}: prepared tokens differ from the re-rendered sample")
    content_start = r.trained[0][0]  # single assistant turn: its content starts the first trained span
    out = np.full(len(input_ids), NOT_RESPONSE, dtype=np.int8)
    for j in range(len(input_ids)):
        if labels[j] == IGNORE_INDEX:
            continue
        a, b = offsets[j]
        cls = UNINFORMATIVE  # EOS and anything outside the content spans
        for s, e, name in row["truth"]:
            if a < content_start + e and b > content_start + s:
                cls = max(cls, LABELS[name])  # noise > informative > uninformative on overlap
        out[j] = cls
    return out


def token_truth(source_jsonl: str | Path, prepared_dir: str | Path, tokenizer: Any) -> list[np.ndarray]:
    """Per prepared sample, an int8 array over positions: -1 not a response token, 0 uninformative,
    1 informative, 2 noise. Rows are matched by sample id."""
    import datasets

    rows = {}
    with open(source_jsonl) as f:
        for line in f:
            row = json.loads(line)
            rows[str(row["id"])] = row
    ds = datasets.load_from_disk(str(prepared_dir))
    manifest = json.loads((Path(prepared_dir) / "manifest.json").read_text())
    template = manifest["template"]
    out = []
    for ex in ds:
        out.append(_row_truth(rows[ex["sample_id"]], tokenizer, template, ex["input_ids"], ex["labels"]))
    return out
