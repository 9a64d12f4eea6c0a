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


COMMANDS = (
    Command(
        "export",
        "write a cleaned/weighted set for axolotl, LLaMA-Factory, TRL or plain JSONL, with config lines",
        _export_args,
        _export,
        example="tokenclean export --data runs/clean --to axolotl --out runs/axolotl",
    ),
)
