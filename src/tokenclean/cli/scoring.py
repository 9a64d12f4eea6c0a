"""``tokenclean score``: per-token base/reference losses and scores of a prepared dataset (a thin wrapper
over :func:`tokenclean.scoring.score_dataset`; heavy imports happen inside the handler)."""

from __future__ import annotations

import argparse

from tokenclean.cli.args import (
    Command,
    add_runtime,
    add_settings,
    apply_runtime,
    existing,
    model_name,
    settings_from_args,
)
from tokenclean.pipelines.config import ScoringConfig
from tokenclean.scoring import DEFAULT_SHARD_SIZE, SCORERS  # numpy only: the models load in the handler


def _score(a: argparse.Namespace) -> int:
    cfg = settings_from_args(ScoringConfig, a, "scoring")
    rt = apply_runtime(a)
    from tokenclean.runtime import launched_world
    from tokenclean.scoring import score_dataset

    m = score_dataset(
        a.data,
        a.base,
        reference=a.reference,
        out=a.out,
        scorer=a.scorer,
        dtype=cfg.dtype,
        device=rt.device,
        batch_tokens=cfg.batch_tokens,
        packing=cfg.packing,
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
            "other shards (the last process to finish writes the store's index; re-run any shard to finish it)"
        )
        return 0
    c, t = m["counts"], m.get("timings", {})
    print(
        f"{'reused' if m.get('reused') else 'wrote'} {a.out}: {c['samples']} samples, "
        f"{c['scored_positions']} scored tokens of {c['tokens']} ({m['mode']}, {m['dtype']} on {m['device']}, "
        f"scorer {m['scorer']}, {t.get('tokens_per_s')} sample tokens/s through both models)"
    )
    return 0


def _score_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--data",
        required=True,
        type=existing("prepared dataset"),
        help="prepared dataset (tokenclean prepare)",
    )
    s.add_argument(
        "--base",
        required=True,
        type=model_name("base model"),
        help="base model: Hub id, dir, .gguf file or alias (smollm2)",
    )
    s.add_argument(
        "--reference",
        default=None,
        type=model_name("reference"),
        help="reference model (same tokenizer), or a PEFT adapter dir on --base (one-model scoring)",
    )
    s.add_argument("--out", required=True, help="output directory (score store)")
    s.add_argument(
        "--scorer",
        default="token_cleaning",
        choices=sorted(SCORERS),
        help="score of each token from the two losses",
    )
    add_settings(s, ScoringConfig, "scoring")
    add_runtime(s)
    s.add_argument(
        "--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="samples per resumable chunk file"
    )
    s.add_argument("--shard-index", type=int, default=0, help="this process's shard (0..num-shards-1)")
    s.add_argument("--num-shards", type=int, default=1, help="processes scoring disjoint shards")
    s.add_argument(
        "--force", action="store_true", help="discard partial or complete results (of any settings) in --out"
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


COMMANDS = (
    Command(
        "score",
        "per-token losses of base and reference and their score (base_loss - ref_loss)",
        _score_args,
        _score,
        description="Score every trained token of a prepared dataset. When --reference is a PEFT adapter "
        "on --base, ONE model is loaded and the adapter is toggled between the two passes. Resumable: "
        "re-run the same command after a crash.",
        example="tokenclean score --data runs/prep --base smollm2 --reference runs/warmup/adapter "
        "--out runs/scores",
    ),
)
