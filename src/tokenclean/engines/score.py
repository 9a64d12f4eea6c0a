"""``score`` as engine tasks, in three steps over the store's own files (:mod:`tokenclean.scoring.store`):

1. **score** (``n`` tasks): task ``r`` scores chunks ``k % n == r`` with
   :func:`~tokenclean.scoring.run.score_dataset` (``parts_only``): the same chunks, batches and numerics as
   ``tokenclean score`` and a ``torchrun`` job, each part written atomically with its marker, so a task
   killed mid-shard keeps its finished parts and its rerun computes exactly the missing ones;
2. **store** (``n`` tasks): task ``r`` writes the store's data file ``r`` (prepared rows ``[r*N/n,
   (r+1)*N/n)`` gathered from the parts, :func:`~tokenclean.scoring.store.write_shard`);
3. **index** (one task): the store's index and manifest (:func:`~tokenclean.scoring.run.merge_parts`,
   which finds every data file written and reads no data).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenclean.scoring import store
from tokenclean.scoring.run import DEFAULT_SHARD_SIZE
from tokenclean.utils import read_json, write_json_atomic


@dataclass(frozen=True)
class ScoreJob:
    """What every score task needs (plain values: the job travels to the workers)."""

    prepared: str
    base: str
    reference: str | None
    out: str  # the score store directory
    num_tasks: int
    scorer: str = "token_cleaning"
    dtype: str = "fp32"
    device: str = "auto"
    batch_tokens: int | None = None
    packing: str = "auto"
    shard_size: int = DEFAULT_SHARD_SIZE


def _result_path(out: Path, rank: int) -> Path:
    return store.work_dir(out) / f"engine-score-{rank:05d}.json"


def score_shard(job: ScoreJob, rank: int, on_part: Any = None) -> dict[str, Any]:
    """Task ``rank``: score its missing parts; keep the manifest entries it computed (self-check, batch
    layout) for the index step."""
    from tokenclean.scoring.run import score_dataset

    m = score_dataset(
        job.prepared,
        job.base,
        reference=job.reference,
        out=job.out,
        scorer=job.scorer,
        dtype=job.dtype,
        device=job.device,
        batch_tokens=job.batch_tokens,
        packing=job.packing,
        progress=False,
        shard_index=rank,
        num_shards=job.num_tasks,
        shard_size=job.shard_size,
        on_part=on_part,
        parts_only=True,
    )
    if not m.get("complete"):
        write_json_atomic(_result_path(Path(job.out), rank), m)
    return m


def _plan(out: Path) -> dict[str, Any]:
    path = store.work_dir(out) / "plan.json"
    if not path.is_file():
        raise store.StoreError(f"{out}: no scoring plan in {path}; the score tasks have not run")
    return dict(read_json(path))


def _check_parts(out: Path, total: int, phases: tuple[str, ...]) -> None:
    missing = sorted({k for k in range(total) for ph in phases if not store.part_done(out, k, ph)})
    if missing:
        raise store.StoreError(
            f"{store.work_dir(out)}: chunks {missing[:10]} are not scored (a score task did not finish); "
            "rerun the same command: finished parts are kept and the missing ones are scored"
        )


def store_shard(job: ScoreJob, rank: int) -> dict[str, Any] | None:
    """Task ``rank``: write the store's data file ``rank`` from every chunk's parts (kept when written)."""
    from tokenclean.scoring.run import PreparedData

    out = Path(job.out)
    if (out / "manifest.json").exists():
        return None  # the store is finished
    done = store.shard_done(out, rank, job.num_tasks)
    if done is not None:
        return done
    plan = _plan(out)
    data = PreparedData(job.prepared)
    total = store.n_chunks(len(data), plan["shard_size"])
    phases = store.PHASES if plan["mode"] != "base_only" else ("base",)
    _check_parts(out, total, phases)
    args = (data.sample_ids, data.lengths, total, plan["scorer"], len(phases) == 2)
    return store.write_shard(out, rank, job.num_tasks, *args)


def score_index(job: ScoreJob, rank: int = 0) -> dict[str, Any]:
    """The index step: the store's manifest from the score tasks' entries (the worst self-check of all) and
    the data files the store tasks wrote (:func:`~tokenclean.scoring.run.merge_parts`)."""
    from tokenclean.scoring.run import PreparedData, merge_parts

    t0 = time.time()
    out = Path(job.out)
    if (out / "manifest.json").exists():
        return dict(read_json(out / "manifest.json"), reused=True)
    plan = _plan(out)
    results = []
    for r in range(job.num_tasks):
        path = _result_path(out, r)
        if not path.is_file():
            raise store.StoreError(f"{path}: missing; score task {r} did not finish: rerun the same command")
        results.append(read_json(path))
    checks = [m["self_check_max_diff"] for m in results if m.get("self_check_max_diff") is not None]
    manifest = dict(
        results[0], self_check_max_diff=max(checks, default=None), engine={"tasks": job.num_tasks}
    )
    manifest.pop("complete", None)
    if manifest["run_key"] != plan["run_key"]:
        raise store.StaleStoreError(
            f"{out}: the score tasks' results belong to another run; rerun with --force"
        )
    data = PreparedData(job.prepared)
    total = store.n_chunks(len(data), plan["shard_size"])
    return merge_parts(out, data.sample_ids, data.lengths, manifest, total, t0)
