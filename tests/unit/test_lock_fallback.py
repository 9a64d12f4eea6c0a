"""Issue 18 (file-system contract): where ``flock`` is not supported (simulated: ``fcntl.flock`` raises
ENOLCK / EOPNOTSUPP), the lock file itself is the lock (created with O_EXCL, ``PID@HOST``); a live
writer is reported by PID, a killed one's lock is taken over, another host's is named."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tokenclean.errors import OutputError
from tokenclean.locks import lock_path, output_lock


@pytest.fixture(params=[errno.ENOLCK, errno.EOPNOTSUPP])
def no_flock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    import fcntl

    def flock(fd: int, op: int) -> None:
        raise OSError(request.param, os.strerror(request.param))

    monkeypatch.setattr(fcntl, "flock", flock)
    return int(request.param)


def test_fallback_lock_holds_pid_and_host_and_is_removed(tmp_path: Path, no_flock: int) -> None:
    out = tmp_path / "out"
    with output_lock(out):
        assert lock_path(out).read_text() == f"{os.getpid()}@{socket.gethostname()}"
    assert not lock_path(out).exists()


def test_fallback_lock_of_a_live_process_is_in_use(tmp_path: Path, no_flock: int) -> None:
    out = tmp_path / "out"
    lock_path(out).write_text(f"{os.getppid()}@{socket.gethostname()}")  # a live process of this host
    with pytest.raises(OutputError, match=rf"in use by PID {os.getppid()}\b"), output_lock(out):
        pass
    assert lock_path(out).read_text() == f"{os.getppid()}@{socket.gethostname()}"  # left alone


def test_fallback_lock_of_a_killed_process_is_taken_over(tmp_path: Path, no_flock: int) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "out"
    lock_path(out).write_text(f"{gone.pid}@{socket.gethostname()}")
    with output_lock(out):
        assert lock_path(out).read_text() == f"{os.getpid()}@{socket.gethostname()}"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no stale or moved-aside file left


def test_fallback_lock_of_another_host_is_named_with_how_to_remove_it(tmp_path: Path, no_flock: int) -> None:
    out = tmp_path / "out"
    lock_path(out).write_text("4242@elsewhere-node")
    with pytest.raises(OutputError, match=r"PID 4242 on host elsewhere-node .*remove"), output_lock(out):
        pass


HOLD = textwrap.dedent(
    """
    import errno, fcntl, sys, time
    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    fcntl.flock = flock
    from tokenclean.outputs import output_lock
    with output_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_two_processes_without_flock_one_writer(tmp_path: Path, no_flock: int) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=rf"in use by PID {holder.pid}\b"), output_lock(out):
            pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # killed: its lock file is stale and taken over
        assert lock_path(out).read_text().startswith(f"{os.getpid()}@")


def test_other_flock_errors_are_not_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    def flock(fd: int, op: int) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", flock)
    with pytest.raises(OSError, match="Bad file descriptor"), output_lock(tmp_path / "out"):
        pass
    assert not lock_path(tmp_path / "out").exists()
