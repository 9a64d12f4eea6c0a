"""Token truth from character spans: user-annotated data (``data.truth``) and the generated pool alike.

A truth file is JSONL, one line per annotated sample::

    {"id": "s1", "spans": [[start, end, label], ...]}                  # one assistant message
    {"id": "s2", "spans": [[turn, start, end, label], ...]}            # several assistant messages
    {"id": "s3", "spans": [...], "decisive": [offset, ...]}            # optional, see below

``start``/``end`` are half-open character offsets into the *content* of an assistant message (``turn``
counts assistant messages from 0); labels are free-form strings (``informative``, ``boilerplate``,
``hallucination``...). Spans of one message must not overlap and must lie inside its content; a
violation is an error naming the file, line, id and span.

Mapping onto tokens (the rule): the sample is rendered and tokenised by the data layer's one label builder
(:mod:`tokenclean.data.labels`), so the tokens are exactly the prepared ones. Each *response* token (label
not -100) takes the label that covers the most of its characters, where characters no span covers count
for ``unlabelled``; ties go to a span label over ``unlabelled``, and between spans to the earlier span.
Tokens outside every assistant content (EOS, template text) are ``unlabelled``. Prompt tokens are not
response tokens (-1).

Decisive tokens: a span's decisive token is the response token holding its decisive character, by default
the span's first character; ``decisive`` (offsets, or ``[turn, offset]`` in multi-turn samples) moves it,
e.g. to where a wrong fact first departs from the truth. The tokens after that one are predictable given
it, so a span counts as removed when its decisive token is dropped (:mod:`tokenclean.groundtruth.metrics`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.errors import DataError

UNLABELLED = "unlabelled"


@dataclass(frozen=True)
class Span:
    turn: int
    start: int
    end: int
    label: str
    decisive: int  # character offset (in the same content) of the span's decisive character


@dataclass(frozen=True)
class SampleTruth:
    """One sample's truth on token positions.

    ``labels``: int16 per position, -1 = not a response token, else an index into ``TokenTruth.names``.
    ``decisive``: int16 per position, -1 or the label index (into ``TokenTruth.names``) of the span it is
    the decisive token of.
    """

    labels: np.ndarray
    decisive: np.ndarray
    spans: tuple[Span, ...]


@dataclass(frozen=True)
class TokenTruth:
    names: list[str]  # label vocabulary; names[0] == "unlabelled"
    samples: dict[str, SampleTruth]  # by sample id


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_spans(raw: Any, decisive: Any, n_turns: int, loc: str) -> tuple[Span, ...]:
    """Check and normalise one sample's spans (see module doc); ``loc`` names file, line and id."""
    if not isinstance(raw, list):
        raise DataError(loc, f"expected a list of spans, got {type(raw).__name__}", field="spans")
    spans: list[Span] = []
    for i, s in enumerate(raw):
        where = f"spans[{i}] {json.dumps(s)}"
        if not isinstance(s, list) or len(s) not in (3, 4):
            raise DataError(loc, f"{where}: expected [start, end, label] or [turn, start, end, label]")
        if len(s) == 3 and n_turns > 1:
            raise DataError(
                loc, f"{where}: the sample has {n_turns} assistant messages; write [turn, start, end, label]"
            )
        turn, start, end, label = (0, *s) if len(s) == 3 else s
        if not (_int(turn) and _int(start) and _int(end) and isinstance(label, str) and label):
            raise DataError(loc, f"{where}: turn/start/end must be integers and label a non-empty string")
        if not 0 <= turn < n_turns:
            raise DataError(loc, f"{where}: turn {turn} is outside the {n_turns} assistant message(s)")
        if not 0 <= start <= end:
            raise DataError(loc, f"{where}: need 0 <= start <= end")
        spans.append(Span(turn, start, end, label, start))
    order = sorted(range(len(spans)), key=lambda k: (spans[k].turn, spans[k].start, spans[k].end))
    for a, b in itertools.pairwise(order):
        sa, sb = spans[a], spans[b]
        if sa.turn == sb.turn and sb.start < sa.end:
            raise DataError(loc, f"spans[{a}] and spans[{b}] overlap (turn {sa.turn})", field="spans")
    return _with_decisive(spans, decisive, n_turns, loc)


def _with_decisive(spans: list[Span], decisive: Any, n_turns: int, loc: str) -> tuple[Span, ...]:
    if decisive is not None and not isinstance(decisive, list):
        raise DataError(loc, "expected a list of character offsets", field="decisive")
    out = list(spans)
    for i, d in enumerate(decisive or []):
        if n_turns == 1 and _int(d):
            turn, off = 0, d
        elif isinstance(d, list) and len(d) == 2 and _int(d[0]) and _int(d[1]):
            turn, off = d
        else:
            raise DataError(loc, f"decisive[{i}] {json.dumps(d)}: expected an offset or [turn, offset]")
        inside = [k for k, s in enumerate(out) if s.turn == turn and s.start <= off < s.end]
        if not inside:
            raise DataError(loc, f"decisive[{i}] {json.dumps(d)}: not a character inside a span")
        k = inside[0]
        out[k] = Span(out[k].turn, out[k].start, out[k].end, out[k].label, off)
    return tuple(out)


def check_lengths(spans: Sequence[Span], contents: Sequence[str], loc: str) -> None:
    """Every span must lie inside its message's content."""
    for i, s in enumerate(spans):
        n = len(contents[s.turn])
        if s.end > n:
            raise DataError(
                loc,
                f"span {i} [{s.turn}, {s.start}, {s.end}, {s.label!r}] exceeds assistant message {s.turn} "
                f"({n} characters)",
                field="spans",
            )


def map_spans(
    offsets: Sequence[tuple[int, int]],
    labels: Sequence[int],
    contents: Sequence[tuple[int, int]],
    spans: Sequence[Span],
    names: dict[str, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Token label indices and decisive marks for one tokenised sample (the rule in the module doc).

    ``offsets``: the tokens' character spans in the rendered text; ``labels``: prepared labels (-100 = not
    a response token); ``contents``: each assistant message's content span in the rendered text.
    """
    n = len(labels)
    out = np.full(n, -1, dtype=np.int16)  # (T,)
    dec = np.full(n, -1, dtype=np.int16)  # (T,)
    abs_spans = [(contents[s.turn][0] + s.start, contents[s.turn][0] + s.end) for s in spans]
    for j in range(n):
        if labels[j] == IGNORE_INDEX:
            continue
        a, b = offsets[j]
        best, best_cover = names[UNLABELLED], 0
        covered = 0
        for (s, e), sp in zip(abs_spans, spans):
            c = max(0, min(b, e) - max(a, s))
            covered += c
            if c > best_cover:
                best, best_cover = names[sp.label], c
        if best_cover < (b - a) - covered:  # unlabelled characters outnumber every span's
            best = names[UNLABELLED]
        out[j] = best
    for sp in spans:
        if sp.end == sp.start:
            continue
        pos = contents[sp.turn][0] + sp.decisive
        for j in range(n):
            a, b = offsets[j]
            if labels[j] != IGNORE_INDEX and a <= pos < b:
                dec[j] = names[sp.label]
                break
    return out, dec


def read_truth_file(path: str | Path) -> dict[str, tuple[str, Any, Any]]:
    """``{id: (location, spans, decisive)}`` from a truth JSONL; format errors name file, line and field."""
    from tokenclean.data.formats import iter_jsonl

    out: dict[str, tuple[str, Any, Any]] = {}
    for _, loc, row in iter_jsonl(path):
        if "id" not in row or "spans" not in row:
            raise DataError(loc, "each line needs 'id' and 'spans'")
        sid = str(row["id"])
        if sid in out:
            raise DataError(loc, f"duplicate id '{sid}' (first at {out[sid][0]})", field="id")
        out[sid] = (f"{loc} (id '{sid}')", row["spans"], row.get("decisive"))
    return out


def build_truth(
    records: Iterable[Any],
    annotations: dict[str, tuple[str, Any, Any]],
    prepared: Any,
    tokenizer: Any,
    template: str,
) -> TokenTruth:
    """Token truth for every prepared sample that has an annotation.

    ``records``: :class:`~tokenclean.data.formats.Record` of the source data; ``prepared``: the prepared
    dataset (rows with ``sample_id``, ``input_ids``, ``labels``). Annotated ids missing from the data are
    an error; prepared samples without annotation are left out.
    """
    from tokenclean.data.labels import tokenize_rendered
    from tokenclean.data.templates import render

    by_id = {r.sample_id: r for r in records}
    missing = sorted(set(annotations) - set(by_id))
    if missing:
        loc = annotations[missing[0]][0]
        raise DataError(
            loc, f"{len(missing)} annotated id(s) are not in the data, e.g. '{missing[0]}'", field="id"
        )
    parsed: dict[str, tuple[Span, ...]] = {}
    for sid, (loc, raw, decisive) in annotations.items():
        contents = [m.content for m in by_id[sid].messages if m.role == "assistant"]
        parsed[sid] = parse_spans(raw, decisive, len(contents), loc)
        check_lengths(parsed[sid], contents, loc)
    names = [UNLABELLED, *sorted({s.label for sp in parsed.values() for s in sp} - {UNLABELLED})]
    index = {name: i for i, name in enumerate(names)}
    samples: dict[str, SampleTruth] = {}
    for ex in prepared:
        sid = ex["sample_id"]
        if sid not in parsed:
            continue
        r = render(list(by_id[sid].messages), tokenizer, template)
        ids, offsets = tokenize_rendered(r, tokenizer)
        if ids[: len(ex["input_ids"])] != list(ex["input_ids"]):
            raise DataError(annotations[sid][0], "prepared tokens differ from the re-rendered sample")
        lab, dec = map_spans(offsets[: len(ex["labels"])], ex["labels"], r.contents, parsed[sid], index)
        samples[sid] = SampleTruth(lab, dec, parsed[sid])
    return TokenTruth(names, samples)


def load_user_truth(
    truth_path: str | Path, data: str | Path, prepared_dir: str | Path, tokenizer: Any, fmt: str = "auto"
) -> TokenTruth:
    """Token truth of a prepared dataset from a truth JSONL over its source data (see module doc)."""
    import datasets

    from tokenclean.data.formats import read_records
    from tokenclean.utils import read_json

    template = read_json(Path(prepared_dir) / "manifest.json")["template"]
    ds = datasets.load_from_disk(str(prepared_dir))
    return build_truth(read_records(data, fmt), read_truth_file(truth_path), ds, tokenizer, template)
