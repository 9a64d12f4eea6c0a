"""``tokenclean split``: cut an SFT file into a held-out file and seeded, equal parts (part 0 = the warm-up
slice), written as JSONL with every record unchanged.

The parts are the cut ``tokenclean run`` makes of its pool (:func:`split_indices`, the same seed and number
of parts), so ``part_0.jsonl`` is the run's warm-up slice whenever prepare drops no row of ``train.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenclean.errors import ConfigError
from tokenclean.outputs import guarded
from tokenclean.utils import atomic_dir

MARKER = "split.json"


def split_indices(n: int, parts: int, seed: int) -> list[list[int]]:
    """A seeded permutation of ``range(n)`` cut into ``parts`` near-equal parts (sorted within each part)."""
    import numpy as np

    perm = np.random.default_rng(seed).permutation(n)
    return [sorted(int(i) for i in chunk) for chunk in np.array_split(perm, parts)]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


@guarded("split", inputs=("source",))
def split_file(
    source: str, out: str | Path, heldout: float = 0.0, parts: int = 1, seed: int = 42
) -> dict[str, Any]:
    """Write ``out/heldout.jsonl`` (a seeded ``heldout`` share of the rows, at least one when > 0),
    ``out/train.jsonl`` (the rest) and, with ``parts > 1``, ``out/part_{i}.jsonl`` of the rest; returns the
    counts (also written to ``out/split.json``, its marker). Rows are copied as they are, in file order within a
    file. The output rule of :mod:`tokenclean.outputs` applies: a directory that is not a split is refused,
    the output is locked while written and replaced atomically."""
    from tokenclean.data.formats import iter_raw_rows

    if not 0 <= heldout < 1:
        raise ConfigError(f"--heldout: a share in [0, 1), got {heldout}")
    if parts < 1:
        raise ConfigError(f"--parts: >= 1, got {parts}")
    out = Path(out)
    rows = [row for _, _, row in iter_raw_rows(source)]
    n_held = max(1, round(len(rows) * heldout)) if heldout > 0 else 0
    if len(rows) - n_held < parts:
        raise ConfigError(f"{source}: {len(rows)} rows cannot give {n_held} held-out rows and {parts} parts")
    held: list[int] = []
    train = list(range(len(rows)))
    if n_held:  # the first n_held rows of a seeded permutation are held out
        import numpy as np

        perm = np.random.default_rng(seed).permutation(len(rows))
        held, train = sorted(perm[:n_held].tolist()), sorted(perm[n_held:].tolist())
    files = {"train.jsonl": train} | ({"heldout.jsonl": held} if held else {})
    if parts > 1:
        for i, ix in enumerate(split_indices(len(train), parts, seed)):
            files[f"part_{i}.jsonl"] = [train[j] for j in ix]
    counts = {name: len(ix) for name, ix in files.items()}
    info = {
        "stage": "split",
        "source": str(source),
        "rows": len(rows),
        "heldout": heldout,
        "parts": parts,
        "seed": seed,
    }
    with atomic_dir(out) as tmp:
        for name, ix in files.items():
            _write_jsonl(tmp / name, [rows[i] for i in ix])
        (tmp / MARKER).write_text(json.dumps(dict(info, files=counts), indent=2) + "\n")
    return dict(info, files=counts)
