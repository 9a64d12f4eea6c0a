"""Reading a prepared or cleaned dataset for training: validated, truncated, samples with no kept token dropped.

Input: ``datasets.load_from_disk(DIR)`` with ``input_ids`` and ``labels`` (``attention_mask`` optional): a
prepared dataset (labels = every response token) or a cleaned one (labels = the kept tokens). A label is
either ``IGNORE_INDEX`` or the token id at the same position (the alignment rule: labels are indexed like
``input_ids``); anything else is a data error. Position 0 is never trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.columns import flat_list, offsets_of
from tokenclean.errors import DataError
from tokenclean.outputs import verify_input
from tokenclean.utils import get_logger

log = get_logger("training")


@dataclass
class TrainData:
    """Samples ready for batching. Per-sample arrays are int32 views, already truncated to ``max_length``."""

    input_ids: list[np.ndarray]
    labels: list[np.ndarray]
    attention_mask: list[np.ndarray] | None
    n_kept: np.ndarray  # (n,) kept (trained) tokens per sample, position 0 excluded
    sample_ids: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    weights: list[np.ndarray] | None = None  # per-position float32 loss weights (the ``weights`` column)
    response_labels: list[np.ndarray] | None = None  # all response tokens before cleaning, when recorded

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
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def _flat_column(table: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (flat values, offsets (n+1,) int64), chunk by chunk (no 2**31 limit)."""
    values, lengths = flat_list(table.column(name), None)
    return values, offsets_of(lengths)


def _row_of(flat_index: int, offsets: np.ndarray) -> int:
    return int(np.searchsorted(offsets, flat_index, side="right") - 1)


def _check_labels(where: str, ids: np.ndarray, labels: np.ndarray, offsets: np.ndarray, sids: Any) -> None:
    bad = np.flatnonzero((labels != IGNORE_INDEX) & (labels != ids))
    if bad.size:
        j = int(bad[0])
        r = _row_of(j, offsets)
        raise DataError(
            f"{where}[row {r}] (sample_id {sids[r]})",
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


def load_train_data(data_dir: str | Path, max_length: int) -> TrainData:
    """Load, validate and truncate; drop (and count) samples with no kept token after truncation."""
    import datasets

    path = Path(data_dir)
    where = str(path)
    if (path / "manifest.json").is_file():  # a tokenclean output: its files must be the ones it wrote
        verify_input(path, hint="re-create it (tokenclean prepare/select with --force)")
    try:
        ds = datasets.load_from_disk(where)
    except FileNotFoundError:
        raise DataError(where, "not a dataset saved with save_to_disk (tokenclean prepare/select)") from None
    except Exception as e:  # truncated or damaged Arrow files
        raise DataError(where, f"cannot be read as a dataset ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(where, f"is a DatasetDict ({', '.join(ds)}); pass one split's directory")
    for col in ("input_ids", "labels"):
        if col not in ds.column_names:
            raise DataError(where, f"missing column (columns: {', '.join(ds.column_names)})", field=col)
    table = ds.with_format("arrow")[:]
    n = table.num_rows
    sids = (
        table.column("sample_id").to_pylist() if "sample_id" in ds.column_names else list(map(str, range(n)))
    )
    ids, offsets = _flat_column(table, "input_ids")
    labels, loff = _flat_column(table, "labels")
    if not np.array_equal(offsets, loff):
        r = int(np.flatnonzero(np.diff(offsets) != np.diff(loff))[0])
        raise DataError(f"{where}[row {r}] (sample_id {sids[r]})", "len(labels) != len(input_ids)", "labels")
    _check_labels(where, ids, labels, offsets, sids)
    mask = None
    if "attention_mask" in ds.column_names:
        mask, moff = _flat_column(table, "attention_mask")
        if not np.array_equal(offsets, moff):
            raise DataError(where, "attention_mask lengths differ from input_ids", "attention_mask")
        hidden = np.flatnonzero((mask == 0) & (labels != IGNORE_INDEX))
        if hidden.size:
            r = _row_of(int(hidden[0]), offsets)
            raise DataError(f"{where}[row {r}]", "a kept label sits where attention_mask is 0", "labels")
        if bool((mask == 1).all()):
            mask = None  # all ones: nothing to carry
    weights = _weights_column(ds, table, where, offsets, labels, sids)
    data = _truncate_and_filter(where, ids, labels, mask, offsets, sids, max_length, _read_manifest(path))
    if weights is not None:
        keep = {s: i for i, s in enumerate(sids)}
        starts = offsets[:-1]
        data.weights = [
            weights[starts[keep[s]] : starts[keep[s]] + len(x)]
            for s, x in zip(data.sample_ids, data.input_ids)
        ]
    return data


def _weights_column(
    ds: Any, table: Any, where: str, offsets: np.ndarray, labels: np.ndarray, sids: list[str]
) -> np.ndarray | None:
    """The optional per-position ``weights`` column (float, finite, >= 0, positive only on trained labels)."""
    if "weights" not in ds.column_names:
        return None
    w, woff = _flat_column(table, "weights")
    if not np.array_equal(offsets, woff):
        raise DataError(where, "weights lengths differ from input_ids", "weights")
    w = w.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0) | ((w > 0) & (labels == IGNORE_INDEX)))
    if bad.size:
        j = int(bad[0])
        r = _row_of(j, offsets)
        raise DataError(
            f"{where}[row {r}] (sample_id {sids[r]})",
            f"weight {float(w[j])!r} at position {j - offsets[r]}: weights must be finite, >= 0, and 0 where "
            "the label is -100",
            field="weights",
        )
    return w


def _truncate_and_filter(
    where: str,
    ids: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray | None,
    offsets: np.ndarray,
    sids: list[str],
    max_length: int,
    manifest: dict[str, Any],
) -> TrainData:
    starts, lens = offsets[:-1], np.diff(offsets)  # (n,), (n,)
    ends = starts + np.minimum(lens, max_length)  # (n,) truncation keeps the first max_length tokens
    keep = labels != IGNORE_INDEX  # (total,)
    first = starts[lens > 0]
    keep[first] = False  # position 0 is never trained (alignment rule)
    cs = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])  # (total+1,)
    n_kept = cs[ends] - cs[starts]  # (n,)
    ok = np.flatnonzero(n_kept > 0)
    counts = {
        "samples_read": len(lens),
        "samples": len(ok),
        "samples_dropped_no_kept": int(len(lens) - len(ok)),
        "samples_truncated": int((lens > max_length).sum()),
        "tokens_input": int((ends - starts)[ok].sum()),
        "tokens_kept": int(n_kept[ok].sum()),
    }
    if counts["samples_dropped_no_kept"]:
        log.info("dropping %d samples with no kept token", counts["samples_dropped_no_kept"])
    if not len(ok):
        raise DataError(where, "no sample has a kept (trained) token; nothing to train on", "labels")
    return TrainData(
        input_ids=[ids[starts[i] : ends[i]] for i in ok],
        labels=[labels[starts[i] : ends[i]] for i in ok],
        attention_mask=None if mask is None else [mask[starts[i] : ends[i]] for i in ok],
        n_kept=n_kept[ok],
        sample_ids=[sids[i] for i in ok],
        counts=counts,
        manifest=manifest,
    )
