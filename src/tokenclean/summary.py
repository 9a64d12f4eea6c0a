"""The schema of a run's ``summary.json``, written once: every key the pipelines write, with its type.

The TypedDicts below are the definition; :func:`write_summary` checks a summary against them before
writing (an undeclared key or a wrong type is a programming error and raises), and :func:`read_summary`
checks one before the report uses it (errors name ``FILE: key.path``). Paths are relative to the run
directory (absolute paths are accepted). Numbers that are means over seeds may be floats where one run
writes ints; ``float`` accepts both.

Versions: ``schema_version`` is :data:`SCHEMA_VERSION`. A file without it, or with a newer version, is
refused, naming the file.

Not every key is shown by the report: :data:`NOT_SHOWN` lists those it does not read, and why.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any, TypedDict, Union

from tokenclean.errors import DataError
from tokenclean.utils import read_json, write_json_atomic

SCHEMA_VERSION = 1
FILE = "summary.json"

Interval = list[float | None]  # [low, high] of a 95% interval (tokenclean.stats)


class TaskResult(TypedDict, total=False):
    """One benchmark or held-out number of an evaluation (``tokenclean.evaluation.evaluate``)."""

    metric: str
    value: float | None
    n: int | None  # examples evaluated
    shots: int | None
    higher_is_better: bool
    harness_task: str  # lm-evaluation-harness task name
    source: str  # where the data came from
    details: dict[str, Any]  # every metric the harness or the held-out pass reported


class EvalResult(TypedDict, total=False):
    """A method's evaluation (``eval.json`` without its ``stage_identity``)."""

    suite: str
    model: str
    adapter: str | None
    tasks: dict[str, TaskResult]
    average: float | None  # unweighted mean over ``average_over``
    average_over: list[str]
    limit: float | None
    processes: int  # launched ranks that shared the evaluation (1: one process)
    seconds: float
    versions: dict[str, Any]
    harness_config: dict[str, Any]


class Recovery(TypedDict, total=False):
    """How the kept tokens recover the token truth (``tokenclean.groundtruth.metrics.recovery_metrics``)."""

    response_tokens: float | None
    kept_tokens: float | None
    precision: float | None
    recall: float | None
    noise_rate_kept: float | None
    noise_rate_all: float | None
    informative_rate_all: float | None
    auroc: float | None


class ClassRow(TypedDict, total=False):
    """One truth label's row (``tokenclean.groundtruth.metrics.label_breakdown``)."""

    tokens: float | None
    kept: float | None
    mean_score: float | None
    mean_weight: float | None  # soft methods (soft Token Cleaning, DFT): mean training weight of the label
    dropped: float | None
    spans: float | None
    spans_removed: float | None
    decisive_dropped: float | None
    auroc_tokens: float | None
    auroc_decisive: float | None


class Heldout(TypedDict, total=False):
    """Metrics on the clean held-out questions (generated pools)."""

    loss: float | None
    answer_loss: float | None
    exact_match: float | None
    questions: int


class HeldoutQuestions(TypedDict, total=False):
    """Per held-out question (the units the intervals resample): metrics and token counts."""

    loss: list[float]
    tokens: list[float]
    answer_loss: list[float]
    answer_tokens: list[float]
    exact: list[float]


class Budget(TypedDict, total=False):
    """What a result cost (``tokenclean.pipelines.budget``)."""

    updates: float
    trained_tokens: float
    forward_tokens: float
    backward_tokens: float


class Policy(TypedDict, total=False):
    """The training token policy of a peer method (``tokenclean.pipelines.peers``)."""

    name: str
    settings: dict[str, Any]


class MethodEntry(TypedDict, total=False):
    """One method of a run (``Run.method`` creates the first seven keys)."""

    adapter: str | None
    cleaned: str | None  # the (cleaned or prepared) data it trained on
    scores: str | None  # the score store behind ``cleaned``
    score_stores: list[str]  # stores the method's score was computed from (TOSS: one per reference)
    round: int | None  # self-evolving: the last round
    eval: EvalResult | None
    recovery: Recovery | None
    heldout: Heldout | None
    policy: Policy  # peers: the token policy trained with
    counted: str | None  # online peers: training directory whose ``counted/`` records the tokens used
    budget: Budget
    recovery_ci: dict[str, Interval]
    classes: dict[str, ClassRow]  # truth label -> row
    classes_ci: dict[str, dict[str, Interval]]
    heldout_ci: dict[str, Interval]
    heldout_questions: HeldoutQuestions
    heldout_adapter: str | None  # the adapter ``heldout_questions`` were measured with (cache key)
    seeds: int  # seeds summary: runs the means are over


class Round(TypedDict, total=False):
    """One self-evolving round."""

    round: int
    scores: str | None
    cleaned: str | None
    adapter: str | None
    eval: EvalResult | None
    heldout: Heldout | None


class SweepEntry(TypedDict, total=False):
    """One ratio of a ``selection.sweep``."""

    ratio: float
    method: str
    adapter: str | None
    cleaned: str | None
    eval: EvalResult | None
    heldout: Heldout | None


class Summary(TypedDict, total=False):
    """``RUN_DIR/summary.json``."""

    schema_version: int
    pipeline: str  # the methods, comma-separated
    name: str
    model: str  # the base model
    ratio: float | None  # selection.ratio
    synthetic: bool  # made-up numbers (tokenclean.testing.runs)
    methods: dict[str, MethodEntry]
    rounds: list[Round]
    sweep: list[SweepEntry]
    seconds: dict[str, float]  # method -> wall seconds
    total_seconds: float
    matched_updates: int  # budget.match_updates: updates every single-stage method trained
    seeds_used: list[int]
    per_seed: dict[str, str]  # seeds summary: seed -> its run directory
    interval_units: str  # what the intervals resample: "facts" or "samples"
    report: dict[str, str]  # report file kind -> path


NOT_SHOWN: dict[str, str] = {
    "schema_version": "read by read_summary itself, not shown",
    "synthetic": "marks made-up numbers for a reader of the file; the run name says so in the report",
    "seconds": "timings of the run, for its log, not a result",
    "total_seconds": "timing of the run, for its log, not a result",
    "matched_updates": "the budget table shows each method's updates",
    "seeds_used": "the intervals already say what they are over",
    "per_seed": "paths of the seed runs; their reports are built from those directories",
    "interval_units": "the report's notes describe the bootstrap units",
    "report": "where the report was written; the report itself",
    "suite": "the task columns name what ran",
    "limit": "an evaluation setting, in the run's config.yaml",
    "processes": "how many ranks shared an evaluation; the numbers are the same as one process's",
    "versions": "package versions, for reproduction, not a result",
    "harness_config": "lm-eval settings, for reproduction",
    "harness_task": "the task column uses the benchmark name",
    "source": "where benchmark data came from, for reproduction",
    "details": "every harness metric; the table shows the headline one",
    "adapter": "a path to weights, for loading the model, not a result",
    "settings": "a policy's settings, as in config.yaml",
    "heldout_questions": "raw per-question values; the report shows their means and intervals",
    "heldout_adapter": "cache key of heldout_questions",
    "seeds": "every method of a seeds summary has the same count",
    "response_tokens": "a count behind precision and recall",
    "kept_tokens": "a count behind precision and recall",
    "informative_rate_all": "one minus the noise rate shown",
    "spans": "a count behind decisive_dropped",
    "spans_removed": "a count behind decisive_dropped",
    "answer_tokens": "a count behind answer_loss",
    "exact": "per-question values behind exact_match",
    "score_stores": "the budget counts them; the report reads the combined store (scores)",
}
"""Declared keys the report does not read, and why (tests/unit/test_summary_schema.py checks that every
other declared key is read by ``tokenclean.report``)."""


# ------------------------------------------------------------------------------------------------ checks


def _type_name(tp: Any) -> str:
    if typing.is_typeddict(tp):
        return "a mapping"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check(v: Any, tp: Any, where: str, strict: bool) -> None:
    """Check ``v`` against the type ``tp`` (TypedDict, list[X], dict[str, X], X | None, str, int, float,
    bool, Any); raises :class:`DataError` naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return
    if origin in (Union, types.UnionType):
        alts = [a for a in typing.get_args(tp) if a is not type(None)]
        if v is None and len(alts) < len(typing.get_args(tp)):
            return
        error = DataError(where, f"unexpected {v!r}")
        for alt in alts:
            try:
                return _check(v, alt, where, strict)
            except DataError as e:
                error = e
        raise error
    if tp is type(None):
        if v is not None:
            raise DataError(where, f"expected null, got {v!r}")
        return
    if typing.is_typeddict(tp):
        _check_fields(v, tp, where, strict)
    elif origin is list:
        if not isinstance(v, list):
            raise DataError(where, f"expected a list, got {v!r}")
        (item,) = typing.get_args(tp)
        for i, x in enumerate(v):
            _check(x, item, f"{where}[{i}]", strict)
    elif origin is dict:
        if not isinstance(v, dict):
            raise DataError(where, f"expected a mapping, got {v!r}")
        _, item = typing.get_args(tp)
        for k, x in v.items():
            _check(x, item, f"{where}.{k}", strict)
    elif tp is float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise DataError(where, f"expected a number, got {v!r}")
    elif tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise DataError(where, f"expected an integer, got {v!r}")
    elif not isinstance(v, tp):
        raise DataError(where, f"expected {_type_name(tp)}, got {v!r}")


def _check_fields(v: Any, tp: Any, where: str, strict: bool) -> None:
    if not isinstance(v, dict):
        raise DataError(where, f"expected a mapping, got {v!r}")
    hints = typing.get_type_hints(tp)
    for k, x in v.items():
        if k in hints:
            _check(x, hints[k], f"{where}.{k}" if where else k, strict)
        elif strict:
            raise DataError(where or "summary", f"'{k}' is not a declared key of {tp.__name__}")


def check_summary(s: Any, where: str, strict: bool = False) -> Summary:
    """``s`` checked against :class:`Summary`; ``strict`` also refuses keys the schema does not declare."""
    if not isinstance(s, dict):
        raise DataError(where, "expected a JSON object")
    version = s.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise DataError(
            where,
            f"schema_version {version} is newer than this tokenclean reads ({SCHEMA_VERSION}); "
            "upgrade tokenclean",
        )
    for k, x in s.items():
        hints = typing.get_type_hints(Summary)
        if k in hints:
            _check(x, hints[k], f"{where}: {k}", strict)
        elif strict:
            raise DataError(where, f"'{k}' is not a declared key of Summary ({__name__})")
    return typing.cast(Summary, s)


def write_summary(root: str | Path, summary: dict[str, Any]) -> Path:
    """Set ``summary["schema_version"]`` and write ``root/summary.json``, after checking strictly what the
    file will hold (an undeclared key or a wrong type raises :class:`DataError` before anything is
    written). The dict is updated in place so that it stays equal to the file."""
    summary["schema_version"] = SCHEMA_VERSION
    path = Path(root) / FILE
    check_summary(json.loads(json.dumps(summary, default=str)), f"{path} (being written)", strict=True)
    write_json_atomic(path, summary)
    return path


def read_summary(path: str | Path) -> Summary:
    """A ``summary.json`` read and checked (it must declare its ``schema_version``; unknown keys are
    ignored)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(
            str(p), "no summary.json: not a tokenclean run directory (or the run has not finished)"
        )
    try:
        s = read_json(p)
    except ValueError as e:
        raise DataError(str(p), f"invalid JSON: {e}") from None
    if isinstance(s, dict) and "schema_version" not in s:
        raise DataError(
            str(p), "no schema_version: not a summary written by this tokenclean; re-run the pipeline"
        )
    return check_summary(s, str(p))


def declared_keys(tp: Any = Summary) -> dict[str, set[str]]:
    """Every TypedDict reachable from ``tp``: its name -> its declared keys."""
    out: dict[str, set[str]] = {}

    def walk(t: Any) -> None:
        if typing.is_typeddict(t):
            if t.__name__ in out:
                return
            hints = typing.get_type_hints(t)
            out[t.__name__] = set(hints)
            for h in hints.values():
                walk(h)
        for a in typing.get_args(t):
            walk(a)

    walk(tp)
    return out
