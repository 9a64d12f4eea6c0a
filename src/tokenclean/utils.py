"""Small shared helpers: hashing, atomic writes, JSON manifests, logging."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokenclean.errors import TokencleanError

_LOGGER_CONFIGURED = False


RESULT = {"tokenclean_result": True}
"""``extra=`` of the log line that states a stage's result; hidden while a CLI command prints that result
itself (:func:`result_printed_by_caller`), so every result is said once."""


class _HideResults(logging.Filter):
    active = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.active and getattr(record, "tokenclean_result", False))


_HIDE_RESULTS = _HideResults()


@contextlib.contextmanager
def result_printed_by_caller() -> Iterator[None]:
    """Hide the stages' result log lines (``extra=RESULT``) inside the block."""
    _HIDE_RESULTS.active = True
    try:
        yield
    finally:
        _HIDE_RESULTS.active = False


def quiet_libraries() -> None:
    """Silence what the libraries print that says nothing to a tokenclean user: datasets', the Hub's and
    transformers' progress bars ("Saving the dataset", "Loading weights") and the deprecation FutureWarnings
    transformers and PEFT raise from their own code. tokenclean's own bars stay. Cheap (no heavy import):
    environment defaults the libraries read when imported (a value the user set wins), and warning filters."""
    import sys
    import warnings

    for var in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(var, "1")
    for mod in ("transformers", "peft"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=rf"{mod}(\.|$)")
    if "datasets" in sys.modules:  # imported already: the environment is read
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as tf_logging

        tf_logging.disable_progress_bar()


def get_logger(name: str) -> logging.Logger:
    """The one logger factory: ``tokenclean.<name>`` loggers writing to stderr."""
    global _LOGGER_CONFIGURED
    if not _LOGGER_CONFIGURED:
        handler = logging.StreamHandler()
        handler.addFilter(_HIDE_RESULTS)
        handler.setFormatter(logging.Formatter("[tokenclean] %(message)s"))
        root = logging.getLogger("tokenclean")
        root.addHandler(handler)
        root.setLevel(os.environ.get("TOKENCLEAN_LOGLEVEL", "INFO"))
        root.propagate = False
        _LOGGER_CONFIGURED = True
    return logging.getLogger(f"tokenclean.{name}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_VERIFIED: dict[tuple[int, int, int, int, int], str] = {}
SETTLED_NS = 2_000_000_000  # a file unchanged for this long has a timestamp any later write would change


def sha256_file_memo(path: str | Path) -> str:
    """:func:`sha256_file`, remembered for this process by the file's device, inode, size, mtime and
    ctime, so an artifact that several stages of one run verify is read once, not once per stage. A digest
    is remembered only for a file whose timestamps are older than ``SETTLED_NS`` (2 s) when it is hashed:
    file timestamps tick coarsely (a few ms), so a file rewritten in place with the same size within a tick
    of its hashing would keep them; after 2 s any write moves them."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _VERIFIED.get(key)
    if digest is not None:
        return digest
    digest = sha256_file(path)
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > SETTLED_NS:
        _VERIFIED[key] = digest
    return digest


def sha256_tree(path: str | Path) -> str:
    """Hex SHA-256 over every file of a directory (relative names and contents, sorted)."""
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(root)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of an object's canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise_if_disk_full(e, path)
        raise


_DISK_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit)",
    errno.EIO: "input/output error (the device failed)",
    errno.EROFS: "read-only file system",
}
_DISK_TEXT = (
    "no space left on device",
    "disk quota exceeded",
    "file too large",
    "storagefull",
    "os error 28",
)


def storage_error(e: BaseException) -> str | None:
    """What went wrong, when ``e`` is a full disk, a quota, a file-size limit or a device error (an
    ``OSError``, or a library error that carries one in its text, such as safetensors'
    ``SafetensorError``); else None."""
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
        return _DISK_ERRNOS[e.errno]
    text = str(e).lower()
    return next((t for t in _DISK_TEXT if t in text), None)


def raise_if_disk_full(e: BaseException, path: str | Path) -> None:
    """Turn a full disk while writing ``path`` into one :class:`~tokenclean.errors.OutputError` naming it
    (the caller has removed the partial output; finished work elsewhere is kept)."""
    from tokenclean.errors import OutputError

    what = storage_error(e)
    if what is None or isinstance(e, OutputError):
        return
    raise OutputError(
        f"cannot write {path}: {what} ({type(e).__name__}: {e}); the partial output was removed and "
        f"finished work is kept: free space on the file system of {Path(path).resolve().parent} (or raise "
        "the quota / file-size limit) and re-run, which resumes"
    ) from None


class CorruptFileError(TokencleanError, ValueError):
    """A file tokenclean wrote cannot be parsed (torn by a crash, truncated, or edited); names the file."""


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a damaged one raises :class:`CorruptFileError` naming it (never a bare traceback)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = (
            f" (line {e.lineno}, column {e.colno}: {e.msg})" if isinstance(e, json.JSONDecodeError) else ""
        )
        raise CorruptFileError(
            f"{path}: not valid JSON{where}; the file is damaged (a crash while it was written, a full disk "
            "or an edit): remove it, or the output directory holding it, and re-run"
        ) from None


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place only when the block succeeds.

    A crash leaves at most a ``.DIR.tokenclean-tmp-*`` sibling that is never read as complete (the next
    writer of ``final`` removes it, :func:`tokenclean.locks.remove_debris`); an existing ``final``
    directory is replaced only after the new one is fully written. A full disk removes the partial
    directory and raises one message naming ``final`` (:func:`raise_if_disk_full`).
    """
    from tokenclean.locks import scratch_name

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=scratch_name(final, "tmp")))
    try:
        yield tmp
        if final.exists():
            old = final.parent / scratch_name(final, "old", str(os.getpid()))
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_if_disk_full(e, final)
        raise


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour affects results (for manifests)."""
    import importlib.metadata as md

    out = {}
    for name in ("tokenclean", "torch", "transformers", "peft", "datasets", "tokenizers", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def idle_cores(interval: float = 0.25, cores: int | None = None) -> float:
    """Cores idle *now*: the idle share of all CPU time in ``/proc/stat`` over ``interval`` seconds, times
    ``cores`` (this process's usable cores). Unlike the 1-minute load average it does not lag: a job that
    ended a second ago no longer counts. Without ``/proc/stat`` (not Linux): ``cores``."""
    cores = cores or usable_cores()

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [
                int(x) for x in f.readline().split()[1:9]
            ]  # user nice system idle iowait irq softirq steal
        return fields[3] + fields[4], sum(fields)

    try:
        idle0, total0 = sample()
        time.sleep(interval)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return float(cores)
    if total1 <= total0:
        return float(cores)
    return cores * (idle1 - idle0) / (total1 - total0)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def choose_threads(requested: int | None, cores: int | None = None, idle: float | None = None) -> int:
    """torch CPU threads for this process: ``requested`` when given; else ``OMP_NUM_THREADS`` when the
    user or a launcher set it; else every usable core when OpenMP waits are passive (``OMP_WAIT_POLICY=
    PASSIVE``, which every tokenclean command sets before torch loads); else the cores idle now
    (:func:`idle_cores`, rounded, at least 1).

    Why the policy matters: a scoring or training pass is many short parallel regions (norms, SiLU, rotary,
    small matrix products), each ending in a barrier across the threads. When another process holds one of
    the cores, a spinning waiter takes the core the descheduled thread needs: on 2 busy cores, 2 spinning
    threads scored 6.4x slower than alone, 2 passive threads 2.2x, 1 thread 2.4x (benchmarks/README.md,
    "Scoring under CPU contention"). With passive waits every core is the best choice, busy or not. The
    1-minute load average used before lagged: it stayed above 0.5 for minutes after any job, so a stage
    started right after another ran on one thread of an idle 2-core machine."""
    if requested:
        return int(requested)
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    cores = cores or usable_cores()
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        return cores
    free = idle_cores(cores=cores) if idle is None else idle
    return max(1, min(cores, int(free + 0.5)))


def apply_threads(requested: int | None) -> int:
    """Set torch's intra-op threads by :func:`choose_threads`; returns the number and logs it."""
    import torch

    n = choose_threads(requested)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    get_logger("threads").info("torch CPU threads: %d%s", n, "" if requested else " (auto)")
    return n


_UNSAFE = {
    **{c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)) if c not in (0x09, 0x0A)},
    **{c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))},
}


def terminal_safe(text: str) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\x07``, ``\\r``, C1
    controls, bidirectional overrides), so user data printed to a terminal cannot move the cursor, clear
    the screen, set the title or hide text; newlines and tabs stay."""
    return text.translate(_UNSAFE)
