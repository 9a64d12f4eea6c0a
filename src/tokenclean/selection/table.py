"""Reading a score store and its prepared dataset into flat (CSR) arrays, checked row by row.

No Python lists of tokens: columns are read from Arrow as flat numpy arrays plus per-row lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.columns import flat_list
from tokenclean.errors import DataError


@dataclass(frozen=True)
class TokenTable:
    """Every position of every sample, flat. ``offsets`` (S+1,) delimits samples in the (T,) arrays.

    The response views are computed once per table (cached)."""

    sample_ids: np.ndarray  # (S,) object (str)
    offsets: np.ndarray  # (S+1,) int64 into the per-position arrays
    input_ids: np.ndarray  # (T,) int32
    labels: np.ndarray  # (T,) int32, IGNORE_INDEX where not trained
    score: np.ndarray  # (T,) float32, NaN where not scored

    @cached_property
    def response_positions(self) -> np.ndarray:
        """Flat indices of response (trained) positions, ascending: (N,) int64."""
        return np.flatnonzero(self.labels != IGNORE_INDEX)

    @cached_property
    def response_offsets(self) -> np.ndarray:
        """CSR offsets of the response tokens per sample: (S+1,) int64."""
        csum = np.concatenate([[0], np.cumsum(self.labels != IGNORE_INDEX, dtype=np.int64)])  # (T+1,)
        return csum[self.offsets]

    @cached_property
    def response_scores(self) -> np.ndarray:
        """Scores of response tokens in CSR order: (N,) float32 (the input of the mask functions)."""
        return self.score[self.response_positions]


def arrow_table(ds: Any) -> Any:
    """The dataset's rows as one pyarrow Table (zero-copy for a memory-mapped dataset)."""
    return ds.with_format("arrow")[0 : len(ds)]


def list_column(table: Any, name: str, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (flat values (T,), lengths (S,) int64), read chunk by chunk (no 2**31 limit, see
    :mod:`tokenclean.columns`); nulls inside lists become NaN (floats) or IGNORE_INDEX (ints)."""
    fill = None if np.issubdtype(dtype, np.floating) else IGNORE_INDEX
    return flat_list(table.column(name), dtype, fill)


def _first_mismatch(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.flatnonzero(a != b)[0])


def check_rows(
    scores_dir: str | Path,
    prepared_dir: str | Path,
    ids_s: np.ndarray,
    ids_p: np.ndarray,
    len_s: np.ndarray,
    len_p: np.ndarray,
    row0: int = 0,
) -> None:
    """The score store must hold the prepared rows in the same order with the same lengths (the arrays
    are rows ``row0 ...`` of both; errors name those rows)."""
    if ids_s.size != ids_p.size:
        raise DataError(
            f"{scores_dir}",
            f"score store has {ids_s.size} rows but the prepared dataset {prepared_dir} has {ids_p.size}; "
            "scores must come from this prepared dataset (same rows, same order)",
        )
    if np.any(ids_s != ids_p):
        i = _first_mismatch(ids_s, ids_p)
        r = row0 + i
        raise DataError(
            f"{scores_dir}[row {r}]",
            f"sample_id '{ids_s[i]}' but the prepared dataset {prepared_dir} has '{ids_p[i]}' at row {r}",
            field="sample_id",
        )
    if np.any(len_s != len_p):
        i = _first_mismatch(len_s, len_p)
        raise DataError(
            f"{scores_dir}[row {row0 + i}]",
            f"sample '{ids_s[i]}' has {len_s[i]} scores but {len_p[i]} input_ids in {prepared_dir}",
            field="score",
        )


def check_label_lengths(prep: str | Path, len_l: np.ndarray, len_p: np.ndarray, row0: int = 0) -> None:
    if np.any(len_l != len_p):
        i = row0 + _first_mismatch(len_l, len_p)
        raise DataError(f"{prep}[row {i}]", "labels and input_ids differ in length", field="labels")


def check_scored_positions(scores_dir: str | Path, t: TokenTable, row0: int = 0) -> None:
    """A score at a position that is not trained means the arrays are misaligned: stop and name it (``t``
    holds rows ``row0 ...``)."""
    bad = np.flatnonzero(~np.isnan(t.score) & (t.labels == IGNORE_INDEX))
    if bad.size:
        row = int(np.searchsorted(t.offsets, bad[0], side="right") - 1)
        pos = int(bad[0] - t.offsets[row])
        raise DataError(
            f"{scores_dir}[row {row0 + row}]",
            f"sample '{t.sample_ids[row]}' has a score at position {pos}, which is not a trained token "
            f"({bad.size} such positions in all); scores must be NaN where labels == {IGNORE_INDEX}",
            field="score",
        )


def resolve_prepared_dir(scores_dir: str | Path, prepared_dir: str | Path | None) -> Path:
    from tokenclean.artifacts import kind_of, require_kind

    manifest_path = Path(scores_dir) / "manifest.json"
    hint = "run `tokenclean score` first and pass its --out"
    if kind_of(scores_dir) == "prepare":
        hint = (
            f"score it first (tokenclean score --data {scores_dir} --base BASE --reference REF --out STORE) "
            "and pass STORE to --scores"
        )
    manifest = require_kind(scores_dir, ("score",), "--scores", hint)
    if prepared_dir is not None:
        return Path(prepared_dir)
    if not manifest.get("prepared_dir"):
        raise DataError(str(manifest_path), "no prepared_dir recorded; pass --data", field="prepared_dir")
    return Path(manifest["prepared_dir"])


def load_token_table(
    scores_dir: str | Path, prepared_dir: str | Path | None = None, column: str = "score"
) -> TokenTable:
    """Join a score store with its prepared dataset (default: the ``prepared_dir`` in the store's manifest)."""
    import datasets

    prep = resolve_prepared_dir(scores_dir, prepared_dir)
    for d in (scores_dir, prep):
        if not (Path(d) / "dataset_info.json").exists() and not (Path(d) / "state.json").exists():
            raise DataError(str(d), "not a dataset directory (expected datasets.save_to_disk output)")
    st = arrow_table(datasets.load_from_disk(str(scores_dir)))
    pt = arrow_table(datasets.load_from_disk(str(prep)))
    for tbl, d, cols in (
        (st, scores_dir, ("sample_id", column)),
        (pt, prep, ("sample_id", "input_ids", "labels")),
    ):
        for c in cols:
            if c not in tbl.column_names:
                raise DataError(str(d), f"missing column '{c}' (has {', '.join(tbl.column_names)})", field=c)
    ids_s = np.asarray(st.column("sample_id").to_pylist(), dtype=object)
    ids_p = np.asarray(pt.column("sample_id").to_pylist(), dtype=object)
    score, len_s = list_column(st, column, np.float32)
    input_ids, len_p = list_column(pt, "input_ids", np.int32)
    labels, len_l = list_column(pt, "labels", np.int32)
    check_rows(scores_dir, prep, ids_s, ids_p, len_s, len_p)
    check_label_lengths(prep, len_l, len_p)
    offsets = np.concatenate([[0], np.cumsum(len_p, dtype=np.int64)])
    table = TokenTable(ids_p, offsets, input_ids, labels, score)
    check_scored_positions(scores_dir, table)
    return table


def load_prepared_table(prepared_dir: str | Path) -> TokenTable:
    """A prepared dataset alone as a table (scores all NaN): for selectors that score it themselves."""
    import datasets

    pt = arrow_table(datasets.load_from_disk(str(prepared_dir)))
    input_ids, lens = list_column(pt, "input_ids", np.int32)
    labels, _ = list_column(pt, "labels", np.int32)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    ids = np.asarray(pt.column("sample_id").to_pylist(), dtype=object)
    return TokenTable(ids, offsets, input_ids, labels, np.full(labels.size, np.nan, dtype=np.float32))
