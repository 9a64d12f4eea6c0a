"""Reading SFT data files and normalising every format to a list of chat messages.

Supported files: JSONL, JSON (an array of objects), Parquet, a ``datasets.save_to_disk`` directory,
and a Hugging Face Hub dataset name (``hub:NAME[:SPLIT]`` or a name that is not a local path).

Supported record formats (auto-detected from the first record's keys, or forced):

- ``prompt_completion``: ``prompt`` + ``completion`` (or ``response``), optional ``system``.
- ``alpaca``: ``instruction`` + optional ``input``/``context`` + ``output``/``response`` (Alpaca, Dolly).
- ``messages``: ``messages`` = [{role, content}], roles system (or developer)/user/assistant, multi-turn;
  content a string or OpenAI text parts ``[{"type": "text", "text": ...}]``.
- ``sharegpt``: ``conversations`` = [{from, value}], from system/human/user/gpt/assistant/model.

Every problem raises :class:`~tokenclean.errors.DataError` naming the file, the line (or row) and the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenclean.errors import DataError

ROLES = ("system", "user", "assistant")
# OpenAI's `developer` role is the system prompt of its newer models.
MESSAGE_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "bard": "assistant",
}


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str


@dataclass(frozen=True)
class Record:
    """One SFT sample, normalised: its stable id, where it came from, and its messages."""

    sample_id: str
    location: str  # e.g. "data.jsonl:12" (for error messages)
    messages: tuple[Message, ...]


# ---------------------------------------------------------------------------------------------------------
# raw rows


def iter_raw_rows(source: str | Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Yield ``(row_index, location, row_dict)`` from any supported source, in file order.

    JSON decoding and UTF-8 errors raise ``DataError`` with the line number.
    """
    src = str(source)
    if src.startswith("builtin:"):
        src = str(builtin_path(src.removeprefix("builtin:")))
    path = Path(src)
    if path.is_dir():
        yield from _iter_saved_dataset(path)
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            yield from iter_jsonl(path)
        elif suffix == ".json":
            yield from _iter_json(path)
        elif suffix in (".parquet", ".pq"):
            yield from _iter_parquet(path)
        else:
            raise DataError(
                src, f"unknown file type '{suffix}' (expected .jsonl, .json, .parquet or a dataset dir)"
            )
    elif src.startswith("hub:"):
        yield from _iter_hub(src.removeprefix("hub:"))
    elif "/" in src and not src.startswith((".", "/")) and not path.suffix:
        yield from _iter_hub_guess(src)
    else:
        raise DataError(src, "no such file or directory")


def builtin_path(name: str) -> Path:
    """Path of a data file bundled with tokenclean (``builtin:sample`` = 20 chat samples)."""
    files = {"sample": "sample_sft.jsonl"}
    if name not in files:
        raise DataError(f"builtin:{name}", f"no such bundled data (available: {', '.join(files)})")
    return Path(__file__).resolve().parent.parent / "resources" / files[name]


def _decode_error_line(data: bytes, err: UnicodeDecodeError) -> int:
    return data.count(b"\n", 0, err.start) + 1


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """``(row, FILE:LINE, object)`` of every non-blank line of a JSONL file: the one JSONL reader (bad UTF-8,
    malformed or too deeply nested JSON, a non-object line and lone surrogates are DataErrors at FILE:LINE)."""
    row = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            loc = f"{path}:{lineno}"
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a leading BOM is stripped
            except UnicodeDecodeError as e:
                raise DataError(loc, f"invalid UTF-8 at byte {e.start} of the line") from None
            if not text.strip():
                continue
            obj = _loads(text, loc)
            if not isinstance(obj, dict):
                raise DataError(loc, f"expected a JSON object, got {type(obj).__name__}")
            if "\\u" in text:  # a lone surrogate can only arrive as an escape (raw ones are invalid UTF-8)
                _check_unicode(obj, loc, "")
            yield row, loc, obj
            row += 1


def _iter_json(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a leading BOM is stripped
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{_decode_error_line(data, e)}", "invalid UTF-8") from None
    obj = _loads(text, str(path), whole_file=True)
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        raise DataError(str(path), "a .json file must hold an array of objects (use .jsonl for one per line)")
    for i, item in enumerate(obj):
        loc = f"{path}[row {i}]"
        if not isinstance(item, dict):
            raise DataError(loc, f"expected a JSON object, got {type(item).__name__}")
        _check_unicode(item, loc, "")
        yield i, loc, item


def _loads(text: str, loc: str, whole_file: bool = False) -> Any:
    """``json.loads`` with every failure a :class:`DataError` at ``loc`` (a JSONL file's FILE:LINE, or a
    whole .json file whose parse errors carry their own line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = f"{loc}:{e.lineno}" if whole_file else loc
        raise DataError(where, f"malformed JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise DataError(loc, "JSON nested too deeply (thousands of levels); not an SFT record") from None


def _check_unicode(obj: Any, loc: str, field: str) -> None:
    """Refuse a string holding a lone UTF-16 surrogate (``"\\ud800"`` in JSON): valid JSON, but no valid
    text; a tokenizer would fail on it with a TypeError."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError as e:
            bad = f"\\u{ord(obj[e.start]):04x}"
            raise DataError(
                loc, f"invalid Unicode: a lone surrogate {bad} at character {e.start}", field=field or None
            ) from None
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_unicode(v, loc, f"{field}.{k}" if field else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_unicode(v, loc, f"{field}[{i}]")


def _iter_parquet(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(str(path), f"cannot be read as Parquet ({e})") from None
    for i, item in enumerate(table.to_pylist()):
        yield i, f"{path}[row {i}]", item


def _iter_saved_dataset(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises several types here
        raise DataError(str(path), f"not a datasets.save_to_disk directory ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    for i, item in enumerate(ds):
        yield i, f"{path}[row {i}]", dict(item)


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _iter_hub_guess(src: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """A name like ``ORG/NAME`` that is no local path: a Hub dataset, unless offline (then say both)."""
    if hub_offline():
        raise DataError(
            src,
            "no such file or directory (and no Hub lookup was made: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is "
            f"set); check the path, or write hub:{src} for a Hub dataset",
        )
    try:
        yield from _iter_hub(src)
    except DataError as e:
        raise DataError(
            src, f"no such file or directory, and no Hub dataset of that name could be loaded ({e.reason})"
        ) from None


def _iter_hub(spec: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    import datasets

    name, _, split = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:
        raise DataError(f"hub:{name}", f"cannot load Hub dataset ({type(e).__name__}: {e})") from None
    for i, item in enumerate(ds):
        yield i, f"hub:{name}[row {i}]", dict(item)


# ---------------------------------------------------------------------------------------------------------
# formats


def _str_field(
    row: dict[str, Any], key: str, loc: str, *, required: bool = True, allow_empty: bool = False
) -> str:
    if key not in row or row[key] is None:
        if required:
            raise DataError(loc, "missing", field=key)
        return ""
    val = row[key]
    if not isinstance(val, str):
        raise DataError(loc, f"expected a string, got {type(val).__name__}", field=key)
    if required and not allow_empty and not val.strip():
        raise DataError(loc, "empty string", field=key)
    return val


def _first_key(row: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in row and row[k] is not None), None)


def parse_prompt_completion(row: dict[str, Any], loc: str) -> list[Message]:
    prompt = _str_field(row, "prompt", loc)
    key = _first_key(row, ("completion", "response")) or "completion"
    completion = _str_field(row, key, loc)
    msgs = []
    system = _str_field(row, "system", loc, required=False)
    if system:
        msgs.append(Message("system", system))
    return [*msgs, Message("user", prompt), Message("assistant", completion)]


def parse_alpaca(row: dict[str, Any], loc: str) -> list[Message]:
    instruction = _str_field(row, "instruction", loc)
    in_key = _first_key(row, ("input", "context")) or "input"
    extra = _str_field(row, in_key, loc, required=False)
    out_key = _first_key(row, ("output", "response")) or "output"
    output = _str_field(row, out_key, loc)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [Message("user", user), Message("assistant", output)]


def _parse_turns(
    row: dict[str, Any], loc: str, key: str, role_key: str, content_key: str, roles: dict[str, str]
) -> list[Message]:
    turns = row.get(key)
    if turns is None:
        raise DataError(loc, "missing", field=key)
    if not isinstance(turns, list):
        raise DataError(loc, f"expected a list of turns, got {type(turns).__name__}", field=key)
    if not turns:
        raise DataError(loc, "empty conversation", field=key)
    msgs = []
    for t, turn in enumerate(turns):
        fname = f"{key}[{t}]"
        if not isinstance(turn, dict):
            raise DataError(loc, f"expected an object, got {type(turn).__name__}", field=fname)
        role = turn.get(role_key)
        if not isinstance(role, str):
            raise DataError(loc, "missing or not a string", field=f"{fname}.{role_key}")
        if role not in roles:
            raise DataError(
                loc, f"unknown role '{role}' (expected one of {sorted(roles)})", field=f"{fname}.{role_key}"
            )
        content = _content_text(turn.get(content_key), loc, f"{fname}.{content_key}")
        msgs.append(Message(roles[role], content))
    _check_turn_order(msgs, loc, key)
    return msgs


def _content_text(content: Any, loc: str, fname: str) -> str:
    """A turn's text: a string, or OpenAI content parts ``[{"type": "text", "text": ...}, ...]`` joined in
    order without a separator (as the API concatenates them); a part of another type (an image) is refused."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        what = (
            "missing"
            if content is None
            else f"expected a string or a list of text parts, got {type(content).__name__}"
        )
        raise DataError(loc, what, field=fname)
    texts = []
    for i, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise DataError(
                loc, 'expected a text part {"type": "text", "text": "..."}', field=f"{fname}[{i}]"
            )
        if part.get("type", "text") != "text":
            raise DataError(
                loc, f"part type '{part['type']}' is not text (only text is trained)", field=f"{fname}[{i}]"
            )
        texts.append(part["text"])
    return "".join(texts)


def _check_turn_order(msgs: list[Message], loc: str, key: str) -> None:
    first = 1 if msgs and msgs[0].role == "system" else 0
    body = msgs[first:]
    if any(m.role == "system" for m in body):
        raise DataError(loc, "a system turn is only allowed first", field=key)
    if not any(m.role == "assistant" for m in body):
        raise DataError(loc, "no assistant turn (nothing to train on)", field=key)
    if body[0].role != "user":
        raise DataError(
            loc, "the conversation must start with a user turn (after an optional system turn)", field=key
        )
    for i, m in enumerate(body):
        if m.role == "assistant" and not m.content.strip():
            raise DataError(loc, "empty assistant content", field=f"{key}[{first + i}]")
        if i > 0 and body[i - 1].role == m.role:
            raise DataError(loc, f"two consecutive '{m.role}' turns", field=f"{key}[{first + i}]")


def parse_messages(row: dict[str, Any], loc: str) -> list[Message]:
    return _parse_turns(row, loc, "messages", "role", "content", MESSAGE_ROLES)


def parse_sharegpt(row: dict[str, Any], loc: str) -> list[Message]:
    return _parse_turns(row, loc, "conversations", "from", "value", SHAREGPT_ROLES)


FORMATS: dict[str, Callable[[dict[str, Any], str], list[Message]]] = {
    "prompt_completion": parse_prompt_completion,
    "alpaca": parse_alpaca,
    "messages": parse_messages,
    "sharegpt": parse_sharegpt,
}


def detect_format(row: dict[str, Any], loc: str) -> str:
    """Guess the record format from one row's keys."""
    keys = set(row)
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys:
        return "alpaca"
    if "prompt" in keys and keys & {"completion", "response"}:
        return "prompt_completion"
    raise DataError(
        loc,
        f"cannot detect the format from keys {sorted(keys)}; expected one of: messages, conversations, "
        "instruction(+input)+output, prompt+completion (or pass --format)",
    )


def row_sample_id(row: dict[str, Any], row_index: int, loc: str) -> str:
    """A stable id: the row's own ``id``/``sample_id`` when present, else its 0-based row index."""
    for key in ("sample_id", "id"):
        if key in row and row[key] is not None:
            val = row[key]
            if not isinstance(val, str | int):
                raise DataError(loc, f"expected a string or integer, got {type(val).__name__}", field=key)
            return str(val)
    return f"row-{row_index:08d}"


def read_records(
    source: str | Path,
    fmt: str = "auto",
    on_error: Callable[[DataError, dict[str, Any] | None], None] | None = None,
) -> Iterator[Record]:
    """Yield normalised records from ``source``.

    ``on_error`` (the ``--skip-invalid`` hook) receives each invalid row's error and raw row instead of
    the error being raised. File-level errors (unreadable JSON, bad UTF-8) always raise: the rest of a
    file after a broken line cannot be trusted.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(str(source), f"unknown format '{fmt}' (valid: auto, {', '.join(FORMATS)})")
    chosen = None if fmt == "auto" else fmt
    seen: dict[str, str] = {}
    for row_index, loc, row in iter_raw_rows(source):
        try:
            if chosen is None:
                chosen = detect_format(row, loc)
            messages = FORMATS[chosen](row, loc)
            sid = row_sample_id(row, row_index, loc)
            if sid in seen:
                raise DataError(loc, f"duplicate sample id '{sid}' (first at {seen[sid]})", field="id")
            seen[sid] = loc
        except DataError as err:
            if on_error is None:
                raise
            on_error(err, row)
            continue
        yield Record(sample_id=sid, location=loc, messages=tuple(messages))
