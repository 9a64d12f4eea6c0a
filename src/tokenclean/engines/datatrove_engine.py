"""The pool stages on datatrove: every shard task of :mod:`.prepare`, :mod:`.score` and :mod:`.select` runs
as one datatrove task, under its local, Slurm or Ray executor.

datatrove gives each task a rank and marks it complete (``completions/NNNNN`` in the stage's logging
directory) only after the task returned; a rerun of the same command skips the completed ranks and runs the
others again. Each task writes its shard atomically (temporary name, fsync, rename, marker last) and keeps a
finished shard, so a task killed at any moment leaves no partial shard and its rerun redoes exactly that
shard. The logging directories live under ``OUT/.engine/STAGE-KEY``, ``KEY`` a hash of the stage's inputs
and settings: other settings start from fresh completions.

The driver (:func:`run_pool`) runs the steps in order and waits, after each, until every rank is complete
(a local or Ray executor returns then; a Slurm executor returns once its array job is submitted, and the
driver polls the completion files), because a step reads what the previous one wrote.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenclean.errors import ConfigError, TokencleanError
from tokenclean.utils import get_logger

log = get_logger("engine")

EXECUTORS = ("local", "slurm", "ray")


class EngineError(TokencleanError):
    """A stage's tasks did not all complete."""


def require_datatrove() -> None:
    """Fail with the install command when the optional extra is missing."""
    import importlib.util

    if importlib.util.find_spec("datatrove") is None:
        raise ConfigError(
            "the datatrove engine is not installed: pip install 'tokenclean[engine]' (datatrove, pure Python)"
        )


@dataclass
class TaskStep:
    """One datatrove pipeline step: ``fn(job, rank)`` for the task's rank (picklable: a module-level
    function and a frozen job of plain values)."""

    fn: Callable[[Any, int], Any]
    job: Any

    def __call__(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        self.fn(self.job, rank)

    def __repr__(self) -> str:
        return f"tokenclean.engines {self.fn.__name__}"


@dataclass(frozen=True)
class ExecutorSpec:
    """Which datatrove executor runs the tasks: ``local`` (``workers`` processes on this machine), ``slurm``
    or ``ray``; ``options`` are passed to the executor as they are (e.g. ``partition``, ``time``,
    ``gpus_per_task``, ``cpus_per_task``, ``mem_per_cpu_gb``)."""

    kind: str = "local"
    workers: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    poll_s: float = 30.0


def _executor(spec: ExecutorSpec, steps: list[Any], tasks: int, logs: Path, name: str) -> Any:
    if spec.kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        workers = min(spec.workers, tasks)
        return LocalPipelineExecutor(
            steps, tasks=tasks, workers=workers, logging_dir=str(logs), **spec.options
        )
    if spec.kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        opts = dict(spec.options)
        opts.setdefault("job_name", f"tokenclean-{name}")
        return SlurmPipelineExecutor(steps, tasks=tasks, logging_dir=str(logs), **opts)
    if spec.kind == "ray":
        from datatrove.executor.ray import RayPipelineExecutor

        return RayPipelineExecutor(steps, tasks=tasks, logging_dir=str(logs), **spec.options)
    raise ConfigError(f"--executor: unknown '{spec.kind}' (valid: {', '.join(EXECUTORS)})")


def run_step(
    name: str, fn: Callable[[Any, int], Any], job: Any, tasks: int, logs: Path, spec: ExecutorSpec
) -> None:
    """Run ``fn(job, rank)`` for ranks ``0..tasks-1`` as datatrove tasks (completed ranks skipped) and
    return when every rank is complete; a rank that failed raises :class:`EngineError` (after the executor
    ran the others)."""
    executor = _executor(spec, [TaskStep(fn, job)], tasks, logs, name)
    t0 = time.time()
    try:
        executor.run()
    except Exception as e:  # a failed task: the others' shards are kept
        raise EngineError(
            f"{name}: a task failed ({type(e).__name__}: {e}); its log is under {logs}/logs. Rerun the same "
            "command: completed tasks are skipped and the failed ones redone"
        ) from e
    while incomplete := executor.get_incomplete_ranks(skip_completed=True):
        if spec.kind != "slurm":
            raise EngineError(
                f"{name}: tasks {incomplete[:10]} did not complete (see {logs}/logs); rerun the same command"
            )
        time.sleep(spec.poll_s)
    log.info("%s: %d tasks complete in %.1fs", name, tasks, time.time() - t0)
