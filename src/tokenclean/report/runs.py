"""Reading run directories (``RUN_DIR/summary.json``) and merging several runs into one report's data.

A run's ``summary.json`` is written and read through one schema, :mod:`tokenclean.summary`
(its TypedDicts declare every key and type; :data:`~tokenclean.summary.NOT_SHOWN` lists the
keys the report does not show). Paths are relative to the run directory (absolute paths are accepted).
Merging several runs keeps every method; a method name that occurs in more than one run is prefixed with
its run's name (``runA/full``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenclean.errors import DataError
from tokenclean.report.tables import method_order
from tokenclean.summary import read_summary
from tokenclean.utils import read_json


@dataclass(frozen=True)
class View:
    """One selection whose tokens the report can show: a method's cleaned set, or one self-evolving round."""

    key: str  # method key in the merged report (maybe run-prefixed)
    round: int | None
    run: str
    run_dir: Path
    scores: Path | None
    cleaned: Path | None
    model: str | None = None
    counted: Path | None = None  # online token policies: the training directory with counted/ (last epoch)
    policy: str | None = None  # the training policy of the method (labels, weights, rho1, dft, ...)

    @property
    def label(self) -> str:
        return self.key if self.round is None else f"{self.key} round {self.round}"

    @property
    def slug(self) -> str:
        s = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in self.key)
        return s if self.round is None else f"{s}_round{self.round}"


@dataclass(frozen=True)
class Run:
    name: str
    dir: Path
    summary: dict[str, Any]


@dataclass
class Merged:
    """Everything the tables, plots and page need, from one or more runs."""

    runs: list[Run]
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> entry (+ "run", "method")
    rounds: list[dict[str, Any]] = field(default_factory=list)  # entries + "key" (the pipeline's method key)
    sweep: list[dict[str, Any]] = field(default_factory=list)  # entries with "method" already merged
    views: list[View] = field(default_factory=list)


def load_run(run_dir: str | Path) -> Run:
    """A run directory's summary, read and checked through its schema (errors name ``FILE: key.path``)."""
    d = Path(run_dir)
    s = read_summary(d / "summary.json")
    return Run(name=str(s.get("name") or d.resolve().name), dir=d, summary=dict(s))


_STAGE_DIR_NAMES = ("cleaned", "train", "scores", "adapter", "store")


def _stage_name(path: Path) -> str:
    """A method name for a stage output: its directory name, or its parent's when the directory has a generic
    name (``out/mine/cleaned`` -> ``mine``)."""
    p = path.resolve()
    stem = p.stem if p.is_file() else p.name
    return p.parent.name if stem in _STAGE_DIR_NAMES or stem.startswith("eval") else stem


def _stage_entry(path: Path) -> tuple[dict[str, Any], str | None]:
    """The summary entry of one stage output (and the model it names), from its own manifest:
    a cleaned dataset (``tokenclean select``), a score store (``tokenclean score``), a training directory
    (``tokenclean train``; its data, and the tokens an online policy counted) or an evaluation JSON
    (``tokenclean eval --out FILE.json``)."""
    where = str(path)
    if path.is_file():
        try:
            ev = read_json(path)
        except ValueError as e:
            raise DataError(where, f"invalid JSON: {e}") from None
        if not isinstance(ev, dict) or not isinstance(ev.get("tasks"), dict):
            raise DataError(where, "not an evaluation result (tokenclean eval --out FILE.json): no 'tasks'")
        return {"eval": ev}, None
    if (path / "done.json").is_file():
        done = read_json(path / "done.json")
        data = Path(str((done.get("data") or {}).get("path") or ""))
        entry: dict[str, Any] = {
            "adapter": str(path / "adapter"),
            "cleaned": str(data) if data.name else None,
        }
        if (path / "counted").is_dir():
            entry["counted"] = str(path)
        pol = done.get("policy") if isinstance(done.get("policy"), dict) else None
        if pol and pol.get("name"):
            entry["policy"] = {"name": pol["name"], "settings": pol.get("settings") or {}}
        return entry, (done.get("model") or {}).get("name")
    manifest = path / "manifest.json"
    if not manifest.is_file():
        raise DataError(
            where,
            "not a run directory (no summary.json) nor a stage output (no manifest.json or done.json): give a "
            "run directory, a cleaned dataset, a score store, a training directory or an eval JSON",
        )
    m = read_json(manifest)
    stage = m.get("stage")
    if stage == "select":
        sc = m.get("scores") or {}
        scores = sc.get("dir") if isinstance(sc, dict) else sc
        return {"cleaned": str(path), "scores": scores if isinstance(scores, str) else None}, None
    if stage == "score":
        return {"scores": str(path)}, (
            (m.get("base") or {}).get("name") if isinstance(m.get("base"), dict) else None
        )
    if stage == "prepare":
        return {"cleaned": str(path)}, None
    raise DataError(
        str(manifest), f"stage {stage!r}: the report shows select, score, prepare and train outputs"
    )


def load_stage_outputs(paths: list[str | Path], name: str = "stages") -> Run:
    """One in-memory run made of stage-by-stage outputs (no ``summary.json``): one method per path, named
    ``NAME=PATH`` or after the path (:func:`_stage_name`); entries of the same name merge (a cleaned set and
    its eval JSON). Paths are absolute, so the report needs ``--out``."""
    methods: dict[str, dict[str, Any]] = {}
    model = None
    for spec in paths:
        text = str(spec)
        key, _, rest = text.partition("=") if "=" in text and not Path(text).exists() else ("", "", text)
        path = Path(rest)
        if not path.exists():
            raise DataError(rest, "no such file or directory")
        entry, m = _stage_entry(path)
        model = model or m
        methods.setdefault(key or _stage_name(path), {}).update(entry)
    summary = {"pipeline": "stages", "name": name, "model": model, "methods": methods}
    return Run(name=name, dir=Path.cwd(), summary=summary)


def resolve(run_dir: Path, rel: str | None) -> Path | None:
    """A summary path (relative to the run directory, or absolute) as a Path; None stays None."""
    if rel is None:
        return None
    p = Path(rel)
    return p if p.is_absolute() else run_dir / p


def _keys(runs: list[Run]) -> dict[tuple[int, str], str]:
    """Method key per (run index, method): the bare name, or ``run/name`` where runs share a name."""
    count: dict[str, int] = {}
    for r in runs:
        for m in r.summary.get("methods", {}):
            count[m] = count.get(m, 0) + 1
    names = [r.name for r in runs]
    out = {}
    for i, r in enumerate(runs):
        prefix = r.name if names.count(r.name) == 1 else f"{r.name}#{i}"
        for m in r.summary.get("methods", {}):
            out[(i, m)] = m if count[m] == 1 else f"{prefix}/{m}"
    return out


def _round_key(s: dict[str, Any], keys: dict[str, str], run: str, multi: bool) -> str:
    """The method the rounds belong to: the one whose entry names a round, else ``self_evolving``."""
    methods = s.get("methods", {})
    with_round = [m for m, e in methods.items() if e.get("round") is not None]
    if with_round:
        return keys[with_round[0]]
    return keys.get("self_evolving", f"{run}/self_evolving" if multi else "self_evolving")


def merge(runs: list[Run]) -> Merged:
    """Merge runs' methods, rounds, sweeps and the views with tokens to show."""
    merged = Merged(runs=runs)
    keys = _keys(runs)
    for i, r in enumerate(runs):
        s, model = r.summary, r.summary.get("model")
        seen_cleaned: set[Path] = set()
        for m, e in s.get("methods", {}).items():
            k = keys[(i, m)]
            merged.methods[k] = dict(e, run=r.name, method=m)
            cleaned = resolve(r.dir, e.get("cleaned"))
            if cleaned is not None or e.get("scores"):
                policy = (e.get("policy") or {}).get("name") if isinstance(e.get("policy"), dict) else None
                scores, counted = resolve(r.dir, e.get("scores")), resolve(r.dir, e.get("counted"))
                merged.views.append(
                    View(k, e.get("round"), r.name, r.dir, scores, cleaned, model, counted, policy)
                )
                if cleaned is not None:
                    seen_cleaned.add(cleaned)
        round_key = _round_key(s, {m: keys[(i, m)] for m in s.get("methods", {})}, r.name, len(runs) > 1)
        for e in s.get("rounds") or []:
            merged.rounds.append(dict(e, key=round_key, run=r.name))
            cleaned = resolve(r.dir, e.get("cleaned"))
            if (cleaned is not None or e.get("scores")) and cleaned not in seen_cleaned:
                merged.views.append(
                    View(
                        round_key,
                        e.get("round"),
                        r.name,
                        r.dir,
                        resolve(r.dir, e.get("scores")),
                        cleaned,
                        model,
                    )
                )
        for e in s.get("sweep") or []:
            m = str(e.get("method"))
            merged.sweep.append(dict(e, method=keys.get((i, m), m), run=r.name))
    order = {k: i for i, k in enumerate(method_order(list(merged.methods) + [v.key for v in merged.views]))}
    merged.views.sort(key=lambda v: (order[v.key], -1 if v.round is None else v.round))
    return merged
