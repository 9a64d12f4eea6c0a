"""Arrow list columns without the 2**31 ceiling: written in chunks, read chunk by chunk.

An Arrow ``list<T>`` array (what ``datasets.Sequence`` stores) has int32 offsets, so one array holds at most
2**31 - 1 values; concatenating a column's chunks into one array (``combine_chunks``) fails past that (an
offset overflow at ~5M samples of 400 tokens). Every list column tokenclean writes goes through
:func:`list_array` (chunks of at most :data:`MAX_CHUNK_TOKENS` values) and every reader goes through
:func:`list_chunks` / :func:`flat_list`, which take one chunk at a time and keep their own int64 offsets.
A test lowers :data:`MAX_CHUNK_TOKENS` so a tiny pool crosses it and checks every stage still agrees.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAX_CHUNK_TOKENS = 1 << 30  # values per written chunk: well below the int32 offset limit of 2**31 - 1


def chunk_bounds(lengths: np.ndarray, limit: int | None = None) -> list[int]:
    """Row boundaries ``[0, b1, ..., S]`` of chunks holding at most ``limit`` values each (a row longer
    than the limit gets a chunk of its own); ``[0, 0]`` for no rows."""
    limit = MAX_CHUNK_TOKENS if limit is None else limit
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])  # (S+1,)
    bounds = [0]
    while bounds[-1] < lengths.size:
        start = bounds[-1]
        end = int(np.searchsorted(offsets, offsets[start] + limit, side="right")) - 1
        bounds.append(max(end, start + 1))
    if len(bounds) == 1:
        bounds.append(0)  # no rows: one empty chunk
    return bounds


def list_array(values: np.ndarray, lengths: np.ndarray, type: Any = None) -> Any:
    """A ``pa.ChunkedArray`` of lists from flat ``values`` (T,) and row ``lengths`` (S,), chunked so that
    no chunk holds more than :data:`MAX_CHUNK_TOKENS` values (``type``: the value type, default inferred)."""
    import pyarrow as pa

    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])  # (S+1,)
    chunks = [
        pa.ListArray.from_arrays(
            pa.array((offsets[a : b + 1] - offsets[a]).astype(np.int32)),
            pa.array(values[offsets[a] : offsets[b]], type=type),
        )
        for a, b in itertools.pairwise(chunk_bounds(lengths))
    ]
    return pa.chunked_array(chunks)


def list_chunks(col: Any) -> Iterator[Any]:
    """The list arrays of a column (a ``pa.ChunkedArray`` or one array), never concatenated."""
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        yield from col.chunks
    else:
        yield col


def chunk_values(arr: Any, dtype: Any, fill: float | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One list array as (flat values (T_c,) ``dtype``, lengths (S_c,) int64); null lists count 0 values,
    null values become ``fill`` (default NaN for floats, 0 for ints). ``dtype`` None keeps the stored one."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(arr)  # respects the slice's offsets
    if flat.null_count:
        if fill is None:
            fill = np.nan if pa_is_floating(flat.type) else 0
        flat = flat.fill_null(fill)
    values = flat.to_numpy(zero_copy_only=False)
    return (values if dtype is None else values.astype(dtype, copy=False)), lengths


def pa_is_floating(t: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_floating(t))


def flat_list(col: Any, dtype: Any, fill: float | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A whole list column as (flat values (T,) ``dtype``, lengths (S,) int64), one chunk at a time: the
    result is a numpy array (int64-indexed), so its size has no 2**31 limit."""
    parts = [chunk_values(c, dtype, fill) for c in list_chunks(col)]
    if not parts:
        return np.zeros(0, dtype=dtype or np.float32), np.zeros(0, dtype=np.int64)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def list_lengths(col: Any) -> np.ndarray:
    """Row lengths (S,) int64 of a list column, chunk by chunk (nulls count 0)."""
    import pyarrow.compute as pc

    parts = [
        pc.list_value_length(c).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        for c in list_chunks(col)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """CSR offsets (S+1,) int64 of row lengths (S,)."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


def dataset_files(ds_dir: str | Path) -> list[Path]:
    """The Arrow files of a ``save_to_disk`` directory, in row order (from its ``state.json``)."""
    state = json.loads((Path(ds_dir) / "state.json").read_text())
    return [Path(ds_dir) / f["filename"] for f in state["_data_files"]]


def record_batches(ds_dir: str | Path, columns: Sequence[str]) -> Iterator[Any]:
    """The record batches of a saved dataset, read one at a time into ordinary memory (not memory-mapped, so
    a pass over a pool holds one batch, not the pages of every file it touched)."""
    import pyarrow as pa

    for path in dataset_files(ds_dir):
        with pa.OSFile(str(path)) as f:
            reader = pa.ipc.open_stream(f)
            for batch in reader:
                yield batch.select(list(columns))


def row_batches(
    ds_dir: str | Path, columns: Sequence[str], start: int = 0, stop: int | None = None
) -> Iterator[Any]:
    """Record batches of rows ``[start, stop)`` of a saved dataset (batches cut at the range's ends)."""
    row = 0
    for batch in record_batches(ds_dir, columns):
        a, b = row, row + batch.num_rows
        row = b
        if b <= start:
            continue
        if stop is not None and a >= stop:
            return
        lo, hi = max(start - a, 0), (batch.num_rows if stop is None else min(stop - a, batch.num_rows))
        yield batch.slice(lo, hi - lo)


def aligned_batches(left: Iterator[Any], right: Iterator[Any]) -> Iterator[tuple[Any, Any]]:
    """Pairs of equally long slices of two record-batch streams over the same rows (their batch boundaries
    may differ)."""
    buf = None
    for lb in left:
        done = 0
        while done < lb.num_rows:
            if buf is None or buf.num_rows == 0:
                buf = next(right)
            n = min(lb.num_rows - done, buf.num_rows)
            yield lb.slice(done, n), buf.slice(0, n)
            buf = buf.slice(n)
            done += n


class StringColumn(Sequence[str]):
    """A string column of a memory-mapped dataset, read on demand instead of as one Python list: an index
    gives a ``str``, a slice a ``list[str]`` of just those rows, iteration goes 65,536 rows at a time. A
    list of 10M sample ids as Python strings takes ~0.7 GB in every process that opens the prepared set;
    this takes the mapped pages it reads."""

    def __init__(self, col: Any) -> None:
        import pyarrow as pa

        self.col = col if isinstance(col, pa.ChunkedArray) else pa.chunked_array([col])

    def __len__(self) -> int:
        return len(self.col)

    def __getitem__(self, i: Any) -> Any:
        n = len(self.col)
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            return self.col.slice(start, max(stop - start, 0)).to_pylist()
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"row {i} of {n}")
        return self.col[j].as_py()

    def __iter__(self) -> Iterator[str]:
        for a in range(0, len(self.col), 65_536):
            yield from self.col.slice(a, 65_536).to_pylist()
