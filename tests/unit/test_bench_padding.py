"""benchmarks/bench_padding.py: the old and new batch layouts on the same lengths, in one run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_padding.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_padding", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_padding"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_scoring_reaches_095_at_the_paper_batch_tokens_where_the_old_plan_did_not() -> None:
    b = _bench()
    lens = b.long_tail_lengths(10_000)  # one self-evolving round of the paper (10k samples)
    old = b.scoring_efficiency(lens, 65536, "old")
    assert old < 0.75  # the 256-sample window of prepared order
    for how in ("sorted", "packed-sdpa", "packed-flash"):
        assert b.scoring_efficiency(lens, 65536, how) >= 0.95, how
    assert b.scoring_efficiency(lens, 65536, "packed-flash") == 1.0


def test_training_old_assignment_pads_on_8_processes_and_the_sketch_does_not() -> None:
    b = _bench()
    lens = b.long_tail_lengths(2000)
    old = b.training_efficiency(lens, 8, 48, 4, b.old_assignment, packed=False)
    new = b.training_efficiency(lens, 8, 48, 4, b.sketch_packed_assignment, packed=True)
    assert old[1] < 0.5 and new[0] == 1.0 and new[1] > 0.9
    step = np.arange(48)
    got = [b.sketch_packed_assignment(step, lens, r, 8, 4) for r in range(8)]
    assert sorted(int(i) for mbs in got for m in mbs for i in m) == list(range(48))  # a partition


def test_main_prints_both_tables(capsys) -> None:
    _bench().main(["--n", "600", "--no-tokenizer"])
    out = capsys.readouterr().out
    assert "## Scoring" in out and "## Training" in out and "| long-tail | 65536 |" in out
