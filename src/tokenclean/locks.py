"""One writer per output, and the clean-up of a killed writer's leftovers (part of the output mechanism of
:mod:`tokenclean.outputs`, which re-exports :func:`output_lock` and :func:`lock_path`).

- ``.NAME.lock`` beside the output holds the writer's PID. It is opened with ``O_NOFOLLOW`` and must be a
  regular file with one link, so a symbolic or hard link planted at that name is refused, never written
  through (a lock never truncates another file).
- Where the file system supports ``flock`` the lock is an exclusive ``flock`` on that file: it goes when the
  writer ends, also when it is killed. Where ``flock`` is not supported (``ENOLCK``, ``EOPNOTSUPP``,
  ``ENOSYS``: some network and cluster file systems), the file itself is the lock: created with
  ``O_EXCL``, holding ``PID@HOST``, removed when the writer ends. A lock left by a killed writer on this host
  (its PID is gone) is taken over; one of another host is reported with the command to remove it.
- Leftovers: :func:`tokenclean.utils.atomic_dir` names its scratch ``.NAME.tokenclean-tmp-XXXXXXXX`` and
  ``.NAME.tokenclean-old-PID``; only entries whose name has exactly that form are removed (a symbolic link
  there is unlinked, never followed), so ``.NAME.old-mybackup`` of a user is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

from tokenclean.errors import OutputError

NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
"""``flock`` errors that mean "not supported here" (the lock-file fallback is used instead)."""

SCRATCH_TOKEN = "tokenclean"
"""The token in the names of :func:`tokenclean.utils.atomic_dir`'s scratch directories."""

_HELD: dict[str, int] = {}  # lock path -> depth, for this process (a stage inside a locked pipeline)


class LockError(OutputError):
    """An output is being written by another process, or its lock file is not a plain file of ours."""


def scratch_name(final: Path, what: str, suffix: str = "") -> str:
    """``.NAME.tokenclean-tmp-`` (``what="tmp"``, a prefix for mkdtemp) or ``.NAME.tokenclean-old-PID``."""
    return f".{final.name}.{SCRATCH_TOKEN}-{what}-{suffix}"


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
    shards); a second process gets :class:`LockError` "in use by PID N". Re-entrant in one process.
    Leftovers of an earlier writer that was killed are removed (see the module doc)."""
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
    fd, flocked = _acquire(path, Path(out))
    _HELD[key] = 1
    try:
        if not tag and not _launcher_rank():
            remove_debris(Path(out).resolve())
        yield
    finally:
        del _HELD[key]
        _release(path, fd, flocked)


def _release(path: Path, fd: int, flocked: bool) -> None:
    with contextlib.suppress(FileNotFoundError):
        if flocked or _same_file(fd, path):  # a fallback lock is removed only while it is still ours
            os.unlink(path)
    os.close(fd)  # closing releases the flock


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
    except FileNotFoundError:
        return False


def _in_use(out: Path, path: Path, owner: str) -> LockError:
    pid, _, host = owner.partition("@")
    who = f"PID {pid}" if pid else "another process"
    if host and host != socket.gethostname():
        who += f" on host {host}"
    return LockError(
        f"--out {out} is in use by {who} (another tokenclean process is writing it; lock {path}); "
        "wait for it to finish or choose another --out"
        + (f" (if that process is gone, remove {path})" if host else "")
    )


def _open(path: Path, out: Path, create: bool) -> int:
    """Open the lock file without following a link; refuse anything but a plain file with one link."""
    flags = os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    if create:
        flags |= os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise LockError(
            f"the lock file {path} of --out {out} is a symbolic link; tokenclean never writes through one: "
            "remove it (it is not a file tokenclean made) and re-run"
        ) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise LockError(
            f"the lock file {path} of --out {out} is not a plain file of its own (a hard link or a special "
            "file); tokenclean never writes it: remove it and re-run"
        )
    return fd


def _acquire(path: Path, out: Path) -> tuple[int, bool]:
    """(open fd, whether it is flocked) once this process holds the lock of ``out``."""
    import fcntl

    while True:
        try:
            fd, created = _open(path, out, create=True), True
        except FileExistsError:
            try:
                fd, created = _open(path, out, create=False), False
            except FileNotFoundError:  # removed by a writer that just finished: try again
                continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 256).decode(errors="replace").strip()
            os.close(fd)
            raise _in_use(out, path, owner.partition("@")[0]) from None
        except OSError as e:
            if e.errno not in NO_FLOCK:
                os.close(fd)
                if created:
                    path.unlink(missing_ok=True)
                raise
            if created:  # O_EXCL made it ours: the file is the lock
                _write(fd, f"{os.getpid()}@{socket.gethostname()}")
                return fd, False
            _take_over_if_stale(fd, path, out)
            continue
        if _same_file(fd, path):  # not unlinked by a writer that finished between our open and flock
            _write(fd, str(os.getpid()))
            return fd, True
        os.close(fd)


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def _take_over_if_stale(fd: int, path: Path, out: Path) -> None:
    """Without flock: the existing lock file is another writer's unless its PID is gone from this host
    (then it is moved aside and removed, and the caller tries again)."""
    owner = os.pread(fd, 256, 0).decode(errors="replace").strip()
    os.close(fd)
    pid, _, host = owner.partition("@")
    if not pid.isdigit() or host != socket.gethostname() or _alive(int(pid)):
        raise _in_use(out, path, owner)
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.rename(path, aside)  # atomic: of two processes taking over, one moves it
        os.unlink(aside)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_SCRATCH = re.compile(rf"\.(?P<name>.+)\.{SCRATCH_TOKEN}-(tmp-[A-Za-z0-9_]{{8}}|old-\d+)")


def remove_debris(out: Path) -> None:
    """Remove the scratch directories a killed writer of ``out`` left (only names of exactly the form
    :func:`tokenclean.utils.atomic_dir` writes; a symbolic link there is unlinked, not followed)."""
    for p in out.parent.glob(f".{glob_escape(out.name)}.{SCRATCH_TOKEN}-*"):
        m = _SCRATCH.fullmatch(p.name)
        if m is None or m["name"] != out.name:
            continue
        if p.is_symlink() or not p.is_dir():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        else:
            shutil.rmtree(p, ignore_errors=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)
