"""Per-token data of a view (a cleaned dataset and its score store) for plots and the sample pages.

The score store and the cleaned dataset are joined by ``sample_id`` (the fast path when both list the same
ids in the same order). Token classes come from :func:`tokenclean.report.inspect.token_classes` and token
texts from :func:`tokenclean.report.inspect.token_pieces`; nothing here re-derives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.columns import flat_list, offsets_of
from tokenclean.errors import DataError
from tokenclean.report.inspect import DROPPED, KEPT, PROMPT, token_classes, token_pieces
from tokenclean.report.runs import View
from tokenclean.utils import read_json


@dataclass(frozen=True)
class TokenArrays:
    """Flat arrays over the scored tokens of a view (positions with a finite score), all shape (n,)."""

    base: np.ndarray | None  # float32 base loss
    ref: np.ndarray | None  # float32 reference loss
    score: np.ndarray  # float32
    kept: np.ndarray | None  # bool, None without a cleaned dataset


@dataclass(frozen=True)
class SampleTokens:
    view: View
    sample_id: str
    pieces: list[str]  # (L,) token texts
    classes: list[int]  # (L,) PROMPT / KEPT / DROPPED
    base: list[float | None]  # (L,) per-token values, None where not scored
    ref: list[float | None]
    score: list[float | None]
    n_hidden: int = 0  # tokens past the display limit
    truth: list[str | None] | None = None  # (L,) truth label per response token, when the run has truth
    weight: list[float | None] | None = None  # (L,) training weight per response token (soft/online methods)
    weighting: str | None = None  # "weights" (soft: the weights column) or "counted" (online: last epoch)


def _load(path: Path) -> Any:
    import datasets

    if not path.is_dir():
        raise DataError(str(path), "dataset directory not found (named in summary.json)")
    return datasets.load_from_disk(str(path))


def _ragged(ds: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (flat values (N,), offsets (n_rows + 1,)); nulls inside become NaN."""
    values, lengths = flat_list(ds.data.column(name), None)  # chunk by chunk: no 2**31 limit
    return values, offsets_of(lengths)


def _gather_index(offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Flat indices of the tokens of ``rows`` (in that order) in a ragged column with ``offsets``."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    starts, ends = offsets[rows], offsets[rows + 1]
    lens = ends - starts
    # (N,) position within its row + the row's start
    within = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    return np.repeat(starts, lens) + within


def _row_map(ids_from: Sequence[str], ids_to: Sequence[str], where: str) -> np.ndarray:
    """For each id of ``ids_from``, its row in ``ids_to``."""
    if list(ids_from) == list(ids_to):
        return np.arange(len(ids_from))
    pos = {s: i for i, s in enumerate(ids_to)}
    missing = [s for s in ids_from if s not in pos]
    if missing:
        raise DataError(where, f"{len(missing)} sample ids are not in the score store, e.g. {missing[:3]}")
    return np.array([pos[s] for s in ids_from], dtype=np.int64)


def load_token_arrays(view: View) -> TokenArrays | None:
    """All scored tokens of a view: losses and scores from the store, kept flags from the cleaned set."""
    cleaned: Any = _load(view.cleaned) if view.cleaned is not None else None
    store: Any = _load(view.scores) if view.scores is not None else None
    src: Any = store if store is not None and "score" in store.column_names else cleaned
    if src is None or "score" not in src.column_names:
        return None
    score, s_off = _ragged(src, "score")
    base = ref = kept = None
    if src is store and {"base_loss", "ref_loss"} <= set(store.column_names):
        base, ref = _ragged(store, "base_loss")[0], _ragged(store, "ref_loss")[0]
    idx = np.arange(len(score))
    if cleaned is not None:
        labels = _ragged(cleaned, "labels")[0]
        rows = np.arange(len(cleaned))
        if src is not cleaned:
            rows = _row_map(cleaned["sample_id"], src["sample_id"], str(view.scores))
        idx = _gather_index(s_off, rows)
        if len(idx) != len(labels):
            raise DataError(
                str(view.cleaned), "token counts differ from the score store (not the same samples?)"
            )
        kept = labels != IGNORE_INDEX
    score = score[idx]
    ok = np.isfinite(score)  # (N,) scored positions only

    def pick(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.asarray(a[idx][ok], dtype=np.float32)

    return TokenArrays(
        base=pick(base),
        ref=pick(ref),
        score=score[ok].astype(np.float32),
        kept=None if kept is None else kept[ok],
    )


def pick_rows(ids: Sequence[str], n: int, preferred: Sequence[str] = ()) -> list[int]:
    """Up to ``n`` row indices: rows whose id is in ``preferred`` first (in that order), then rows spread evenly."""
    pos = {s: i for i, s in enumerate(ids)}
    out = [pos[s] for s in preferred if s in pos][:n]
    if len(out) < n and len(ids):
        taken = set(out)
        for i in np.linspace(0, len(ids) - 1, num=min(len(ids), n * 2)).round().astype(int):
            if len(out) >= n:
                break
            if int(i) not in taken:
                out.append(int(i))
                taken.add(int(i))
    return out


def _nan_to_none(xs: Sequence[float] | None, length: int) -> list[float | None]:
    if xs is None:
        return [None] * length
    return [None if x is None or x != x else float(x) for x in xs]


def _counted(view: View) -> dict[str, dict[int, float]] | None:
    """An online method's counted tokens (sample_id -> {position: weight}, last epoch), or None."""
    if view.counted is None or view.cleaned is None or not (view.counted / "counted").is_dir():
        return None
    from tokenclean.training.counted import counted_tokens

    return counted_tokens(view.counted, view.cleaned)


def _weights(
    row: dict[str, Any], L: int, counted: dict[str, dict[int, float]] | None, classes: list[int]
) -> tuple[list[float | None] | None, list[int]]:
    """Per-token training weight of a row (None on prompt tokens) and its classes: for an online method the
    counted tokens are kept and the other response tokens dropped; a soft method keeps its classes."""
    if counted is not None:
        got = counted.get(str(row["sample_id"]), {})
        w = [None if c == PROMPT else got.get(j, 0.0) for j, c in enumerate(classes)]
        return w, [c if c == PROMPT else (KEPT if j in got else DROPPED) for j, c in enumerate(classes)]
    if row.get("weights") is not None:
        ws = row["weights"][:L]
        return [None if c == PROMPT else float(x) for c, x in zip(classes, ws)], classes
    return None, classes


def load_samples(
    view: View, tokenizer: Any, n: int, preferred: Sequence[str] = (), max_tokens: int = 2048
) -> list[SampleTokens]:
    """``n`` samples of a view's cleaned dataset with token texts, classes and per-token losses/scores; for
    soft methods (a ``weights`` column) and online methods (counted tokens) also each token's weight."""
    if view.cleaned is None:
        return []
    cleaned = _load(view.cleaned)
    rows = pick_rows(cleaned["sample_id"], n, preferred)
    store: Any = _load(view.scores) if view.scores is not None else None
    s_pos = {s: i for i, s in enumerate(store["sample_id"])} if store is not None else {}
    counted = _counted(view)
    weighting = "counted" if counted is not None else "weights" if "weights" in cleaned.column_names else None
    out = []
    for i in rows:
        row = cleaned[i]
        ids = row["input_ids"][:max_tokens]
        L = len(ids)
        classes = token_classes(row["labels"][:L], (row.get("response_labels") or row["labels"])[:L])
        weight, classes = _weights(row, L, counted, classes)
        srow = store[s_pos[row["sample_id"]]] if row["sample_id"] in s_pos else {}
        out.append(
            SampleTokens(
                view=view,
                sample_id=str(row["sample_id"]),
                pieces=token_pieces(tokenizer, ids),
                classes=classes,
                base=_nan_to_none((srow.get("base_loss") or [None] * L)[:L], L),
                ref=_nan_to_none((srow.get("ref_loss") or [None] * L)[:L], L),
                score=_nan_to_none((srow.get("score") or row.get("score") or [None] * L)[:L], L),
                n_hidden=len(row["input_ids"]) - L,
                weight=weight,
                weighting=weighting,
            )
        )
    return out


def _manifest(d: Path | None) -> dict[str, Any]:
    if d is None or not (d / "manifest.json").is_file():
        return {}
    try:
        m = read_json(d / "manifest.json")
    except ValueError:
        return {}
    return m if isinstance(m, dict) else {}


def _tok_from(m: dict[str, Any]) -> str | None:
    tok = m.get("tokenizer") or (m.get("prepared") or {}).get("tokenizer")
    if isinstance(tok, dict) and (tok.get("source") or tok.get("name")):
        return str(tok.get("source") or tok.get("name"))
    return None


def tokenizer_name(view: View) -> str | None:
    """The tokenizer a view was prepared with: ``tokenizer.source`` (else ``.name``) of the cleaned or score
    manifest, or of the manifests they point to (``prepared_dir``/``scores_dir`` or ``prepared.dir``/``scores.dir``);
    else the run's model."""
    todo, seen = [view.cleaned, view.scores], set()
    while todo:
        d = todo.pop(0)
        if d is None or d in seen:
            continue
        seen.add(d)
        m = _manifest(d)
        if name := _tok_from(m):
            return name
        for k in ("prepared_dir", "scores_dir", "prepared", "scores"):  # flat paths or {"dir": path}
            v = m.get(k)
            v = v.get("dir") if isinstance(v, dict) else v
            if isinstance(v, str):
                todo.append(Path(v))
    return view.model


def with_truth(
    samples: Sequence[SampleTokens], labels: dict[str, np.ndarray], names: Sequence[str]
) -> list[SampleTokens]:
    """Attach truth labels (``labels[sample_id]``: label index per position, -1 not a response token)."""
    out = []
    for s in samples:
        lab = labels.get(s.sample_id)
        if lab is None:
            out.append(s)
            continue
        n = len(s.pieces)
        out.append(replace(s, truth=[names[int(k)] if k >= 0 else None for k in lab[:n]]))
    return out
