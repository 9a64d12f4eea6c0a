"""``tokenclean pool``: prepare -> score -> select over ``tasks`` shards on a data engine.

``OUT`` holds the three stage outputs, each what the single-process stage writes for the same inputs
(``OUT/prepared``, ``OUT/scores``, ``OUT/selected``; the selection is global top-K, Token Cleaning), and
``OUT/.engine``, the engine's completion records. A stage whose output is finished for these inputs and
settings is reused (files verified) and its tasks are not run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokenclean.engines.datatrove_engine import ExecutorSpec, run_step
from tokenclean.outputs import check_target, decide, mark_owned
from tokenclean.scoring.run import DEFAULT_SHARD_SIZE
from tokenclean.utils import get_logger, sha256_json

log = get_logger("engine")

STAGES = ("prepared", "scores", "selected")


@dataclass(frozen=True)
class PoolSpec:
    """The pool run: inputs, models, the stage settings and the number of shard tasks."""

    data: str
    base: str
    out: str
    tasks: int
    reference: str | None = None
    tokenizer: str | None = None  # default: the base model's
    ratio: float = 0.6
    seed: int = 42
    fmt: str = "auto"
    template: str = "tulu"
    max_length: int = 2048
    skip_invalid: bool = False
    scorer: str = "token_cleaning"
    dtype: str = "fp32"
    device: str = "auto"
    batch_tokens: int | None = None
    packing: str = "auto"
    shard_size: int = DEFAULT_SHARD_SIZE
    force: bool = False


def _logs(out: Path, stage: str, key: str) -> Path:
    """A stage's datatrove logging directory (its completion records): ``key`` hashes the stage's inputs,
    settings and number of tasks (a task's shard is ``r`` of ``n``)."""
    return out / ".engine" / f"{stage}-{key[:12]}"


def _fresh(stage_out: Path, logs: Path, redo_finished: bool) -> None:
    """Start a stage from scratch when its task records are not this key's (its inputs or settings changed,
    or it never ran: the output, owned by the pool, is from something else), or when a finished output is
    not reused (``redo_finished``: damaged, or from an input that cannot be hashed): remove the output and
    the records. Otherwise keep both: the tasks resume."""
    if not logs.exists() or (redo_finished and (stage_out / "manifest.json").exists()):
        if stage_out.exists():
            log.info("computing %s from scratch", stage_out)
        shutil.rmtree(stage_out, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)


def _clear(out: Path, spec: PoolSpec) -> None:
    """``--force``: remove the stage outputs (each checked to be tokenclean's own) and the engine records."""
    for name, kind in zip(STAGES, ("prepare", "score", "select")):
        check_target(out / name, kind, [spec.data])
        shutil.rmtree(out / name, ignore_errors=True)
    shutil.rmtree(out / ".engine", ignore_errors=True)


def run_pool(spec: PoolSpec, ex: ExecutorSpec, on_part: Any = None) -> dict[str, Any]:
    """Run the three stages; returns ``{"prepared", "scores", "selected"}``: the manifests of the first two
    and the selection stats. ``on_part(rank, k, phase)`` is called in a score task after each part it
    saved (in-process executors only: a local executor with one worker)."""
    if spec.tasks < 1:
        from tokenclean.errors import ConfigError

        raise ConfigError(f"--tasks: must be >= 1, got {spec.tasks}")
    out = Path(spec.out)
    for name, kind in zip(STAGES, ("prepare", "score", "select")):
        check_target(out / name, kind, [spec.data])
    if spec.force:
        _clear(out, spec)
    prepared = pool_prepare(spec, ex)
    scores = pool_score(spec, ex, on_part)
    selected = pool_select(spec, ex)
    return {"prepared": prepared, "scores": scores, "selected": selected}


def pool_prepare(spec: PoolSpec, ex: ExecutorSpec) -> dict[str, Any]:
    """The prepare tasks and index step, unless ``OUT/prepared`` holds this identity already."""
    from tokenclean.engines import prepare as ep
    from tokenclean.models.loader import load_tokenizer, tokenizer_identity

    out = Path(spec.out) / "prepared"
    name = spec.tokenizer or spec.base
    tok = load_tokenizer(name)
    ident, identity = ep.identity_of(
        spec.data, tok, spec.fmt, spec.template, spec.max_length, spec.skip_invalid
    )
    old = decide(out, "prepare", identity, replace_stale=True, reusable=bool(ident["sha256"]))
    if old is not None:
        return dict(old, reused=True)
    logs = _logs(Path(spec.out), "prepare", sha256_json([identity, spec.tasks]))
    _fresh(out, logs, redo_finished=True)
    mark_owned(out, "prepare")
    n = ep.count_records(spec.data, spec.fmt, spec.skip_invalid)
    job = ep.PrepareJob(
        spec.data, name, str(out), spec.tasks, n, identity, ident,
        dict(tokenizer_identity(tok), source=name),
        spec.fmt, spec.template, spec.max_length, spec.skip_invalid,
    )  # fmt: skip
    run_step("prepare", ep.prepare_shard, job, spec.tasks, logs, ex)
    run_step("prepare-index", ep.prepare_index, job, 1, logs / "index", ex)
    return dict(json.loads((out / "manifest.json").read_text()))


def score_job(spec: PoolSpec) -> Any:
    from tokenclean.engines.score import ScoreJob

    out = Path(spec.out)
    return ScoreJob(
        str(out / "prepared"), spec.base, spec.reference, str(out / "scores"), spec.tasks, spec.scorer,
        spec.dtype, spec.device, spec.batch_tokens, spec.packing, spec.shard_size,
    )  # fmt: skip


def _models(spec: PoolSpec) -> Any:
    """The base and reference identities (content hashes, no weights loaded), as the scoring plan has
    them: a model changed in place gives the score step a new key, so its tasks run again (and refuse the
    old store, as ``tokenclean score`` does, until ``--force``)."""
    from tokenclean.scoring.models import pair_identities, resolve_pair

    mode, base_spec, ref_spec = resolve_pair(spec.base, spec.reference, None)
    return [mode, *pair_identities(mode, base_spec, ref_spec)]


def pool_score(spec: PoolSpec, ex: ExecutorSpec, on_part: Any = None) -> dict[str, Any]:
    """The score, store and index steps (the score tasks return at once for a finished store)."""
    from tokenclean.engines import score as es

    out = Path(spec.out)
    job = score_job(spec)
    prepared = json.loads((out / "prepared" / "manifest.json").read_text())
    key = sha256_json([asdict(job), _models(spec), prepared["cache_key"], prepared.get("files")])
    logs = _logs(out, "score", key)
    _fresh(out / "scores", logs, redo_finished=False)
    fn = es.score_shard if on_part is None else _ScoreWithHook(on_part)
    run_step("score", fn, job, spec.tasks, logs, ex)
    run_step("store", es.store_shard, job, spec.tasks, logs / "store", ex)
    run_step("score-index", es.score_index, job, 1, logs / "index", ex)
    return dict(json.loads((out / "scores" / "manifest.json").read_text()))


@dataclass(frozen=True)
class _ScoreWithHook:
    """``score_shard`` with ``on_part(rank, k, phase)`` called after each part (tests kill a task there)."""

    on_part: Any
    __name__ = "score_shard"

    def __call__(self, job: Any, rank: int) -> Any:
        from tokenclean.engines.score import score_shard

        return score_shard(job, rank, on_part=lambda k, phase: self.on_part(rank, k, phase))


def select_job(spec: PoolSpec) -> Any:
    """The selection's job: its identity and manifest entries exactly as ``tokenclean select`` makes them
    (the inputs' files verified and hashed once, here)."""
    from tokenclean.engines.select import SelectJob
    from tokenclean.selection import levels
    from tokenclean.selection.cleaned import SELECT_VERSION, _inputs, check_same_data

    out = Path(spec.out)
    scores, prep = out / "scores", out / "prepared"
    inputs = _inputs(scores, prep)
    check_same_data(scores, prep)
    settings = levels.settings("global", spec.ratio, spec.seed, None, "score")
    identity = {
        "v": SELECT_VERSION,
        "settings": settings,
        "inputs": inputs["scores"]["sha256"],
        "prep": inputs["prepared"],
    }
    n = int(json.loads((scores / "manifest.json").read_text())["counts"]["samples"])
    fields = dict(settings, **inputs, identity=identity)
    return SelectJob(
        str(scores), str(prep), str(out / "selected"), spec.tasks, n, spec.ratio, sha256_json(identity), fields,
        seed=spec.seed,
    )  # fmt: skip


def pool_select(spec: PoolSpec, ex: ExecutorSpec) -> dict[str, Any]:
    """The two histogram passes, the writes and the index step, unless ``OUT/selected`` holds this
    selection already. Returns the selection stats."""
    from tokenclean.engines import select as es
    from tokenclean.selection.selector import reusable_selection

    job = select_job(spec)
    out = Path(job.out)
    old = reusable_selection(out, job.fields["identity"], force=False, replace_stale=True)
    if old is not None:
        return old
    logs = _logs(Path(spec.out), "select", sha256_json([job.key, spec.tasks]))
    _fresh(out, logs, redo_finished=True)
    mark_owned(out, "select")
    run_step("select-high", es.select_high, job, spec.tasks, logs / "high", ex)
    run_step("select-low", es.select_low, job, spec.tasks, logs / "low", ex)
    run_step("select-write", es.select_write, job, spec.tasks, logs / "write", ex)
    run_step("select-index", es.select_index, job, 1, logs / "index", ex)
    return dict(json.loads((out / "selection_stats.json").read_text()))
