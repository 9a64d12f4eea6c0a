"""Reading a prepared or cleaned dataset for training: validated, truncated, samples with no kept token dropped.

Input: ``datasets.load_from_disk(DIR)`` with ``input_ids`` and ``labels`` (``attention_mask`` optional): a
prepared dataset (labels = every response token) or a cleaned one (labels = the kept tokens). A label is
either ``IGNORE_INDEX`` or the token id at the same position (the alignment rule: labels are indexed like
``input_ids``); anything else is a data error. Position 0 is never trained.

Read in two passes of one record batch each (:func:`~tokenclean.columns.record_batches`): the first checks
every row and gives every sample's kept tokens and length (a few bytes per sample), the second keeps the
token arrays of the rows asked for (``rows``: under a launcher, the samples this rank trains on, see
:func:`tokenclean.training.collate.rank_rows`), so a rank's memory holds its share of the tokens, not the
pool's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.columns import flat_list, offsets_of, record_batches
from tokenclean.errors import DataError
from tokenclean.outputs import verify_input
from tokenclean.utils import get_logger

log = get_logger("training")


@dataclass
class TrainData:
    """Samples ready for batching. Per-sample arrays are int32, already truncated to ``max_length``; the
    entries of rows not loaded (``loaded`` False) are None."""

    input_ids: list[Any]
    labels: list[Any]
    attention_mask: list[Any] | None
    n_kept: np.ndarray  # (n,) kept (trained) tokens per sample, position 0 excluded
    sample_ids: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    weights: list[Any] | None = None  # per-position float32 loss weights (the ``weights`` column)
    response_labels: list[np.ndarray] | None = None  # all response tokens before cleaning, when recorded
    row_lengths: np.ndarray | None = None  # (n,) int64 lengths after truncation (every row, loaded or not)
    loaded: np.ndarray | None = None  # (n,) bool rows whose arrays are here (None: every row)
    max_id: int | None = None  # the largest token id of every row
    source: tuple[Path, list[str], int] | None = None  # (dir, columns, max_length) it is read from

    def prompt_mask(self, i: int) -> np.ndarray:
        """Prompt positions of sample ``i``: every attended position that is not a response token of the
        prepared data (``response_labels`` of a cleaned dataset, else ``labels``). Multi-turn correct."""
        resp = (self.response_labels or self.labels)[i]
        att = (
            np.ones(len(resp), dtype=bool)
            if self.attention_mask is None
            else self.attention_mask[i].astype(bool)
        )
        return att & (np.asarray(resp) == IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        if self.row_lengths is not None:
            return self.row_lengths
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def check_loaded(self, idx: np.ndarray) -> None:
        """Refuse rows this process did not load (a rank reading another rank's samples is a bug)."""
        if self.loaded is not None and not bool(np.all(self.loaded[idx])):
            missing = [int(i) for i in np.asarray(idx) if not self.loaded[i]]
            raise RuntimeError(f"training rows {missing[:5]} were not loaded by this process")


def _flat_column(table: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (flat values, offsets (n+1,) int64), chunk by chunk (no 2**31 limit)."""
    values, lengths = flat_list(table.column(name), None)
    return values, offsets_of(lengths)


def _row_of(flat_index: int, offsets: np.ndarray) -> int:
    return int(np.searchsorted(offsets, flat_index, side="right") - 1)


def _check_labels(
    where: str, ids: np.ndarray, labels: np.ndarray, offsets: np.ndarray, sids: Any, row0: int = 0
) -> None:
    bad = np.flatnonzero((labels != IGNORE_INDEX) & (labels != ids))
    if bad.size:
        j = int(bad[0])
        r = _row_of(j, offsets)
        raise DataError(
            f"{where}[row {row0 + r}] (sample_id {sids[r]})",
            f"label {int(labels[j])} at position {j - offsets[r]} is neither {IGNORE_INDEX} nor the token id "
            f"{int(ids[j])} at that position (labels must be indexed like input_ids)",
            field="labels",
        )


def _read_manifest(path: Path) -> dict[str, Any]:
    m = path / "manifest.json"
    if not m.exists():
        return {}
    try:
        out = json.loads(m.read_text())
    except json.JSONDecodeError as e:
        raise DataError(str(m), f"not valid JSON: {e}") from None
    return out if isinstance(out, dict) else {}


def _open(path: Path) -> list[str]:
    """Check ``path`` is a readable dataset with ``input_ids`` and ``labels``; returns its columns."""
    import datasets

    where = str(path)
    if (path / "manifest.json").is_file():  # a tokenclean output: its files must be the ones it wrote
        verify_input(path, hint="re-create it (tokenclean prepare/select with --force)")
    try:
        ds = datasets.load_from_disk(where)  # memory-mapped: the columns, no data read
    except FileNotFoundError:
        raise DataError(where, "not a dataset saved with save_to_disk (tokenclean prepare/select)") from None
    except Exception as e:  # truncated or damaged Arrow files
        raise DataError(where, f"cannot be read as a dataset ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(where, f"is a DatasetDict ({', '.join(ds)}); pass one split's directory")
    for col in ("input_ids", "labels"):
        if col not in ds.column_names:
            raise DataError(
                where,
                f"missing column (columns: {', '.join(ds.column_names)}); rebuild it with tokenclean "
                "prepare (or select) --force",
                field=col,
            )
    return list(ds.column_names)


@dataclass
class Batch:
    """One checked record batch: flat columns, offsets, ids, and its rows' truncated ends and kept tokens."""

    row0: int
    sids: list[str]
    ids: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None
    weights: np.ndarray | None
    offsets: np.ndarray  # (b+1,) int64
    ends: np.ndarray  # (b,) truncated row ends (flat)
    n_kept: np.ndarray  # (b,) kept tokens after truncation, position 0 excluded


def _batches(path: Path, columns: list[str], max_length: int) -> Iterator[Batch]:
    """The dataset's record batches, each checked (errors name the dataset's row)."""
    where, row0 = str(path), 0
    names = [c for c in ("sample_id", "input_ids", "labels", "attention_mask", "weights") if c in columns]
    for rb in record_batches(path, names):
        n = rb.num_rows
        sids = (
            rb.column("sample_id").to_pylist() if "sample_id" in names else [str(row0 + i) for i in range(n)]
        )
        ids, offsets = _flat_column(rb, "input_ids")
        labels, loff = _flat_column(rb, "labels")
        if not np.array_equal(offsets, loff):
            r = int(np.flatnonzero(np.diff(offsets) != np.diff(loff))[0])
            raise DataError(
                f"{where}[row {row0 + r}] (sample_id {sids[r]})", "len(labels) != len(input_ids)", "labels"
            )
        _check_labels(where, ids, labels, offsets, sids, row0)
        mask = _mask_column(rb, where, offsets, labels, row0) if "attention_mask" in names else None
        weights = _weights_column(rb, where, offsets, labels, sids, row0) if "weights" in names else None
        starts, lens = offsets[:-1], np.diff(offsets)  # (b,), (b,)
        ends = starts + np.minimum(lens, max_length)  # (b,) truncation keeps the first max_length tokens
        keep = labels != IGNORE_INDEX  # (total,)
        keep[starts[lens > 0]] = False  # position 0 is never trained (alignment rule)
        cs = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])  # (total+1,)
        yield Batch(row0, sids, ids, labels, mask, weights, offsets, ends, cs[ends] - cs[starts])
        row0 += n


def _mask_column(rb: Any, where: str, offsets: np.ndarray, labels: np.ndarray, row0: int) -> np.ndarray:
    mask, moff = _flat_column(rb, "attention_mask")
    if not np.array_equal(offsets, moff):
        raise DataError(where, "attention_mask lengths differ from input_ids", "attention_mask")
    hidden = np.flatnonzero((mask == 0) & (labels != IGNORE_INDEX))
    if hidden.size:
        r = _row_of(int(hidden[0]), offsets)
        raise DataError(f"{where}[row {row0 + r}]", "a kept label sits where attention_mask is 0", "labels")
    return mask


def _weights_column(
    rb: Any, where: str, offsets: np.ndarray, labels: np.ndarray, sids: list[str], row0: int
) -> np.ndarray:
    """The optional per-position ``weights`` column (float, finite, >= 0, positive only on trained labels)."""
    w, woff = _flat_column(rb, "weights")
    if not np.array_equal(offsets, woff):
        raise DataError(where, "weights lengths differ from input_ids", "weights")
    w = w.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0) | ((w > 0) & (labels == IGNORE_INDEX)))
    if bad.size:
        j = int(bad[0])
        r = _row_of(j, offsets)
        raise DataError(
            f"{where}[row {row0 + r}] (sample_id {sids[r]})",
            f"weight {float(w[j])!r} at position {j - offsets[r]}: weights must be finite, >= 0, and 0 where "
            "the label is -100",
            field="weights",
        )
    return w


def _index(path: Path, columns: list[str], max_length: int) -> TrainData:
    """Pass 1: every row checked; the kept samples' ids, kept tokens and lengths, arrays not loaded."""
    n_kept: list[np.ndarray] = []
    lens: list[np.ndarray] = []
    sids: list[str] = []
    tops: list[int] = []
    counts = dict.fromkeys(("samples_read", "samples_truncated", "tokens_input", "tokens_kept"), 0)
    ones = True
    for b in _batches(path, columns, max_length):
        ok = b.n_kept > 0
        starts = b.offsets[:-1]
        n_kept.append(b.n_kept[ok])
        lens.append((b.ends - starts)[ok])
        sids.extend(s for s, k in zip(b.sids, ok) if k)
        counts["samples_read"] += len(ok)
        counts["samples_truncated"] += int((np.diff(b.offsets) > max_length).sum())
        counts["tokens_input"] += int((b.ends - starts)[ok].sum())
        counts["tokens_kept"] += int(b.n_kept[ok].sum())
        ones = ones and (b.mask is None or bool((b.mask == 1).all()))
        tops.append(max((int(b.ids[a:e].max()) for a, e in zip(starts[ok], b.ends[ok]) if e > a), default=-1))
    n = len(sids)
    counts["samples"] = n
    counts["samples_dropped_no_kept"] = counts["samples_read"] - n
    if counts["samples_dropped_no_kept"]:
        log.info("dropping %d samples with no kept token", counts["samples_dropped_no_kept"])
    if not n:
        raise DataError(str(path), "no sample has a kept (trained) token; nothing to train on", "labels")
    counts = {k: counts[k] for k in ORDER}
    has_mask = "attention_mask" in columns and not ones
    return TrainData(
        input_ids=[None] * n,
        labels=[None] * n,
        attention_mask=[None] * n if has_mask else None,
        n_kept=np.concatenate(n_kept),
        sample_ids=sids,
        counts=counts,
        manifest=_read_manifest(path),
        weights=[None] * n if "weights" in columns else None,
        row_lengths=np.concatenate(lens).astype(np.int64),
        max_id=max(tops),
    )


ORDER = (
    "samples_read",
    "samples",
    "samples_dropped_no_kept",
    "samples_truncated",
    "tokens_input",
    "tokens_kept",
)


def _fill(path: Path, columns: list[str], max_length: int, data: TrainData, rows: np.ndarray) -> None:
    """Pass 2: the arrays of the kept samples ``rows`` (indices of ``data``), copied out of each batch."""
    want = np.zeros(len(data), dtype=bool)
    want[rows] = True
    i = 0  # index of the next kept sample
    whole = bool(want.all())  # all rows: views of each batch's arrays; some: copies (the batch is freed)
    for b in _batches(path, columns, max_length):
        for a, e in zip(b.offsets[:-1][b.n_kept > 0], b.ends[b.n_kept > 0]):
            if want[i]:
                data.input_ids[i], data.labels[i] = _take(b.ids, a, e, whole), _take(b.labels, a, e, whole)
                if data.attention_mask is not None and b.mask is not None:
                    data.attention_mask[i] = _take(b.mask, a, e, whole)
                if data.weights is not None and b.weights is not None:
                    data.weights[i] = _take(b.weights, a, e, whole)
            i += 1
    if not whole:
        data.loaded = want
        data.counts["samples_loaded"] = int(want.sum())


def _take(x: np.ndarray, a: int, e: int, view: bool) -> np.ndarray:
    return x[a:e] if view else x[a:e].copy()


def load_train_data(
    data_dir: str | Path, max_length: int, rows: Callable[[TrainData], np.ndarray] | None = None
) -> TrainData:
    """Load, validate and truncate; drop (and count) samples with no kept token after truncation.
    ``rows``: which samples to load, given the data with every row's length and kept tokens (default:
    all); the others stay None and :meth:`TrainData.check_loaded` refuses them."""
    data = index_train_data(data_dir, max_length)
    fill_train_data(data, None if rows is None else rows(data))
    return data


def index_train_data(data_dir: str | Path, max_length: int) -> TrainData:
    """Pass 1 of :func:`load_train_data`: every row checked, no token array loaded yet."""
    path = Path(data_dir)
    columns = _open(path)
    data = _index(path, columns, max_length)
    data.source = (path, columns, max_length)
    return data


def fill_train_data(data: TrainData, rows: np.ndarray | None) -> None:
    """Pass 2 of :func:`load_train_data`: the arrays of ``rows`` (None: all) of an indexed dataset."""
    assert data.source is not None, "fill_train_data needs index_train_data's result"
    path, columns, max_length = data.source
    wanted = np.arange(len(data)) if rows is None else np.asarray(rows, dtype=np.int64)
    _fill(path, columns, max_length, data, wanted)
