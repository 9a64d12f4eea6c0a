"""Issue 17 (1): a stage that keeps rank 0 busy alone for longer than the process-group timeout.

Before: ``rank_zero_first`` was accelerate's ``main_process_first``, so the other ranks waited in a barrier
and failed after the group timeout (NCCL's default 10 minutes; an 8B evaluation takes far longer). Now they
wait outside collectives (the launcher's key-value store), so only the ranks' shared work counts against
the timeout. Shown with 2 gloo processes, a 2 s timeout and a 6 s rank-0 stage.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("slow_stage.py")


def _launch(mode: str, timeout_s: float, slow_s: float) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr"]
    cmd += ["127.0.0.1", "--master_port", str(port), str(SCRIPT), mode, str(timeout_s), str(slow_s)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2] / "src"))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_a_barrier_fails_when_rank_zero_works_longer_than_the_timeout() -> None:
    p = _launch("barrier", 2, 6)
    assert p.returncode != 0
    assert "Timed out" in p.stderr and "rank 1 finished" not in p.stdout


def test_rank_zero_first_waits_outside_the_group_timeout() -> None:
    p = _launch("store", 2, 6)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "rank 0 finished" in p.stdout and "rank 1 finished" in p.stdout
