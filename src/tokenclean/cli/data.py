"""``tokenclean prepare`` and ``tokenclean inspect``: the data stage."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from tokenclean.cli.args import Command, add_settings, data_source, existing, model_name, settings_from_args
from tokenclean.pipelines.config import DataConfig

_PREPARE_SETTINGS = ("format", "template", "max_length", "skip_invalid", "workers")


def _prepare_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--data",
        required=True,
        type=data_source,
        help="JSONL/JSON/Parquet file, save_to_disk dir, hub:NAME[:SPLIT] or builtin:sample",
    )
    s.add_argument(
        "--tokenizer",
        required=True,
        type=model_name("tokenizer"),
        help="Hub id, local dir, .gguf file or alias (smollm2)",
    )
    s.add_argument("--out", required=True, help="output directory (the prepared dataset)")
    add_settings(s, DataConfig, "data", only=_PREPARE_SETTINGS)
    s.add_argument(
        "--force", action="store_true", help="recompute, or replace an OUT prepared from other inputs"
    )


def _prepare(a: argparse.Namespace) -> int:
    from tokenclean.outputs import check_target

    cfg = settings_from_args(DataConfig, a, "data", only=_PREPARE_SETTINGS, path=a.data)
    check_target(a.out, "prepare", [a.data])  # before the tokenizer is loaded (a conversion can take 30 s)

    from tokenclean.data.prepare import prepare
    from tokenclean.models.loader import load_tokenizer

    tok = load_tokenizer(a.tokenizer)
    m = prepare(
        a.data,
        tok,
        a.out,
        fmt=cfg.format,
        template=cfg.template,
        max_length=cfg.max_length,
        skip_invalid=cfg.skip_invalid,
        tokenizer_name=a.tokenizer,
        force=a.force,
        workers=cfg.workers,
    )
    c = m["counts"]
    print(
        f"{'reused' if m.get('reused') else 'wrote'} {a.out}: {c['written']} samples "
        f"({c['read']} read, {c['truncated']} truncated, {c['dropped_no_trained_tokens']} dropped with no "
        f"trained token, {c['skipped_invalid']} invalid skipped); {m['tokens']['trained']} trained of "
        f"{m['tokens']['total']} tokens"
    )
    return 0


def _count(least: int) -> Callable[[str], int]:
    def check(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{value}'") from None
        if n < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {n}")
        return n

    return check


def _inspect_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "dir", type=existing("directory"), help="a prepared dataset, score store or cleaned dataset"
    )
    s.add_argument("--n", type=_count(1), default=5, help="samples to show (>= 1)")
    s.add_argument("--start", type=_count(0), default=0, help="index of the first sample shown (>= 0)")
    s.add_argument(
        "--tokenizer",
        default=None,
        type=model_name("tokenizer"),
        help="tokenizer to decode with (default: the manifest's)",
    )
    s.add_argument("--markers", action="store_true", help="[+kept+] [-dropped-] markers instead of colour")
    s.add_argument("--scores", action="store_true", help="also list each response token's score")


def _inspect(a: argparse.Namespace) -> int:
    from tokenclean.models.loader import load_tokenizer
    from tokenclean.report.inspect import inspect

    tok = load_tokenizer(a.tokenizer) if a.tokenizer else None
    inspect(
        a.dir, n=a.n, start=a.start, tokenizer=tok, markers=True if a.markers else None, show_scores=a.scores
    )
    return 0


def _split_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--data", required=True, type=data_source, help="JSONL/JSON/Parquet file or save_to_disk dir"
    )
    s.add_argument("--out", required=True, help="output directory (train.jsonl, heldout.jsonl, part_N.jsonl)")
    s.add_argument(
        "--heldout", type=float, default=0.0, help="share of the rows held out (heldout.jsonl; 0: none)"
    )
    s.add_argument(
        "--parts",
        type=int,
        default=1,
        help="cut the rest into N seeded, equal parts (part_0.jsonl: the warm-up slice; run cuts its pool "
        "into self_evolving.rounds + 1)",
    )
    s.add_argument("--seed", type=int, default=42, help="seed of the cut (run: selection.seed)")


def _split(a: argparse.Namespace) -> int:
    from tokenclean.data.split import split_file

    info = split_file(a.data, a.out, heldout=a.heldout, parts=a.parts, seed=a.seed)
    files = ", ".join(f"{name} {n}" for name, n in info["files"].items())
    print(f"wrote {a.out}: {info['rows']} rows -> {files}")
    return 0


COMMANDS = (
    Command(
        "prepare",
        "tokenise an SFT file into input_ids + labels (response mask)",
        _prepare_args,
        _prepare,
        example="tokenclean prepare --data builtin:sample --tokenizer smollm2 --out runs/prep",
    ),
    Command(
        "inspect",
        "show samples with trained/kept/dropped tokens highlighted",
        _inspect_args,
        _inspect,
        example="tokenclean inspect runs/clean --n 3 --markers",
    ),
    Command(
        "split",
        "cut an SFT file into a held-out file and seeded parts (part_0: the warm-up slice)",
        _split_args,
        _split,
        example="tokenclean split --data my.jsonl --heldout 0.1 --parts 3 --out splits",
    ),
)
