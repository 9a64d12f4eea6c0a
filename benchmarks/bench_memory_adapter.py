"""Memory of scoring base + LoRA-adapter reference from ONE loaded model vs two loaded models.

    python benchmarks/bench_memory_adapter.py            # SmolLM2-135M + a random rank-16 LoRA, 8 samples

Each arrangement runs in its own subprocess on the same samples (from ``bench_scoring.setup``):

- ``one_model``: ``load_pair("smollm2", reference=ADAPTER)``: the base loaded once with the adapter; the base
  phase runs under ``disable_adapter()``, then the adapter is merged in place for the reference phase (fp32),
  exactly as ``score_dataset`` does;
- ``two_models``: ``load_pair("smollm2", reference=MERGED_DIR)``: the base and the merged reference (a full
  fp32 copy) loaded side by side, as a two-model scorer must.

Samples are scored in the engine's CPU batches (1024 padded tokens). Printed: peak RSS (``VmHWM``; not ``getrusage`` maxrss, which Linux carries over from the forking parent), RSS after imports (the floor), the difference, and max |loss
difference| between the two arrangements (they compute the same function).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def worker(work: Path, mode: str, n: int) -> None:
    import torch  # noqa: F401  (imports counted in the floor)
    import transformers  # noqa: F401

    from tokenclean.scoring.engine import Sample, make_batches
    from tokenclean.scoring.models import load_pair

    sys.path.insert(0, str(HERE.parent))
    from bench_scoring import _rows, proc_status_mb

    floor = proc_status_mb("VmRSS")
    rows = _rows(work)[:n]
    ref = str(work / ("adapter" if mode == "one_model" else "merged"))
    pair = load_pair("smollm2", reference=ref)
    assert pair.mode == mode, pair.mode
    after_load = proc_status_mb("VmRSS")
    samples = [Sample(i, ids, labels) for i, (ids, labels) in enumerate(rows)]
    batches = [[samples[i] for i in b] for b in make_batches([len(x.input_ids) for x in samples], 1024)]
    base = [x for b in batches for x in pair.base_losses(b, 0)]  # as score_dataset: base phase first,
    refl = [x for b in batches for x in pair.ref_losses(b, 0) or []]  # then the reference phase
    np.savez(work / f"mem-{mode}.npz", base=np.concatenate([b.losses for b in base]),
             ref=np.concatenate([r.losses for r in refl]))  # fmt: skip
    peak = proc_status_mb("VmHWM")
    (work / f"mem-{mode}.json").write_text(json.dumps({"floor": floor, "loaded": after_load, "peak": peak}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--work", type=Path, default=None, help="work dir (shared with bench_scoring.py is fine)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.work, args.worker, args.n_samples)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_memory-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENCLEAN_LOGLEVEL", "WARNING")
    sys.path.insert(0, str(HERE.parent))
    from bench_scoring import setup

    setup(work, max(args.n_samples, 8))
    res = {}
    for mode in ("one_model", "two_models"):
        cmd = [
            sys.executable,
            str(HERE),
            "--worker",
            mode,
            "--work",
            str(work),
            "--n-samples",
            str(args.n_samples),
        ]
        subprocess.run(cmd, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        res[mode] = json.loads((work / f"mem-{mode}.json").read_text())
    a, b = (np.load(work / f"mem-{m}.npz") for m in ("one_model", "two_models"))
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in ("base", "ref"))
    print(f"\n{'arrangement':12s} {'floor':>8s} {'after load':>11s} {'peak RSS':>9s} {'peak - floor':>13s}")
    for mode, r in res.items():
        print(
            f"{mode:12s} {r['floor']:6.0f}MB {r['loaded']:9.0f}MB {r['peak']:7.0f}MB {r['peak'] - r['floor']:11.0f}MB"
        )
    one, two = res["one_model"], res["two_models"]
    print(f"one model / two models: {one['peak'] / two['peak']:.2f}x peak RSS, "
          f"{(one['peak'] - one['floor']) / (two['peak'] - two['floor']):.2f}x above the floor; "
          f"max |loss diff| between them {diff:.2e} ({args.n_samples} samples, fp32)")  # fmt: skip


if __name__ == "__main__":
    main()
