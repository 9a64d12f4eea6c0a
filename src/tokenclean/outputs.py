"""What every stage guarantees about its output directory: the one mechanism prepare, score, select,
train and the pipeline stages share.

- **Refuses foreign directories.** An existing output is replaced only when it is a tokenclean output of
  the same kind (its marker file says so) and either its identity matches (then it is reused, after its
  files are verified) or replacing is allowed (``--force``, or ``tokenclean run`` recomputing a stale
  stage of its own run directory). Anything else is refused before any work, naming the directory. An
  output equal to, inside, or holding one of the stage's inputs is refused.
- **Locked.** One writer at a time: ``.NAME.lock`` next to the output holds the writer's PID under an
  exclusive ``flock``; a second process gets "in use by PID N" instead of racing (the lock file is removed
  when the writer finishes). The processes of one ``torchrun``/``accelerate launch`` job (and score shards)
  hold one lock each, so they write together while a second job on the same output is refused.
- **Verified on reuse.** A finished output records each of its files' size and SHA-256 in its marker
  (``files``); reusing it, or reading it as another stage's input, checks them, so a changed, truncated or
  deleted file is recomputed or refused, never trusted.
- **Atomic** (:func:`tokenclean.utils.atomic_dir`, or chunk files plus a marker written last for the
  resumable stages): a crash never leaves an output that reads as finished.

Identity: a stage's *identity* is a JSON dict of its own settings plus the identity of every input
artifact (a content hash); it is stored in the marker, and two runs with equal identities give the same
output.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from tokenclean.errors import ConfigError, TokencleanError
from tokenclean.utils import CorruptFileError, get_logger, read_json, sha256_file, sha256_json

log = get_logger("outputs")

P = ParamSpec("P")
R = TypeVar("R")

MARKERS = {
    "prepare": "manifest.json",
    "select": "manifest.json",
    "score": "manifest.json",
    "train": "done.json",
    "export": "manifest.json",
    "import": "manifest.json",
}
"""The file whose ``stage`` field says what a finished output is."""
PARTIAL = {"score": ".work/plan.json", "train": "checkpoint/state.json"}
"""What an unfinished output of the stages that write in place holds (resumable work)."""
OWNER_FILE = ".tokenclean-output.json"
"""Written first into the outputs built in place (score, train), so an unfinished one is known as ours."""


class OutputError(TokencleanError):
    """An output directory cannot be written: foreign, in use, an input, damaged or not writable."""


class StaleOutputError(OutputError, ConfigError):
    """An output, or its resumable work, was computed from other settings or inputs than asked for now."""


# ------------------------------------------------------------------------------------------------ kinds


def _stage_of(path: Path) -> str | None:
    try:
        m = read_json(path)
    except CorruptFileError as e:
        raise OutputError(
            f"{e}. {path.parent} cannot be identified as a tokenclean output, so it is left alone: remove "
            "that directory yourself and re-run"
        ) from None
    if not isinstance(m, dict):
        return None
    return m.get("stage") or m.get("kind")


def existing_kind(out: Path, kind: str) -> str | None:
    """The kind of tokenclean output ``out`` holds (finished or unfinished), judged by ``kind``'s files."""
    marker = out / MARKERS.get(kind, "manifest.json")
    if marker.is_file():
        return _stage_of(marker)
    if (out / OWNER_FILE).is_file():
        return _stage_of(out / OWNER_FILE)
    partial = PARTIAL.get(kind)
    if partial and (out / partial).is_file():
        return kind
    if (out / "manifest.json").is_file():  # another kind's finished output (e.g. a prepared dataset)
        return _stage_of(out / "manifest.json")
    return None


def _paths(values: Iterable[Any]) -> list[Path]:
    out: list[Path] = []
    for v in values:
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            out += _paths(v)
        elif isinstance(v, (str, Path)) and str(v) and Path(v).exists():
            out.append(Path(v))
    return out


def check_target(out: str | Path, kind: str, inputs: Iterable[Any] = ()) -> None:
    """Refuse, before any work, an ``out`` that is an input, inside one or holds one, that exists and is
    not a tokenclean ``kind`` output, or that cannot be written."""
    out = Path(out)
    o = out.resolve()
    for inp in _paths(inputs):
        p = inp.resolve()
        if o == p or p in o.parents:
            where = "is" if o == p else "is inside"
            raise OutputError(
                f"--out {out} {where} the input {inp}; writing it would destroy the input: choose another --out"
            )
        if o in p.parents:
            raise OutputError(
                f"the input {inp} is inside --out {out}; replacing {out} would delete it: choose another --out"
            )
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise OutputError(f"--out {out} exists and is not a directory; choose another --out")
        if any(not _own_scratch(p.name) for p in out.iterdir()):
            found = existing_kind(out, kind)
            if found != kind:
                what = f"a tokenclean {found} output" if found else "not a tokenclean output"
                raise OutputError(
                    f"--out {out} exists and is {what}, not a {kind} output; tokenclean replaces only its "
                    f"own {kind} outputs: choose another --out (or remove {out} yourself)"
                )
    check_writable(out)


def _own_scratch(name: str) -> bool:
    """Entries a stage creates before its output can be recognised (the owner mark being written, the
    score store's work and merge lock): another process of the same launched job may see them first."""
    return name in (OWNER_FILE, ".work", ".merge.lock") or name.startswith(f".{OWNER_FILE}.")


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def check_writable(out: Path) -> None:
    """Fail now, not after the work, when ``out`` (or the directory it would be created in) is read-only."""
    p = out.resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise OutputError(f"cannot create --out {out}: {p} is not a directory")
    if not _writable(p):
        raise OutputError(f"cannot write --out {out}: no write permission on {p}")


# ------------------------------------------------------------------------------------------------ locks

_HELD: dict[str, int] = {}  # lock path -> depth, for this process (a stage inside a locked pipeline)


def _launcher_rank() -> str:
    """``rankN`` under a launcher with several processes (torchrun, accelerate launch), else ``""``: the
    processes of one launched job write one output together, each under its own lock."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"rank{os.environ.get('RANK', '0')}"
    return ""


def lock_path(out: Path, tag: str = "") -> Path:
    out = Path(out).resolve()
    tag = ".".join(t for t in (tag, _launcher_rank()) if t)
    return out.parent / f".{out.name}{'.' + tag if tag else ''}.lock"


@contextlib.contextmanager
def output_lock(out: str | Path, tag: str = "") -> Iterator[None]:
    """Hold the exclusive lock of ``out`` (``tag`` separates locks that may be held together, e.g. score
    shards); a second process gets :class:`OutputError` "in use by PID N". Re-entrant in one process.
    Leftovers of an earlier writer that was killed (``.NAME.tmp-*``, ``.NAME.old-*``) are removed."""
    path = lock_path(Path(out), tag)
    key = str(path)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, Path(out))
    _HELD[key] = 1
    try:
        if not tag and not _launcher_rank():
            _remove_debris(Path(out).resolve())
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # closing releases the flock


def _acquire(path: Path, out: Path) -> int:
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            who = f"PID {pid}" if pid else "another process"
            raise OutputError(
                f"--out {out} is in use by {who} (another tokenclean process is writing it; lock {path}); "
                "wait for it to finish or choose another --out"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not unlinked by a writer that finished between our open and flock
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


def _remove_debris(out: Path) -> None:
    for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*"):
        for p in out.parent.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


def mark_owned(out: Path, kind: str) -> None:
    """Mark a directory that a stage is about to build in place as this kind's (unfinished) output."""
    from tokenclean.utils import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    if not (out / OWNER_FILE).exists():
        write_json_atomic(out / OWNER_FILE, {"kind": kind, "pid": os.getpid()})


def guarded(
    kind: str,
    out: str = "out",
    inputs: tuple[str, ...] = (),
    tag: Callable[[dict[str, Any]], str] | None = None,
    in_place: bool = False,
    before: Callable[[Path], None] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a stage function: check its output(s) (parameter ``out``, a path or a list of paths)
    against :func:`check_target` with the parameters named in ``inputs``, hold their locks while it runs,
    mark in-place outputs as owned and run ``before(out)`` under the lock."""

    def deco(fn: Callable[P, R]) -> Callable[P, R]:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            outs = a[out]
            paths = [Path(outs)] if isinstance(outs, (str, Path)) else [Path(o) for o in outs]
            ins = [a[n] for n in inputs]
            for p in paths:
                check_target(p, kind, ins)
            lock_tag = tag(a) if tag is not None else ""
            with contextlib.ExitStack() as stack:
                for p in sorted(set(paths)):
                    stack.enter_context(output_lock(p, lock_tag))
                for p in paths:
                    if in_place:
                        mark_owned(p, kind)
                    if before is not None:
                        before(p)
                return fn(*args, **kwargs)

        return wrapper

    return deco


# ------------------------------------------------------------------------------------------------ files


def _listed(root: Path, only: Callable[[str], bool] | None) -> list[Path]:
    files = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if rel.as_posix() in MARKERS.values() and len(rel.parts) == 1:
            continue
        if only is None or only(rel.as_posix()):
            files.append(p)
    return files


def file_digests(root: str | Path, only: Callable[[str], bool] | None = None) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``root`` except markers and hidden
    files (``only`` filters relative paths further)."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in _listed(root, only)
    }


def content_id(files: dict[str, Any]) -> str:
    """The content hash of an output, from its recorded file digests."""
    return sha256_json(files)


def verify_files(
    root: str | Path, files: dict[str, Any] | None, only: Callable[[str], bool] | None = None
) -> str | None:
    """None when ``root``'s files are exactly the recorded ones (sizes and SHA-256), else what differs."""
    root = Path(root)
    if files is None:
        return "its marker records no file hashes (written by an older tokenclean), so it cannot be verified"
    for rel, rec in sorted(files.items()):
        p = root / rel
        if not p.is_file():
            return f"{rel} is missing"
        size = p.stat().st_size
        if size != rec["size"]:
            return f"{rel} changed size ({rec['size']} -> {size} bytes; truncated or rewritten)"
        if sha256_file(p) != rec["sha256"]:
            return f"{rel} changed content (its SHA-256 differs from the one recorded when it was written)"
    unknown = sorted({p.relative_to(root).as_posix() for p in _listed(root, only)} - set(files))
    if unknown:
        return f"{unknown[0]} was added after it was written"
    return None


def verify_input(
    path: str | Path, marker: str = "manifest.json", hint: str = "re-create it"
) -> dict[str, Any]:
    """Read an input artifact's marker and check its files; refuse a damaged one. Returns the marker."""
    path = Path(path)
    m = read_json(path / marker)
    problem = verify_files(path, m.get("files"))
    if problem is not None and m.get("files") is None:
        log.warning("%s: %s", path, problem)
    elif problem is not None:
        raise OutputError(f"{path}: {problem} since it was written; it cannot be trusted: {hint}")
    return dict(m)


# ------------------------------------------------------------------------------------------------ reuse


def identity_diff(old: Any, new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two identities."""
    if not isinstance(old, dict):
        return [prefix or "identity"]
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += identity_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def decide(
    out: Path,
    kind: str,
    identity: dict[str, Any],
    *,
    force: bool = False,
    replace_stale: bool = False,
    reusable: bool = True,
    marker: str | None = None,
    identity_key: str = "identity",
    legacy_key: tuple[str, str] | None = None,
) -> dict[str, Any] | None:
    """Whether ``out`` (checked by :func:`check_target`, locked) can be reused for ``identity``.

    Returns the old marker when ``out`` holds a verified output of this identity (reuse); None when it is
    to be (re)computed: nothing there, ``force``, a damaged output of the same identity, or a stale one
    with ``replace_stale``. A stale output without either raises :class:`OutputError` naming what differs.
    The log says which, and why. ``legacy_key`` (field, value): a marker written before identities were
    recorded counts as the same identity when its field equals the value (its files still get checked)."""
    path = Path(out) / (marker or MARKERS[kind])
    if not path.is_file():
        return None
    old = read_json(path)
    identity = json.loads(json.dumps(identity))  # as the marker holds it: tuples are JSON lists
    if force:
        log.info("recomputing %s (--force)", out)
        return None
    legacy = legacy_key is not None and identity_key not in old and old.get(legacy_key[0]) == legacy_key[1]
    if old.get(identity_key) == identity or legacy:
        if not reusable:
            log.info("recomputing %s: its input cannot be hashed (a Hub dataset), so it is never reused", out)
            return None
        problem = verify_files(out, old.get("files"))
        if problem is None:
            log.info("reusing %s (same settings and inputs; files verified)", out)
            return dict(old)
        log.warning("recomputing %s: %s", out, problem)
        return None
    diff = identity_diff(old.get(identity_key), identity)
    if replace_stale:
        log.info("recomputing %s: changed since it was computed: %s", out, ", ".join(diff))
        return None
    raise StaleOutputError(
        f"--out {out} holds a {kind} output computed from other inputs or settings (differs in: "
        f"{', '.join(diff)}); pass --force to replace it, or choose another --out"
    )


def load_dataset_dir(path: str | Path, hint: str) -> Any:
    """``datasets.load_from_disk`` with a clear error naming the directory when it is damaged."""
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as e:  # pyarrow and datasets raise many types for truncated or missing files
        raise OutputError(f"{path}: cannot be read as a dataset ({type(e).__name__}: {e}); {hint}") from None
