"""Cleaned rows waiting to be written, held in the buffers ``save_to_disk``'s one in-memory table gave them.

Arrow's IPC writer sends the bytes after a sliced array's data as padding when its buffer holds them: up to
63 after a string array's data, up to 7 after a fixed-width array's values. In the in-memory path the
record batches were slices of one table: ``sample_id`` one string array over every row, each list column
cut into chunks of at most :data:`tokenclean.columns.MAX_CHUNK_TOKENS` values (:func:`~.columns.list_array`,
greedy over the rows); a batch across a chunk end was concatenated (``ArrowWriter`` combines chunks), so it
had no padding in any column (its record batches, cut at the chunk ends, came as several chunks of every
column). :class:`Pending` keeps the rows not yet written the same way (``sample_id`` contiguous, the list
columns in pieces that end where those chunks ended), and :meth:`Pending.followed` says when a batch's
padding bytes are in the buffer, so the written bytes are the in-memory path's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tokenclean import columns


def _contiguous(col: Any) -> Any:
    """One array of a (chunked) column slice: the chunks concatenated (small: part of one block)."""
    import pyarrow as pa

    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    return chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks)


def _own(col: Any) -> Any:
    """A copy of a (chunked) column slice in buffers of its own, holding nothing after its last row."""
    import pyarrow as pa

    return pa.concat_arrays(col.chunks if isinstance(col, pa.ChunkedArray) else [col])


class Pending:
    """The rows between the last written record batch and the last block added."""

    def __init__(self) -> None:
        self.ids: Any = None  # pa.StringArray of every pending row
        self.pieces: list[Any] = []  # pa.Tables of the list columns, contiguous, one per (part of a) chunk
        self.closed: list[bool] = []  # whether the in-memory chunk of each piece ended at its last row
        self.filled = 0  # values of the in-memory chunk being filled (rows already written included)
        self.rows = 0

    def add(self, table: Any) -> None:
        """Append cleaned rows (a pyarrow Table in the cleaned schema)."""
        import pyarrow as pa

        ids = _contiguous(table.column("sample_id"))
        self.ids = ids if self.ids is None else pa.concat_arrays([self.ids, ids])
        lists = table.drop_columns(["sample_id"])
        lens = np.asarray(columns.list_lengths(table.column("input_ids")), dtype=np.int64)
        for a, b, new in self._segments(lens):
            part = pa.table({n: _own(lists.column(n).slice(a, b - a)) for n in lists.column_names})
            if new or not self.pieces or self.closed[-1]:
                if self.pieces and new:
                    self.closed[-1] = True
                self.pieces.append(part)
                self.closed.append(False)
            else:
                last = self.pieces[-1]
                self.pieces[-1] = pa.table(
                    {
                        n: pa.concat_arrays([_contiguous(last.column(n)), part.column(n).chunk(0)])
                        for n in lists.column_names
                    }
                )
        self.rows += table.num_rows

    def _segments(self, lens: np.ndarray) -> list[tuple[int, int, bool]]:
        """Rows ``[a, b)`` of a block in one in-memory chunk each, and whether ``a`` starts a new chunk
        (the greedy rule of :func:`~tokenclean.columns.chunk_bounds`, continued from earlier blocks)."""
        limit, out, a = columns.MAX_CHUNK_TOKENS, [], 0
        cs = np.concatenate([[0], np.cumsum(lens)])  # (n+1,)
        new = False
        while a < lens.size:
            b = int(np.searchsorted(cs, cs[a] + (limit - self.filled), side="right")) - 1
            if b <= a:
                if self.filled:  # the row does not fit: the chunk ends before it
                    self.filled, new = 0, True
                    continue
                b = a + 1  # a row longer than the limit: a chunk of its own
            out.append((a, b, new))
            self.filled += int(cs[b] - cs[a])
            a, new = b, False
        return out

    def followed(self, n: int, final: bool) -> bool:
        """Whether a record batch of the first ``n`` rows can be written with its padding: the bytes after
        it are in the buffers as they were in the in-memory table (or no bytes followed there)."""
        import pyarrow.compute as pc

        first = self.pieces[0]
        if final or n > first.num_rows:  # across a chunk end: every column concatenated, no padding
            return True
        if int(pc.sum(pc.binary_length(self.ids.slice(n))).as_py() or 0) < 64:
            return False
        if n == first.num_rows:
            return self.closed[0]
        after = columns.list_lengths(first.column("input_ids").slice(n))
        return self.closed[0] or int(after.sum()) >= 8

    def take(self, n: int) -> Any:
        """The first ``n`` rows as a table (slices of the buffers), removed from the pending rows. Rows
        from several pieces come as several chunks in every column, as the in-memory table's record
        batches gave them (``ArrowWriter`` then concatenates them)."""
        import pyarrow as pa

        cols: dict[str, list[Any]] = {"sample_id": []}
        left = done = 0
        left = n
        while left:
            piece = self.pieces[0]
            k = min(left, piece.num_rows)
            cols["sample_id"].append(self.ids.slice(done, k))
            for name in piece.column_names:
                cols.setdefault(name, []).append(_contiguous(piece.column(name)).slice(0, k))
            if k == piece.num_rows:
                self.pieces.pop(0)
                self.closed.pop(0)
            else:
                self.pieces[0] = piece.slice(k)
            left -= k
            done += k
        self.ids = self.ids.slice(n)
        self.rows -= n
        return pa.table({name: pa.chunked_array(parts) for name, parts in cols.items()})
