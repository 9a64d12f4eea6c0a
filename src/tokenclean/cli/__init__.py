"""Command-line interface: one module per command group, every command listed in :data:`COMMANDS` below
(no registration by import side effect). Heavy imports (torch, transformers, datasets) stay inside the
handlers and every path is checked while parsing, so ``tokenclean --help`` and a typo fail in well under a
second. Flags of stage settings are generated from the typed configs (:mod:`tokenclean.cli.args`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tokenclean.cli import (
    data,
    evaluation,
    export,
    pipelines,
    pool,
    report,
    scoring,
    selection,
    training,
    truth,
)
from tokenclean.cli.args import Command, HelpFormatter, add_command
from tokenclean.errors import TokencleanError

# Every command, in the order of the data flow (data -> scoring -> selection -> training -> evaluation ->
# report), then the pipelines that arrange them.
COMMANDS: tuple[Command, ...] = (
    *data.COMMANDS,  # prepare, inspect, split
    *scoring.COMMANDS,  # score
    *selection.COMMANDS,  # select, xtf
    *pool.COMMANDS,  # pool (prepare, score, select on a data engine)
    *training.COMMANDS,  # train, merge
    *export.COMMANDS,  # export, import-weights (other trainers)
    *evaluation.COMMANDS,  # eval, eval-data
    *report.COMMANDS,  # report
    *truth.COMMANDS,  # groundtruth
    *pipelines.COMMANDS,  # run, demo, validate-config, settings
)

PRINTS_ITS_RESULT = frozenset({"prepare", "score", "select", "xtf", "train", "merge", "pool"})
"""Commands that print their result line themselves (to stdout)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tokenclean",
        description="Token-level cleaning of SFT data for LLMs.",
        epilog="`tokenclean COMMAND --help` shows a command's options, each with its default, and an example.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS:
        add_command(sub, cmd)
    return p


def _version() -> str:
    from tokenclean import __version__

    return f"tokenclean {__version__}"


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, letting ``key=value`` overrides of ``run``/``demo`` come after options as well as before
    (``tokenclean run CONFIG --threads 1 train.lr=1e-4``; argparse alone takes positionals in one block)."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*(args.overrides or []), *extra]
    elif extra and hasattr(args, "overrides"):  # `run CONFIG --data.path x`: say how overrides are written
        dotted = [x.lstrip("-") for x in extra if x.startswith("--") and "." in x]
        hint = f"; config overrides are key=value, e.g. {dotted[0].split('=')[0]}=VALUE" if dotted else ""
        print(
            f"tokenclean {args.command}: error: unrecognized arguments: {' '.join(extra)}{hint}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def expand_argv(argv: Sequence[str]) -> list[str]:
    """``~`` expanded once, here at the edge, in every argument that is a path: ``~/x``, ``--out=~/x`` and
    ``key=~/x`` (a quoted ``'~/x'`` reaches tokenclean unexpanded by the shell). A ``~`` left after this
    (an unknown ``~user``) is refused where the path is used, never expanded later by a library."""
    from tokenclean.outputs import expand_user

    out = []
    for a in argv:
        if "=" in a and not a.startswith("~"):
            k, v = a.split("=", 1)
            a = f"{k}={expand_user(v)}" if v.startswith("~") and v != "~" else a
        out.append(expand_user(a))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    # OpenMP threads that wait for work sleep instead of spinning (set before torch loads its OpenMP
    # runtime; OMP_WAIT_POLICY set by the user wins). Beside another busy job, spinning waits made scoring
    # 6.4x slower instead of 2.2x (benchmarks/README.md, "Scoring under CPU contention").
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        args = _parse(build_parser(), expand_argv(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # --help, --version, or a usage error already printed (a missing path: 2)
        return e.code if isinstance(e.code, int) else 2
    from tokenclean.utils import quiet_libraries, result_printed_by_caller

    quiet_libraries()
    try:
        if args.command in PRINTS_ITS_RESULT:
            with (
                result_printed_by_caller()
            ):  # the command's own line says it: the stage's log line would repeat it
                return int(args.handler(args))
        return int(args.handler(args))
    except TokencleanError as e:
        print(f"tokenclean {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a full disk or a failing device: one message naming the path, not a traceback
        from tokenclean.utils import storage_error

        what = storage_error(e)
        if what is None:
            raise
        where = getattr(e, "filename", None) or "its output"
        print(
            f"tokenclean {args.command}: error: cannot write {where}: {what} ({e}); free space (or fix the "
            "device) and re-run: finished work is kept and the command resumes",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is saved and a re-run resumes", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "build_parser", "main"]
