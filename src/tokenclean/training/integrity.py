"""What a training output directory guarantees on reuse: ``done.json`` records the size and SHA-256 of
every adapter file (``adapter_files``), and a finished run whose adapter no longer matches is trained
again instead of being reported as "already trained"; ``log.jsonl`` tolerates the torn last line of a
process killed while writing it."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from tokenclean.outputs import OWNER_FILE, verify_files
from tokenclean.runtime import launched_world
from tokenclean.training.checkpoint import CHECKPOINT
from tokenclean.utils import CorruptFileError, get_logger, read_json

log = get_logger("training")


def check_finished(out: Path) -> None:
    """Before a finished training directory is reused: verify its adapter against ``done.json``; when it
    differs (deleted, truncated, edited weights), remove the finished state so the run trains again."""
    done = Path(out) / "done.json"
    if not done.is_file():
        return
    d = read_json(done)
    adapter = Path(out) / "adapter"
    problem = verify_files(adapter, d.get("adapter_files"))
    if problem is None:
        return
    log.warning(
        "%s is marked finished but its adapter fails verification (%s); training it again", out, problem
    )
    done.unlink()
    shutil.rmtree(adapter, ignore_errors=True)
    (Path(out) / "log.jsonl").unlink(missing_ok=True)


def log_lines(path: Path) -> list[str]:
    """The complete lines of a ``log.jsonl``: a torn last line (the one being written when the process
    died) is dropped; a damaged line before it raises :class:`CorruptFileError` naming FILE:LINE."""
    lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    good = []
    for i, ln in enumerate(lines, start=1):
        try:
            rec = json.loads(ln)
            if not isinstance(rec, dict) or "step" not in rec:
                raise ValueError("no 'step'")
        except ValueError as e:
            if i == len(lines):
                log.warning("%s:%d: dropping a torn last line (the process died while writing it)", path, i)
                break
            raise CorruptFileError(
                f"{path}:{i}: not a log record ({e}); the log is damaged: delete {path} (the adapter and "
                "checkpoint do not depend on it) and re-run"
            ) from None
        good.append(ln)
    return good


def trim_log(path: Path, step: int) -> None:
    """Drop log lines past the resumed step (they are recomputed)."""
    if not path.exists():
        return
    keep = [ln for ln in log_lines(path) if json.loads(ln)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(ln + "\n" for ln in keep))
    os.replace(tmp, path)


def discard_train_output(out: Path) -> None:
    """``--force``: empty OUT (a finished or interrupted training output) on rank 0 before any rank reads
    it. The stage guard has already refused a directory that is not a training output, and holds its lock;
    its ownership mark stays."""
    if not out.is_dir():
        return
    if launched_world()[0] == 0:
        log.info("discarding the previous training output in %s (--force)", out)
        for child in out.iterdir():
            if child.name == OWNER_FILE:
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:  # the other ranks wait until rank 0 has emptied it, so none reads the old state
        while (out / "done.json").exists() or (out / CHECKPOINT).exists():
            time.sleep(0.05)
