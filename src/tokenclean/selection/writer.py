"""Writing a cleaned dataset block by block, in the files ``datasets.save_to_disk`` writes for the whole set.

The cleaned dataset of ``select`` (columns: :mod:`tokenclean.selection.cleaned`) used to be built as one
in-memory table and saved with ``Dataset.save_to_disk``; at 400M tokens that table alone is ~7 GB. Here the
rows arrive as blocks (a :class:`~.table.TokenTable` of whole samples with its keep-mask and weights) and
leave in record batches, so memory is one block plus one record batch, whatever the pool.

The files are the ones ``save_to_disk`` writes for the same rows, byte for byte (tested against it): as
many data files as it would cut (``int(nbytes / datasets.config.MAX_SHARD_SIZE) + 1``, at most one per
row; ``nbytes`` is the in-memory table's size, which :func:`cleaned_nbytes` gives from the counts), the
rows split between them as ``Dataset.shard(contiguous=True)`` splits them, record batches of the rows it
writes per batch (``get_writer_batch_size_from_data_size``), through the same ``ArrowWriter``, and its
``state.json`` / ``dataset_info.json``. So a cleaned set's content hash did not change with this writer,
and a reused selection from an older tokenclean stays valid.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.columns import list_array
from tokenclean.selection.pending import Pending
from tokenclean.selection.stats import kept_per_sample
from tokenclean.selection.table import TokenTable

LIST_COLUMNS = {  # bytes per position of each list column of the cleaned set
    "input_ids": 4,
    "attention_mask": 1,
    "labels": 4,
    "response_labels": 4,
    "score": 4,
    "completion_mask": 1,
}


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


def emptied_records(table: TokenTable, kept_rows: np.ndarray, row0: int = 0) -> list[dict[str, Any]]:
    """The ``dropped.jsonl`` records of the rows selection emptied (rows ``row0 ...`` of the pool)."""
    n_resp = np.diff(table.response_offsets)
    return [
        {
            "kind": "emptied",
            "row": row0 + int(i),
            "sample_id": str(table.sample_ids[i]),
            "response_tokens": int(n_resp[i]),
        }
        for i in np.flatnonzero(~kept_rows)
    ]


def split_rows(
    table: TokenTable, keep: np.ndarray, weights: np.ndarray | None, rows: int = 1000
) -> Iterator[tuple[int, TokenTable, np.ndarray, np.ndarray | None]]:
    """An in-memory table and its selection as blocks of ``rows`` samples (what :func:`write_rows` takes)."""
    ro = table.response_offsets  # (S+1,)
    n = table.offsets.size - 1
    for a in range(0, max(n, 1), rows):
        b = min(a + rows, n)
        t0, t1, r0, r1 = int(table.offsets[a]), int(table.offsets[b]), int(ro[a]), int(ro[b])
        sub = TokenTable(
            table.sample_ids[a:b],
            table.offsets[a : b + 1] - t0,
            table.input_ids[t0:t1],
            table.labels[t0:t1],
            table.score[t0:t1],
        )
        yield a, sub, keep[r0:r1], None if weights is None else weights[r0:r1]


@dataclass
class CleanedSize:
    """What the cleaned set holds, counted before it is written: rows, positions and UTF-8 bytes of ids."""

    rows: int = 0
    positions: int = 0
    id_bytes: int = 0

    def add(self, table: TokenTable, kept_rows: np.ndarray) -> None:
        self.rows += int(kept_rows.sum())
        self.positions += int(np.diff(table.offsets)[kept_rows].sum())
        self.id_bytes += sum(len(str(s).encode()) for s in table.sample_ids[kept_rows])

    def nbytes(self, with_weights: bool) -> int:
        """The in-memory table's ``nbytes`` (pyarrow counts 4 offset bytes per row of a list or string
        array, and the values), which ``save_to_disk`` divides into files."""
        per_pos = sum(LIST_COLUMNS.values()) + (4 if with_weights else 0)
        n_cols = 1 + len(LIST_COLUMNS) + (1 if with_weights else 0)
        return 4 * n_cols * self.rows + self.id_bytes + per_pos * self.positions


def layout(rows: int, nbytes: int) -> tuple[list[int], int]:
    """Row bounds ``[0, ..., rows]`` of the data files and the rows per record batch that ``save_to_disk``
    picks for a dataset of ``rows`` rows and ``nbytes`` bytes."""
    from datasets import config
    from datasets.arrow_writer import get_writer_batch_size_from_data_size
    from datasets.utils.py_utils import convert_file_size_to_int

    num = min(rows, max(int(nbytes / convert_file_size_to_int(config.MAX_SHARD_SIZE)) + 1, 1))
    div, mod = divmod(rows, num) if num else (0, 0)
    bounds = [div * i + min(i, mod) for i in range(num)] + [rows]
    batch = config.DEFAULT_MAX_BATCH_SIZE
    if nbytes > 0:
        batch = min(batch, get_writer_batch_size_from_data_size(rows, nbytes))
    return bounds, batch


class DataFiles:
    """Cleaned rows in, ``data-XXXXX-of-NNNNN.arrow`` files out, as ``save_to_disk`` cuts them; a record
    batch is written once its padding bytes are in the buffers (:class:`~.pending.Pending`)."""

    def __init__(self, out: Path, size: CleanedSize, with_weights: bool) -> None:
        self.out, self.features = out, cleaned_features(with_weights)
        self.bounds, self.batch = layout(size.rows, size.nbytes(with_weights))
        self.pending = Pending()
        self.written = 0
        self.writer: Any = None
        self.file = -1

    @property
    def names(self) -> list[str]:
        n = len(self.bounds) - 1
        return [f"data-{i:05d}-of-{n:05d}.arrow" for i in range(n)]

    def add(self, rows: Any, final: bool = False) -> None:
        """Append cleaned rows (a pyarrow Table in the cleaned schema, or None; ``final``: no rows follow),
        writing every record batch that can be."""
        if rows is not None:
            self.pending.add(rows)
        while self.written < self.bounds[-1]:
            f = int(np.searchsorted(self.bounds, self.written, side="right")) - 1  # file of the next row
            n = min(self.batch, self.bounds[f + 1] - self.written)
            if self.pending.rows < n or not self.pending.followed(n, final):
                return
            self._write(f, n)

    def _write(self, f: int, n: int) -> None:
        from datasets.arrow_writer import ArrowWriter

        if f != self.file:
            self._close()
            path = self.out / self.names[f]
            self.writer = ArrowWriter(features=self.features, path=str(path), embed_local_files=True)
            self.file = f
        self.writer.write_table(self.pending.take(n))
        self.written += n
        if self.written == self.bounds[f + 1]:
            self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.finalize()
            self.writer.close()
            self.writer = None

    def finish(self, fingerprint: str) -> None:
        """Check every row was written and write ``state.json`` and ``dataset_info.json`` as
        ``save_to_disk`` writes them."""
        import datasets

        self.add(None, final=True)
        self._close()
        if self.written != self.bounds[-1]:
            raise RuntimeError(f"cleaned writer: {self.written} of {self.bounds[-1]} rows written")
        scratch = Path(tempfile.mkdtemp(dir=self.out, prefix=".info-"))
        try:
            empty = self.features.arrow_schema.empty_table()
            info = datasets.DatasetInfo(features=self.features)
            datasets.Dataset(empty, info=info, fingerprint=fingerprint).save_to_disk(str(scratch))
            state = json.loads((scratch / "state.json").read_text())
            state["_data_files"] = [{"filename": n} for n in self.names]
            with open(self.out / "state.json", "w", encoding="utf-8") as f:
                json.dump(state, f, indent=2, sort_keys=True)  # as save_to_disk writes it
            shutil.move(str(scratch / "dataset_info.json"), str(self.out / "dataset_info.json"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def write_rows(
    out: Path,
    parts: Iterable[tuple[int, TokenTable, np.ndarray, np.ndarray | None]],
    size: CleanedSize,
    with_weights: bool,
    fingerprint: str,
) -> None:
    """Write the cleaned dataset and ``dropped.jsonl`` of ``parts`` (``(row0, table, keep, weights)`` per
    block, in row order; ``size`` counted from the same parts) into the directory ``out``."""
    files = DataFiles(out, size, with_weights)
    with open(out / "dropped.jsonl", "w") as dropped:
        for row0, table, keep, weights in parts:
            arrow, kept_rows = cleaned_arrow(table, keep, weights)
            if arrow.num_rows:
                files.add(arrow)
            for rec in emptied_records(table, kept_rows, row0):
                dropped.write(json.dumps(rec, ensure_ascii=False) + "\n")
    files.finish(fingerprint)
