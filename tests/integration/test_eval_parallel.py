"""Issue 17 (5): evaluation is data-parallel over the launched ranks instead of running on rank 0 alone.

``tests/integration/eval_ranks.py`` runs :func:`tokenclean.evaluation.evaluate` under torchrun with 2 gloo
processes and as one plain process, on the tiny Llama: the quick suite's held-out loss (20 samples of the
bundled chat set) and a task YAML through lm-evaluation-harness (12 documents). A forward pre-hook on the
embedding layer counts the tokens each rank computed. Before the change every rank (or rank 0 alone, in a
pipeline) computed every sample; now each rank computes about half, and the metrics equal one process's:
counts exactly, the held-out loss up to float rounding: each rank batches its own samples (other padded
shapes in the fp32 forward) and the float64 sums add in another order. Measured |difference| 8.6e-9 on a
loss of 6.53 (relative 1.3e-9); the test allows a relative 1e-6.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.requires("lm_eval")]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("eval_ranks.py")


def _run(n: int, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), *args]
    if n > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n)]
        cmd = [*launcher, "--master_addr", "127.0.0.1", "--master_port", str(port), str(SCRIPT), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"), TOKENCLEAN_LOGLEVEL="WARNING")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-6000:]
    return p


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_tok: Any, tiny_tok_dir: Path) -> dict[str, Path]:
    from tokenclean.data.prepare import prepare

    d = tmp_path_factory.mktemp("evalpar")
    prepare("builtin:sample", tiny_tok, d / "prep", template="tulu", max_length=128, progress=False)
    rows = [
        {"question": f"is the {w} number {i} odd?", "gold": i % 2} for i in range(6) for w in ("red", "blue")
    ]
    (d / "yesno.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "yesno.yaml").write_text(
        "task: tc_yesno\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {d / 'yesno.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: ['yes', 'no']\ndoc_to_target: gold\nmetric_list:\n  - metric: acc\n"
    )
    return {"prep": d / "prep", "yaml": d / "yesno.yaml", "root": d}


def test_two_ranks_share_the_evaluation_and_match_one_process(tiny_model_dir: Path, inputs: dict) -> None:
    root = inputs["root"]
    common = [str(tiny_model_dir), str(inputs["prep"]), str(inputs["yaml"])]
    _run(2, [*common, str(root / "two")])
    _run(1, [*common, str(root / "one")])
    one = json.loads((root / "one" / "rank0.json").read_text())
    two = [json.loads((root / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]

    # each rank computed about half of the held-out tokens (counted by the hook, and as evaluate reports)
    total = one["quick_seen"]["tokens"]
    shares = [rec["quick_seen"]["tokens"] / total for rec in two]
    print(f"held-out tokens computed: 1 process {total}, ranks {[r['quick_seen']['tokens'] for r in two]}")
    assert all(0.35 <= s <= 0.65 for s in shares), shares

    # held-out loss: same numbers as one process (counts exactly), on every rank, written once by rank 0
    want = one["quick"]["tasks"]
    for rec in two:
        got = rec["quick"]["tasks"]
        d1, d2 = want["heldout_loss"]["details"], got["heldout_loss"]["details"]
        assert (d2["n_samples"], d2["n_tokens"]) == (d1["n_samples"], d1["n_tokens"]) == (20, d1["n_tokens"])
        assert d2["token_accuracy"] == d1["token_accuracy"] and d2["exact_match"] == d1["exact_match"]
        diff = abs(d2["loss"] - d1["loss"])
        print(f"held-out loss, 2 ranks vs 1 process: |difference| {diff:.3e} (loss {d1['loss']:.6f})")
        assert diff <= 1e-6 * abs(d1["loss"]), diff
        assert rec["quick"]["processes"] == 2
    written = json.loads((root / "two" / "eval_quick.json").read_text())
    assert written["tasks"]["heldout_loss"]["value"] == two[0]["quick"]["tasks"]["heldout_loss"]["value"]

    per_rank = two[0]["quick"]["tasks"]["heldout_loss"]["details"]["per_rank"]
    assert [p["samples"] for p in per_rank] == [10, 10]
    assert (
        sum(p["tokens"] for p in per_rank)
        == one["quick"]["tasks"]["heldout_loss"]["details"]["per_rank"][0]["tokens"]
    )

    # lm-evaluation-harness: its documents split over the ranks, the same accuracy on 12 documents
    for rec in two:
        assert rec["task"]["tc_yesno"]["n"] == one["task"]["tc_yesno"]["n"] == 12
        assert rec["task"]["tc_yesno"]["value"] == one["task"]["tc_yesno"]["value"]
    calls = [rec["task_seen"]["calls"] for rec in two]
    print(f"harness forward calls: 1 process {one['task_seen']['calls']}, ranks {calls}")
    assert all(0 < c < one["task_seen"]["calls"] for c in calls), calls
    assert sum(rec["task_seen"]["tokens"] for rec in two) <= 1.2 * one["task_seen"]["tokens"]
