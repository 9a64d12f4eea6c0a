"""What a path given to a command holds, in words, so that a wrong kind of input is named as what it is
and pointed at the right command or flag (never a ``FileNotFoundError`` about a ``manifest.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenclean.errors import DataError
from tokenclean.utils import CorruptFileError, read_json

KINDS = {
    "prepare": "a prepared dataset (tokenclean prepare)",
    "score": "a score store (tokenclean score)",
    "select": "a cleaned dataset (tokenclean select)",
    "xtf": "a cleaned dataset (tokenclean xtf)",
    "train": "a training directory (tokenclean train)",
    "merge": "a merged model (tokenclean merge)",
    "report": "a report (tokenclean report)",
    "run": "a run directory (tokenclean run)",
}


def _marker(path: Path) -> dict[str, Any] | None:
    for name in ("manifest.json", "done.json", "merge.json", ".tokenclean-output.json"):
        p = path / name
        if p.is_file():
            try:
                m = read_json(p)
            except CorruptFileError:
                return None
            if isinstance(m, dict) and (m.get("stage") or m.get("kind")):
                return dict(m, stage=m.get("stage") or m.get("kind"))
    return None


def kind_of(path: str | Path) -> str:
    """A short key of what ``path`` holds: a tokenclean stage (``prepare``, ``score``, ...), or ``file``,
    ``missing``, ``empty``, ``run``, ``train``, ``model``, ``adapter``, ``dataset`` or ``other``."""
    p = Path(path)
    if not p.exists():
        return "missing"
    if not p.is_dir():
        return "file"
    m = _marker(p)
    if m is not None:
        return str(m["stage"])
    if not any(p.iterdir()):
        return "empty"
    if (p / "summary.json").is_file():
        return "run"
    if (p / "checkpoint").is_dir() or (p / "adapter" / "adapter_config.json").is_file():
        return "train"
    if (p / "adapter_config.json").is_file():
        return "adapter"
    if (p / "config.json").is_file():
        return "model"
    if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file():
        return "dataset"
    return "other"


def describe(path: str | Path) -> str:
    """``kind_of`` in words, for messages."""
    k = kind_of(path)
    return KINDS.get(k) or {
        "missing": "missing",
        "file": "a file, not a directory",
        "empty": "an empty directory",
        "model": "a model directory (config.json)",
        "adapter": "a LoRA adapter directory",
        "dataset": "a datasets directory not written by tokenclean (no manifest.json)",
    }.get(k, f"a {k} output" if k not in ("other",) else "not a tokenclean output (no manifest.json)")


def require_kind(path: str | Path, kinds: tuple[str, ...], flag: str, hint: str) -> dict[str, Any]:
    """The marker of ``path`` when it is one of ``kinds``; else a :class:`DataError` saying what it is
    and ``hint`` (what to pass instead)."""
    p = Path(path)
    m = _marker(p) if p.is_dir() else None
    if m is not None and m["stage"] in kinds:
        return m
    raise DataError(str(path), f"{flag} is {describe(p)}, not {' or '.join(KINDS[k] for k in kinds)}; {hint}")
