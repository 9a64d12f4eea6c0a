"""``tokenclean export`` and ``tokenclean import-weights``: tokenclean's sets for other trainers, and other
tools' message/span/token weights into tokenclean."""

from __future__ import annotations

import argparse

from tokenclean.cli.args import Command, existing

TARGETS = ("axolotl", "llamafactory", "trl", "jsonl-weights")


def _export_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--data", required=True, type=existing("directory"), help="a prepared, cleaned or weighted set"
    )
    s.add_argument("--to", required=True, choices=TARGETS, help="the trainer or format to write for")
    s.add_argument("--out", required=True, help="output directory (data, config lines, README.md)")
    s.add_argument(
        "--min-weight",
        type=float,
        default=0.5,
        help="axolotl/llamafactory (no per-token weights): a weighted set's tokens with weight >= this count",
    )
    s.add_argument("--force", action="store_true", help="replace an OUT exported from other inputs")


def _export(a: argparse.Namespace) -> int:
    from tokenclean.interop.export import export

    m = export(a.data, a.to, a.out, min_weight=a.min_weight, force=a.force)
    c = m["counts"]
    print(
        f"{'reused' if m.get('reused') else 'wrote'} {a.out} for {a.to}: {c['samples']} samples, "
        f"{c['kept_tokens']} counted tokens ({c['samples_left_out_no_kept_token']} samples with none left out)"
    )
    print(f"lost: {m['lost']}")
    return 0


def _import_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--prepared", required=True, type=existing("directory"), help="tokenclean prepare output")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--messages", type=existing("file"), help="the source data with a weight on messages")
    g.add_argument("--spans", type=existing("file"), help="span JSONL: [start, end, exclude|include|WEIGHT]")
    g.add_argument("--token-weights", type=existing("file"), help="rows of id + one weight per token")
    s.add_argument("--tokenizer", default=None, help="the prepared set's tokenizer (default: its manifest's)")
    s.add_argument("--out", required=True, help="output directory (a dataset with labels and weights)")
    s.add_argument("--force", action="store_true", help="replace an OUT imported from other inputs")


def _import(a: argparse.Namespace) -> int:
    from tokenclean.errors import ConfigError
    from tokenclean.interop.imports import import_weights
    from tokenclean.models.loader import load_tokenizer
    from tokenclean.utils import read_json

    kind, src = next(
        (k, v) for k, v in (("messages", a.messages), ("spans", a.spans), ("tokens", a.token_weights)) if v
    )
    tok = None
    if kind != "tokens":
        name = a.tokenizer or (read_json(f"{a.prepared}/manifest.json").get("tokenizer") or {}).get("source")
        if not name:
            raise ConfigError(f"--tokenizer: {a.prepared}/manifest.json names no tokenizer; pass --tokenizer")
        tok = load_tokenizer(name)
    m = import_weights(a.prepared, kind, src, a.out, tokenizer=tok, force=a.force)
    c = m["counts"]
    print(
        f"{'reused' if m.get('reused') else 'wrote'} {a.out}: {c['samples']} samples ({c['samples_weighted']} "
        f"weighted, {c['samples_dropped_no_trained_token']} left with no trained token dropped); "
        f"{c['tokens_zero_weight']} tokens no longer trained"
    )
    return 0


COMMANDS = (
    Command(
        "export",
        "write a cleaned/weighted set for axolotl, LLaMA-Factory, TRL or plain JSONL, with config lines",
        _export_args,
        _export,
        example="tokenclean export --data runs/clean --to axolotl --out runs/axolotl",
    ),
    Command(
        "import-weights",
        "message weights, span masks or per-token weights of other tools -> tokenclean labels/weights",
        _import_args,
        _import,
        example="tokenclean import-weights --prepared runs/prep --messages data.jsonl --out runs/weighted",
    ),
)
