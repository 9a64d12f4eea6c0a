"""Scale benchmark: a synthetic pool of N samples pushed through prepare -> score store -> select.

    python benchmarks/bench_scale.py --samples 100000 --processes 2 --json scale-100k.json
    python benchmarks/bench_scale.py --samples 1000000 --processes 2 --json scale-1m.json

No model: fake token ids, labels (a prompt of ~30% of each sample) and losses, written through the stages'
own writers. Every stage runs in fresh processes (``spawn``), so each process's peak RSS
(``ru_maxrss``, which includes the ~0.3 GB of the imported libraries) is the stage's own:

- ``prepare``: the prepared dataset written as the ``prepare`` stage streams it (one process; blocks of
  10,000 samples drawn and written one record batch each, :func:`tokenclean.testing.stores.prepared_from_blocks`);
- ``score_parts``: P processes, as P scoring ranks: each reads its chunks' rows of the prepared data
  (runs of the global length order, ``PreparedData.samples``) and writes base and reference parts with the
  scoring stage's writer (``store.write_part``; losses are drawn, not computed);
- ``score_files``: P processes, as the ranks after the barrier: each writes its own data file, its block of
  prepared rows gathered from the parts (``store.write_shard``);
- ``score_index``: the finishing step (``merge_parts``): the index and manifest, no data read (before the
  per-rank data files, this step assembled the whole store in one process);
- ``select``: ``tokenclean select`` (global, K = 0.6) in one process, writing the cleaned dataset: it
  streams (:mod:`tokenclean.selection.streamed`: the cut in two passes, a counting pass, a writing pass,
  one record batch at a time);
- ``select_stream``: the exact streaming global top-k cut alone (:mod:`tokenclean.selection.streaming`)
  over P processes (gloo when P > 1), each reading its contiguous rows of the store one record batch at a
  time; its kept-token count is checked against ``select``'s;
- ``train_load``: P processes, as P training ranks: each loads its share of the cleaned set for one epoch
  at global batch 64 (:func:`tokenclean.training.collate.rank_rows`, ``load_train_data(..., rows)``).

Printed per stage: wall seconds (process start and imports included) and the slowest process's own time
(``seconds_in_process``, after imports), ns per (all-position) token of each, bytes written, peak RSS of each
process. The JSON: ``{"tokens": T, "samples": N, "processes": P, "stages": {NAME: {"seconds",
"ns_per_token", "seconds_in_process", "ns_per_token_in_process", "peak_rss_bytes",
"peak_rss_bytes_per_process", "peak_anon_bytes_per_process", "peak_file_bytes_per_process", "bytes"}}}``
(peak RSS split into anonymous and file-backed pages: :class:`RssSplit`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import resource
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

IGNORE = -100
RATIO = 0.6


BLOCK = 10_000  # samples drawn and written at a time


def pool_block(a: int, b: int, mean_len: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples ``[a, b)`` of the pool: offsets (n+1,), input_ids (T,) int32 and labels (T,) int32 (prompt:
    the first ~30% of a sample), drawn from a generator of their own (any block alone is the same)."""
    rng = np.random.default_rng([seed, a])
    lens = rng.integers(mean_len // 2, mean_len * 3 // 2 + 1, b - a).astype(np.int64)
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    ids = rng.integers(3, 32000, int(off[-1]), dtype=np.int32)
    labels = ids.copy()
    pos = np.arange(int(off[-1]), dtype=np.int64) - np.repeat(off[:-1], lens)  # position in its sample
    labels[pos < np.repeat(np.maximum(1, (lens * 3) // 10), lens)] = IGNORE
    return off, ids, labels


def _rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class RssSplit:
    """Peak anonymous and file-backed resident memory of this process, sampled every 10 ms from
    ``/proc/self/status`` (``RssAnon``, ``RssFile``): ``ru_maxrss`` counts both, and the pages of a
    memory-mapped Arrow file that a process has read stay resident (and counted) until the kernel needs
    them, though they are page cache the kernel drops under pressure, not memory the process holds."""

    def __init__(self) -> None:
        import threading

        self.anon = self.file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        try:
            text = Path("/proc/self/status").read_text()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("RssAnon:"):
                self.anon = max(self.anon, int(line.split()[1]) * 1024)
            elif line.startswith("RssFile:"):
                self.file = max(self.file, int(line.split()[1]) * 1024)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.sample()

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        self.sample()
        return {"anon": self.anon, "file": self.file}


def stage_prepare(rank: int, world: int, args: dict[str, Any]) -> dict[str, Any]:
    from tokenclean.testing.stores import prepared_from_blocks

    n, tokens = args["samples"], [0]

    def blocks() -> Any:
        for a in range(0, n, BLOCK):
            b = min(a + BLOCK, n)
            off, ids, labels = pool_block(a, b, args["mean_len"], args["seed"])
            tokens[0] += int(off[-1])
            yield [f"s{i:09d}" for i in range(a, b)], off, ids, labels

    prepared_from_blocks(args["prep"], blocks())
    return {"tokens": tokens[0]}


def stage_score_parts(rank: int, world: int, args: dict[str, Any]) -> dict[str, Any]:
    from tokenclean.scoring import store
    from tokenclean.scoring.run import PreparedData

    data = PreparedData(args["prep"])
    out, shard = Path(args["store"]), args["shard_size"]
    for k in store.my_chunks(len(data), shard, rank, world):
        rng = np.random.default_rng([args["seed"], k])
        rows = data.chunk(k, shard)  # a run of the global length order, as the scoring stage reads it
        samples = data.samples(rows)
        labels = np.concatenate([s.labels for s in samples])
        lens = np.array([len(s.labels) for s in samples], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        for phase in ("base", "ref"):
            v = rng.gamma(2.0, 1.0, labels.size).astype(np.float32)
            v[labels == IGNORE] = np.nan
            part = store.Part(k, phase, rows, offsets, v)
            info = {"n": len(samples), "tokens": int(offsets[-1]), "seconds": 0.0, "cpu_seconds": 0.0}
            store.write_part(out, part, info)
    return {}


def stage_score_files(rank: int, world: int, args: dict[str, Any]) -> dict[str, Any]:
    from tokenclean.scoring import store
    from tokenclean.scoring.run import PreparedData

    data = PreparedData(args["prep"])
    total = store.n_chunks(len(data), args["shard_size"])
    out = Path(args["store"])
    store.write_shard(out, rank, world, data.sample_ids, data.lengths, total, "token_cleaning", True)
    return {}


def stage_score_index(rank: int, world: int, args: dict[str, Any]) -> dict[str, Any]:
    from tokenclean.scoring import store
    from tokenclean.scoring.run import PreparedData, merge_parts

    data = PreparedData(args["prep"])
    manifest = dict(json.loads((Path(args["store"]) / ".work" / "plan.json").read_text()))
    manifest.update(stage="score", prepared_dir=str(data.dir), prepared=data.manifest, synthetic=True)
    manifest.update(num_shards=args["processes"])
    total = store.n_chunks(len(data), args["shard_size"])
    merge_parts(Path(args["store"]), data.sample_ids, data.lengths, manifest, total, time.time())
    return {}


def stage_select(rank: int, world: int, args: dict[str, Any]) -> dict[str, Any]:
    from tokenclean.selection import select

    stats = select(args["store"], RATIO, "global", args["cleaned"], prepared_dir=args["prep"])
    return {"kept": int(stats["kept_tokens"])}


def stage_select_stream(rank: int, world: int, args: dict[str, Any]) -> dict[str, Any]:
    from tokenclean.selection.streaming import LocalComm, TorchComm, store_chunks, stream_global

    comm: Any = LocalComm()
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{args['port']}", rank=rank, world_size=world
        )
        comm = TorchComm()
    t0 = time.perf_counter()  # after the imports and the process group
    rows = np.array_split(np.arange(args["samples"]), world)[rank]
    chunks = store_chunks(args["store"], args["prep"], int(rows[0]), int(rows[-1]) + 1)
    cut = stream_global(chunks, RATIO, comm)
    kept = sum(int(m.sum()) for m in cut.masks(chunks))
    return {"kept": kept, "k": cut.k, "select_seconds": time.perf_counter() - t0}


def stage_train_load(rank: int, world: int, args: dict[str, Any]) -> dict[str, Any]:
    from tokenclean.training.collate import rank_rows, total_steps
    from tokenclean.training.data import load_train_data

    def rows(data: Any) -> np.ndarray:
        steps = total_steps(len(data), 64, 1, None)
        return rank_rows(len(data), data.lengths, rank, world, steps, 64, 0, 8, True, True)

    data = load_train_data(args["cleaned"], 4096, rows)
    loaded = data.counts.get("samples_loaded", len(data))
    return {"samples": len(data), "loaded": loaded}


STAGES: dict[str, tuple[Callable[[int, int, dict[str, Any]], dict[str, Any]], bool]] = {
    "prepare": (stage_prepare, False),  # (function, runs in P processes)
    "score_parts": (stage_score_parts, True),
    "score_files": (stage_score_files, True),
    "score_index": (stage_score_index, False),
    "select": (stage_select, False),
    "select_stream": (stage_select_stream, True),
    "train_load": (stage_train_load, True),
}


def _child(fn: Callable, rank: int, world: int, args: dict[str, Any], q: Any) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENCLEAN_LOGLEVEL", "WARNING")
    import datasets

    datasets.disable_progress_bars()
    split = RssSplit()
    t0 = time.perf_counter()
    out = fn(rank, world, args)
    seconds = time.perf_counter() - t0
    q.put((rank, dict(out, seconds_in_process=seconds, rss_split=split.stop()), _rss()))


def run_stage(name: str, world: int, args: dict[str, Any]) -> dict[str, Any]:
    fn, parallel = STAGES[name]
    n = world if parallel else 1
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        args = dict(args, port=int(s.getsockname()[1]))
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_child, args=(fn, r, n, args, q)) for r in range(n)]
    for p in procs:
        p.start()
    results = []
    while len(results) < len(procs):  # a process that dies sends nothing: stop instead of waiting
        try:
            results.append(q.get(timeout=5))
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    p.terminate()
                raise SystemExit(f"stage {name}: a process exited with an error") from None
    results.sort()
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"stage {name}: a process exited with {p.exitcode}")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "outputs": [r[1] for r in results], "rss": [r[2] for r in results]}


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file()) if Path(d).exists() else 0


def prepare_store_dir(args: dict[str, Any]) -> None:
    """The store's plan, as the scoring stage sets it up before the ranks write parts."""
    from tokenclean.scoring import store
    from tokenclean.scoring.run import PreparedData, scoring_plan, store_settings

    data = PreparedData(args["prep"])
    models = {"base": {"name": "synthetic"}, "reference": {"name": "synthetic"}, "mode": "one_model"}
    plan = scoring_plan(models, **store_settings(data, args["shard_size"], "token_cleaning", "fp32", "cpu"))
    store.prepare_out(Path(args["store"]), plan, force=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--mean-length", type=int, default=400, help="mean tokens per sample (uniform 0.5x-1.5x)")
    ap.add_argument("--shard-size", type=int, default=4096, help="samples per scoring chunk")
    ap.add_argument("--skip", nargs="*", default=[], choices=list(STAGES), help="stages not run")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one, removed)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    work = Path(a.dir or tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    args = {
        "processes": a.processes,
        "samples": a.samples,
        "mean_len": a.mean_length,
        "seed": a.seed,
        "shard_size": a.shard_size,
        "prep": str(work / "prep"),
        "store": str(work / "store"),
        "cleaned": str(work / "cleaned"),
    }
    print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} cores; work dir {work}")
    result: dict[str, Any] = {"samples": a.samples, "processes": a.processes, "stages": {}}
    written = {
        "prepare": "prep",
        "score_parts": "store",
        "score_files": "store",
        "select": "cleaned",
    }
    try:
        for name in STAGES:
            if name in a.skip:
                continue
            if name == "score_parts":
                prepare_store_dir(args)
            before = dir_bytes(Path(args[written[name]])) if name in written else 0
            r = run_stage(name, a.processes, args)
            if name == "prepare":
                result["tokens"] = r["outputs"][0]["tokens"]
            tokens = result.get("tokens") or 1
            size = dir_bytes(Path(args[written[name]])) - before if name in written else 0
            inner = max(o["seconds_in_process"] for o in r["outputs"])
            result["stages"][name] = {
                "seconds": round(r["seconds"], 3),
                "ns_per_token": round(r["seconds"] * 1e9 / tokens, 2),
                "seconds_in_process": round(inner, 3),
                "ns_per_token_in_process": round(inner * 1e9 / tokens, 2),
                "peak_rss_bytes": max(r["rss"]),
                "peak_rss_bytes_per_process": r["rss"],
                "peak_anon_bytes_per_process": [o["rss_split"]["anon"] for o in r["outputs"]],
                "peak_file_bytes_per_process": [o["rss_split"]["file"] for o in r["outputs"]],
                "bytes": size,
            }
            if name == "select_stream":
                kept = sum(o["kept"] for o in r["outputs"])
                assert all(o["k"] == kept for o in r["outputs"]), "the ranks disagree on k"
                result["stages"][name]["kept_tokens"] = kept
                sel = max(o["select_seconds"] for o in r["outputs"])
                result["stages"][name]["select_seconds"] = round(sel, 3)
                print(f"select_stream: the three passes alone {sel:.2f} s, {sel * 1e9 / tokens:.1f} ns/token")
                if "select" in result["stages"]:
                    stats = json.loads((Path(args["cleaned"]) / "selection_stats.json").read_text())
                    assert kept == stats["kept_tokens"], (
                        f"streaming kept {kept}, select {stats['kept_tokens']}"
                    )
                    result["stages"][name]["kept_tokens_equal_select"] = True
            if name == "train_load":
                loaded = [o["loaded"] for o in r["outputs"]]
                result["stages"][name]["samples_loaded_per_process"] = loaded
                print(f"train_load: {r['outputs'][0]['samples']} samples, loaded per process {loaded}")
            rss = ", ".join(
                f"{x / 2**30:.2f} (anon {o['rss_split']['anon'] / 2**30:.2f}, file {o['rss_split']['file'] / 2**30:.2f})"
                for x, o in zip(r["rss"], r["outputs"])
            )
            print(
                f"{name:15s} {r['seconds']:9.2f} s  {r['seconds'] * 1e9 / tokens:8.1f} ns/token  "
                f"(in process {inner:8.2f} s, {inner * 1e9 / tokens:8.1f} ns/token)  "
                f"{size / 2**30:6.2f} GiB written  peak RSS per process [{rss}] GiB"
            )
    finally:
        if a.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"tokens: {result.get('tokens')}; load average at end: {os.getloadavg()}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
