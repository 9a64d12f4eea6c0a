"""Streaming selection equals the in-memory one: randomized pools with ties, NaN, +-inf and -0.0, cut into
random chunks, over 1 process and over simulated ranks (threads sharing the collectives); the 2-process
gloo run is in tests/integration/test_streaming_distributed.py."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenclean.selection.levels import soft_weights
from tokenclean.selection.masks import select_global, select_sample, select_threshold
from tokenclean.selection.streaming import (
    store_chunks,
    stream_global,
    stream_sample,
    stream_soft_tau,
    stream_threshold,
)

VALUES = [0.0, -0.0, 1.0, -1.0, 0.5, 2.5, np.inf, -np.inf, np.nan, 1e-30, -3.25]


@st.composite
def pools(draw: st.DrawFn) -> tuple[np.ndarray, list[int], float]:
    n = draw(st.integers(0, 300))
    tied = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if tied:  # few distinct values: many ties at any cut
        s = rng.choice(np.array(VALUES, dtype=np.float32), size=n)
    else:
        s = rng.standard_normal(n).astype(np.float32)
        s[rng.random(n) < 0.1] = np.nan
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    ratio = draw(st.sampled_from([0.0, 0.01, 0.1, 0.29, 0.5, 0.7, 0.99, 1.0]))
    return s, cuts, ratio


def chunked(s: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    return np.split(s, cuts)


@given(pools())
@settings(max_examples=300, deadline=None)
def test_streaming_global_equals_select_global(pool: tuple[np.ndarray, list[int], float]) -> None:
    s, cuts, ratio = pool
    parts = chunked(s, cuts)
    cut = stream_global(lambda: iter(parts), ratio)
    got = np.concatenate(list(cut.masks(lambda: iter(parts)))) if parts else np.zeros(0, bool)
    assert np.array_equal(got, select_global(s, ratio))
    assert cut.k == int(got.sum())


class ThreadComm:
    """Collectives between threads standing in for ranks (a barrier and a shared slot per rank)."""

    def __init__(self, world: int) -> None:
        self.world, self.barrier, self.slots = world, threading.Barrier(world), [None] * world

    def for_rank(self, rank: int) -> object:
        comm = self

        class Rank:
            def __init__(self) -> None:
                self.rank = rank

            def _all(self, x: object) -> list:
                comm.slots[rank] = x
                comm.barrier.wait()
                out = list(comm.slots)
                comm.barrier.wait()
                return out

            def sum(self, x: np.ndarray) -> np.ndarray:
                return np.sum(self._all(np.asarray(x, dtype=np.int64)), axis=0)

            def gather(self, x: int) -> list[int]:
                return [int(v) for v in self._all(x)]

            def min(self, x: float) -> float:
                return float(min(self._all(x)))

        return Rank()


def _ranked(parts: list[np.ndarray], world: int, ratio: float, soft: bool) -> tuple[np.ndarray, list]:
    """Run the streaming select with ``world`` thread-ranks, each holding a contiguous run of ``parts``."""
    split = np.array_split(np.arange(len(parts)), world)
    comm, masks, taus = ThreadComm(world), [None] * world, [None] * world

    def run(r: int) -> None:
        mine = [parts[i] for i in split[r]]
        c = comm.for_rank(r)
        cut = stream_global(lambda: iter(mine), ratio, c)  # type: ignore[arg-type]
        ms = list(cut.masks(lambda: iter(mine)))
        masks[r] = np.concatenate(ms) if ms else np.zeros(0, bool)
        if soft:
            taus[r] = stream_soft_tau(lambda: iter(mine), cut, c)  # type: ignore[arg-type]

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return np.concatenate(masks), taus


@given(pools(), st.integers(2, 4))
@settings(max_examples=120, deadline=None)
def test_streaming_global_over_ranks_equals_select_global(
    pool: tuple[np.ndarray, list[int], float], world: int
) -> None:
    s, cuts, ratio = pool
    got, _ = _ranked(chunked(s, cuts), world, ratio, soft=False)
    assert np.array_equal(got, select_global(s, ratio))


@given(pools(), st.integers(1, 3))
@settings(max_examples=120, deadline=None)
def test_soft_weights_need_only_the_cut(pool: tuple[np.ndarray, list[int], float], world: int) -> None:
    s, cuts, ratio = pool
    _, taus = _ranked(chunked(s, cuts), world, ratio, soft=True)
    want = soft_weights(s, select_global(s, ratio), 1.0)
    ok = ~np.isnan(s)
    tau = taus[0]
    assert all(t == tau for t in taus)
    with np.errstate(invalid="ignore"):
        z = (s.astype(np.float64) - tau) / 1.0
    got = np.where(ok, 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60))), 0.0).astype(np.float32)
    assert np.array_equal(got, want)


@given(pools())
@settings(max_examples=100, deadline=None)
def test_sample_and_threshold_stream_per_chunk(pool: tuple[np.ndarray, list[int], float]) -> None:
    s, cuts, ratio = pool
    bounds = [0, *cuts, s.size]  # samples: the cuts; chunks: every other sample boundary
    offsets = np.unique(np.asarray(bounds, dtype=np.int64))
    if offsets[0] != 0:
        offsets = np.concatenate([[0], offsets])
    edges = offsets[::2] if offsets[::2][-1] == s.size else np.concatenate([offsets[::2], [s.size]])
    chunks = []
    for a, b in itertools.pairwise(edges):
        inner = offsets[(offsets >= a) & (offsets <= b)] - a
        chunks.append((s[a:b], inner))
    got = list(stream_sample(lambda: iter(chunks), ratio))
    want = select_sample(s, offsets, ratio)
    assert np.array_equal(np.concatenate(got) if got else np.zeros(0, bool), want)
    parts = chunked(s, cuts)
    thr = list(stream_threshold(lambda: iter(parts), 0.3))
    assert np.array_equal(np.concatenate(thr) if thr else np.zeros(0, bool), select_threshold(s, 0.3))


def test_float64_scores_are_refused() -> None:
    with pytest.raises(TypeError, match="float32"):
        stream_global(lambda: iter([np.zeros(3)]), 0.5)


def test_streaming_from_a_score_store_equals_select(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Over a real store read batch by batch (small record batches, two row ranges as two ranks)."""
    import datasets

    from tokenclean.selection.table import load_token_table
    from tokenclean.testing.stores import write_arrays

    monkeypatch.setattr(datasets.config, "DEFAULT_MAX_BATCH_SIZE", 7)
    rng = np.random.default_rng(0)
    lens = rng.integers(2, 30, 60)
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    ids = rng.integers(3, 99, off[-1]).astype(np.int32)
    lab = ids.copy()
    lab[off[:-1]] = -100  # position 0 never trained
    sc = np.round(rng.standard_normal(off[-1]), 1).astype(np.float32)
    sc[lab == -100] = np.nan
    store, prep = write_arrays(tmp_path / "s", tmp_path / "p", off, ids, lab, sc)
    want = select_global(load_token_table(store).response_scores, 0.3)
    whole = stream_global(store_chunks(store, prep), 0.3)
    assert np.array_equal(np.concatenate(list(whole.masks(store_chunks(store, prep)))), want)
    world = [store_chunks(store, prep, 0, 25), store_chunks(store, prep, 25, None)]
    parts = [np.concatenate(list(c())) for c in world]
    got, _ = _ranked(parts, 2, 0.3, soft=False)
    assert np.array_equal(got, want)
