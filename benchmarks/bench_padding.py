"""Padding efficiency (real tokens / computed tokens) of scoring batches and training micro-batches, old
algorithm against new, in ONE run, on realistic lengths. Pure arithmetic on sample lengths: no model runs.

    python benchmarks/bench_padding.py                       # 10k samples, both length pools
    python benchmarks/bench_padding.py --n 50000 --no-tokenizer

Length pools:

- ``bench_scoring``: the chat samples of ``benchmarks/bench_scoring.py`` (sentence pool, 100-600 tokens),
  tokenised with SmolLM2's tokenizer (``--pool-sample`` of them), resampled with replacement to ``--n``;
  ``--no-tokenizer`` draws the same uniform 100-600 target lengths without tokenising;
- ``long-tail``: log-normal, median 250, sigma 1.0, cut to [16, 2048] (mean ~400, a few samples at the
  2048 cap), like a mixed SFT pool (Flan/OpenAssistant/Alpaca/Dolly/WizardLM) truncated at the paper's
  ``max_length``.

Scoring (configs/paper_llama3.1-8b.yaml: ``batch_tokens`` 65536; also the defaults 1024 CPU, 16384 CUDA),
chunks of 256 samples (the store's ``shard_size``):

- ``old``: chunks of 256 samples in prepared (shuffled) order, length-sorted inside the chunk, padded
  batches of ``max_len x rows <= batch_tokens`` (tokenclean before this change);
- ``sorted``: chunks are runs of the global length order, padded batches (the new ``packing: off``, and
  ``auto`` with sdpa/eager);
- ``packed-sdpa``: packed padding-free batches, rows of <= 4096 tokens (``packing: on`` with sdpa);
- ``packed-flash``: packed, one row per batch (``packing: auto`` with flash_attention_2).

Training (paper recipe: global batch 48, 4 per device), over one epoch of a shuffled pool, on 1 and 8
processes:

- ``old``: the step's 48 samples sorted by length, rank ``r`` takes every 8th from ``r``
  (``training.collate.rank_share``), micro-batches of 4 after a length sort (``micro_batches``), padded;
- ``packed``: the training side's packed, length-balanced assignment, called by name
  (``tokenclean.training.collate.packed_micro_batches(samples, lengths, rank, world, batch_size)`` ->
  micro-batches of sample indices, each one packed row); while it is not there, the bench's own sketch
  (greedy longest-first to the least-loaded rank, micro-batches of 4 packed into one row) stands in and
  the table says so.

Printed per training case: micro-batch padding efficiency (real / computed inside micro-batches) and step
efficiency (real / (processes x the busiest process's computed tokens): ranks wait for the slowest).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent.parent / "src"))  # run from the source tree

SHARD = 256
PACKED_ASSIGNMENT = "tokenclean.training.collate:packed_micro_batches"


# --- length pools ----------------------------------------------------------------------------------------


def bench_scoring_lengths(n: int, sample: int, tokenizer: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if not tokenizer:
        return rng.integers(100, 600, size=n)
    sys.path.insert(0, str(HERE.parent))
    from bench_scoring import build_records

    from tokenclean.models.loader import load_tokenizer

    tok = load_tokenizer("smollm2")
    recs = build_records(tok, sample, seed=seed)
    real = np.array([len(tok(r["prompt"] + " " + r["completion"])["input_ids"]) + 12 for r in recs])
    return rng.choice(real, size=n, replace=True)  # +12: the chat template's tokens, roughly


def long_tail_lengths(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(250), 1.0, size=n), 16, 2048).astype(np.int64)


# --- scoring ---------------------------------------------------------------------------------------------


def scoring_efficiency(lengths: np.ndarray, batch_tokens: int, how: str) -> float:
    from tokenclean.packing import row_tokens_for
    from tokenclean.scoring.engine import PADDED, Packing
    from tokenclean.scoring.store import length_order

    n = len(lengths)
    if how == "old":
        chunks = [np.arange(k, min(k + SHARD, n)) for k in range(0, n, SHARD)]
    else:
        order = length_order(lengths)
        chunks = [order[k : k + SHARD] for k in range(0, n, SHARD)]
    layout = {
        "old": PADDED,
        "sorted": PADDED,
        "packed-sdpa": Packing(True, row_tokens_for("sdpa", batch_tokens)),
        "packed-flash": Packing(True, row_tokens_for("flash_attention_2", batch_tokens)),
    }[how]
    real = computed = 0
    for rows in chunks:
        lens = [int(x) for x in lengths[rows]]
        for idx in layout.batches(lens, batch_tokens):
            b = [lens[i] for i in idx]
            real += sum(b)
            computed += layout.computed_tokens(b)
    return real / computed


# --- training --------------------------------------------------------------------------------------------


def old_assignment(samples: np.ndarray, lengths: np.ndarray, rank: int, world: int, bs: int) -> list:
    from tokenclean.training.collate import micro_batches, rank_share

    mine = rank_share(samples, lengths, rank, world, group_by_length=True)
    return micro_batches(mine, lengths, bs, group_by_length=True)


def sketch_packed_assignment(
    samples: np.ndarray, lengths: np.ndarray, rank: int, world: int, bs: int
) -> list:
    """The bench's stand-in: longest first to the least-loaded rank (ties: lowest rank), then this rank's
    samples longest first in micro-batches of ``bs``, each packed into one row."""
    load = np.zeros(world, dtype=np.int64)
    mine = []
    for i in samples[np.argsort(-lengths[samples], kind="stable")]:
        r = int(np.argmin(load))
        load[r] += lengths[i]
        if r == rank:
            mine.append(i)
    arr = np.asarray(mine, dtype=np.int64)
    return [arr[i : i + bs] for i in range(0, len(arr), bs)]


def packed_assignment() -> tuple[Callable[..., list], str]:
    mod, name = PACKED_ASSIGNMENT.split(":")
    try:
        return getattr(importlib.import_module(mod), name), PACKED_ASSIGNMENT
    except (ImportError, AttributeError):
        return sketch_packed_assignment, f"bench sketch ({PACKED_ASSIGNMENT} not found)"


def training_efficiency(
    lengths: np.ndarray, world: int, global_batch: int, bs: int, assign: Callable[..., list], packed: bool
) -> tuple[float, float]:
    """(micro-batch efficiency, step efficiency) over one shuffled epoch."""
    order = np.random.default_rng([42, 0]).permutation(len(lengths))
    real = computed = step_computed = 0
    for s in range(0, len(order), global_batch):
        step = order[s : s + global_batch]
        per_rank = []
        for rank in range(world):
            mbs = assign(step, lengths, rank, world, bs)
            c = sum(
                int(lengths[m].sum()) if packed else int(lengths[m].max()) * len(m) for m in mbs if len(m)
            )
            real += sum(int(lengths[m].sum()) for m in mbs)
            computed += c
            per_rank.append(c)
        step_computed += world * max(per_rank)
    return real / computed, real / step_computed


# --- main ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="samples per pool (paper: 10k per round, 50k pool)")
    p.add_argument("--pool-sample", type=int, default=200, help="bench_scoring samples actually tokenised")
    p.add_argument("--no-tokenizer", action="store_true", help="uniform 100-600 instead of tokenising")
    p.add_argument("--global-batch", type=int, default=48)
    p.add_argument("--per-device", type=int, default=4)
    a = p.parse_args(argv)
    pools = {
        "bench_scoring": bench_scoring_lengths(a.n, a.pool_sample, not a.no_tokenizer),
        "long-tail": long_tail_lengths(a.n),
    }
    for name, lens in pools.items():
        print(
            f"pool {name}: {len(lens)} samples, mean {lens.mean():.0f}, p50 {np.median(lens):.0f}, "
            f"p99 {np.percentile(lens, 99):.0f}, max {lens.max()} tokens"
        )
    print("\n## Scoring: real tokens / computed tokens (chunks of 256)\n")
    hows = ("old", "sorted", "packed-sdpa", "packed-flash")
    print("| pool | batch_tokens | " + " | ".join(hows) + " |")
    print("|---|---|" + "---|" * len(hows))
    for name, lens in pools.items():
        for bt in (1024, 16384, 65536):
            vals = [scoring_efficiency(lens, bt, h) for h in hows]
            print(f"| {name} | {bt} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    new, label = packed_assignment()
    print(f"\n## Training: global batch {a.global_batch}, {a.per_device} per device; packed = {label}\n")
    print("| pool | processes | old micro-batch | old step | packed micro-batch | packed step |")
    print("|---|---|---|---|---|---|")
    for name, lens in pools.items():
        for world in (1, 8):
            old = training_efficiency(lens, world, a.global_batch, a.per_device, old_assignment, False)
            pk = training_efficiency(lens, world, a.global_batch, a.per_device, new, True)
            print(f"| {name} | {world} | {old[0]:.3f} | {old[1]:.3f} | {pk[0]:.3f} | {pk[1]:.3f} |")


if __name__ == "__main__":
    main()
