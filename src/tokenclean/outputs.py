"""What every stage guarantees about its output directory: the one mechanism prepare, score, select,
train and the pipeline stages share.

- **Refuses foreign directories.** An existing output is replaced only when it is a tokenclean output of
  the same kind (its marker file says so) and either its identity matches (then it is reused, after its
  files are verified) or replacing is allowed (``--force``, or ``tokenclean run`` recomputing a stale
  stage of its own run directory). Anything else is refused before any work, naming the directory. An
  output equal to, inside, or holding one of the stage's inputs is refused.
- **Locked** (:mod:`tokenclean.locks`): one writer at a time, ``.NAME.lock`` beside the output holding its
  PID under ``flock`` (or, where ``flock`` is not supported, the O_EXCL lock file itself); never written
  through a link. The processes of one ``torchrun``/``accelerate launch`` job (and score shards) hold one
  lock each, so they write together while a second job on the same output is refused.
- **Every command.** Directories (:func:`check_target`: the stages, ``merge``, ``report``), run directories
  (:func:`check_run_dir`) and result files (:func:`check_file_target`: ``eval --out``, ``groundtruth
  --out``, ``eval-data``) are checked before any work; empty paths and an unexpandable ``~`` are refused
  (:func:`check_path_text`; ``~`` is expanded once where the CLI and the config are read, :func:`expand_user`).
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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from tokenclean.errors import ConfigError, OutputError
from tokenclean.locks import LockError, lock_path, output_lock  # noqa: F401 (re-exported: one mechanism)
from tokenclean.utils import (
    CorruptFileError,
    get_logger,
    read_json,
    sha256_file,
    sha256_file_memo,
    sha256_json,
)

log = get_logger("outputs")

P = ParamSpec("P")
R = TypeVar("R")

MARKERS = {
    "prepare": "manifest.json",
    "select": "manifest.json",
    "score": "manifest.json",
    "train": "done.json",
    "merge": "merge.json",
    "report": "manifest.json",
    "truth": "manifest.json",
    "export": "manifest.json",
    "import": "manifest.json",
    "split": "split.json",
}
"""The file whose ``stage`` field says what a finished output is."""
PARTIAL = {"score": ".work/plan.json", "train": "checkpoint/state.json"}
"""What an unfinished output of the stages that write in place holds (resumable work)."""
OWNER_FILE = ".tokenclean-output.json"
"""Written first into the outputs built in place (score, train), so an unfinished one is known as ours."""


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


def check_path_text(value: str | Path, flag: str = "--out") -> None:
    """Refuse an empty path (it would mean the current directory) and one that still starts with ``~``
    (the CLI and config loaders expand ``~`` and ``~user``; one left here names no known user, and
    libraries such as ``datasets`` would expand it again, writing half of an output elsewhere)."""
    text = str(value)
    if not text.strip():
        raise OutputError(
            f"{flag}: empty path; give a directory (an empty one would mean the current directory)"
        )
    if text.startswith("~"):
        raise OutputError(
            f"{flag} {text}: starts with '~' but names no home directory tokenclean can expand; write the full "
            "path (e.g. $HOME/...), or ./~... for a directory really named '~'"
        )


def expand_user(value: Any) -> Any:
    """``~`` and ``~user`` expanded in a path string (once, where the CLI and the config are read); other
    values unchanged. An unknown ``~user`` stays as it is and is refused by :func:`check_path_text`."""
    if isinstance(value, str) and value.startswith("~"):
        return os.path.expanduser(value)
    return value


def _check_inputs(out: Path, inputs: Iterable[Any], flag: str = "--out") -> None:
    o = out.resolve()
    for inp in _paths(inputs):
        p = inp.resolve()
        if o == p or p in o.parents:
            where = "is" if o == p else "is inside"
            raise OutputError(
                f"{flag} {out} {where} the input {inp}; writing it would destroy the input: choose another {flag}"
            )
        if o in p.parents:
            raise OutputError(
                f"the input {inp} is inside {flag} {out}; replacing {out} would delete it: choose another {flag}"
            )


def check_target(out: str | Path, kind: str, inputs: Iterable[Any] = ()) -> None:
    """Refuse, before any work, an ``out`` that is empty or an unexpanded ``~``, an input, inside one or
    holds one, that exists and is not a tokenclean ``kind`` output, or that cannot be written."""
    check_path_text(out)
    out = Path(out)
    _check_inputs(out, inputs)
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


# ------------------------------------------------------------------------------------------------ run dirs

RUN_ENTRIES = "config.yaml, summary.json, data/, methods/, report/"
"""What ``tokenclean run`` writes into its run directory."""


def is_run_dir(path: Path) -> bool:
    """A directory ``tokenclean run`` made: its owner mark says so, or (made before marks) its
    ``summary.json`` is a run summary."""
    owner = path / OWNER_FILE
    if owner.is_file():
        return _stage_of(owner) == "run"
    summary = path / "summary.json"
    try:
        s = read_json(summary) if summary.is_file() else None
    except CorruptFileError:
        return False
    return isinstance(s, dict) and "pipeline" in s


def check_run_dir(run_dir: str | Path, adopt: bool = False, flag: str = "--adopt-run-dir") -> None:
    """Refuse, before any work, an empty or unexpanded-``~`` ``run_dir``, one that is a file, and an
    existing non-empty directory tokenclean did not make (unless ``adopt``: the user's own files stay, but
    the entries tokenclean writes, :data:`RUN_ENTRIES`, are its own from then on)."""
    check_path_text(run_dir, "run_dir")
    p = Path(run_dir)
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise OutputError(f"run_dir {p} exists and is not a directory; choose another run_dir")
        foreign = [e.name for e in p.iterdir() if not _own_scratch(e.name)]
        if foreign and not adopt and not is_run_dir(p):
            raise OutputError(
                f"run_dir {p} exists and was not made by tokenclean (it holds {', '.join(sorted(foreign)[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); a run writes {RUN_ENTRIES} into its directory: choose "
                f"another run_dir (a new or empty directory), or pass {flag} to use this one anyway"
            )
    check_writable(p)


def check_file_target(
    out: str | Path, kind: str, ours: Callable[[Any], bool] | None, inputs: Iterable[Any] = ()
) -> Path:
    """Refuse, before any work, a result file ``out`` that is empty or an unexpanded ``~``, an input or
    inside one, a directory, or an existing file that is not a tokenclean ``kind`` result (``ours`` judges
    its parsed JSON; None: the caller judges). Returns the path."""
    check_path_text(out)
    out = Path(out)
    _check_inputs(out, inputs)
    if out.is_symlink() or out.is_dir():
        raise OutputError(f"--out {out} is a {'link' if out.is_symlink() else 'directory'}; give a file name")
    if out.exists() and ours is not None:
        try:
            mine = ours(read_json(out))
        except CorruptFileError:
            mine = False
        if not mine:
            raise OutputError(
                f"--out {out} exists and is not a tokenclean {kind} result; tokenclean replaces only its own: "
                f"choose another --out (or remove {out} yourself)"
            )
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"--out {out}: {parent} is a file, not a directory")
    check_writable(out.parent)  # a result file is replaced through its directory
    return out


# ------------------------------------------------------------------------------------------------ owned


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
        if sha256_file_memo(p) != rec["sha256"]:
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
) -> dict[str, Any] | None:
    """Whether ``out`` (checked by :func:`check_target`, locked) can be reused for ``identity``.

    Returns the old marker when ``out`` holds a verified output of this identity (reuse); None when it is
    to be (re)computed: nothing there, ``force``, a damaged output of the same identity, or a stale one
    with ``replace_stale``. A stale output without either raises :class:`OutputError` naming what differs.
    The log says which, and why."""
    path = Path(out) / (marker or MARKERS[kind])
    if not path.is_file():
        return None
    old = read_json(path)
    identity = json.loads(json.dumps(identity))  # as the marker holds it: tuples are JSON lists
    if force:
        log.info("recomputing %s (--force)", out)
        return None
    if old.get(identity_key) == identity:
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
