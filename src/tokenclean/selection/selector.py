"""The offline selector base: a subclass decides which tokens stay, the base writes the cleaned set once.

A :class:`Selector` implements ``keep(table) -> mask | Selection`` on a :class:`~.table.TokenTable` (a bool
mask over the response tokens in CSR order, or a :class:`Selection` with weights, the scores to record and
extra entries for the stats and manifest). :func:`write_selection` then does the rest, the same way for every
method: refuse an empty selection, compute the selection stats, write the cleaned dataset,
``dropped.jsonl``, ``selection_stats.json`` and ``manifest.json`` (:func:`~.cleaned.write_cleaned`).

The selectors: :mod:`tokenclean.selection.levels` (global top-k, per-sample, random, threshold, soft
weights) and :mod:`tokenclean.selection.xtf` (XTF).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tokenclean.errors import DataError
from tokenclean.outputs import decide
from tokenclean.selection.masks import TIE_RULE
from tokenclean.selection.stats import describe, selection_stats
from tokenclean.selection.table import TokenTable
from tokenclean.utils import RESULT, get_logger, package_versions, read_json

log = get_logger("select")

TIE_WARN_SHARE = 0.1  # warn when ties at the cut chose at least this share of the kept tokens
COUNT_KEYS = ("kept_tokens", "total_response_tokens", "samples_kept", "samples_emptied")


@dataclass(frozen=True)
class Selection:
    """What a selector decided, over the N response tokens of the table (CSR order)."""

    keep: np.ndarray  # (N,) bool
    weights: np.ndarray | None = None  # (N,) float32 loss weights (soft selections), written as ``weights``
    scores: np.ndarray | None = None  # (N,) float32 scores to record instead of the table's
    record: dict[str, Any] = field(default_factory=dict)  # extra entries of both the stats and the manifest


class Selector:
    """Base of the offline selectors. Subclasses set ``level`` and implement :meth:`keep`; ``ratio``,
    ``seed`` and ``threshold`` (None where a selector has none) go into the selection stats."""

    level: ClassVar[str] = ""
    ratio: float | None = None
    seed: int | None = None
    threshold: float | None = None

    def keep(self, table: TokenTable) -> np.ndarray | Selection:
        raise NotImplementedError

    def describe(self, table: TokenTable, keep: np.ndarray) -> dict[str, Any]:
        """Entries added to the selection stats only (default: none)."""
        return {}

    def label(self) -> str:
        return self.level


def as_selection(result: np.ndarray | Selection) -> Selection:
    return result if isinstance(result, Selection) else Selection(keep=np.asarray(result, dtype=bool))


def with_response_scores(table: TokenTable, scores: np.ndarray) -> TokenTable:
    """The table with ``scores`` ((N,) response tokens) as its score column (NaN at every other position)."""
    score = np.full(table.labels.size, np.nan, dtype=np.float32)  # (T,)
    score[table.response_positions] = scores
    return TokenTable(table.sample_ids, table.offsets, table.input_ids, table.labels, score)


def write_selection(
    selector: Selector, table: TokenTable, out: Path, key: str, fields: dict[str, Any], t0: float
) -> dict[str, Any]:
    """Run ``selector`` on ``table`` and write the cleaned set, its stats, emptied samples and manifest
    (``stage``, ``cache_key`` = ``key``, ``fields``, the selection's record, counts, versions, seconds) to
    ``out``. Returns the stats."""
    from tokenclean.selection.cleaned import write_cleaned

    sel = as_selection(selector.keep(table))
    if sel.scores is not None:
        table = with_response_scores(table, sel.scores)
    if not sel.keep.any():
        raise DataError(
            str(out),
            f"selection kept no token ({selector.level}, ratio={selector.ratio}, "
            f"threshold={selector.threshold}); nothing to train on",
        )
    scores, offsets = table.response_scores, table.response_offsets
    s = selector
    stats = selection_stats(sel.keep, scores, offsets, s.level, s.ratio, s.seed, s.threshold)
    stats.update(selector.describe(table, sel.keep))
    warn_if_ties_decide(stats, out)
    stats.update(sel.record)
    manifest = {"stage": "select", "cache_key": key, **fields, **sel.record}  # the record wins
    manifest.update(counts={k: stats[k] for k in COUNT_KEYS}, versions=package_versions())
    write_cleaned(
        out, table, sel.keep, stats, dict(manifest, seconds=round(time.time() - t0, 3)), sel.weights
    )
    if "requested_ratio" in stats:  # a score selection: one line, soft ones described as weights
        line = describe(stats, selector.level)
    else:
        line = (
            f"{selector.label()}: kept {stats['kept_tokens']} of {stats['total_response_tokens']} response "
            f"tokens ({stats['achieved_ratio']:.4f}), {stats['samples_emptied']} of {stats['samples_total']} "
            "samples emptied"
        )
    log.info("%s -> %s", line, out, extra=RESULT)
    return stats


def reusable_selection(out: Path, identity: dict, force: bool, replace_stale: bool) -> dict[str, Any] | None:
    """The stats of ``out`` when it already holds this selection (files verified), else None."""
    old = decide(out, "select", identity, force=force, replace_stale=replace_stale)
    if old is None:
        return None
    return dict(read_json(out / "selection_stats.json"), reused=True)


def warn_if_ties_decide(stats: dict[str, Any], out: Path) -> None:
    """Warn when equal scores, not the scores, chose a large share of the kept tokens."""
    n, kept = stats.get("tie_decided_tokens", 0), stats["kept_tokens"]
    if kept and n >= TIE_WARN_SHARE * kept:
        log.warning(
            "%s: ties decided %d of the %d kept tokens (%.0f%%): that many tokens share the score at the cut "
            "and were taken in dataset order (%s), not by score; the scores may carry little information "
            "(all zero when the reference equals the base)",
            out,
            n,
            kept,
            100 * n / kept,
            TIE_RULE,
        )
