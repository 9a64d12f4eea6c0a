"""Selection benchmark: global top-k over N synthetic response-token scores in S samples.

    python benchmarks/bench_selection.py                      # N = 20M tokens, S = 50k samples, K = 0.6
    python benchmarks/bench_selection.py --python-tokens 20000000   # run the Python sort at full size too

Compares, in one run:

- tokenclean ``select_global`` (np.partition over the flat float32 array + tie handling at the cut);
- the reference code's approach, re-created: per-sample Python lists of floats (as unpickled), flattened into
  one Python list, ``sorted(..., reverse=True)``, the k-th value as threshold, then per-sample mask lists.
  At full size it takes long and GBs, so by default it runs on ``--python-tokens`` (2M) and the 20M figure
  is extrapolated (time by N log N, memory linearly); the output says which numbers are extrapolated.

Time: median (and min) of ``--repeats`` runs with ``time.perf_counter``, tracemalloc off. Peak memory:
``tracemalloc`` peak above the inputs during one more run (numpy allocations are traced too); the memory
the inputs themselves hold is reported separately. Also reported for information: the per-sample level,
the random level, a 7-ratio global sweep from one sort, and ``tokenclean.selection.select`` end to end on
a score store on disk (``--e2e-tokens``, default N).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import os
import platform
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean.selection.masks import global_masks, ratio_count, select_global, select_random, select_sample

MB = 1024 * 1024


def make_scores(n_tokens: int, n_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 scores ~ N(0, 1) (like loss differences) and CSR offsets with random sample lengths."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, n_tokens), size=n_samples - 1, replace=False))
    offsets = np.concatenate([[0], cuts, [n_tokens]]).astype(np.int64)  # (S+1,)
    return rng.standard_normal(n_tokens, dtype=np.float32), offsets


def python_lists(scores: np.ndarray, offsets: np.ndarray) -> list[list[float]]:
    """The reference code's in-memory form: one Python list of floats per sample."""
    return [scores[a:b].tolist() for a, b in itertools.pairwise(offsets)]


def python_sort_select(samples: list[list[float]], ratio: float) -> list[list[int]]:
    """Re-creation of the reference approach: sort a Python list of every token, threshold, mask lists."""
    all_scores = [s for sample in samples for s in sample]
    k = int(len(all_scores) * ratio)
    ordered = sorted(all_scores, reverse=True)
    thr = ordered[k - 1]
    return [[1 if s >= thr else 0 for s in sample] for sample in samples]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    times, out = [], None
    for _ in range(repeats):
        out = None
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), out


def traced_peak(fn: Callable[[], Any]) -> float:
    """Peak traced bytes (MiB) allocated while ``fn`` runs, above what was allocated before."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    out = fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    del out
    tracemalloc.stop()
    return peak / MB


def traced_size(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Bytes (MiB) still held by what ``fn`` returns."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    out = fn()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return held / MB, out


def nlogn_scale(n_from: int, n_to: int) -> float:
    return (n_to * math.log(n_to)) / (n_from * math.log(n_from))


def bench_tokenclean(scores: np.ndarray, offsets: np.ndarray, ratio: float, repeats: int) -> dict[str, Any]:
    med, best, keep = timed(lambda: select_global(scores, ratio), repeats)
    assert int(keep.sum()) == ratio_count(ratio, scores.size)
    return {"median_s": med, "min_s": best, "peak_mib": traced_peak(lambda: select_global(scores, ratio))}


def bench_python(scores: np.ndarray, offsets: np.ndarray, ratio: float, repeats: int) -> dict[str, Any]:
    input_mib, samples = traced_size(lambda: python_lists(scores, offsets))
    med, best, masks = timed(lambda: python_sort_select(samples, ratio), repeats)
    ours = select_global(scores, ratio)
    same = bool(np.array_equal(np.concatenate([np.asarray(m, dtype=bool) for m in masks]), ours))
    peak = traced_peak(lambda: python_sort_select(samples, ratio))
    return {"median_s": med, "min_s": best, "peak_mib": peak, "input_mib": input_mib, "same_mask": same}


def bench_e2e(n_tokens: int, n_samples: int, ratio: float, seed: int) -> dict[str, float]:
    """tokenclean.selection.select on a synthetic score store on disk: read, check, select, write."""
    from tokenclean.selection import select
    from tokenclean.testing.stores import write_arrays

    scores, offsets = make_scores(n_tokens, n_samples, seed)
    labels = np.arange(n_tokens, dtype=np.int32) % 30000  # every position a response token ...
    labels[offsets[:-1]] = -100  # ... except each sample's position 0
    scores[offsets[:-1]] = np.nan
    with tempfile.TemporaryDirectory(prefix="bench_select_") as d:
        store, _ = write_arrays(Path(d) / "scores", Path(d) / "prep", offsets, labels, labels, scores)
        t0 = time.perf_counter()
        st = select(store, ratio, "global", Path(d) / "clean")
        secs = time.perf_counter() - t0
    return {"seconds": secs, "kept": st["kept_tokens"], "total": st["total_response_tokens"]}


def other_levels(scores: np.ndarray, offsets: np.ndarray, k: float) -> None:
    print(f"\n-- other levels at N = {scores.size:,} (information)")
    t, _, _ = timed(lambda: select_sample(scores, offsets, k), 1)
    print(f"select_sample (RHO, per sample) : {t:.3f} s")
    t, _, _ = timed(lambda: select_random(scores.size, k, 0), 1)
    print(f"select_random                   : {t:.3f} s")
    ratios = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    t, _, _ = timed(lambda: global_masks(scores, ratios), 1)
    print(f"global sweep, 7 ratios          : {t:.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=20_000_000)
    ap.add_argument("--samples", type=int, default=50_000)
    ap.add_argument("--ratio", type=float, default=0.6)
    ap.add_argument("--python-tokens", type=int, default=2_000_000, help="size of the Python-sort run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--e2e-tokens", type=int, default=None, help="default: --tokens; 0 skips the end-to-end run"
    )
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} (shared with other jobs: timings are noisy)"
    )
    print(f"numpy {np.__version__}, python {platform.python_version()}")
    n, s, k = a.tokens, a.samples, a.ratio
    scores, offsets = make_scores(n, s, a.seed)
    print(f"\n== global top-k, N = {n:,} tokens in S = {s:,} samples, K = {k} (keep {ratio_count(k, n):,})")
    tc = bench_tokenclean(scores, offsets, k, a.repeats)
    print(
        f"tokenclean select_global     : {tc['median_s']:.3f} s median ({tc['min_s']:.3f} min), "
        f"peak {tc['peak_mib']:.0f} MiB above input (input: {scores.nbytes / MB:.0f} MiB float32)"
    )

    m = min(a.python_tokens, n)
    m_samples = s if m == n else max(1, round(s * m / n))
    sm, om = (scores, offsets) if m == n else make_scores(m, m_samples, a.seed)
    py = bench_python(sm, om, k, 1 if m >= 5_000_000 else a.repeats)
    tc_m = tc if m == n else bench_tokenclean(sm, om, k, a.repeats)
    print(f"\n-- same size, both measured: N = {m:,} tokens in {m_samples:,} samples")
    print(
        f"Python sort (reference way)  : {py['median_s']:.3f} s median, peak {py['peak_mib']:.0f} MiB "
        f"above input (input as Python lists: {py['input_mib']:.0f} MiB); same mask as tokenclean: "
        f"{py['same_mask']}"
    )
    print(f"tokenclean select_global     : {tc_m['median_s']:.4f} s median, peak {tc_m['peak_mib']:.0f} MiB")
    print(
        f"measured ratio at N = {m:,}   : {py['median_s'] / tc_m['median_s']:.0f}x faster, "
        f"{py['peak_mib'] / tc_m['peak_mib']:.1f}x less peak memory"
    )

    if m < n:
        f = nlogn_scale(m, n)
        py_t, py_mem, py_in = py["median_s"] * f, py["peak_mib"] * n / m, py["input_mib"] * n / m
        note = f"EXTRAPOLATED from N = {m:,} (time x N log N = x{f:.2f}, memory x N)"
    else:
        py_t, py_mem, py_in, note = py["median_s"], py["peak_mib"], py["input_mib"], "measured"
    print(f"\n-- at N = {n:,}")
    print(
        f"Python sort (reference way)  : ~{py_t:.1f} s, peak ~{py_mem:.0f} MiB above input, "
        f"input ~{py_in:.0f} MiB [{note}]"
    )
    print(
        f"tokenclean select_global     : {tc['median_s']:.3f} s, peak {tc['peak_mib']:.0f} MiB, "
        f"input {scores.nbytes / MB:.0f} MiB [measured]"
    )
    print(
        f"ratio at N = {n:,}          : ~{py_t / tc['median_s']:.0f}x faster, "
        f"~{py_mem / tc['peak_mib']:.1f}x less peak memory, ~{py_in / (scores.nbytes / MB):.1f}x less input memory"
    )
    target = "MET" if tc["median_s"] < 2.0 else "MISSED"
    print(f"target (< 2 s for {n:,} tokens): {target}")

    other_levels(scores, offsets, k)
    del scores, offsets
    e2e = n if a.e2e_tokens is None else a.e2e_tokens
    if e2e:
        e = bench_e2e(e2e, max(1, round(s * e2e / n)), k, a.seed)
        print(
            f"select() end to end on disk     : {e['seconds']:.2f} s for {e2e:,} positions "
            f"(kept {e['kept']:,} of {e['total']:,}; read + row checks + select + write dataset)"
        )


if __name__ == "__main__":
    main()
