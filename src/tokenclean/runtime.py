"""The launched process group as every stage sees it: which rank this process is, and who runs what.

Below ``scoring``, ``training`` and ``pipelines`` (none of them imports another for these helpers). Under
``accelerate launch`` / ``torchrun`` every process runs the same command; without a launcher there is one
process and every helper here is a no-op.

Timeouts. A collective (a barrier, an all-reduce) fails when a rank waits longer than the process group's
timeout (torch's defaults: 10 minutes for NCCL, 30 for gloo). tokenclean sets it from ``--group-timeout``
(:class:`tokenclean.config.Runtime`, default :data:`DEFAULT_GROUP_TIMEOUT_S`) when it creates the group, and
no stage makes ranks wait in a collective while one rank does long work alone: a rank-0-first stage
(:func:`rank_zero_first`: prepare, subset, select) and a long rank-0 write
(:func:`after_rank_zero`) make the other ranks poll the launcher's key-value store for rank 0's "done"
instead, which has no timeout (a rank that dies ends the launched job through the launcher). Evaluation
is data-parallel over the ranks (:mod:`tokenclean.evaluation.parallel`), so no rank waits for it alone.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from tokenclean.errors import TokencleanError

DEFAULT_GROUP_TIMEOUT_S = 7200.0
"""Seconds a rank waits in a collective before the run fails: generous, because a collective only waits for
skew between ranks doing their share of the same work (rank-0-only work is waited for outside of it)."""
_timeout_s = DEFAULT_GROUP_TIMEOUT_S
_turns = itertools.count()
_POLL_S = 0.2


def set_group_timeout(seconds: float) -> None:
    """The process-group timeout of this process (``--group-timeout``); takes effect when the group is
    created (by the first launched stage)."""
    global _timeout_s
    _timeout_s = float(seconds)


def group_timeout() -> float:
    """Seconds (:func:`set_group_timeout`, default :data:`DEFAULT_GROUP_TIMEOUT_S`)."""
    return _timeout_s


def init_kwargs() -> Any:
    """accelerate's ``InitProcessGroupKwargs`` carrying :func:`group_timeout` (for an ``Accelerator``)."""
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    return InitProcessGroupKwargs(timeout=timedelta(seconds=group_timeout()))


def launched_world() -> tuple[int, int]:
    """``(rank, world_size)`` from the launcher's environment (torchrun / accelerate launch), else (0, 1)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def process_group(cpu: bool | None = None) -> Any:
    """accelerate's process state of a launched run (created on first use, with :func:`group_timeout`;
    CPU when no GPU or ``cpu``)."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    # the timeout applies when this call creates the group (accelerate ignores it once set up)
    state = PartialState(cpu=cpu, timeout=timedelta(seconds=group_timeout()))
    _destroy_at_exit()
    return state


@functools.cache
def _destroy_at_exit() -> None:
    """Destroy the process group when the process exits (registered once). A group left to the interpreter's
    teardown can abort the process after its work is done (gloo: "terminate called without an active
    exception", exit code -6), which fails a launched run that had finished."""
    import atexit

    def destroy() -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            with contextlib.suppress(Exception):  # exiting anyway: nothing to report to
                dist.destroy_process_group()

    atexit.register(destroy)


def _store() -> Any:
    """The key-value store of the launched group (the launcher's TCPStore)."""
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


@contextlib.contextmanager
def after_rank_zero(what: str) -> Iterator[bool]:
    """``with after_rank_zero("assembling the store") as first:`` runs the block on rank 0 (``first`` is
    True) while the other ranks wait, outside any collective, until it is done; then they run it (``first``
    False). When rank 0's block raises, the others raise a :class:`TokencleanError` naming ``what``. Every
    rank must enter the same sequence of these blocks. One process: runs the block (``first`` True)."""
    if launched_world()[1] <= 1:
        yield True
        return
    group = process_group()
    key = f"tokenclean/after_rank_zero/{next(_turns)}"
    store = _store()
    if group.is_main_process:
        try:
            yield True
        except BaseException:
            store.set(key, "failed")
            raise
        store.set(key, "done")
        return
    while not store.check([key]):
        time.sleep(_POLL_S)
    if store.get(key) != b"done":
        raise TokencleanError(f"rank 0 failed while {what}; see its error above")
    yield False


def rank_zero_first(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` on rank 0 first; the other ranks run it after (and find its output ready to reuse),
    waiting for rank 0 outside any collective (:func:`after_rank_zero`), so a stage longer than the
    group timeout does not fail the run. For stages whose output is written once (prepare, subset,
    select). No-op for one process."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with after_rank_zero(getattr(fn, "__qualname__", "a stage")):
            return fn(*args, **kwargs)

    return wrapper


def rank_zero_only(fn: Any) -> Any:
    """Run ``fn`` on rank 0 only (summaries, reports); other ranks return None. No-op for one process."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if launched_world()[0] == 0 else None

    return wrapper


__all__ = [
    "DEFAULT_GROUP_TIMEOUT_S",
    "after_rank_zero",
    "group_timeout",
    "init_kwargs",
    "launched_world",
    "process_group",
    "rank_zero_first",
    "rank_zero_only",
    "set_group_timeout",
]
