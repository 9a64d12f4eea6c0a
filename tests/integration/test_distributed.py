"""Training and scoring on 2 CPU processes (gloo, launched by torchrun) against 1 process.

- 2 processes with micro-batch b equal 1 process with micro-batch 2b (same global batch): the loss of each
  step is normalised over the counted tokens of all ranks. Measured max |adapter difference| 6.4e-7 on the
  tiny model (fp32); the test allows 1e-5. Run with the online RHO-1 policy, so the top-k over all ranks is
  checked too (the same tokens count in every step).
- Kill + resume under 2 processes gives a bit-identical adapter (LoRA dropout on: per-rank RNG restored).
- A checkpoint written by 2 processes is refused by 1 process with a clear error.
- ``tokenclean score`` under 2 processes writes a store bit-identical to 1 process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

COMMON = [
    "--lora-r",
    "4",
    "--lr",
    "1e-3",
    "--warmup-ratio",
    "0",
    "--threads",
    "1",
    "--quiet",
    "--device",
    "cpu",
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    n: int, args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``tokenclean ARGS`` in ``n`` processes (torchrun, gloo on CPU) or in one plain process."""
    if n == 1:
        cmd = [sys.executable, "-m", "tokenclean", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n)]
        cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_port()), "-m", "tokenclean", *args]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", TOKENCLEAN_LOGLEVEL="WARNING", **(env or {}))
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    return p


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, tiny_tok, tiny_model_dir: Path) -> Path:
    import random

    from tokenclean.data.prepare import prepare
    from tokenclean.testing import WORDS

    d = tmp_path_factory.mktemp("dist")
    rng = random.Random(0)
    say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    recs = [{"prompt": say(rng.randint(2, 8)), "completion": say(rng.randint(2, 12))} for _ in range(24)]
    (d / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    prepare(d / "sft.jsonl", tiny_tok, d / "prepared", progress=False)
    (d / "model").symlink_to(tiny_model_dir)
    return d


def adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter" / "adapter_model.safetensors"))


def log_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in (path / "log.jsonl").read_text().splitlines()]


def test_two_processes_equal_one_process_with_twice_the_batch(work: Path) -> None:
    rho1 = ["--policy", "rho1", "--policy-set", "reference=base", "--policy-set", "ratio=0.5"]
    base = ["train", "--data", "prepared", "--model", "model", "--lora-dropout", "0", "--grad-accum", "2"]
    ok(launch(2, [*base, "--out", "two", "--batch-size", "1", *rho1, *COMMON], work))
    ok(launch(1, [*base, "--out", "one", "--batch-size", "2", *rho1, *COMMON], work))
    a, b = adapter(work / "two"), adapter(work / "one")
    assert set(a) == set(b) and len(a) > 0
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-5, diff
    assert any(float(b[k].abs().max()) > 0 for k in b if "lora_B" in k)  # it trained: the check can fail
    la, lb = log_lines(work / "two"), log_lines(work / "one")
    assert [r["kept_tokens"] for r in la] == [r["kept_tokens"] for r in lb]  # the same tokens counted
    assert [r["tokens"] for r in la] == [r["tokens"] for r in lb]
    np.testing.assert_allclose([r["loss"] for r in la], [r["loss"] for r in lb], rtol=1e-5)
    from tokenclean.training.counted import counted_tokens

    ca, cb = counted_tokens(work / "two", work / "prepared"), counted_tokens(work / "one", work / "prepared")
    assert {k: sorted(v) for k, v in ca.items()} == {
        k: sorted(v) for k, v in cb.items()
    } and ca  # rows gathered
    done = json.loads((work / "two" / "done.json").read_text())
    assert done["world_size"] == 2 and done["distributed_type"] == "MULTI_CPU"
    assert done["global_batch_size"] == 4 and done["policy"]["name"] == "rho1"


def test_global_batch_same_adapter_on_1_and_2_processes(work: Path) -> None:
    """Issue 17 (2): ``--global-batch 4`` means 4 samples per optimizer step on 1 process (accumulation 2)
    and on 2 (accumulation 1): the same number of updates and the same adapter. Measured max |difference|
    1.73e-6 on the tiny model (fp32); the test allows 1e-5. Before ``train.global_batch`` existed the same
    flags (batch 2 x accumulation 2) trained 4 samples per step on 1 process and 8 on 2."""
    base = ["train", "--data", "prepared", "--model", "model", "--lora-dropout", "0", "--global-batch", "4"]
    ok(launch(2, [*base, "--out", "g2", "--batch-size", "2", *COMMON], work))
    ok(launch(1, [*base, "--out", "g1", "--batch-size", "2", *COMMON], work))
    d1, d2 = (json.loads((work / d / "done.json").read_text()) for d in ("g1", "g2"))
    assert d1["global_batch_size"] == d2["global_batch_size"] == 4 and d1["steps"] == d2["steps"] == 6
    l1, l2 = log_lines(work / "g1"), log_lines(work / "g2")
    updates = [sum(r["grad_norm"] is not None for r in lines) for lines in (l1, l2)]
    assert updates[0] == updates[1] == 6
    a, b = adapter(work / "g2"), adapter(work / "g1")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"global batch 4, 1 vs 2 processes: max |adapter difference| {diff:.2e}")
    assert diff < 1e-5, diff
    assert any(float(b[k].abs().max()) > 0 for k in b if "lora_B" in k)


def test_kill_and_resume_under_two_processes_equals_uninterrupted(work: Path) -> None:
    args = ["train", "--data", "prepared", "--model", "model", "--batch-size", "1", "--grad-accum", "2"]
    args += ["--lora-dropout", "0.1", "--save-steps", "2", *COMMON]
    ok(launch(2, [*args, "--out", "full"], work))
    p = launch(2, [*args, "--out", "cut"], work, {"TOKENCLEAN_TRAIN_INTERRUPT_AFTER": "3"})
    assert p.returncode != 0 and "interrupted after step 3" in p.stderr
    assert (work / "cut" / "checkpoint" / "state.json").exists() and not (work / "cut" / "done.json").exists()

    other = launch(1, [*args, "--out", "cut"], work)  # another world size: refused, nothing lost
    assert other.returncode != 0 and "with 2 process(es); this run has 1" in other.stderr
    assert (work / "cut" / "checkpoint" / "state.json").exists()

    ok(launch(2, [*args, "--out", "cut"], work))
    done = json.loads((work / "cut" / "done.json").read_text())
    assert done["resumed_from_step"] == 2
    a, b = adapter(work / "cut"), adapter(work / "full")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    assert [r["loss"] for r in log_lines(work / "cut")] == [r["loss"] for r in log_lines(work / "full")]


def test_score_on_two_processes_is_bit_identical(work: Path) -> None:
    import datasets

    from tokenclean.models.loader import load_model
    from tokenclean.testing import make_lora_adapter

    make_lora_adapter(load_model(str(work / "model")), work / "ref", base=str(work / "model"), seed=3)
    args = ["score", "--data", "prepared", "--base", "model", "--reference", "ref", "--shard-size", "4"]
    args += ["--threads", "1", "--no-progress"]
    ok(launch(2, [*args, "--out", "s2"], work))
    ok(launch(1, [*args, "--out", "s1"], work))
    m = json.loads((work / "s2" / "manifest.json").read_text())
    assert m["processes"] == 2 and m["num_shards"] == 2 and m["complete"]
    a, b = datasets.load_from_disk(str(work / "s1")), datasets.load_from_disk(str(work / "s2"))
    for col in ("base_loss", "ref_loss", "score"):
        x = np.concatenate([np.asarray(r, dtype=np.float32) for r in a[col]])
        y = np.concatenate([np.asarray(r, dtype=np.float32) for r in b[col]])
        assert x.tobytes() == y.tobytes(), col
    assert not (work / "s2" / ".work").exists()


def test_run_pipeline_uses_every_process(work: Path) -> None:
    """`tokenclean run` under 2 processes: scoring sharded by rank, training on both ranks, evaluation
    (the quick suite's held-out loss) shared by both ranks, rank 0 writes."""
    cfg = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"
    args = [
        "run",
        str(cfg),
        f"model.base={work / 'model'}",
        f"run_dir={work / 'run'}",
        "methods=[fixed_model]",
        "eval.suite=quick",
        "data.heldout=builtin:sample",
    ]
    ok(launch(2, args, work))
    ev = json.loads((work / "run" / "methods" / "fixed_model" / "eval.json").read_text())
    per_rank = ev["tasks"]["heldout_loss"]["details"]["per_rank"]
    assert ev["processes"] == 2 and [p["samples"] for p in per_rank] == [10, 10]
    done = json.loads((work / "run" / "methods" / "fixed_model" / "train" / "done.json").read_text())
    scores = json.loads((work / "run" / "scores" / "pool" / "manifest.json").read_text())
    assert done["world_size"] == 2 and done["global_batch_size"] == 8
    assert scores["processes"] == 2 and scores["complete"]
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert "fixed_model" in summary["methods"]
