"""Typed, frozen, strict configuration: YAML + ``key=value`` overrides are merged here, and only here.

Every setting is a field of a frozen dataclass, written once with :func:`setting`: its default, its one-line
help, and optionally its bounds (``"(0, 1]"``, ``">= 1"``); choices come from ``Literal`` types. From that one
definition come YAML loading (:func:`from_dict`), ``key=value`` overrides, the CLI flags
(:mod:`tokenclean.cli.args`) and the table of every setting in docs/settings.md (:func:`settings_markdown`).
Unknown keys, values of the wrong type and values out of bounds fail with :class:`~tokenclean.errors.ConfigError`
naming the dotted key (``train.lr: expected a number, got 'fast'``, ``selection.ratio: must be in (0, 1], got
1.5``). Rules that tie several fields together stay in a small ``validate(prefix)`` method. The resolved config
is saved with every run (:func:`to_yaml`).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tokenclean.errors import ConfigError
from tokenclean.runtime import DEFAULT_GROUP_TIMEOUT_S

T = TypeVar("T")

DEFAULT_DEVICE = "auto"  # the one device default of every command and engine function: CUDA when present
DEVICE_HELP = "cpu, cuda, cuda:N or auto (CUDA when available, else CPU)"
ATTN_HELP = (
    "attention of every loaded model (auto: flash_attention_2 on CUDA in bf16/fp16 when flash-attn is "
    "installed, else transformers' default, sdpa)"
)


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    bounds: str | None = None,
    factory: Any = dataclasses.MISSING,
) -> Any:
    """A config field with its one-line ``help`` and optional ``bounds``: an interval ``"(0, 1]"``,
    ``"[0, 1)"`` or a side ``">= 1"``, ``"> 0"``; checked by :func:`from_dict` (None always passes)."""
    if bounds is not None:
        _parse_bounds(bounds)  # a typo in a bound fails at import, not at the first bad value
    meta = {"help": help, "bounds": bounds}
    return dataclasses.field(default=default, default_factory=factory, metadata=meta)


_SIDE = re.compile(r"^(>=|>|<=|<)\s*(\S+)$")
_INTERVAL = re.compile(r"^([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])$")


def _parse_bounds(spec: str) -> list[tuple[str, float]]:
    """``"(0, 1]"`` -> [(">", 0), ("<=", 1)]; ``">= 1"`` -> [(">=", 1)]."""
    if m := _SIDE.match(spec.strip()):
        return [(m.group(1), float(m.group(2)))]
    if m := _INTERVAL.match(spec.strip()):
        return [
            (">=" if m.group(1) == "[" else ">", float(m.group(2))),
            ("<=" if m.group(4) == "]" else "<", float(m.group(3))),
        ]
    raise ValueError(f"bounds {spec!r}: expected an interval like '(0, 1]' or a side like '>= 1'")


def in_bounds(value: float, spec: str) -> bool:
    """Whether ``value`` satisfies ``spec`` (NaN never does)."""
    ops = {">=": float.__ge__, ">": float.__gt__, "<=": float.__le__, "<": float.__lt__}
    return all(ops[op](float(value), b) for op, b in _parse_bounds(spec))


def _bounds_message(spec: str) -> str:
    return f"must be {spec}" if _SIDE.match(spec.strip()) else f"must be in {spec}"


def check_bounds(cls: type, name: str, value: Any, key: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` when ``value`` is outside the bounds of field ``name``."""
    spec = _field(cls, name).metadata.get("bounds")
    if spec and value is not None and not in_bounds(value, spec):
        raise ConfigError(f"{key}: {_bounds_message(spec)}, got {value}")


def _field(cls: type, name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(cls)}[name]  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where torch runs: the settings of every command that loads a model (``--device``, ``--threads``,
    ``--attn-implementation``, ``--group-timeout``)."""

    device: str = setting(DEFAULT_DEVICE, DEVICE_HELP)
    attn_implementation: typing.Literal["auto", "sdpa", "flash_attention_2", "eager"] = setting(
        "auto", ATTN_HELP
    )
    threads: int | None = setting(
        None,
        "torch CPU threads per process (null: OMP_NUM_THREADS if set, else every usable core, since "
        "tokenclean makes OpenMP waits passive; see docs/scoring.md)",
        bounds=">= 1",
    )
    group_timeout: float = setting(
        DEFAULT_GROUP_TIMEOUT_S,
        "seconds a process of a launched run (accelerate launch, torchrun) waits in a collective for the "
        "others before the run fails; work of rank 0 alone (prepare, select, assembling a store) is "
        "waited for outside collectives and never counts against it (evaluation is shared by the ranks)",
        bounds="> 0",
    )


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is typing.Literal:
        return f"one of {list(typing.get_args(tp))}"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Validate (and minimally coerce: int -> float, list -> tuple) ``value`` against type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list, Sequence):
        inner = args[0] if args else Any
        if isinstance(value, str) and inner is str:  # "q_proj, v_proj" (a YAML line or a CLI flag)
            value = [v.strip() for v in value.split(",") if v.strip()]
        if len(args) == 2 and args[1] is not Ellipsis and isinstance(value, list | tuple):
            if len(value) != 2:
                raise ConfigError(f"{key}: expected a list of 2 values, got {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # type: ignore[arg-type]
            return value
        return from_dict(tp, value, key)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp}")


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping: strict about unknown keys, types and bounds (every error names
    the dotted key); then runs ``validate(prefix)`` for the rules that tie fields together."""
    where = prefix or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{_dotted(prefix, unknown[0])}: unknown key (valid keys: {', '.join(names)})")
    kwargs = _checked(cls, dict(data), prefix)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:  # a settings dataclass that checks itself names its field
        raise ConfigError(f"{where}.{e}" if prefix and ":" in str(e) else f"{where}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(prefix)
    return obj


def settings_dict(settings: Any) -> dict[str, Any]:
    """A JSON-able mapping of a settings dataclass (tuples as lists); a mapping is copied; None is empty."""
    if settings is None:
        return {}
    if isinstance(settings, Mapping):
        return dict(settings)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()}


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check (and normalise in place: list -> tuple, int -> float) every field of a frozen dataclass
    instance, as :func:`from_dict` does; for ``__post_init__`` of settings also built in code."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    for name, value in _checked(type(obj), values, prefix).items():
        if value is not values[name]:
            object.__setattr__(obj, name, value)


def _checked(cls: type, values: dict[str, Any], prefix: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in values.items():
        key = _dotted(prefix, name)
        out[name] = _coerce(value, hints[name], key)
        if isinstance(out[name], tuple):  # bounds hold for each element of a list setting
            for i, v in enumerate(out[name]):
                if isinstance(v, int | float) and not isinstance(v, bool):
                    check_bounds(cls, name, v, f"{key}[{i}]")
        elif isinstance(out[name], int | float) and not isinstance(out[name], bool):
            check_bounds(cls, name, out[name], key)
    return out


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) from a config dataclass, for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=VALUE`` -> (["a", "b", "c"], VALUE parsed as YAML, so ``0.5``, ``true``, ``[1, 2]`` work)."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"override '{item}': expected KEY=VALUE (e.g. selection.ratio=0.5)")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override '{item}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': cannot parse value ({e})") from None
    return path, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``key=value`` overrides applied (nested keys created as needed)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for p in path[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    return data


def to_yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(to_dict(obj), sort_keys=False)
