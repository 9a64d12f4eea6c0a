"""``tokenclean score``: per-token base/reference losses and scores of a prepared dataset (a thin wrapper
over :func:`tokenclean.scoring.score_dataset`; heavy imports happen inside the handler)."""

from __future__ import annotations

import argparse

from tokenclean.cli import _EXTRA_PARSERS, command


@command("score")
def _score(a: argparse.Namespace) -> int:
    from tokenclean.scoring import score_dataset
    from tokenclean.training.distributed import launched_world
    from tokenclean.utils import apply_threads

    apply_threads(getattr(a, "threads", None))
    m = score_dataset(
        a.data,
        a.base,
        reference=a.reference,
        adapter=a.adapter,
        out=a.out,
        scorer=a.scorer,
        dtype=a.dtype,
        device=a.device,
        batch_tokens=a.batch_tokens,
        progress=not a.no_progress,
        shard_index=a.shard_index,
        num_shards=a.num_shards,
        shard_size=a.shard_size,
        force=a.force,
    )
    if launched_world()[0] != 0:
        return 0  # rank 0 reports
    if not m.get("complete", True):
        print(
            f"shard {a.shard_index}/{a.num_shards} done; waiting for {len(m['missing_chunks'])} chunks of "
            "other shards (the last process to finish assembles the store; re-run any shard to merge)"
        )
        return 0
    c, t = m["counts"], m.get("timings", {})
    print(
        f"{'reused' if m.get('reused') else 'wrote'} {a.out}: {c['samples']} samples, "
        f"{c['scored_positions']} scored tokens of {c['tokens']} ({m['mode']}, {m['dtype']} on {m['device']}, "
        f"scorer {m['scorer']}, {t.get('tokens_per_s')} sample tokens/s through both models)"
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from tokenclean.scoring.scorers import SCORERS

    s = sub.add_parser(
        "score",
        help="per-token losses of base and reference and their score (base_loss - ref_loss)",
        description="Score every trained token of a prepared dataset. When --reference is a PEFT adapter "
        "on --base, ONE model is loaded and the adapter is toggled between the two passes. Resumable: "
        "re-run the same command after a crash.",
    )
    s.add_argument("--data", required=True, help="prepared dataset directory (tokenclean prepare)")
    s.add_argument("--base", required=True, help="base model: Hub id, dir, .gguf file or alias (smollm2)")
    s.add_argument(
        "--reference", default=None, help="reference model, or a PEFT adapter dir (one-model scoring)"
    )
    s.add_argument("--adapter", default=None, help="a LoRA adapter on --base as the reference")
    s.add_argument("--out", required=True, help="output directory (score store)")
    s.add_argument("--scorer", default="token_cleaning", choices=sorted(SCORERS))
    s.add_argument(
        "--dtype",
        default="fp32",
        choices=["fp32", "bf16", "fp16", "auto"],
        help="fp32 (default, exact) or bf16/fp16 (faster, moves losses; see docs/scoring.md)",
    )
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    s.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per process (default: the cores idle at start; OMP_NUM_THREADS if set)",
    )
    s.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="padded tokens per batch (default 1024 on CPU, 16384 on CUDA)",
    )
    s.add_argument("--shard-size", type=int, default=256, help="samples per resumable chunk file")
    s.add_argument("--shard-index", type=int, default=0, help="this process's shard (0..num-shards-1)")
    s.add_argument("--num-shards", type=int, default=1, help="processes scoring disjoint shards")
    s.add_argument(
        "--force", action="store_true", help="discard partial or complete results (of any settings) in --out"
    )
    s.add_argument("--no-progress", action="store_true")


_EXTRA_PARSERS.append(add_parsers)
