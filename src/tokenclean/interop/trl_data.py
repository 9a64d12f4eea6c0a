"""Datasets and batches for TRL: tokenclean's labels and weights, padded, padding-free or packed.

A tokenclean dataset (``prepare``/``select`` output, or any ``datasets.Dataset`` with ``input_ids`` and
``labels``, optionally ``weights``) becomes a TRL-ready dataset with :func:`token_dataset`: truncated to
``max_length`` (the first tokens kept, as ``tokenclean train`` does), samples with no kept token dropped,
and with ``packing`` the samples packed into rows of at most ``max_length`` tokens by TRL's own
``pack_dataset`` (best-fit decreasing; every list column travels, so ``weights`` stay on their tokens; a
``seq_lengths`` column records the samples of each row).

:func:`token_collator` makes the batch. Padded: ``input_ids``/``attention_mask``/``labels`` (B, T) and
``token_weights`` (B, T) when the data has weights. Padding-free (``padding_free=True``, and always for
packed rows): every sample of the batch on one row (1, sum T), no attention mask, ``position_ids``
restarting at 0 at each sample's first token (the model attends within a sample only), ``labels`` -100 and
weights 0 at every sample's first token (it has no preceding logits). Same samples, same counted tokens,
same loss: the layout is a data choice, never a new loss (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.errors import ConfigError, DataError

TOKEN_WEIGHTS = "token_weights"
COLUMNS = ("input_ids", "labels", "weights")


def token_dataset(source: Any, max_length: int, packing: bool = False) -> Any:
    """A ``datasets.Dataset`` with ``input_ids``, ``labels`` (and ``weights`` when the source has them),
    truncated to ``max_length``; packed into rows of at most ``max_length`` tokens when ``packing``
    (adds ``seq_lengths``). ``source``: a tokenclean dataset directory or a ``datasets.Dataset``."""
    import datasets

    if isinstance(source, (str, Path)):
        from tokenclean.training.data import load_train_data

        data = load_train_data(source, max_length)  # validated, truncated, empty samples dropped
        cols: dict[str, Any] = {"input_ids": data.input_ids, "labels": data.labels}
        if data.weights is not None:
            cols["weights"] = data.weights
        ds = datasets.Dataset.from_dict({k: [np.asarray(x).tolist() for x in v] for k, v in cols.items()})
    elif isinstance(source, datasets.Dataset):
        ds = _truncated(source, max_length)
    else:
        raise ConfigError(
            "train_dataset: expected a tokenclean dataset directory or a datasets.Dataset, "
            f"got {type(source).__name__}"
        )
    if not packing:
        return ds
    from trl import pack_dataset

    return pack_dataset(ds, max_length, strategy="bfd")


def _truncated(ds: Any, max_length: int) -> Any:
    """The ``input_ids``/``labels``/``weights`` columns of ``ds`` cut to ``max_length``; rows with no kept
    label at a position >= 1 dropped."""
    import datasets

    for col in ("input_ids", "labels"):
        if col not in ds.column_names:
            raise DataError("train_dataset", f"missing column (columns: {', '.join(ds.column_names)})", col)
    keep = [c for c in COLUMNS if c in ds.column_names]
    rows = ds.select_columns(keep).to_dict()
    ok = [i for i, lab in enumerate(rows["labels"]) if any(x != IGNORE_INDEX for x in lab[1:max_length])]
    return datasets.Dataset.from_dict({c: [list(rows[c][i][:max_length]) for i in ok] for c in keep})


def _sample_lengths(row: dict[str, Any]) -> list[int]:
    """Lengths of the samples on one dataset row (a packed row lists them in ``seq_lengths``)."""
    return list(row["seq_lengths"]) if "seq_lengths" in row else [len(row["input_ids"])]


def token_collator(
    pad_id: int, padding_free: bool = False
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The batch of ``rows`` (see the module doc); packed rows (``seq_lengths``) are always padding-free."""

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        if padding_free or "seq_lengths" in rows[0]:
            return _flat(rows)
        return _padded(rows, pad_id)

    return collate


def _padded(rows: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    out: dict[str, Any] = {}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
        vals = [list(r.get(key) or [1] * len(r["input_ids"])) for r in rows]
        out[key] = torch.tensor([v + [fill] * (width - len(v)) for v in vals], dtype=torch.long)  # (B, T)
    if "weights" in rows[0]:
        w = [list(r["weights"]) + [0.0] * (width - len(r["weights"])) for r in rows]
        out[TOKEN_WEIGHTS] = torch.tensor(w, dtype=torch.float32)  # (B, T)
    return out


def _flat(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    ids = np.concatenate([np.asarray(r["input_ids"], dtype=np.int64) for r in rows])  # (sum T,)
    labels = np.concatenate([np.asarray(r["labels"], dtype=np.int64) for r in rows])  # (sum T,)
    lengths = [n for r in rows for n in _sample_lengths(r)]
    pos = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])  # (sum T,) restarts per sample
    labels[pos == 0] = IGNORE_INDEX  # a sample's first token has no preceding logits
    out = {
        "input_ids": torch.from_numpy(ids)[None],  # (1, sum T)
        "labels": torch.from_numpy(labels)[None],  # (1, sum T)
        "position_ids": torch.from_numpy(pos)[None],  # (1, sum T)
    }
    if "weights" in rows[0]:
        w = np.concatenate([np.asarray(r["weights"], dtype=np.float32) for r in rows])  # (sum T,)
        w[pos == 0] = 0.0
        out[TOKEN_WEIGHTS] = torch.from_numpy(w)[None]  # (1, sum T)
    return out


__all__ = ["TOKEN_WEIGHTS", "token_collator", "token_dataset"]
