"""Scoring benchmark: tokenclean's engine vs a re-creation of the reference implementation's approach.

    python benchmarks/bench_scoring.py                  # 32 chat samples of 100-600 tokens, SmolLM2-135M
    python benchmarks/bench_scoring.py --n-samples 64 --ref-batch-size 8

In ONE run, on the same real model (SmolLM2-135M-Instruct, alias ``smollm2``), the same samples and the same
reference model (the base plus a random LoRA adapter, rank 16 on every projection), each approach runs in
its own subprocess (so peak RSS, ``VmHWM`` of /proc/self/status, is per approach; ``getrusage`` maxrss is not used:
Linux carries it over from the forking parent across exec):

- ``reference``: the reference code's way, re-created: two full models (the base, then the merged
  reference saved as a full fp32 model), samples in file order, fixed batches of ``--ref-batch-size`` padded to
  the longest, full fp32 ``[B, T, V]`` logits, ``CrossEntropyLoss(reduction="none")``, results as Python lists.
- ``tokenclean fp32`` / ``tokenclean bf16``: ``tokenclean.scoring.score_dataset`` end to end (one model,
  adapter toggled, length-bucketed batches, LM head at trained positions only, store written to disk).

Printed: tokens/s of the scoring loop (wall and per CPU-second; every sample token goes through both
models), end-to-end seconds, peak RSS, max |loss difference| against the reference approach, how much bf16
moves losses and the global top-60% set against fp32, and achieved FLOP/s (2 x params x model-tokens/s) as a
fraction of this machine's matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve()
SENTENCES = [
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The process takes place mainly in the chloroplasts of leaf cells.",
    "A binary search halves the search interval at every step, so it runs in logarithmic time.",
    "Before searching, the list must be sorted, otherwise the comparisons tell us nothing.",
    "The French Revolution began in 1789 and reshaped the political map of Europe.",
    "Rising bread prices and a large public debt fuelled the unrest in Paris.",
    "To make a simple tomato sauce, soften garlic in olive oil, add crushed tomatoes and simmer.",
    "Season with salt at the end, because the sauce reduces and concentrates as it cooks.",
    "Compound interest means that interest is earned on previously earned interest as well.",
    "Over thirty years, even a small difference in the annual rate adds up to a large amount.",
    "In Python, a list comprehension builds a new list from an iterable in a single expression.",
    "For example, [x * x for x in range(10)] returns the squares of the first ten integers.",
    "The mitochondria produce most of the cell's supply of adenosine triphosphate.",
    "Regular exercise improves cardiovascular health and helps regulate sleep.",
    "Experts recommend about 150 minutes of moderate activity per week for adults.",
    "A haiku is a short poem of three lines with five, seven and five syllables.",
    "The Pythagorean theorem states that the square of the hypotenuse equals the sum of the other squares.",
    "So a right triangle with sides 3 and 4 has a hypotenuse of length 5.",
    "Supply and demand determine the market price of most goods.",
    "When supply falls while demand stays the same, prices tend to rise.",
    "The Great Barrier Reef is the largest coral reef system in the world.",
    "Warmer ocean temperatures cause coral bleaching, which threatens the reef.",
    "A good cover letter is short, specific and tailored to the job description.",
    "Start with why you are interested in the role, then give one or two concrete achievements.",
    "Git stores snapshots of a project, and each commit points to its parent.",
    "Use git rebase to replay your commits on top of the latest main branch.",
    "The speed of light in vacuum is about 299,792 kilometres per second.",
    "Nothing carrying information can travel faster than light, according to special relativity.",
    "Shakespeare wrote thirty-seven plays, including Hamlet, Macbeth and King Lear.",
    "Many of his phrases, such as 'break the ice', are still used in everyday English.",
    "In summary, the answer depends on the context, but these are the key points to keep in mind.",
    "First, define the problem clearly; second, list the constraints; third, compare the options.",
]
PROMPTS = [
    "Can you explain this topic to a beginner?",
    "Write a detailed answer with examples.",
    "Summarise the main ideas in a few paragraphs.",
    "What should I know about this? Please be thorough.",
    "Give me a step-by-step explanation.",
]


def build_records(tok: Any, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` chat samples whose tokenised length is drawn uniformly from 100-600 tokens (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        target = int(rng.integers(100, 600))
        user = " ".join(rng.choice(SENTENCES, 2)) + " " + str(rng.choice(PROMPTS))
        answer: list[str] = []
        while len(tok(user + " ".join(answer))["input_ids"]) < target - 12:
            answer.append(str(rng.choice(SENTENCES)))
        out.append({"id": f"bench-{i:04d}", "prompt": user, "completion": " ".join(answer)})
    return out


def setup(work: Path, n: int, n_bf16: int | None = None) -> dict[str, Any]:
    """Prepared data (and its first ``n_bf16`` samples), a random LoRA adapter on SmolLM2 and its merged full
    copy (for the reference way)."""
    from tokenclean.data.prepare import prepare
    from tokenclean.models.loader import load_model, load_tokenizer
    from tokenclean.testing import make_lora_adapter

    tok = load_tokenizer("smollm2")
    recs = [json.dumps(r) + "\n" for r in build_records(tok, n)]  # deterministic; rewritten only on change
    kw: dict[str, Any] = {"tokenizer_name": "smollm2", "max_length": 1024, "progress": False}
    for name, rows in (("data", recs), ("data-bf16", recs[: n_bf16 or n])):
        path = work / f"{name}.jsonl"
        if not path.exists() or path.read_text() != "".join(rows):
            path.write_text("".join(rows))
    m = prepare(work / "data.jsonl", tok, work / "prep", **kw)
    prepare(work / "data-bf16.jsonl", tok, work / "prep-bf16", **kw)
    if not (work / "adapter").exists():
        model = load_model("smollm2")
        make_lora_adapter(model, work / "adapter", base="smollm2", seed=0, rank=16, std=0.02)
        merged = load_model("smollm2", adapter=str(work / "adapter")).merge_and_unload()
        merged.save_pretrained(work / "merged")
        tok.save_pretrained(work / "merged")
    return m


# --- workers (each in its own process) ----------------------------------------------------------------


def proc_status_mb(key: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak of this process image) from /proc/self/status, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rows(work: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    import datasets

    ds = datasets.load_from_disk(str(work / "prep"))
    return [(np.array(r["input_ids"]), np.array(r["labels"])) for r in ds]


def reference_losses(model: Any, rows: list[tuple[np.ndarray, np.ndarray]], bs: int) -> list[list[float]]:
    """The reference approach: file order, pad to longest, full logits, CE(reduction='none'), lists."""
    import torch

    ce = torch.nn.CrossEntropyLoss(reduction="none")
    out: list[list[float]] = []
    for i in range(0, len(rows), bs):
        batch = rows[i : i + bs]
        t = max(len(ids) for ids, _ in batch)
        ids = torch.zeros((len(batch), t), dtype=torch.long)  # (B, T)
        labels = torch.full((len(batch), t), -100, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(batch), t), dtype=torch.long)
        for r, (x, y) in enumerate(batch):
            ids[r, : len(x)], labels[r, : len(x)], mask[r, : len(x)] = (
                torch.from_numpy(x),
                torch.from_numpy(y),
                1,
            )
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V) fp32
            v = logits.shape[-1]
            loss = ce(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1)).view(len(batch), t - 1)
        for r, (x, y) in enumerate(batch):
            row, lab = loss[r, : len(x) - 1].tolist(), y[1:].tolist()
            out.append([v for v, lb in zip(row, lab) if lb != -100])
    return out


def worker_reference(work: Path, bs: int) -> dict[str, Any]:
    import gc

    from tokenclean.models.loader import load_model

    rows = _rows(work)
    res: dict[str, Any] = {
        "load_s": 0.0,
        "score_s": 0.0,
        "cpu_s": 0.0,
        "tokens": sum(len(x) for x, _ in rows),
    }
    flat = {}
    for name, path in (("base", "smollm2"), ("ref", str(work / "merged"))):
        t0 = time.perf_counter()
        model = load_model(
            path
        )  # a full fp32 model per pass, as the reference code loads base and merged ref
        t1, c1 = time.perf_counter(), time.process_time()
        losses = reference_losses(model, rows, bs)
        res["score_s"] += time.perf_counter() - t1
        res["cpu_s"] += time.process_time() - c1
        res["load_s"] += t1 - t0
        flat[name] = np.array([x for s in losses for x in s], dtype=np.float32)
        flat["counts"] = np.array([len(s) for s in losses])
        del model, losses
        gc.collect()
    np.savez(work / "reference.npz", **flat)
    return res


def worker_tokenclean(work: Path, dtype: str, batch_tokens: int | None) -> dict[str, Any]:
    import datasets

    from tokenclean.scoring import score_dataset

    out = work / f"store-{dtype}"
    t0 = time.perf_counter()
    m = score_dataset(
        work / ("prep" if dtype == "fp32" else "prep-bf16"), "smollm2", reference=str(work / "adapter"), out=out, dtype=dtype,
        batch_tokens=batch_tokens, progress=False, force=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    ds = datasets.load_from_disk(str(out))
    flat = {"counts": np.array([int(np.sum(~np.isnan(np.asarray(x, np.float32)))) for x in ds["base_loss"]])}
    for name, col in (("base", "base_loss"), ("ref", "ref_loss")):
        arr = np.concatenate([np.asarray(x, dtype=np.float32) for x in ds[col]])
        flat[name] = arr[~np.isnan(arr)]
    np.savez(work / f"tokenclean-{dtype}.npz", **flat)
    t = m["timings"]
    tokens = m["counts"]["tokens"]
    return {
        "score_s": t["compute_seconds"],
        "cpu_s": t["compute_cpu_seconds"],
        "e2e_s": wall,
        "tokens": tokens,
    }


def thread_policy(policy: str) -> int:
    """torch threads by a named policy (bench_contention.py compares them): ``loadavg`` (tokenclean before
    2026-12-05: cores minus the 1-minute load average), ``idle`` (cores idle now, /proc/stat), ``all``."""
    from tokenclean.utils import idle_cores, usable_cores

    cores = usable_cores()
    busy = {"loadavg": lambda: os.getloadavg()[0], "idle": lambda: cores - idle_cores(cores=cores)}
    if policy == "all":
        return cores
    return max(1, min(cores, int(cores - busy[policy]() + 0.5)))


def run_worker(args: argparse.Namespace) -> None:
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    threads = None
    if os.environ.get("BENCH_THREAD_POLICY"):
        import torch

        threads = thread_policy(os.environ["BENCH_THREAD_POLICY"])
        torch.set_num_threads(threads)
    if args.worker == "reference":
        res = worker_reference(args.work, args.ref_batch_size)
    else:
        res = worker_tokenclean(args.work, args.worker.split("-")[1], args.batch_tokens)
    res.setdefault("e2e_s", time.perf_counter() - t0)
    res.update(
        peak_rss_mb=proc_status_mb("VmHWM"),
        load=[load0, os.getloadavg()[0]],
        threads=threads,
    )
    (args.work / f"{args.worker}.json").write_text(json.dumps(res))


# --- parent ---------------------------------------------------------------------------------------------


def matmul_peak(dtype_name: str, reps: int = 3) -> float:
    """Best FLOP/s of ``torch.matmul`` (square) and ``F.linear`` (the model's own GEMM shape, 4096 x 576 x 1536)
    in ``dtype`` on this machine, now: the better kernel counts as the peak."""
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    n = (
        2048 if dtype_name == "fp32" else 512
    )  # CPU bf16 without native support is ~100x slower: keep it short
    cases = [
        (lambda a, b: torch.matmul(a, b), torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt), 2 * n**3),
        (torch.nn.functional.linear, torch.randn(4096, 576, dtype=dt), torch.randn(1536, 576, dtype=dt),
         2 * 4096 * 576 * 1536),
    ]  # fmt: skip
    best = 0.0
    for fn, a, b, flop in cases:
        fn(a, b)
        for _ in range(reps):
            t = time.perf_counter()
            fn(a, b)
            best = max(best, flop / (time.perf_counter() - t))
    return best


def spawn(work: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE), "--worker", name, "--work", str(work)]
    cmd += ["--ref-batch-size", str(args.ref_batch_size)]
    cmd += ["--batch-tokens", str(args.batch_tokens)] if args.batch_tokens else []
    env = dict(os.environ, TOKENCLEAN_LOGLEVEL="WARNING", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run(cmd, check=True, env=env)
    return json.loads((work / f"{name}.json").read_text())


def top_set(scores: np.ndarray, ratio: float) -> np.ndarray:
    """Global top-``ratio`` membership (stable order on ties)."""
    k = int(len(scores) * ratio)
    keep = np.zeros(len(scores), dtype=bool)
    keep[np.argsort(-scores, kind="stable")[:k]] = True
    return keep


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def print_table(
    res: dict[str, dict[str, Any]], losses: dict[str, Any], n_params: int, peaks: dict[str, float]
) -> None:
    ref = losses["reference"]
    print(f"\n{'approach':16s} {'samples':>7s} {'tok/s':>7s} {'tok/cpu-s':>9s} {'score s':>8s} {'e2e s':>7s} "
          f"{'peak RSS':>9s} {'max|dloss| vs ref':>17s} {'FLOP/s % peak':>13s}  load avg")  # fmt: skip
    for name, r in res.items():
        own, n_s = losses[name], len(losses[name]["counts"])
        m = int(own["counts"].sum())  # compare on the samples this approach scored (a prefix of the set)
        diff = max(float(np.abs(own[k][:m] - ref[k][:m]).max()) for k in ("base", "ref"))
        tps = r["tokens"] / r["score_s"]
        flops = 2 * n_params * 2 * tps  # both models see every token
        peak = peaks["bf16" if name.endswith("bf16") else "fp32"]
        print(f"{name:16s} {n_s:7d} {tps:7.1f} {r['tokens'] / r['cpu_s']:9.1f} {r['score_s']:8.1f} "
              f"{r['e2e_s']:7.1f} {r['peak_rss_mb']:7.0f}MB {diff:17.2e} {100 * flops / peak:12.1f}%  "
              f"{r['load'][0]:.1f} -> {r['load'][1]:.1f}")  # fmt: skip


def flop_ratio(work: Path, ref_bs: int, batch_tokens: int | None, n_params: int, head: int) -> float:
    """Nominal FLOPs of the reference way / tokenclean's on this data: padded tokens x (body + head) vs
    tokenclean's padded tokens x body + trained tokens x head (head = vocab x hidden)."""
    from tokenclean.scoring.engine import default_batch_tokens, make_batches

    rows = _rows(work)
    lens = np.array([len(x) for x, _ in rows])
    trained = sum(int((y[1:] != -100).sum()) for _, y in rows)
    ref_pad = sum(len(lens[i : i + ref_bs]) * lens[i : i + ref_bs].max() for i in range(0, len(lens), ref_bs))
    batches = make_batches(list(lens), batch_tokens or default_batch_tokens("cpu"))
    ours_pad = sum(len(b) * max(lens[j] for j in b) for b in batches)
    print(f"padded tokens per model pass: reference {ref_pad}, tokenclean {ours_pad} (real {lens.sum()}); "
          f"LM-head rows: reference {ref_pad}, tokenclean {trained}")  # fmt: skip
    return float(ref_pad * n_params / (ours_pad * (n_params - head) + trained * head))


def print_ratios(res: dict[str, dict[str, Any]]) -> None:
    base = res["reference"]
    for name in ("tokenclean-fp32", "tokenclean-bf16"):
        r = res[name]
        tps, tps0 = r["tokens"] / r["score_s"], base["tokens"] / base["score_s"]
        cps, cps0 = r["tokens"] / r["cpu_s"], base["tokens"] / base["cpu_s"]
        print(f"{name} vs reference: {tps / tps0:.2f}x tokens/s (wall), {cps / cps0:.2f}x tokens per CPU-second, "
              f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x peak RSS")  # fmt: skip


def print_bf16_effect(losses: dict[str, Any]) -> None:
    f32, b16 = losses["tokenclean-fp32"], losses["tokenclean-bf16"]
    m = int(b16["counts"].sum())
    d = {k: np.abs(f32[k][:m] - b16[k]) for k in ("base", "ref")}
    s32, s16 = f32["base"][:m] - f32["ref"][:m], b16["base"] - b16["ref"]
    a, b = top_set(s32, 0.6), top_set(s16, 0.6)
    print(f"bf16 vs fp32 on the same {len(b16['counts'])} samples ({m} scored tokens): max |loss diff| "
          f"{max(x.max() for x in d.values()):.3f} nats, mean {np.mean([x.mean() for x in d.values()]):.4f}; "
          f"max |score diff| {np.abs(s32 - s16).max():.3f}; global top-60% set: {(a != b).mean():.2%} of tokens "
          f"change membership ({1 - (a & b).sum() / a.sum():.2%} of the fp32-kept tokens dropped)")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-samples", type=int, default=24)
    p.add_argument("--bf16-samples", type=int, default=None,
                   help="samples scored in bf16 (default: all on CPUs with bf16 units, else 3: emulated bf16 is slow)")  # fmt: skip
    p.add_argument("--ref-batch-size", type=int, default=8, help="fixed batch size of the reference way")
    p.add_argument(
        "--batch-tokens", type=int, default=None, help="tokenclean's token budget (default: its own)"
    )
    p.add_argument(
        "--rounds", type=int, default=2, help="interleaved rounds of the fp32 approaches (best kept)"
    )
    p.add_argument("--work", type=Path, default=None, help="work dir (default: a fresh temporary dir)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return run_worker(args)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_scoring-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENCLEAN_LOGLEVEL", "WARNING")
    import torch

    from tokenclean.models.loader import load_model
    from tokenclean.utils import package_versions

    n_bf16 = args.bf16_samples or (args.n_samples if cpu_has_bf16() else 3)
    m = setup(work, args.n_samples, min(n_bf16, args.n_samples))
    n_params = sum(t.numel() for t in load_model("smollm2").parameters())
    print(f"{m['counts']['written']} samples, {m['tokens']['total']} tokens ({m['tokens']['trained']} scored); "
          f"bf16 on the first {n_bf16} (CPU bf16 units: {cpu_has_bf16()}); work dir {work}")  # fmt: skip
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; {package_versions()}"
    )
    peaks = {d: matmul_peak(d) for d in ("fp32", "bf16")}
    rounds: dict[str, list[dict[str, Any]]] = {"reference": [], "tokenclean-fp32": [], "tokenclean-bf16": []}
    for r in range(args.rounds):  # interleaved rounds; the fastest round of each approach is reported
        for name in rounds:
            if name != "tokenclean-bf16" or r == 0:
                rounds[name].append(spawn(work, name, args))
    for name, rs in rounds.items():
        print(f"{name}: scoring-loop seconds per round {[round(x['score_s'], 1) for x in rs]}")
    res = {name: min(rs, key=lambda x: x["score_s"]) for name, rs in rounds.items()}
    peaks = {d: max(peaks[d], matmul_peak(d)) for d in peaks}  # before and after the workers: the better
    losses = {k: np.load(work / f"{k}.npz") for k in res}
    print_table(res, losses, n_params, peaks)
    print_ratios(res)
    head = 49152 * 576  # SmolLM2-135M LM head (tied to the embedding): vocab x hidden
    ratio = flop_ratio(work, args.ref_batch_size, args.batch_tokens, n_params, head)
    print(f"nominal FLOP ratio reference / tokenclean on these samples: {ratio:.2f}x (the speed-up to expect "
          "when both run at the same efficiency)")  # fmt: skip
    print_bf16_effect(losses)
    print(f"matmul peak (this run, best of torch.matmul and F.linear): fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s; {n_params / 1e6:.1f}M params; "
          "FLOP/s = 2 x params x 2 models x tokens/s")  # fmt: skip


if __name__ == "__main__":
    main()
