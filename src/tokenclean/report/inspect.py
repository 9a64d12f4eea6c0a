"""``tokenclean inspect``: show samples in the terminal with token classes visibly distinguished.

Token classes (one per position):

- ``prompt``: never trained (prompt, template, system) -- dim;
- ``kept``: trained (response tokens in a prepared set, kept tokens in a cleaned set) -- green;
- ``dropped``: a response token that selection removed -- red, struck through.

A prepared dataset has only prompt/kept. A cleaned dataset (with a ``response_labels`` column holding the
labels before selection) has all three. A score store is shown through its prepared dataset, with every
response token's score listed (``--scores`` lists them for a cleaned dataset too). With colour off (not a terminal, or ``--markers``), kept tokens are
written as ``[+...+]`` and dropped ones as ``[-...-]`` so the classes survive copy-paste and logs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenclean import IGNORE_INDEX
from tokenclean.errors import DataError
from tokenclean.utils import terminal_safe

PROMPT, KEPT, DROPPED = 0, 1, 2
STYLES = {PROMPT: "dim", KEPT: "bold black on green3", DROPPED: "strike red"}
MARKERS = {PROMPT: ("", ""), KEPT: ("[+", "+]"), DROPPED: ("[-", "-]")}


def token_classes(labels: Sequence[int], response_labels: Sequence[int] | None = None) -> list[int]:
    """Per-position class (PROMPT/KEPT/DROPPED) from the final labels and, optionally, the labels before selection."""
    out = []
    for j, lab in enumerate(labels):
        if lab != IGNORE_INDEX:
            out.append(KEPT)
        elif response_labels is not None and response_labels[j] != IGNORE_INDEX:
            out.append(DROPPED)
        else:
            out.append(PROMPT)
    return out


def group_runs(pieces: Sequence[str], classes: Sequence[int]) -> list[tuple[int, str]]:
    """Merge consecutive pieces of the same class: ``[(class, text), ...]``."""
    runs: list[tuple[int, str]] = []
    for text, c in zip(pieces, classes):
        if runs and runs[-1][0] == c:
            runs[-1] = (c, runs[-1][1] + text)
        else:
            runs.append((c, text))
    return runs


def token_pieces(tokenizer: Any, input_ids: Sequence[int]) -> list[str]:
    """Each token's own text, such that ``"".join(pieces)`` is the decoded sample (byte-level safe)."""
    ids = [int(x) for x in input_ids]
    pieces = []
    for j in range(len(ids)):
        lo = max(
            0, j - 8
        )  # a little left context: multi-byte characters and leading-space markers decode right
        prev = tokenizer.decode(ids[lo:j], skip_special_tokens=False) if j > lo else ""
        cur = tokenizer.decode(ids[lo : j + 1], skip_special_tokens=False)
        pieces.append(cur[len(prev) :] if cur.startswith(prev) else tokenizer.decode([ids[j]]))
    return pieces


def render_markers(runs: list[tuple[int, str]]) -> str:
    return "".join(MARKERS[c][0] + t + MARKERS[c][1] for c, t in runs)


def format_scores(pieces: Sequence[str], classes: Sequence[int], scores: Sequence[float]) -> str:
    """One line per response token: class, score, token text."""
    lines = []
    names = {KEPT: "kept", DROPPED: "dropped"}
    for text, c, s in zip(pieces, classes, scores):
        if c != PROMPT:
            val = "nan" if s is None or (isinstance(s, float) and math.isnan(s)) else f"{s:+.3f}"
            lines.append(f"  {names[c]:8s} {val:>8s}  {text!r}")
    return "\n".join(lines)


def _open_rows(path: str) -> tuple[Any, Any, dict[str, Any]]:
    """(token dataset, score dataset or None, tokenizer info) for a prepared set, a cleaned set or a store.

    A score store has no tokens: its prepared dataset (``prepared_dir`` in its manifest) supplies them, and
    the store's ``score`` column is shown beside them. Anything else is named as what it is, with what to
    inspect instead (:func:`_not_inspectable`).
    """
    from tokenclean.artifacts import kind_of
    from tokenclean.outputs import load_dataset_dir
    from tokenclean.utils import read_json

    if kind_of(path) not in ("prepare", "score", "select"):
        raise DataError(path, _not_inspectable(path))
    manifest = read_json(f"{path}/manifest.json")
    hint = "re-create it"
    if manifest.get("stage") == "score":
        prep = manifest.get("prepared_dir") or ""
        if not (Path(prep) / "manifest.json").is_file():
            raise DataError(
                path,
                f"a score store whose prepared dataset ({prep or 'none recorded'}) is gone; the tokens "
                "shown come from it: restore it, or inspect the cleaned dataset selected from this store",
            )
        tok_info = read_json(f"{prep}/manifest.json").get("tokenizer", {})
        return load_dataset_dir(prep, hint), load_dataset_dir(path, hint), tok_info
    tok_info = manifest.get("tokenizer") or manifest.get("prepared", {}).get("tokenizer", {})
    return load_dataset_dir(path, hint), None, tok_info


def _not_inspectable(path: str) -> str:
    """Why ``path`` cannot be inspected, and what to pass instead."""
    from tokenclean.artifacts import describe, kind_of

    k, p = kind_of(path), Path(path)
    what = describe(path)
    if k == "file":
        return (
            f"is {what}; inspect shows tokenised data: run `tokenclean prepare --data {path} --tokenizer NAME "
            "--out DIR` and inspect DIR"
        )
    if k == "run":
        found = sorted(
            str(d.parent)
            for d in p.glob("**/manifest.json")
            if kind_of(d.parent) in ("prepare", "select", "score")
        )
        listed = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        return f"is {what}; inspect one of its datasets instead" + (f": {listed}" if found else "")
    if k == "train":
        done = p / "done.json"
        data = read_done_data(done) if done.is_file() else None
        return f"is {what}; inspect the dataset it trained on" + (f": {data}" if data else "")
    return f"is {what}; inspect takes a prepared dataset, a cleaned dataset or a score store"


def read_done_data(done: Any) -> str | None:
    from tokenclean.utils import CorruptFileError, read_json

    try:
        d = read_json(done)
    except CorruptFileError:
        return None
    data = d.get("data") if isinstance(d, dict) else None
    return str(data.get("path") or data.get("dir") or "") or None if isinstance(data, dict) else None


def inspect(
    path: str,
    n: int = 5,
    start: int = 0,
    tokenizer: Any = None,
    markers: bool | None = None,
    show_scores: bool = False,
    console: Any = None,
) -> str:
    """Print ``n`` samples of a prepared dataset, a cleaned dataset or a score store (tokens from its prepared
    dataset, scores listed); returns the plain-marker text too. ``show_scores`` lists each response token's
    class and score (a cleaned dataset or a score store has them)."""
    from rich.console import Console
    from rich.text import Text

    from tokenclean.models.loader import load_tokenizer

    if n < 1 or start < 0:
        raise DataError(path, f"--n must be >= 1 and --start >= 0 (got --n {n}, --start {start})")
    ds, score_ds, tok_info = _open_rows(path)
    show_scores = show_scores or score_ds is not None
    if tokenizer is None:
        tokenizer = load_tokenizer(tok_info.get("source") or tok_info["name"])
    console = console or Console(highlight=False)
    use_markers = markers if markers is not None else not console.is_terminal
    plain_out = []
    if start >= len(ds):
        raise DataError(path, f"--start {start} is past the last sample (it holds {len(ds)} samples)")
    end = min(len(ds), start + n)
    for i in range(start, end):
        row = dict(ds[i])
        if score_ds is not None:
            row["score"] = score_ds[i]["score"]
        classes = token_classes(row["labels"], row.get("response_labels"))
        pieces = token_pieces(tokenizer, row["input_ids"])
        pieces = [terminal_safe(t) for t in pieces]  # user text: control characters shown escaped
        runs = group_runs(pieces, classes)
        n_kept = classes.count(KEPT)
        n_drop = classes.count(DROPPED)
        header = (
            f"── sample {i} id={terminal_safe(str(row['sample_id']))}  tokens={len(pieces)}  trained={n_kept}"
        )
        header += f"  dropped={n_drop}" if "response_labels" in row else ""
        text = render_markers(runs)
        plain_out.append(header + "\n" + text)
        console.print(header, style="bold", markup=False)
        if use_markers:
            console.print(text, markup=False)
        else:
            t = Text()
            for c, s in runs:
                t.append(s, style=STYLES[c])
            console.print(t)
        if show_scores:
            sc = format_scores(pieces, classes, row["score"]) if "score" in row else _NO_SCORES
            plain_out.append(sc)
            console.print(sc, markup=False)
    legend = "legend: dim = prompt/untrained, green " + ("[+ +]" if use_markers else "") + " = trained/kept"
    legend += ", red struck " + ("[- -]" if use_markers else "") + " = dropped by selection"
    console.print(legend, style="italic")
    return "\n".join(plain_out)


_NO_SCORES = "  (no scores here: inspect a cleaned dataset or a score store to see them)"
