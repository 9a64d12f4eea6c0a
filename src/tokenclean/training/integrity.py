"""What a training output directory guarantees on reuse: ``done.json`` records the size and SHA-256 of
every adapter file (``adapter_files``), and a finished run whose adapter no longer matches is trained
again instead of being reported as "already trained"; ``log.jsonl`` tolerates the torn last line of a
process killed while writing it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tokenclean.outputs import verify_files
from tokenclean.utils import CorruptFileError, get_logger, read_json

log = get_logger("training")


def _legacy_problem(adapter: Path) -> str | None:
    if not (adapter / "adapter_config.json").is_file():
        return "adapter/adapter_config.json is missing"
    if not any((adapter / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")):
        return "adapter/adapter_model.safetensors is missing"
    return None


def check_finished(out: Path) -> None:
    """Before a finished training directory is reused: verify its adapter against ``done.json``; when it
    differs (deleted, truncated, edited weights), remove the finished state so the run trains again."""
    done = Path(out) / "done.json"
    if not done.is_file():
        return
    d = read_json(done)
    adapter = Path(out) / "adapter"
    files = d.get("adapter_files")
    problem = verify_files(adapter, files) if files is not None else _legacy_problem(adapter)
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
