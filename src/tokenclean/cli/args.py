"""Flags from the typed settings: a setting's default, bounds and help are written once, in its dataclass
(:func:`tokenclean.config.setting`), and the CLI flag is generated from it (the idea of transformers'
``HfArgumentParser``). Also the path checks that run while parsing, before any heavy import."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenclean.config import Runtime, from_dict

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, flags and handler (heavy imports inside the handler)."""

    name: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Handler
    description: str = ""
    example: str = ""  # shown as the epilog of `tokenclean NAME --help`


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option with a default shows it once, as ``(default: X)`` (generated flags write their own)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        d = action.default
        if "default" in h or action.required or d in (None, False, [], argparse.SUPPRESS):
            return h
        if not action.option_strings and action.nargs not in ("?", "*"):
            return h
        return f"{h} (default: %(default)s)"


def add_command(sub: argparse._SubParsersAction, cmd: Command) -> argparse.ArgumentParser:
    epilog = f"example:\n  {cmd.example}" if cmd.example else None
    p = sub.add_parser(
        cmd.name,
        help=cmd.help,
        description=cmd.description or cmd.help,
        epilog=epilog,
        formatter_class=HelpFormatter,
    )
    cmd.add_args(p)
    p.set_defaults(handler=cmd.run)
    return p


# ---- flags from settings ----------------------------------------------------------------------------------


def show(value: Any) -> str:
    """A default as a user types it: tuples comma-separated, booleans and None as in YAML."""
    if isinstance(value, tuple | list):
        return ",".join(map(str, value)) if value else "''"
    if value is None:
        return "null"
    if value == "":
        return "''"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and not value.isprintable():  # a newline: "\n", as YAML and the flags read it
        return '"' + value.encode("unicode_escape").decode("ascii") + '"'
    return str(value)


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _flag_type(tp: Any) -> tuple[Any, dict[str, Any]]:
    """(the argparse ``type``, extra keywords) of a field type; Optional is unwrapped."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _flag_type(inner[0]) if len(inner) == 1 else (str, {})
    if origin is typing.Literal:
        return type(args[0]), {"choices": list(args)}
    if origin in (tuple, list):
        return str, {"metavar": "A,B,..."}  # a comma list; config.from_dict splits it
    if tp in (int, float, str):
        return tp, {}
    raise TypeError(f"no CLI flag for a setting of type {tp}")


def add_setting(
    parser: argparse.ArgumentParser,
    cls: type,
    name: str,
    prefix: str = "",
    flag: str | None = None,
    note: str = "",
    **overrides: Any,
) -> argparse.Action:
    """Add the flag of setting ``cls.name`` (``--name-with-dashes``): its type, choices, default and help
    come from the field; the action remembers ``(cls, name, prefix)`` for the settings table and its test."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    tp = typing.get_type_hints(cls)[name]
    default = field_default(f)
    bounds = f.metadata.get("bounds")
    text = f.metadata.get("help", "") + note
    text += f" (default: {show(default)}" + (f"; {bounds}" if bounds else "") + ")"
    kwargs: dict[str, Any] = {"default": default, "help": text.replace("%", "%%"), "dest": name}
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        typ, extra = _flag_type(tp)
        kwargs |= {"type": typ, **extra}
    kwargs |= overrides
    action = parser.add_argument(flag or "--" + name.replace("_", "-"), **kwargs)
    action.setting = (cls, name, prefix)  # type: ignore[attr-defined]
    return action


def add_settings(
    parser: argparse.ArgumentParser,
    cls: type,
    prefix: str = "",
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
) -> None:
    """Flags for the settings of ``cls`` (all, or ``only`` these), in field order."""
    names = [f.name for f in dataclasses.fields(cls)]
    for name in names if only is None else list(only):
        if name in skip:
            continue
        add_setting(parser, cls, name, prefix)


def settings_from_args(
    cls: type, a: argparse.Namespace, prefix: str = "", only: Iterable[str] | None = None, **extra: Any
) -> Any:
    """Build ``cls`` from the parsed flags (strictly, by :func:`tokenclean.config.from_dict`: a bad value
    names the dotted key); ``extra`` adds values that have no flag of the same name."""
    names = [f.name for f in dataclasses.fields(cls)] if only is None else list(only)
    values = {n: getattr(a, n) for n in names if hasattr(a, n)} | extra
    return from_dict(cls, values, prefix)


def add_runtime(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """``--device``, ``--threads``, ``--attn-implementation`` and ``--group-timeout``
    (:class:`tokenclean.config.Runtime`) of a command where torch runs; with ``device=False`` (a run config
    names the device and attention) only ``--threads`` and ``--group-timeout``."""
    add_settings(parser, Runtime, only=RUNTIME_FLAGS if device else ("threads", "group_timeout"))


RUNTIME_FLAGS = ("device", "threads", "attn_implementation", "group_timeout")


def apply_runtime(a: argparse.Namespace) -> Runtime:
    """Check the runtime flags, set torch's CPU threads (imports torch), this process's attention
    implementation and its process-group timeout."""
    from tokenclean.models.loader import set_attn_implementation
    from tokenclean.runtime import set_group_timeout
    from tokenclean.utils import apply_threads

    rt = settings_from_args(Runtime, a, only=[n for n in RUNTIME_FLAGS if hasattr(a, n)])
    apply_threads(rt.threads)
    set_attn_implementation(rt.attn_implementation)
    set_group_timeout(rt.group_timeout)
    return rt


# ---- inputs checked while parsing ------------------------------------------------------------------------


def existing(what: str) -> Callable[[str], str]:
    """An argparse ``type`` that fails at once (before heavy imports) when the path does not exist."""

    def check(value: str) -> str:
        if not value.strip():
            raise argparse.ArgumentTypeError(f"empty path; give a {what}")
        if not Path(value).exists():
            raise argparse.ArgumentTypeError(f"{value}: no such {what}")
        return value

    return check


def data_source(value: str) -> str:
    """An SFT data argument: an existing file or directory, ``hub:NAME[:SPLIT]`` or ``builtin:NAME``."""
    if value.startswith(("hub:", "builtin:")):
        return value
    return existing("file or directory (or hub:NAME[:SPLIT], builtin:sample)")(value)


def model_name(what: str) -> Callable[[str], str]:
    """An argparse ``type`` for a model or tokenizer: an existing path, an alias or a Hub id checked at once
    (:func:`tokenclean.models.names.check_model_name`), so a typo fails before anything is written."""

    def check(value: str) -> str:
        from tokenclean.errors import ModelError
        from tokenclean.models.names import check_model_name

        try:
            check_model_name(value, what)
        except ModelError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value

    return check
