"""benchmarks/gpu_check.py --dry-run: the GPU check's every stage on the CPU with a tiny model, run from the
source tree as a user would (a subprocess; the script puts its own src/ first on the path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_passes_and_prints_one_table(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENCLEAN_LOGLEVEL="WARNING")
    env.pop("PYTHONPATH", None)  # from the source tree, not an installed tokenclean
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--work", str(tmp_path)]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    table = [line for line in p.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| stage | check | value | status |"
    checks = " ".join(table)
    for want in (
        "max |fast - naive| bf16, adapter on, packed",
        "padding efficiency, batch_tokens 65536",
        "100% counted, checkpointing on",
        "train killed and resumed",
        "memory left after the stage",
    ):
        assert want in checks, want
    assert "FAIL" not in checks and "all checks passed" in p.stdout
    assert "resumed from step 2" in checks  # the killed run really resumed from its checkpoint
