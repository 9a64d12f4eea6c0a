"""Step-level scores: rank a reasoning step as a whole, and cut a trace at its worst step so far.

Why (docs/results.md, "Real reasoning mistakes"): on human-annotated reasoning traces a token score keeps the
errors. The token where a step goes wrong is surprising to both models, so ``loss_base - loss_reference``
cancels there, and everything after it is predictable *given* the error. Averaging the score over a step and
giving every step the worst step score seen so far in its trace (what follows an error goes with it) is what
separated correct from wrong steps there.

A *step* is a run of response tokens ended by a token whose text contains the separator (default a newline:
``tokenclean truth from-steps`` joins steps with newlines, and most chain-of-thought data writes one step per
line); a new response turn also starts a step. Modes (``--steps``):

- ``mean`` / ``min``: every token gets its step's mean / lowest score;
- ``cut_mean`` / ``cut_min``: the running minimum of those step scores along the sample's response (the
  cut runs over every turn of a sample).

NaN (unscored) tokens stay NaN and do not enter their step's score; a step with no scored token stays NaN and
does not enter the running minimum (nor does a step whose mean is undefined, +inf and -inf: its tokens
become NaN). The result replaces the ranked score, and the selection levels (global,
sample, threshold) work on it unchanged; the cleaned set's ``score`` column holds it.

:func:`step_scores` is the vectorised form; :func:`step_scores_naive` its loop twin (tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from tokenclean.errors import ConfigError, DataError
from tokenclean.selection.blocks import Block, Blocks
from tokenclean.selection.table import TokenTable

STEP_MODES = ("mean", "min", "cut_mean", "cut_min")


def check_mode(mode: str, prefix: str = "steps") -> str:
    if mode not in STEP_MODES:
        raise ConfigError(f"{prefix}: unknown step mode {mode!r} (valid: {', '.join(STEP_MODES)})")
    return mode


def check_separator(sep: str) -> str:
    """The step separator as text: ``\\n`` and ``\\t`` typed in a shell or YAML become the characters; empty is
    an error."""
    sep = sep.replace("\\n", "\n").replace("\\t", "\t")
    if not sep:
        raise ConfigError('step_separator: empty; give the text that ends a step, e.g. "\\n"')
    return sep


def separator_vocab(tokenizer: Any, sep: str) -> np.ndarray:
    """``(V,)`` bool: the token ids whose text contains ``sep`` (:func:`check_separator`; each id decoded
    alone)."""
    sep = check_separator(sep)
    n = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
    return np.fromiter((sep in t for t in texts), dtype=bool, count=n)


def _ends(table: TokenTable, ends_vocab: np.ndarray, resp: np.ndarray) -> np.ndarray:
    ids = table.input_ids[resp]
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= ends_vocab.size):
        bad = int(ids[(ids < 0) | (ids >= ends_vocab.size)][0])
        raise DataError(
            "prepared data",
            f"token id {bad} is outside the tokenizer's vocabulary ({ends_vocab.size} ids): the data was "
            "not prepared with this tokenizer",
            field="input_ids",
        )
    return ends_vocab[ids]


def step_starts(table: TokenTable, ends_vocab: np.ndarray) -> np.ndarray:
    """``(N,)`` bool over the response tokens (CSR order): True where a step starts."""
    resp = table.response_positions
    n = resp.size
    start = np.zeros(n, dtype=bool)
    if not n:
        return start
    ends = _ends(table, ends_vocab, resp)
    start[0] = True
    start[1:] = ends[:-1] | (np.diff(resp) > 1)  # after a separator token, or a new response turn
    ro = table.response_offsets
    first = ro[:-1][ro[:-1] < ro[1:]]  # each non-empty sample's first response token
    start[first] = True
    return start


def step_scores(table: TokenTable, ends_vocab: np.ndarray, mode: str) -> np.ndarray:
    """The ``(T,)`` float32 score array of ``table`` with every response token's score replaced by its step's
    (``mode`` in :data:`STEP_MODES`); prompt positions keep theirs (NaN)."""
    check_mode(mode)
    out = table.score.copy()
    resp = table.response_positions
    if not resp.size:
        return out
    start = step_starts(table, ends_vocab)
    first = np.flatnonzero(start)  # (K,) first token of each step
    step = np.cumsum(start) - 1  # (N,) step of each response token
    s = table.score[resp].astype(np.float64)
    ok = ~np.isnan(s)
    count = np.add.reduceat(ok.astype(np.int64), first)
    with np.errstate(invalid="ignore", divide="ignore"):
        if mode.endswith("mean"):
            agg = np.add.reduceat(np.where(ok, s, 0.0), first) / count
        else:
            agg = np.minimum.reduceat(np.where(ok, s, np.inf), first)
    agg[count == 0] = np.nan
    if mode.startswith("cut"):
        sample = np.searchsorted(table.response_offsets, first, side="right") - 1  # (K,) sample of each step
        agg = _segment_running_min(agg, sample)
    out[resp] = np.where(ok, agg[step], np.nan).astype(np.float32)
    return out


def _segment_running_min(x: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Running minimum of ``x`` within each run of equal, non-decreasing ``segment`` ids; NaN entries are
    skipped (they stay NaN, and do not lower what follows). Exact: works on the ranks of the values, shifted
    so that every value of a later segment lies below every value of an earlier one, so one global
    ``minimum.accumulate`` restarts at each segment."""
    valid = ~np.isnan(x)
    uniq = np.unique(x[valid])  # sorted distinct values
    big = uniq.size + 1  # rank of "no value yet"
    rank = np.full(x.size, uniq.size, dtype=np.int64)
    rank[valid] = np.searchsorted(uniq, x[valid])
    seg = segment.astype(np.int64) - int(segment[0]) if segment.size else segment.astype(np.int64)
    running = np.minimum.accumulate(rank - seg * big) + seg * big
    out = np.full(x.size, np.nan)
    has = valid & (running < uniq.size)
    out[has] = uniq[running[has]]
    return out


def step_scores_naive(table: TokenTable, ends_vocab: np.ndarray, mode: str) -> np.ndarray:
    """Loop twin of :func:`step_scores` (tests): sample by sample, step by step."""
    out = table.score.copy()
    for i in range(table.offsets.size - 1):
        a, b = int(table.offsets[i]), int(table.offsets[i + 1])
        steps: list[list[int]] = []
        prev = None
        for p in range(a, b):
            if table.labels[p] == -100:
                continue
            if prev is None or p != prev + 1 or bool(ends_vocab[table.input_ids[prev]]):
                steps.append([])
            steps[-1].append(p)
            prev = p
        worst = None
        for st in steps:
            vals = [float(table.score[p]) for p in st if not np.isnan(table.score[p])]
            if not vals:
                v = float("nan")
            elif mode.endswith("mean"):
                v = sum(vals) / len(vals)
            else:
                v = min(vals)
            if mode.startswith("cut") and not np.isnan(v):  # an unscored or undefined step stays NaN
                worst = v if worst is None or v < worst else worst
                v = worst
            for p in st:
                out[p] = np.nan if np.isnan(table.score[p]) else np.float32(v)
    return out


def stepped(blocks: Blocks, ends_vocab: np.ndarray, mode: str) -> Blocks:
    """``blocks`` with every block's scores replaced by :func:`step_scores` (blocks hold whole samples, so the
    result does not depend on where the pool is cut into blocks)."""
    check_mode(mode)

    def gen() -> Iterator[Block]:
        for b in blocks():
            yield replace(b, table=replace(b.table, score=step_scores(b.table, ends_vocab, mode)))

    return gen
