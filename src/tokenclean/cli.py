"""Command-line interface: thin subcommands over library functions (heavy imports stay inside commands so
``tokenclean --help`` is instant)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from tokenclean.errors import TokencleanError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(
    name: str,
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def deco(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return deco


@command("prepare")
def _prepare(a: argparse.Namespace) -> int:
    from tokenclean.data.prepare import prepare
    from tokenclean.models.loader import load_tokenizer
    from tokenclean.outputs import check_target

    check_target(a.out, "prepare", [a.data])  # before the tokenizer is loaded (a conversion can take 30 s)
    tok = load_tokenizer(a.tokenizer)
    m = prepare(
        a.data,
        tok,
        a.out,
        fmt=a.format,
        template=a.template,
        max_length=a.max_length,
        skip_invalid=a.skip_invalid,
        tokenizer_name=a.tokenizer,
        force=a.force,
    )
    c = m["counts"]
    print(
        f"{'reused' if m.get('reused') else 'wrote'} {a.out}: {c['written']} samples "
        f"({c['read']} read, {c['truncated']} truncated, {c['dropped_no_trained_tokens']} dropped with no "
        f"trained token, {c['skipped_invalid']} invalid skipped); {m['tokens']['trained']} trained of "
        f"{m['tokens']['total']} tokens"
    )
    return 0


@command("inspect")
def _inspect(a: argparse.Namespace) -> int:
    from tokenclean.models.loader import load_tokenizer
    from tokenclean.report.inspect import inspect

    tok = load_tokenizer(a.tokenizer) if a.tokenizer else None
    inspect(
        a.dir, n=a.n, start=a.start, tokenizer=tok, markers=True if a.markers else None, show_scores=a.scores
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokenclean", description="Token-level cleaning of SFT data for LLMs.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("prepare", help="tokenise an SFT file into input_ids + labels (response mask)")
    s.add_argument(
        "--data", required=True, help="JSONL/JSON/Parquet file, save_to_disk dir, or hub:NAME[:SPLIT]"
    )
    s.add_argument("--tokenizer", required=True, help="Hub id, local dir, .gguf file or alias (smollm2)")
    s.add_argument(
        "--format", default="auto", choices=["auto", "prompt_completion", "alpaca", "messages", "sharegpt"]
    )
    s.add_argument("--template", default="tulu", choices=["tulu", "chat", "plain"])
    s.add_argument("--max-length", type=int, default=2048)
    s.add_argument("--skip-invalid", action="store_true", help="skip bad rows (listed in OUT/dropped.jsonl)")
    s.add_argument(
        "--force", action="store_true", help="recompute, or replace an OUT prepared from other inputs"
    )
    s.add_argument("--out", required=True)

    s = sub.add_parser("inspect", help="show samples with trained/kept/dropped tokens highlighted")
    s.add_argument("dir")
    s.add_argument("--n", type=int, default=5)
    s.add_argument("--start", type=int, default=0)
    s.add_argument("--tokenizer", default=None, help="defaults to the one named in the manifest")
    s.add_argument("--markers", action="store_true", help="[+kept+] [-dropped-] markers instead of colour")
    s.add_argument("--scores", action="store_true", help="also list each response token's score")

    for extra in _EXTRA_PARSERS:
        extra(sub)
    return p


_EXTRA_PARSERS: list[Callable[[argparse._SubParsersAction], None]] = []


def _version() -> str:
    from tokenclean import __version__

    return f"tokenclean {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    # OpenMP threads that wait for work sleep instead of spinning (set before torch loads its OpenMP
    # runtime; OMP_WAIT_POLICY set by the user wins). Beside another busy job, spinning waits made scoring
    # 6.4x slower instead of 2.2x (benchmarks/README.md, "Scoring under CPU contention").
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _load_extensions()
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except TokencleanError as e:
        print(f"tokenclean {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is saved and a re-run resumes", file=sys.stderr)
        return 130


def _load_extensions() -> None:
    """Import the modules that register further subcommands (kept light: they import heavy deps lazily)."""
    import importlib

    for mod in (
        "tokenclean.cli_scoring",
        "tokenclean.cli_selection",
        "tokenclean.cli_training",
        "tokenclean.cli_eval",
        "tokenclean.cli_report",
        "tokenclean.cli_pipelines",
        "tokenclean.cli_truth",
    ):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


if __name__ == "__main__":
    # run through the imported module so that extension modules register into the same COMMANDS
    from tokenclean.cli import main as _main

    sys.exit(_main())
