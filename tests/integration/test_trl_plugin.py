"""tokenclean's token policies inside TRL's SFTTrainer: padded, padding-free and packed batches give the same
loss; gradient accumulation 1 vs 4 the same update; evaluation runs; configurations that would bypass the loss
are refused; and the plug-in trains the same adapter as ``tokenclean train``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tokenclean.errors import ConfigError
from tokenclean.testing import require

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sets(cleaned_sets: dict[str, Path]) -> dict[str, Path]:
    return cleaned_sets


def lora(model_dir: Path, seed: int = 0) -> Any:
    from tokenclean.models.loader import resolve_model
    from tokenclean.training import TrainConfig
    from tokenclean.training.model import build_lora_model

    cfg = TrainConfig(lora_r=4, lora_dropout=0.0, seed=seed)
    return build_lora_model(resolve_model(str(model_dir)), cfg, None, "cpu")


def sft_args(out: Path, **kw: Any) -> Any:
    from trl import SFTConfig

    base = dict(
        output_dir=str(out), use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, seed=0,
        max_length=128, per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=1,
        learning_rate=1e-2, lr_scheduler_type="constant", warmup_steps=0, logging_steps=1,
        gradient_checkpointing=False, dataloader_num_workers=0, bf16=False,
    )  # fmt: skip
    base.update(kw)
    return SFTConfig(**base)


def trainer_for(model: Any, tok: Any, data: Any, out: Path, policy: str | None = None, **kw: Any) -> Any:
    from tokenclean.interop import sft_trainer

    return sft_trainer(model, sft_args(out, **kw), data, token_policy=policy, processing_class=tok)


@pytest.mark.parametrize("which", ["clean", "soft"])
def test_padded_padding_free_and_packed_give_the_same_loss(
    which: str, sets: dict[str, Path], tiny_model_dir: Path, tiny_tok: Any, tmp_path: Path
) -> None:
    """Labels (cleaned set) and weights (soft set): the plug-in's loss and gradient on one padded batch of
    every sample equal those on the same samples flattened (padding-free) and packed, and the padded loss
    equals the textbook full-logits twin."""
    require("trl")
    import torch

    from tokenclean.interop import token_collator, token_dataset, weighted_token_loss

    model = lora(tiny_model_dir)
    tr = trainer_for(model, tiny_tok, sets[which], tmp_path)
    ds, packed = token_dataset(sets[which], 128), token_dataset(sets[which], 128, packing=True)
    assert len(packed) < len(ds) and sum(len(r) for r in packed["seq_lengths"]) == len(ds)
    rows = [ds[i] for i in range(len(ds))]
    layouts = {
        "padded": token_collator(tiny_tok.pad_token_id)(rows),
        "padding_free": token_collator(tiny_tok.pad_token_id, padding_free=True)(rows),
        "packed": token_collator(tiny_tok.pad_token_id)([packed[i] for i in range(len(packed))]),
    }
    assert "attention_mask" not in layouts["packed"] and layouts["packed"]["input_ids"].shape[0] == 1
    got = {}
    for name, batch in layouts.items():
        model.zero_grad()
        loss = tr.compute_loss(model, dict(batch))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        got[name] = (float(loss), grads.clone())
    for name in ("padding_free", "packed"):
        assert got[name][0] == pytest.approx(got["padded"][0], rel=1e-5), name
        torch.testing.assert_close(got[name][1], got["padded"][1], rtol=1e-4, atol=1e-6)
    b = layouts["padded"]
    w = b.get("token_weights", (b["labels"] != -100).float())
    w[:, 0] = 0
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        twin = float(weighted_token_loss(logits, b["labels"], w, w[:, 1:].sum()))
    assert got["padded"][0] == pytest.approx(twin, rel=1e-5)


def lora_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same_adapter(a: dict[str, Any], b: dict[str, Any], rtol: float, atol: float) -> float:
    """Equal LoRA tensors within tolerance; returns the largest absolute difference (for the record)."""
    import torch

    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
    return worst


def test_accumulation_1_vs_4_and_packing_give_the_same_update(
    sets: dict[str, Path], tiny_model_dir: Path, tiny_tok: Any, tmp_path: Path
) -> None:
    """Soft weights, two SGD steps over the whole set: one micro-batch per step, four, and packed rows
    (padding-free) one per micro-batch, end at the same adapter (SGD: Adam's first steps divide tiny
    gradients by their own size and would magnify float rounding)."""
    require("trl")
    n = len(__import__("datasets").load_from_disk(str(sets["soft"])))
    states = {}
    for name, kw in {
        "accum1": dict(per_device_train_batch_size=n, gradient_accumulation_steps=1),
        "accum4": dict(per_device_train_batch_size=math.ceil(n / 4), gradient_accumulation_steps=4),
        "packed4": dict(
            per_device_train_batch_size=1, gradient_accumulation_steps=n, packing=True, padding_free=True
        ),
    }.items():
        model = lora(tiny_model_dir)
        before = lora_state(model)
        tr = trainer_for(model, tiny_tok, sets["soft"], tmp_path / name, max_steps=2, optim="sgd", **kw)
        tr.train()
        states[name] = lora_state(model)
    assert any(float((states["accum1"][k] - before[k]).abs().max()) > 1e-3 for k in before)  # it moved
    assert_same_adapter(states["accum4"], states["accum1"], rtol=1e-5, atol=1e-7)
    assert_same_adapter(states["packed4"], states["accum1"], rtol=1e-5, atol=1e-7)


def test_evaluation_runs_with_dft(
    sets: dict[str, Path], tiny_model_dir: Path, tiny_tok: Any, tmp_path: Path
) -> None:
    """Evaluation (num_items_in_batch None; TRL #4096) with DFT on a packed eval set: a finite loss equal to
    the DFT rule computed on one padded batch of the same samples."""
    require("trl")
    import torch

    from tokenclean.interop import token_collator, token_dataset

    model = lora(tiny_model_dir)
    n = len(token_dataset(sets["clean"], 128))
    tr = trainer_for(model, tiny_tok, sets["clean"], tmp_path, policy="dft", per_device_eval_batch_size=n,
                     packing=True, padding_free=True)  # fmt: skip
    tr.eval_dataset = token_dataset(sets["clean"], 128, packing=True)
    got = tr.evaluate()["eval_loss"]
    assert math.isfinite(got)
    ds = token_dataset(sets["clean"], 128)
    b = token_collator(tiny_tok.pad_token_id)([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        logp = (
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float().log_softmax(-1)
        )
        lp = logp[:, :-1].gather(-1, b["input_ids"][:, 1:, None])[..., 0]  # (B, T-1)
        m = b["labels"][:, 1:] != -100
        by_hand = float((-(lp.exp() * lp))[m].sum() / m.sum())
    assert got == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"use_liger_kernel": True}, "args.use_liger_kernel"),
        ({"loss_type": "dft"}, "args.loss_type"),
        ({"label_smoothing_factor": 0.1}, "args.label_smoothing_factor"),
        ({"packing": True, "packing_strategy": "wrapped"}, "args.packing_strategy"),
    ],
)
def test_configurations_that_bypass_the_loss_are_refused(
    kw: dict[str, Any], key: str, sets: dict[str, Path], tiny_model_dir: Path, tiny_tok: Any, tmp_path: Path
) -> None:
    require("trl")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        trainer_for(lora(tiny_model_dir), tiny_tok, sets["soft"], tmp_path, **kw)


def test_compute_loss_func_and_multi_pass_policies_are_refused(
    sets: dict[str, Path], tiny_model_dir: Path, tiny_tok: Any, tmp_path: Path
) -> None:
    require("trl")
    from trl import SFTTrainer

    from tokenclean.interop import TokenPolicyMixin, token_loss

    class Mine(TokenPolicyMixin, SFTTrainer):
        pass

    with pytest.raises(ConfigError, match="compute_loss_func"):
        Mine(model=lora(tiny_model_dir), args=sft_args(tmp_path), train_dataset=sets["clean"],
             processing_class=tiny_tok, compute_loss_func=token_loss)  # fmt: skip
    tr = trainer_for(lora(tiny_model_dir), tiny_tok, sets["clean"], tmp_path, policy="profit")
    with pytest.raises(ConfigError, match="no-grad pass"):
        tr.train()


@pytest.mark.parametrize("policy", ["labels", "dft", "eaft"])
def test_trl_plugin_trains_the_adapter_tokenclean_train_does(
    policy: str, sets: dict[str, Path], tiny_model_dir: Path, tiny_tok: Any, tmp_path: Path
) -> None:
    """Same data, seed, LoRA init, optimizer and schedule (every step sees the whole set, so the two data
    orders do not matter): TRL with the plug-in (packed, padding-free) and ``tokenclean train`` end at the
    same adapter within rtol 1e-3 / atol 1e-5 after three AdamW steps at lr 1e-2 (largest entry difference
    measured: 2.8e-07 for labels, 2.6e-06 for dft, 1.1e-07 for eaft)."""
    require("trl")
    from safetensors.torch import load_file

    from tokenclean.interop import token_dataset
    from tokenclean.training import TrainConfig, train

    n = len(token_dataset(sets["clean"], 128))
    cfg = TrainConfig(lora_r=4, lora_dropout=0.0, batch_size=math.ceil(n / 4), grad_accum=4, max_steps=3, seed=0,
                      lr=1e-2, warmup_ratio=0.0, max_grad_norm=1.0, policy=policy, max_length=128, save_steps=0)  # fmt: skip
    train(sets["clean"], str(tiny_model_dir), tmp_path / "tc", cfg, progress=False, device="cpu")
    ours = load_file(str(tmp_path / "tc" / "adapter" / "adapter_model.safetensors"))
    model = lora(tiny_model_dir)
    tr = trainer_for(model, tiny_tok, sets["clean"], tmp_path / "trl", policy=policy, max_steps=3,
                     per_device_train_batch_size=1, gradient_accumulation_steps=n, packing=True,
                     padding_free=True, lr_scheduler_type="linear", max_grad_norm=1.0)  # fmt: skip
    tr.train()
    theirs = {k: v for k, v in lora_state(model).items()}
    mapped = {k.replace(".default", ""): v for k, v in theirs.items()}
    assert set(mapped) == set(ours)
    worst = max(float((mapped[k] - ours[k]).abs().max()) for k in ours)
    print(f"{policy}: largest |TRL - tokenclean| LoRA entry after 3 steps: {worst:.2e}")
    assert_same_adapter(
        mapped, ours, rtol=1e-3, atol=1e-5
    )  # measured: labels 2.8e-07, dft 2.6e-06, eaft 1.1e-07


@pytest.mark.slow
def test_two_processes_equal_one(sets: dict[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    """Data parallel (2 gloo processes under torchrun) with micro-batch B equals 1 process with 2B: the
    window's weight sum is gathered over both devices and DDP's gradient mean is undone."""
    require("trl")
    import os
    import socket
    import subprocess
    import sys

    from safetensors.torch import load_file

    from tokenclean.interop import token_dataset

    n = len(token_dataset(sets["soft"], 128))
    worker = str(Path(__file__).with_name("trl_dp_worker.py"))
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENCLEAN_LOGLEVEL="WARNING")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    b = math.ceil(n / 4)
    one = [
        sys.executable,
        worker,
        str(sets["soft"]),
        str(tiny_model_dir),
        str(tmp_path / "one.st"),
        str(2 * b),
        "2",
    ]
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", port, worker, str(sets["soft"]), str(tiny_model_dir), str(tmp_path / "two.st"), str(b), "2"]  # fmt: skip
    for cmd in (one, two):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-4000:]
    one_st, two_st = load_file(str(tmp_path / "one.st")), load_file(str(tmp_path / "two.st"))
    assert max(float(v.abs().max()) for k, v in one_st.items() if "lora_B" in k) > 1e-4  # it trained
    worst = assert_same_adapter(two_st, one_st, 1e-5, 1e-7)
    print(f"2 processes vs 1: largest LoRA entry difference {worst:.2e}")


def test_token_dataset_from_a_dataset_equals_from_the_directory(sets: dict[str, Path]) -> None:
    """A ``datasets.Dataset`` source is cut to max_length and filtered like a tokenclean directory."""
    import datasets

    from tokenclean.interop import token_dataset

    for length in (128, 24):
        a = token_dataset(sets["soft"], length)
        b = token_dataset(datasets.load_from_disk(str(sets["soft"]), keep_in_memory=True), length)
        assert a.to_dict() == {k: v for k, v in b.to_dict().items() if k in a.column_names}
