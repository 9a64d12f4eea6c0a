"""Where scoring time goes: a torch.profiler breakdown of tokenclean's engine on SmolLM2-135M (fp32, CPU).

    python benchmarks/profile_scoring.py                 # the first 8 samples of bench_scoring's data
    python benchmarks/profile_scoring.py --n-samples 16 --threads 1

Scores the samples (base model; the reference pass is the same computation) with
``tokenclean.scoring.engine.iter_token_losses`` under ``torch.profiler`` and groups the self CPU time of
the operators into: matrix products of the decoder (``mm``/``addmm``/``linear``/``bmm``), attention
(``scaled_dot_product_attention`` and its kernels), the LM head and its log-sum-exp (the chunked head
products are ``mm`` too: counted by their shapes), element-wise work (norms, SiLU, rotary, adds, copies)
and the rest. It also measures the achieved FLOP/s of the decoder's matrix products against the peak of
the same GEMM shapes measured in the same run, which is the bound of the approach: the decoder body is
already computed once per token with no padding waste, so what remains is GEMM efficiency.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve()


def group(name: str) -> str:
    n = name.lower()
    if "scaled_dot_product" in n or "flash_attention" in n or "_efficient_attention" in n:
        return "attention"
    if n in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear") or "mkldnn" in n:
        return "matrix products"
    if "logsumexp" in n or "gather" in n:
        return "head: log-sum-exp/gather"
    if any(k in n for k in ("mul", "add", "silu", "rsqrt", "pow", "mean", "neg", "cat", "copy", "to", "div")):
        return "element-wise (norm, SiLU, rotary, casts)"
    if any(k in n for k in ("index", "slice", "view", "select", "expand", "reshape", "contiguous", "empty")):
        return "indexing/views"
    return "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/tokenclean-bench-profile"))
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    sys.path.insert(0, str(HERE.parent))
    import datasets
    import numpy as np
    import torch
    from bench_scoring import matmul_peak, setup
    from torch.profiler import ProfilerActivity, profile

    from tokenclean.models.loader import load_model
    from tokenclean.scoring.engine import Sample, iter_token_losses

    if a.threads:
        torch.set_num_threads(a.threads)
    import os

    print(f"load average at start: {os.getloadavg()[0]:.2f}; torch threads {torch.get_num_threads()}")
    a.work.mkdir(parents=True, exist_ok=True)
    setup(a.work, a.n_samples)
    ds = datasets.load_from_disk(str(a.work / "prep")).with_format("numpy")
    samples = [Sample(i, np.asarray(r["input_ids"]), np.asarray(r["labels"])) for i, r in enumerate(ds)]
    model = load_model("smollm2").eval()
    list(iter_token_losses(model, samples[:2]))  # warm up
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        n_scored = sum(len(r.losses) for b in iter_token_losses(model, samples) for r in b)
    wall = time.perf_counter() - t0
    tokens = int(sum(len(s.input_ids) for s in samples))
    totals: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        totals[group(ev.key)] += ev.self_cpu_time_total / 1e6
    all_s = sum(totals.values())
    print(
        f"\n{tokens} tokens ({n_scored} scored) in {wall:.1f} s under the profiler ({tokens / wall:.0f} tokens/s)"
    )
    print("\n| operator group | self CPU s | share |\n|---|---|---|")
    for k, v in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v:.2f} | {100 * v / all_s:.1f}% |")
    n_body = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    head = model.get_output_embeddings().weight.numel()
    flop = 2 * n_body * tokens + 2 * head * n_scored
    peak = matmul_peak("fp32")
    mm_s = totals["matrix products"]
    print(f"\nnominal FLOP of the pass: {flop / 1e9:.1f} G; achieved {flop / wall / 1e9:.1f} GFLOP/s overall, "
          f"{flop / max(mm_s, 1e-9) / 1e9:.1f} GFLOP/s inside the matrix products (self CPU time, summed over "
          f"threads); measured fp32 matmul peak now {peak / 1e9:.1f} GFLOP/s")  # fmt: skip


if __name__ == "__main__":
    main()
