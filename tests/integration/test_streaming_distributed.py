"""Streaming global top-k over 2 gloo processes equals the in-memory ``select_global`` on the whole pool:
randomized pools with ties, NaN, +-inf and -0.0, split into uneven chunks, each rank holding a contiguous
run of them (the tie rule crosses the rank boundary)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import torch.multiprocessing as mp

from tokenclean.selection.masks import select_global

VALUES = np.array([0.0, -0.0, 1.0, -1.0, 0.5, np.inf, -np.inf, np.nan, -3.25], dtype=np.float32)
RATIOS = (0.0, 0.01, 0.1, 0.29, 0.5, 0.7, 1.0)
POOLS = 40


def _pool(i: int) -> tuple[list[np.ndarray], float]:
    rng = np.random.default_rng(i)
    n = int(rng.integers(0, 400))
    s = rng.choice(VALUES, size=n) if i % 2 else rng.standard_normal(n).astype(np.float32)
    if i % 3 == 0:
        s[rng.random(n) < 0.2] = np.nan
    cuts = np.sort(rng.integers(0, n + 1, size=int(rng.integers(0, 7))))
    return np.split(s, cuts), RATIOS[i % len(RATIOS)]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from tokenclean.selection.streaming import TorchComm, stream_global, stream_soft_tau

    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    comm = TorchComm()
    masks, taus = {}, {}
    for i in range(POOLS):
        parts, ratio = _pool(i)
        mine = [parts[j] for j in np.array_split(np.arange(len(parts)), world)[rank]]
        chunks = mine.__iter__  # a fresh iterator per pass
        cut = stream_global(chunks, ratio, comm)
        ms = list(cut.masks(chunks))
        masks[f"m{i}"] = np.concatenate(ms) if ms else np.zeros(0, bool)
        taus[f"t{i}"] = np.float64(stream_soft_tau(chunks, cut, comm))
    np.savez(Path(out) / f"rank{rank}.npz", **masks, **taus)
    dist.destroy_process_group()


def test_two_gloo_processes_give_the_in_memory_masks(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    for i in range(POOLS):
        parts, ratio = _pool(i)
        s = np.concatenate(parts)
        got = np.concatenate([r0[f"m{i}"], r1[f"m{i}"]])
        assert np.array_equal(got, select_global(s, ratio)), i
        assert r0[f"t{i}"] == r1[f"t{i}"] or (np.isnan(r0[f"t{i}"]) and np.isnan(r1[f"t{i}"]))
