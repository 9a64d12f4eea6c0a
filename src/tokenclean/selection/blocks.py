"""A score store joined with its prepared dataset, one block of rows at a time (never the whole pool).

:func:`token_blocks` returns a callable that yields, on every call, the pool as :class:`Block` s: the rows of
one record batch of both datasets (cut where their batches differ) as a small
:class:`~tokenclean.selection.table.TokenTable`, checked as :func:`~.table.load_token_table` checks the whole
table (same sample ids and lengths in both, labels as long as input_ids, no score at an untrained
position; errors name the global row). Memory: one record batch of each dataset. Blocks hold whole samples,
in row order, so the concatenation of every block's table is the table :func:`~.table.load_token_table`
returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean.columns import aligned_batches, offsets_of, record_batches
from tokenclean.errors import DataError
from tokenclean.selection.table import (
    TokenTable,
    check_label_lengths,
    check_rows,
    check_scored_positions,
    list_column,
)


@dataclass(frozen=True)
class Block:
    """Rows ``[row0, row0 + S_b)`` of the pool, and where its response tokens start in the pool's flat
    (N,) response order (``resp0``)."""

    row0: int
    resp0: int
    table: TokenTable


Blocks = Callable[[], Iterator[Block]]
REBUILD_STORE = (
    "rebuild the store: tokenclean score --data PREPARED --base BASE --reference REF --out STORE --force"
)
REBUILD_PREPARED = (
    "rebuild it: tokenclean prepare --data SOURCE --tokenizer TOKENIZER --out PREPARED --force, then score it"
)


def _dataset(d: Path, cols: tuple[str, ...], rebuild: str) -> Any:
    import datasets

    if not (d / "dataset_info.json").exists() and not (d / "state.json").exists():
        raise DataError(str(d), f"not a dataset directory (expected datasets.save_to_disk output); {rebuild}")
    try:
        ds = datasets.load_from_disk(str(d))  # memory-mapped: the row count and columns, no data read
    except Exception as e:  # a format this datasets version cannot read
        raise DataError(str(d), f"cannot be read as a dataset ({type(e).__name__}: {e}); {rebuild}") from None
    for c in cols:
        if c not in ds.column_names:
            raise DataError(
                str(d), f"missing column '{c}' (has {', '.join(ds.column_names)}); {rebuild}", field=c
            )
    return ds


def token_blocks(scores_dir: str | Path, prep: str | Path, column: str = "score") -> Blocks:
    """The joined pool of a score store and its prepared dataset, block by block (see the module doc)."""
    scores_dir, prep = Path(scores_dir), Path(prep)
    ns = len(_dataset(scores_dir, ("sample_id", column), REBUILD_STORE))
    np_ = len(_dataset(prep, ("sample_id", "input_ids", "labels"), REBUILD_PREPARED))
    if ns != np_:
        raise DataError(
            f"{scores_dir}",
            f"score store has {ns} rows but the prepared dataset {prep} has {np_}; "
            "scores must come from this prepared dataset (same rows, same order)",
        )

    def blocks() -> Iterator[Block]:
        pb = record_batches(prep, ["sample_id", "input_ids", "labels"])
        sb = record_batches(scores_dir, ["sample_id", column])
        row0 = resp0 = 0
        for p, s in aligned_batches(pb, sb):
            table = _block_table(scores_dir, prep, p, s, row0)
            yield Block(row0, resp0, table)
            row0 += p.num_rows
            resp0 += int(table.response_positions.size)

    return blocks


def _block_table(scores_dir: Path, prep: Path, p: Any, s: Any, row0: int) -> TokenTable:
    """One block's rows as a checked table (errors name the pool's row)."""
    ids_p = np.asarray(p.column(0).to_pylist(), dtype=object)
    ids_s = np.asarray(s.column(0).to_pylist(), dtype=object)
    input_ids, len_p = list_column(p, "input_ids", np.int32)
    labels, len_l = list_column(p, "labels", np.int32)
    score, len_s = list_column(s, s.schema.names[1], np.float32)
    check_rows(scores_dir, prep, ids_s, ids_p, len_s, len_p, row0)
    check_label_lengths(prep, len_l, len_p, row0)
    table = TokenTable(ids_p, offsets_of(len_p), input_ids, labels, score)
    check_scored_positions(scores_dir, table, row0)
    return table
