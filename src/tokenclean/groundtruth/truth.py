"""Map the generator's per-character truth onto token positions of a prepared dataset.

The generator's rows carry their spans in the same format as a user's truth file, so both go through the
one mapping of :mod:`tokenclean.groundtruth.user_truth`. Noise spans are labelled by the kind of noise of
their sample (``noise:wrong_fact``, ``noise:gibberish``); :func:`classes` folds labels into the four token
classes the recovery metrics use.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean.groundtruth.user_truth import TokenTruth, build_truth

NOT_RESPONSE, UNINFORMATIVE, INFORMATIVE, NOISE = -1, 0, 1, 2
LABELS = {"uninformative": UNINFORMATIVE, "informative": INFORMATIVE, "noise": NOISE}
DEFAULT_POSITIVE = ("informative",)
DEFAULT_NOISE = ("noise", "hallucination")


def is_noise_label(noise: Collection[str]) -> Callable[[str], bool]:
    """A label is noise when it is listed in ``noise`` or is ``N:kind`` for a listed ``N``."""
    return lambda name: name in noise or name.split(":", 1)[0] in noise


def classes(
    tt: TokenTruth,
    ids: list[str],
    positive: Collection[str] = DEFAULT_POSITIVE,
    noise: Collection[str] = DEFAULT_NOISE,
) -> list[np.ndarray]:
    """Per sample (in ``ids`` order), int8 per position: -1 not a response token, 1 a ``positive`` label,
    2 a ``noise`` label, 0 anything else (other labels and unlabelled tokens)."""
    is_noise = is_noise_label(noise)
    lut = np.array(
        [INFORMATIVE if n in positive else NOISE if is_noise(n) else UNINFORMATIVE for n in tt.names],
        dtype=np.int8,
    )
    out = []
    for sid in ids:
        lab = tt.samples[sid].labels
        cls = np.full(len(lab), NOT_RESPONSE, dtype=np.int8)
        resp = lab >= 0
        cls[resp] = lut[lab[resp]]
        out.append(cls)
    return out


def pool_annotations(source_jsonl: str | Path) -> dict[str, tuple[str, Any, Any]]:
    """The generator's spans as truth-file annotations, noise labelled by its kind."""
    out = {}
    with open(source_jsonl) as f:
        for n, line in enumerate(f, 1):
            row = json.loads(line)
            kind = row.get("noise", "none")
            spans = [[s, e, f"noise:{kind}" if lab == "noise" else lab] for s, e, lab in row["truth"]]
            out[str(row["id"])] = (f"{source_jsonl}:{n}", spans, row.get("decisive"))
    return out


def pool_truth(source_jsonl: str | Path, prepared_dir: str | Path, tokenizer: Any) -> TokenTruth:
    """Token truth (labels and decisive tokens) of a prepared generated pool."""
    import datasets

    from tokenclean.data.formats import read_records
    from tokenclean.utils import read_json

    template = read_json(Path(prepared_dir) / "manifest.json")["template"]
    ds = datasets.load_from_disk(str(prepared_dir))
    return build_truth(read_records(source_jsonl), pool_annotations(source_jsonl), ds, tokenizer, template)


def token_truth(source_jsonl: str | Path, prepared_dir: str | Path, tokenizer: Any) -> list[np.ndarray]:
    """Per prepared sample, an int8 array over positions: -1 not a response token, 0 uninformative,
    1 informative, 2 noise. Rows are matched by sample id."""
    import datasets

    tt = pool_truth(source_jsonl, prepared_dir, tokenizer)
    ids = datasets.load_from_disk(str(prepared_dir))["sample_id"]
    return classes(tt, ids)
