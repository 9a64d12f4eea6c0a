"""Training benchmark: tokenclean's training loop vs TRL ``SFTTrainer`` on the same cleaned dataset.

    python benchmarks/bench_training.py                       # 24 chat samples of 100-600 tokens, SmolLM2-135M
    python benchmarks/bench_training.py --steps 4 --precisions fp32

In ONE run, on the same real model (SmolLM2-135M-Instruct, alias ``smollm2``), the same cleaned dataset (the
samples of ``bench_scoring.py``, random scores, global top-60% kept: the keep ratio of the target), the same LoRA
(r 64, alpha 16, dropout 0.1 on q,k,v,o,gate,up,down) and batch settings (micro-batch 4, accumulation 2, lr
1e-4, no warm-up, gradient checkpointing off for both unless ``--checkpointing``: TRL's ``SFTConfig``
turns it on by default, which trades speed for memory), each approach trains ``--steps`` optimizer steps in its own subprocess (peak RSS =
``VmHWM`` of /proc/self/status per approach), in fp32 and under bf16 autocast:

- ``tokenclean``: ``tokenclean.training.train`` (policy ``labels``): the LM head only at kept positions,
  micro-batches grouped by length.
- ``trl``: ``trl.SFTTrainer`` with the dataset as is (``skip_prepare_dataset``), a right-padding collator,
  its default loss (full logits, cross-entropy over ``labels != -100``), ``bf16=True`` for the bf16 row.
- ``trlpack``: ``trl.SFTTrainer`` with its own packing (``packing=True, padding_free=True``, rows of
  ``PACK_LENGTH`` tokens, one row per micro-batch), its collator and loss.
- ``tcpack``: TRL with tokenclean's loss plug-in (``tokenclean.interop.sft_trainer``), packed and padding-free
  the same way (the LM head only on kept tokens, the loss normalised over the window).

tokens/s = non-padding input tokens of the optimizer steps / seconds of the training loop (tokenclean:
``done.json`` ``seconds``; TRL: ``trainer.train()`` wall). Both see ``steps x 8`` samples; their orders differ
(each seeds its own shuffle), so the token counts are printed next to the rates; a packed step holds two rows of
up to ``PACK_LENGTH`` tokens, so more samples than a padded one: compare the rates, not the totals.
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
sys.path.insert(0, str(HERE.parent))
LORA = {"r": 64, "alpha": 16.0, "dropout": 0.1}
PACK_LENGTH = 2048  # packed rows (trlpack, tcpack): every 8-sample step fits in few rows
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def setup(work: Path, n: int) -> Path:
    """Prepared chat samples (those of bench_scoring) and their global top-60% selection from random scores."""
    from bench_scoring import build_records

    from tokenclean.data.prepare import prepare
    from tokenclean.models.loader import load_tokenizer
    from tokenclean.selection import select
    from tokenclean.testing.stores import write_score_store

    work.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer("smollm2")
    rows = "".join(json.dumps(r) + "\n" for r in build_records(tok, n))
    src = work / "data.jsonl"
    if not src.exists() or src.read_text() != rows:
        src.write_text(rows)
    prepare(src, tok, work / "prep", tokenizer_name="smollm2", max_length=1024, progress=False)
    store = write_score_store(work / "scores", work / "prep", seed=0)
    select(store, 0.6, "global", work / "clean")
    return work / "clean"


def worker_tokenclean(work: Path, steps: int, bf16: bool, threads: int, ckpt: bool) -> dict[str, Any]:
    import shutil

    from tokenclean.training import TrainConfig, train

    out = work / f"tc-{'bf16' if bf16 else 'fp32'}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(
        lora_r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], batch_size=4, grad_accum=2,
        max_steps=steps, warmup_ratio=0.0, save_steps=0, bf16=bf16, gradient_checkpointing=ckpt,
    )  # fmt: skip
    done = train(work / "clean", "smollm2", out, cfg, progress=False, device="cpu", threads=threads)
    return {"tokens": done["tokens"]["input"], "kept": done["tokens"]["kept"], "seconds": done["seconds"]}


def counting(collate: Any, seen: dict[str, int]) -> Any:
    """Wrap a collator: add each batch's non-padding input tokens and counted labels to ``seen``."""

    def wrapped(rows: list[dict[str, Any]]) -> dict[str, Any]:
        out = collate(rows)
        att = out.get("attention_mask")
        seen["tokens"] += int(out["input_ids"].numel() if att is None else att.sum())
        seen["kept"] += int((out["labels"][:, 1:] != -100).sum())
        return out

    return wrapped


def worker_trl(
    work: Path, steps: int, bf16: bool, threads: int, ckpt: bool, mode: str = "trl"
) -> dict[str, Any]:
    """``trl``: padded batches, TRL's loss. ``trlpack``: TRL's own packing (packing + padding-free, its
    collator and loss). ``tcpack``: TRL with tokenclean's plug-in (``tokenclean.interop.sft_trainer``),
    packed and padding-free."""
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from trl import SFTConfig, SFTTrainer

    from tokenclean.models.loader import load_model, load_tokenizer

    torch.set_num_threads(threads)
    tok = load_tokenizer("smollm2")
    # in memory: TRL's own preparation (trlpack) would write datasets cache files into the cleaned set
    # directory, which tokenclean then refuses as changed since it was written
    ds = datasets.load_from_disk(str(work / "clean"), keep_in_memory=True).select_columns(
        ["input_ids", "attention_mask", "labels"]
    )
    model = get_peft_model(
        load_model("smollm2"),
        LoraConfig(
            r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules=TARGETS
        ),
    )
    seen = {"tokens": 0, "kept": 0}

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(r["input_ids"]) for r in rows)
        out = {}
        for key, fill in (("input_ids", tok.pad_token_id), ("attention_mask", 0), ("labels", -100)):
            out[key] = torch.tensor([list(r[key]) + [fill] * (width - len(r[key])) for r in rows])
        return out

    packed = mode in ("trlpack", "tcpack")
    args = SFTConfig(
        output_dir=str(work / "trl-out"), max_steps=steps, per_device_train_batch_size=4 if not packed else 1,
        gradient_accumulation_steps=2, learning_rate=1e-4, warmup_steps=0, lr_scheduler_type="linear",
        use_cpu=True, bf16=bf16, gradient_checkpointing=ckpt, report_to=[], save_strategy="no", disable_tqdm=True, logging_steps=steps,
        dataloader_num_workers=0, packing=packed, padding_free=packed, max_length=PACK_LENGTH,
        remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": mode == "trl"},
    )  # fmt: skip
    if mode == "tcpack":
        from tokenclean.interop import sft_trainer

        trainer = sft_trainer(model, args, work / "clean", processing_class=tok)
    else:
        coll = collate if mode == "trl" else None
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=ds, processing_class=tok, data_collator=coll
        )
    trainer.data_collator = counting(trainer.data_collator, seen)
    t = time.perf_counter()
    trainer.train()
    return {"tokens": seen["tokens"], "kept": seen["kept"], "seconds": time.perf_counter() - t}


def run_worker(a: argparse.Namespace) -> None:
    from bench_scoring import proc_status_mb

    load0 = os.getloadavg()[0]
    args = (a.work, a.steps, a.worker.endswith("bf16"), a.threads, a.checkpointing)
    mode = a.worker.split("-")[0]
    res = worker_tokenclean(*args) if mode == "tokenclean" else worker_trl(*args, mode=mode)
    res.update(peak_rss_mb=proc_status_mb("VmHWM"), load=[load0, os.getloadavg()[0]])
    (a.work / f"{a.worker}.json").write_text(json.dumps(res))


def spawn(a: argparse.Namespace, name: str) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE), "--worker", name, "--work", str(a.work), "--steps", str(a.steps)]
    cmd += ["--threads", str(a.threads)] + (["--checkpointing"] if a.checkpointing else [])
    env = dict(os.environ, TOKENCLEAN_LOGLEVEL="WARNING", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run(cmd, check=True, env=env)
    return json.loads((a.work / f"{name}.json").read_text())


def rate(r: dict[str, Any]) -> float:
    return r["tokens"] / r["seconds"]


def summary(res: dict[str, dict[str, Any]], precisions: list[str]) -> None:
    """The table of every approach and, per precision, each one's rate and peak RSS against a baseline
    measured in the same run (trl, and trlpack for tcpack)."""
    print("\n| approach | tokens | kept | seconds | tokens/s | peak RSS | load start/end |")
    print("|---|---|---|---|---|---|---|")
    for name, r in res.items():
        print(
            f"| {name} | {r['tokens']} | {r['kept']} | {r['seconds']:.1f} | {rate(r):.1f} | "
            f"{r['peak_rss_mb']:.0f} MB | {r['load'][0]:.2f}/{r['load'][1]:.2f} |"
        )
    for prec in precisions:
        for name, base in (
            ("trlpack", "trl"),
            ("tcpack", "trl"),
            ("tcpack", "trlpack"),
            ("tokenclean", "trl"),
        ):
            o, b = res[f"{name}-{prec}"], res[f"{base}-{prec}"]
            note = " (target >= 1.3x; peak RSS <= 1)" if name == "tokenclean" else ""
            print(
                f"{prec}: {name} / {base} tokens/s = {rate(o) / rate(b):.2f}x; "
                f"peak RSS = {o['peak_rss_mb'] / b['peak_rss_mb']:.2f}x{note}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/tokenclean-bench-training"))
    p.add_argument("--n-samples", type=int, default=24)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument(
        "--checkpointing",
        action="store_true",
        help="gradient checkpointing on for both (TRL's SFTConfig default is on; tokenclean's is off)",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        run_worker(a)
        return
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    setup(a.work, a.n_samples)
    res = {}
    for prec in a.precisions.split(","):
        for name in (f"trl-{prec}", f"trlpack-{prec}", f"tcpack-{prec}", f"tokenclean-{prec}"):
            res[name] = spawn(a, name)
    summary(res, a.precisions.split(","))


if __name__ == "__main__":
    main()
