"""Step-level truth from annotated reasoning traces: SFT samples plus span truth (``data.truth``).

A trace is a JSONL record with a prompt (``input``) and a list of reasoning steps (``steps``), annotated in
one of two styles:

- **first mistake** (BIG-Bench Mistake): ``mistake_index``, the 0-based index of the first wrong step, or
  null when no step is wrong. Steps before it are ``correct``, the wrong step is ``mistake`` (its first
  token is its decisive token: where the reasoning departs), every later step is ``after`` (it builds on
  the error).
- **per-step ratings** (PRM800K): ``ratings``, one of -1 / 0 / +1 (or null: unrated) per step, labelled
  ``wrong`` / ``neutral`` / ``correct`` (unrated steps stay ``unlabelled``).

Each trace becomes one SFT sample ``{"id", "messages": [user: input, assistant: steps joined by the
separator]}`` and one truth line ``{"id", "spans": [[start, end, label], ...]}`` with one span per step over
its own characters (the separators between steps carry no label). A step may contain the separator: the
spans are computed from the joined text, not re-split from it. Field names are settings
(:class:`StepFields`); a record that breaks the schema is an error naming ``FILE:LINE`` and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tokenclean.errors import DataError

Style = Literal["auto", "first_mistake", "ratings"]
RATING_LABELS = {-1: "wrong", 0: "neutral", 1: "correct"}
FIRST_MISTAKE_LABELS = ("correct", "mistake", "after")


@dataclass(frozen=True)
class StepFields:
    """The record fields a trace is read from."""

    input: str = "input"
    steps: str = "steps"
    mistake: str = "mistake_index"
    ratings: str = "ratings"
    id: str | None = None  # null: FILE_STEM-LINE


@dataclass(frozen=True)
class Trace:
    sample_id: str
    prompt: str
    steps: tuple[str, ...]
    labels: tuple[str | None, ...]  # per step; None = unrated (no span)
    has_error: bool  # a mistake (first-mistake style) or a -1 rating


@dataclass(frozen=True)
class Converted:
    traces: list[Trace] = field(default_factory=list)
    styles: dict[str, int] = field(default_factory=dict)  # annotation style -> traces


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def step_labels(row: dict[str, Any], f: StepFields, style: Style, n: int, loc: str) -> tuple[str, ...]:
    """The label of each of a record's ``n`` steps, in ``style`` (``auto``: the field the record has)."""
    if style == "auto":
        if f.mistake in row:
            style = "first_mistake"
        elif f.ratings in row:
            style = "ratings"
        else:
            raise DataError(
                loc, f"neither '{f.mistake}' (first mistake) nor '{f.ratings}' (per-step ratings)"
            )
    if style == "first_mistake":
        if f.mistake not in row:
            raise DataError(loc, "missing (null = no mistake)", field=f.mistake)
        m = row[f.mistake]
        if m is None:
            return ("correct",) * n
        if not _int(m) or not 0 <= m < n:
            raise DataError(
                loc, f"expected null or a step index in [0, {n}), got {json.dumps(m)}", field=f.mistake
            )
        return ("correct",) * m + ("mistake",) + ("after",) * (n - m - 1)
    r = row.get(f.ratings)
    if not isinstance(r, list) or len(r) != n:
        got = f"{len(r)} values" if isinstance(r, list) else json.dumps(r)
        raise DataError(loc, f"expected a list of {n} ratings (one per step), got {got}", field=f.ratings)
    for i, v in enumerate(r):
        if v is not None and not (_int(v) and v in RATING_LABELS):
            raise DataError(loc, f"[{i}]: expected -1, 0, +1 or null, got {json.dumps(v)}", field=f.ratings)
    return tuple(RATING_LABELS[v] if v is not None else None for v in r)  # type: ignore[misc]


def parse_trace(row: Any, f: StepFields, style: Style, loc: str, default_id: str) -> Trace:
    """One record as a :class:`Trace`; ``loc`` (``FILE:LINE``) names it in errors."""
    if not isinstance(row, dict):
        raise DataError(loc, f"expected a JSON object, got {type(row).__name__}")
    prompt = row.get(f.input)
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(loc, "expected a non-empty string", field=f.input)
    steps = row.get(f.steps)
    if not isinstance(steps, list) or not steps:
        raise DataError(loc, "expected a non-empty list of strings", field=f.steps)
    for i, s in enumerate(steps):
        if not isinstance(s, str):
            raise DataError(loc, f"[{i}]: expected a string, got {json.dumps(s)}", field=f.steps)
    labels = step_labels(row, f, style, len(steps), loc)
    sid = default_id
    if f.id is not None:
        v = row.get(f.id)
        if not isinstance(v, (str, int)) or isinstance(v, bool) or str(v) == "":
            raise DataError(loc, "expected a non-empty string or integer id", field=f.id)
        sid = str(v)
    err = "mistake" in labels or "wrong" in labels
    return Trace(sid, prompt, tuple(steps), labels, err)


def read_traces(
    paths: Sequence[str | Path], f: StepFields | None = None, style: Style = "auto"
) -> Iterator[tuple[str, Trace]]:
    """``(FILE:LINE, trace)`` of every non-blank line; default ids are ``FILE_STEM-LINE``."""
    from tokenclean.data.formats import iter_jsonl

    f = f or StepFields()
    for p in paths:
        for _, loc, row in iter_jsonl(p):
            yield loc, parse_trace(row, f, style, loc, f"{Path(p).stem}-{loc.rsplit(':', 1)[1]}")


def sample_and_truth(t: Trace, sep: str = "\n") -> tuple[dict[str, Any], dict[str, Any]]:
    """The SFT sample and the truth line of one trace (one span per labelled step, over the joined text)."""
    spans: list[list[Any]] = []
    pos = 0
    for i, (s, lab) in enumerate(zip(t.steps, t.labels)):
        if i:
            pos += len(sep)
        if lab is not None:
            spans.append([pos, pos + len(s), lab])
        pos += len(s)
    text = sep.join(t.steps)
    assert pos == len(text)
    sample = {
        "id": t.sample_id,
        "messages": [{"role": "user", "content": t.prompt}, {"role": "assistant", "content": text}],
    }
    return sample, {"id": t.sample_id, "spans": spans}


@dataclass(frozen=True)
class Split:
    """Which traces go where: ``heldout`` error-free traces per file to ``heldout.jsonl`` (not in the
    pool), then at most ``limit`` traces per file into the pool (one value for every file, or one per file
    in input order), skipping answers over ``max_chars``."""

    heldout: int = 0
    limit: tuple[int, ...] = ()
    max_chars: int | None = None
    seed: int = 0


def _pick(traces: list[Trace], sp: Split, sep: str, k: int) -> tuple[list[Trace], list[Trace], int]:
    """(pool, held-out, skipped as too long) of the ``k``-th file's traces, in a seeded order."""
    import random

    fits = [t for t in traces if sp.max_chars is None or len(sep.join(t.steps)) <= sp.max_chars]
    order = list(fits)
    random.Random(sp.seed).shuffle(order)
    clean = [t for t in order if not t.has_error]
    held = {id(t) for t in clean[: sp.heldout]}
    rest = [t for t in order if id(t) not in held]
    limit = sp.limit[min(k, len(sp.limit) - 1)] if sp.limit else None
    pool = rest if limit is None else rest[:limit]
    return pool, [t for t in order if id(t) in held], len(traces) - len(fits)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _label_counts(traces: list[Trace]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in traces:
        for lab in t.labels:
            out[lab or "unrated"] = out.get(lab or "unrated", 0) + 1
    return dict(sorted(out.items()))
