"""Exact selection over a pool too large for one process: shards in, the same masks out.

The response-token scores arrive as chunks (one shard, one record batch, ...) in flat (sample, position)
order, from a callable that yields them anew on every pass; under a launcher each rank passes its own
contiguous range of the pool, in rank order. Memory is one chunk plus two 65,536-bin histograms.

Global top-k (:func:`stream_global`), a two-pass radix select on the 32-bit key of
:func:`~tokenclean.selection.masks.descending_key32` (ascending key = score descending, -0.0 == 0.0, NaN
last):

1. histogram of the key's high 16 bits over every chunk (summed over ranks): the bucket holding the k-th
   best token, ``k = min(n_keep(K, N), N - NaNs)`` as :func:`~.masks.select_global`;
2. histogram of the low 16 bits inside that bucket: the exact key of the k-th best token (the cut) and how
   many tokens at the cut still fit (``need``); each rank's ties at the cut, gathered, give each rank its
   share of ``need`` (earlier ranks first: the tie rule "flat index ascending");
3. :meth:`GlobalCut.masks` emits each chunk's mask: keys below the cut, and the rank's first ties.

The masks equal :func:`~.masks.select_global` on the concatenated scores, ties and NaN included (property
tests in 1 and 2 processes). Per-sample (:func:`stream_sample`) and threshold (:func:`stream_threshold`)
are per chunk already (chunks must hold whole samples for ``sample``); soft weights need only the cut
(:func:`stream_soft_tau`). ``random`` needs the global index draw and stays in memory (8 B per kept token).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tokenclean.selection.masks import (
    descending_key32,
    n_keep,
    select_sample,
    select_threshold,
)

BINS = 1 << 16
NAN_KEY = 0xFFFFFFFF
Chunks = Callable[[], Iterable[np.ndarray]]  # a fresh iterator of (n_c,) float32 score chunks per call


class Comm(Protocol):
    """The collectives a distributed selection needs (``LocalComm``: one process; ``TorchComm``: ranks)."""

    rank: int

    def sum(self, x: np.ndarray) -> np.ndarray: ...

    def gather(self, x: int) -> list[int]: ...

    def min(self, x: float) -> float: ...


class LocalComm:
    rank = 0

    def sum(self, x: np.ndarray) -> np.ndarray:
        return x

    def gather(self, x: int) -> list[int]:
        return [x]

    def min(self, x: float) -> float:
        return x


class TorchComm:
    """``torch.distributed`` collectives (any backend; gloo on CPU) of the default process group."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()

    def sum(self, x: np.ndarray) -> np.ndarray:
        import torch

        t = torch.from_numpy(np.array(x, dtype=np.int64))  # a copy: all_reduce works in place
        self.dist.all_reduce(t)
        return t.numpy()

    def gather(self, x: int) -> list[int]:
        import torch

        out = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        self.dist.all_gather(out, torch.tensor([x], dtype=torch.int64))
        return [int(t.item()) for t in out]

    def min(self, x: float) -> float:
        import torch

        t = torch.tensor([x], dtype=torch.float64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MIN)
        return float(t.item())


def keys32(scores: np.ndarray) -> np.ndarray:
    """The uint32 descending key of a float32 chunk: (n_c,) uint32 (NaN -> 0xFFFFFFFF)."""
    s = np.asarray(scores)
    if s.dtype != np.float32:
        raise TypeError(f"streaming selection needs float32 scores (the store's dtype), got {s.dtype}")
    return descending_key32(s).astype(np.uint32)


@dataclass(frozen=True)
class GlobalCut:
    """Where this rank's global top-k cut lies: keep keys below ``cut``, and the first ``ties`` keys equal
    to it (``cut`` None: keep nothing)."""

    k: int  # tokens kept over all ranks
    cut: int | None  # the k-th best key
    ties: int  # ties at the cut this rank keeps (its first ones, in flat order)

    def mask(self, scores: np.ndarray, ties_seen: int) -> tuple[np.ndarray, int]:
        """One chunk's mask, given the ties at the cut seen in this rank's earlier chunks."""
        if self.cut is None:
            return np.zeros(len(scores), dtype=bool), ties_seen
        key = keys32(scores)
        keep = key < self.cut
        at = np.flatnonzero(key == self.cut)
        take = at[: max(0, self.ties - ties_seen)]
        keep[take] = True
        return keep, ties_seen + at.size

    def masks(self, chunks: Chunks) -> Iterator[np.ndarray]:
        """The mask of every chunk, in order: (n_c,) bool each."""
        seen = 0
        for c in chunks():
            m, seen = self.mask(c, seen)
            yield m


def _pass_high(chunks: Chunks) -> tuple[np.ndarray, int, int]:
    hist = np.zeros(BINS, dtype=np.int64)
    n = nans = 0
    for c in chunks():
        key = keys32(c)
        nan = key == NAN_KEY
        nans += int(np.count_nonzero(nan))
        n += key.size
        hist += np.bincount(key[~nan] >> np.uint32(16), minlength=BINS)
    return hist, n, nans


def _pass_low(chunks: Chunks, bucket: int) -> np.ndarray:
    hist = np.zeros(BINS, dtype=np.int64)
    for c in chunks():
        key = keys32(c)
        inside = key[(key >> np.uint32(16)) == bucket]
        hist += np.bincount(inside & np.uint32(0xFFFF), minlength=BINS)
    return hist


def _locate(hist: np.ndarray, k: int) -> tuple[int, int]:
    """The bin holding the k-th (1-based) element of a histogram, and how many come before that bin."""
    cum = np.cumsum(hist)
    b = int(np.searchsorted(cum, k, side="left"))
    return b, int(cum[b - 1]) if b > 0 else 0


def stream_global(chunks: Chunks, ratio: float, comm: Comm | None = None) -> GlobalCut:
    """The global top-``ratio`` cut of the scores ``chunks`` yields (this rank's part of the pool)."""
    comm = comm or LocalComm()
    hist, n, nans = _pass_high(chunks)
    counts = comm.sum(np.array([n, nans], dtype=np.int64))
    hist = comm.sum(hist)
    total, total_nan = int(counts[0]), int(counts[1])
    k = min(n_keep(ratio, total), total - total_nan)
    if k <= 0:
        return GlobalCut(0, None, 0)
    high, before = _locate(hist, k)
    low_local = _pass_low(chunks, high)
    low_hist = comm.sum(low_local)
    low, before_low = _locate(low_hist, k - before)
    need = k - before - before_low  # ties at the cut that are kept, over all ranks
    mine = comm.gather(int(low_local[low]))  # ties at the cut on each rank
    earlier = sum(mine[: comm.rank])
    ties = int(min(max(need - earlier, 0), mine[comm.rank]))
    return GlobalCut(k, (high << 16) | low, ties)


def stream_soft_tau(chunks: Chunks, cut: GlobalCut, comm: Comm | None = None) -> float:
    """``tau`` of :func:`~tokenclean.selection.levels.soft_weights` from the cut: the midpoint between the
    lowest kept and the highest dropped score (one more pass, for the highest dropped)."""
    from tokenclean.selection.levels import soft_cut

    comm = comm or LocalComm()
    largest_kept_key, smallest_dropped_key = -1, NAN_KEY  # keys: lowest kept, highest dropped score
    seen = 0
    for c in chunks():
        keep, seen = cut.mask(c, seen)
        key = keys32(c)
        finite = np.isfinite(c)  # the cut sits between finite scores, as in soft_weights
        if (keep & finite).any():
            largest_kept_key = max(largest_kept_key, int(key[keep & finite].max()))
        dropped = key[~keep & finite]
        if dropped.size:
            smallest_dropped_key = min(smallest_dropped_key, int(dropped.min()))
    lowest_kept = -comm.min(-float(largest_kept_key))
    highest_dropped = comm.min(float(smallest_dropped_key))
    return soft_cut(
        _score_of(int(lowest_kept)) if lowest_kept >= 0 else None,
        _score_of(int(highest_dropped)) if highest_dropped < NAN_KEY else None,
    )


def _score_of(key: int) -> float:
    """The float32 score of a descending key (the inverse of :func:`keys32` for non-NaN keys)."""
    asc = np.uint32(~np.uint32(key))
    bits = asc & np.uint32(0x7FFFFFFF) if asc & np.uint32(0x80000000) else ~asc
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def stream_sample(
    chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], ratio: float
) -> Iterator[np.ndarray]:
    """Per-sample top-``ratio`` over chunks of whole samples ((scores, CSR offsets) each): per chunk."""
    for scores, offsets in chunks():
        yield select_sample(scores, offsets, ratio)


def stream_threshold(chunks: Chunks, value: float) -> Iterator[np.ndarray]:
    """``score > value`` per chunk."""
    for scores in chunks():
        yield select_threshold(scores, value)


def torch_comm_if_launched() -> Any:
    """A :class:`TorchComm` when a default process group is up, else :class:`LocalComm`."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return LocalComm()
    return TorchComm() if dist.is_available() and dist.is_initialized() else LocalComm()


def store_chunks(
    scores_dir: str | Path,
    prepared_dir: str | Path,
    start: int = 0,
    stop: int | None = None,
    column: str = "score",
) -> Chunks:
    """The response-token scores of rows ``[start, stop)`` of a score store, one record batch at a time
    (joined with the prepared ``labels`` for the response positions): a :data:`Chunks` for the functions
    above. Memory: one batch of each dataset."""
    from tokenclean import IGNORE_INDEX
    from tokenclean.columns import aligned_batches, flat_list, row_batches

    def chunks() -> Iterator[np.ndarray]:
        prep = row_batches(prepared_dir, ["labels"], start, stop)
        store = row_batches(scores_dir, [column], start, stop)
        for p, s in aligned_batches(prep, store):
            labels, _ = flat_list(p.column(0), np.int32)
            score, _ = flat_list(s.column(0), np.float32)
            yield score[labels != IGNORE_INDEX]

    return chunks
