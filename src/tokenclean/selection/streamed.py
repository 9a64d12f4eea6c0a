"""``select`` over a pool of any size: the cut from the streaming selection, the cleaned set written block by
block.

:func:`write_streamed` runs one score selection (a checked settings dict of :mod:`.levels`) over the pool
:func:`~.blocks.token_blocks` reads, in passes that each hold one block:

- the levels' global parts first: ``global`` finds its cut by the two-pass radix select
  (:func:`~.streaming.stream_global`), soft weights add one pass for ``tau``
  (:func:`~.streaming.stream_soft_tau`), ``random`` counts the response tokens and draws its global index set
  (in memory: 1 B per response token); ``sample`` and ``threshold`` need nothing global;
- a counting pass: the selection stats (:class:`~.stats.SelectionTally`), ties at the cut, the weight
  record, and the size of the cleaned set (which decides its files);
- a writing pass: the cleaned rows and ``dropped.jsonl`` (:func:`~.writer.write_rows`), then the stats and
  the manifest, all inside one atomic directory.

The masks equal the in-memory selectors' (:mod:`.levels`, property-tested in :mod:`.streaming`), and the
output equals what the in-memory path (:func:`~.selector.write_selection` on the whole table, kept as a
twin in the tests) writes: the same files byte for byte but the manifest's ``seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean.errors import DataError
from tokenclean.selection import levels
from tokenclean.selection.blocks import Block, Blocks
from tokenclean.selection.masks import select_random, select_sample, select_threshold
from tokenclean.selection.selector import COUNT_KEYS, warn_if_ties_decide
from tokenclean.selection.stats import SelectionTally, describe, tie_decided
from tokenclean.selection.streaming import GlobalCut, keys32, stream_global, stream_soft_tau
from tokenclean.selection.writer import CleanedSize, write_rows
from tokenclean.utils import RESULT, atomic_dir, get_logger, package_versions, write_json_atomic

log = get_logger("select")

Selected = Iterator[tuple[Block, np.ndarray, np.ndarray | None]]  # (block, (N_b,) keep, (N_b,) weights)


def selection_pass(settings: dict[str, Any], blocks: Blocks) -> tuple[Callable[[], Selected], Any]:
    """A callable running one pass of ``settings``' selection over the pool (a fresh pass per call), and
    the global cut it found (a :class:`GlobalCut` for ``global``, else None)."""
    level, ratio = settings["level"], settings["ratio"]

    def chunks() -> Iterator[np.ndarray]:
        return (b.table.response_scores for b in blocks())

    if level == "global":
        cut = stream_global(chunks, ratio)
        if settings.get("weights") is None:
            return (lambda: _global_pass(cut, blocks)), cut
        tau = stream_soft_tau(chunks, cut)

        def soft() -> Selected:
            for b in blocks():
                w = levels.sigmoid_weights(b.table.response_scores, tau, settings["temperature"])
                yield b, w > 0, w

        return soft, cut
    if level == "random":
        n = sum(int(b.table.response_positions.size) for b in blocks())
        keep = select_random(n, ratio, 42 if settings["seed"] is None else settings["seed"])

        def drawn() -> Selected:
            for b in blocks():
                yield b, keep[b.resp0 : b.resp0 + b.table.response_positions.size], None

        return drawn, None

    def per_block() -> Selected:
        for b in blocks():
            t = b.table
            if level == "sample":
                yield b, select_sample(t.response_scores, t.response_offsets, ratio), None
            else:
                yield b, select_threshold(t.response_scores, settings["threshold"]), None

    return per_block, None


def _global_pass(cut: GlobalCut, blocks: Blocks) -> Selected:
    seen = 0
    for b in blocks():
        keep, seen = cut.mask(b.table.response_scores, seen)
        yield b, keep, None


class Counts:
    """What the counting pass gathers: stats, ties at the cut, weights, NaN/finite scores, cleaned size."""

    def __init__(self, settings: dict[str, Any], cut: GlobalCut | None) -> None:
        self.settings, self.cut = settings, cut
        self.tally = SelectionTally(settings["level"], settings["ratio"])
        self.size = CleanedSize()
        self.weights = levels.WeightTally()
        self.finite = self.kept_at_cut = self.dropped_at_cut = self.sample_ties = 0

    def add(self, b: Block, keep: np.ndarray, w: np.ndarray | None) -> None:
        t = b.table
        s = t.response_scores
        kept = self.tally.add(keep, s, t.response_offsets)
        self.size.add(t, kept > 0)
        self.finite += int(np.count_nonzero(np.isfinite(s)))
        if w is not None:
            self.weights.add(w[keep])
        elif self.cut is not None and self.cut.cut is not None:
            at = keys32(s) == self.cut.cut  # (N_b,) the scores equal to the lowest kept one
            self.kept_at_cut += int(np.count_nonzero(at & keep))
            self.dropped_at_cut += int(np.count_nonzero(at & ~keep))
        elif self.settings["level"] == "sample":
            self.sample_ties += tie_decided(keep, s, t.response_offsets, "sample")

    def tie_decided(self) -> int:
        """:func:`~.stats.tie_decided` of the whole selection (soft weights keep every scored token: no
        tie at a cut decides anything, 0 as there)."""
        if self.settings["level"] == "sample":
            return self.sample_ties
        return self.kept_at_cut if self.dropped_at_cut else 0


def _check(counts: Counts, settings: dict[str, Any], scores_dir: Path, out: Path) -> None:
    """The in-memory path's refusals, in its order: no usable score, no finite score for soft weights,
    nothing kept."""
    column, n, nans = settings["column"], counts.tally.total, counts.tally.nans
    if n and nans == n:
        raise DataError(
            str(scores_dir),
            f"every one of the {n} response-token scores (column '{column}') is NaN: the store "
            "holds no usable score, whatever the level; re-run tokenclean score (with --force)",
            field=column,
        )
    if settings.get("weights") is not None and n and not counts.finite:
        n_inf = n - nans
        raise DataError(
            str(scores_dir),
            f"no response-token score (column '{column}') is finite ({n_inf} are +-inf, the rest NaN): soft "
            "weights place their cut between finite scores; re-run tokenclean score, or select without --weights",
            field=column,
        )
    if not counts.tally.kept:
        raise DataError(
            str(out),
            f"selection kept no token ({settings['level']}, ratio={settings['ratio']}, "
            f"threshold={settings['threshold']}); nothing to train on",
        )


def write_streamed(
    blocks: Blocks,
    settings: dict[str, Any],
    out: Path,
    key: str,
    fields: dict[str, Any],
    t0: float,
    scores_dir: Path,
) -> dict[str, Any]:
    """Select ``settings`` over the pool and write the cleaned set, stats, ``dropped.jsonl`` and manifest
    to ``out`` (see the module doc). Returns the stats."""
    selector = levels.selector_for(settings)
    run, cut = selection_pass(settings, blocks)
    counts = Counts(settings, cut)
    for b, keep, w in run():
        counts.add(b, keep, w)
    _check(counts, settings, scores_dir, out)
    stats = counts.tally.result(selector.seed, selector.threshold)
    stats["tie_decided_tokens"] = counts.tie_decided()
    if settings.get("steps"):
        stats["steps"] = {"mode": settings["steps"], "separator": settings["step_separator"]}
    if not settings.get("steps"):  # step scores tie by design: every token of a step shares its score
        warn_if_ties_decide(stats, out)
    record: dict[str, Any] = {}
    if isinstance(selector, levels.SoftWeights):
        record["weights"] = counts.weights.result(selector.mapping, selector.temperature)
    soft = bool(record)
    stats.update(record)
    manifest = {"stage": "select", "cache_key": key, **fields, **record}
    manifest.update(counts={k: stats[k] for k in COUNT_KEYS}, versions=package_versions())
    manifest["seconds"] = round(time.time() - t0, 3)
    with atomic_dir(out) as tmp:
        write_rows(tmp, ((b.row0, b.table, k, w) for b, k, w in run()), counts.size, soft, key[:32])
        write_json_atomic(tmp / "selection_stats.json", stats)
        from tokenclean.outputs import file_digests

        write_json_atomic(tmp / "manifest.json", dict(manifest, files=file_digests(tmp)))
    log.info("%s -> %s", describe(stats, selector.level), out, extra=RESULT)
    return stats
