"""Scoring under CPU contention: how much each approach slows down beside another 2-thread torch job.

    python benchmarks/bench_contention.py                    # 12 chat samples, SmolLM2-135M, fp32
    python benchmarks/bench_contention.py --n-samples 24

In ONE run, with the samples, adapter and workers of ``bench_scoring.py`` (each scoring run in its own
process), every variant scores the same data twice: alone, and beside a competing process that runs
2-thread fp32 matrix products in a loop (``torch.set_num_threads(2)``, 1024 x 1024 ``matmul``), like a second
training job on the same 2-core machine. Variants:

- ``reference``: the reference code's way (full logits, fixed batches of 8, two full models);
- ``tokenclean``: ``score_dataset`` with torch's default threads (= cores);
- ``tokenclean-t1``: ``--threads 1`` (``OMP_NUM_THREADS=1``);
- ``tokenclean-passive``: default threads with ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep instead of
  spinning while they wait for work).

Printed per variant: seconds of the scoring loop alone and contended, the slowdown (contended / alone) and
tokens/s. The question it answers: does tokenclean lose more than the reference way under contention,
and which setting removes the loss. Load averages are printed with each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
SCORING = HERE.parent / "bench_scoring.py"
COMPETITOR = (
    "import torch\n"
    "torch.set_num_threads(2)\n"
    "a = torch.randn(1024, 1024); b = torch.randn(1024, 1024)\n"
    "while True:\n"
    "    a = (a @ b).tanh_()\n"
)
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "reference": ("reference", {}),
    "tokenclean": ("tokenclean-fp32", {}),
    "tokenclean-t1": ("tokenclean-fp32", {"OMP_NUM_THREADS": "1"}),
    "tokenclean-passive": ("tokenclean-fp32", PASSIVE),
    # thread choices, each with passive waits as every tokenclean command sets them
    "threads-loadavg": ("tokenclean-fp32", {**PASSIVE, "BENCH_THREAD_POLICY": "loadavg"}),
    "threads-idle": ("tokenclean-fp32", {**PASSIVE, "BENCH_THREAD_POLICY": "idle"}),
    "threads-all": ("tokenclean-fp32", {**PASSIVE, "BENCH_THREAD_POLICY": "all"}),
}
THREAD_CHOICES = "reference,threads-loadavg,threads-idle,threads-all"


def score_once(work: Path, worker: str, env_extra: dict[str, str]) -> dict[str, Any]:
    env = dict(os.environ, TOKENCLEAN_LOGLEVEL="WARNING", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(env_extra)
    cmd = [sys.executable, str(SCORING), "--worker", worker, "--work", str(work), "--ref-batch-size", "8"]
    subprocess.run(cmd, check=True, env=env)
    return json.loads((work / f"{worker}.json").read_text())


def measure(work: Path, name: str, contended: bool) -> dict[str, Any]:
    worker, env = VARIANTS[name]
    comp = None
    if contended:
        comp = subprocess.Popen([sys.executable, "-c", COMPETITOR], stdout=subprocess.DEVNULL)
        time.sleep(3)  # let it reach its steady loop
    try:
        load = os.getloadavg()[0]
        r = score_once(work, worker, env)
    finally:
        if comp is not None:
            comp.kill()
            comp.wait()
    return {"seconds": r["score_s"], "tokens": r["tokens"], "load": load, "threads": r.get("threads")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/tokenclean-bench-contention"))
    p.add_argument("--n-samples", type=int, default=12)
    p.add_argument(
        "--variants",
        default=",".join(list(VARIANTS)[:4]),
        help=f"comma list of {', '.join(VARIANTS)}; the thread choices: --variants {THREAD_CHOICES}",
    )
    a = p.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from bench_scoring import setup

    a.work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    setup(a.work, a.n_samples)
    rows = []
    for name in a.variants.split(","):
        alone = measure(a.work, name, contended=False)
        busy = measure(a.work, name, contended=True)
        rows.append((name, alone, busy))
        print(f"{name}: alone {alone['seconds']:.1f} s, contended {busy['seconds']:.1f} s", flush=True)
    ref = {r[0]: r for r in rows}.get("reference")
    print("\n| variant | threads alone/contended | alone s | contended s | slowdown | tokens/s alone | "
          "tokens/s contended | x reference alone | x reference contended | load |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, alone, busy in rows:
        vs = ("-", "-") if ref is None else (
            f"{ref[1]['seconds'] / alone['seconds']:.2f}x", f"{ref[2]['seconds'] / busy['seconds']:.2f}x"
        )  # fmt: skip
        print(
            f"| {name} | {alone['threads'] or '-'}/{busy['threads'] or '-'} | {alone['seconds']:.1f} | "
            f"{busy['seconds']:.1f} | {busy['seconds'] / alone['seconds']:.2f}x | "
            f"{alone['tokens'] / alone['seconds']:.0f} | {busy['tokens'] / busy['seconds']:.0f} | {vs[0]} | {vs[1]} | "
            f"{alone['load']:.1f}/{busy['load']:.1f} |"
        )


if __name__ == "__main__":
    main()
