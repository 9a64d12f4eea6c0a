"""tokenclean's token policies inside TRL's SFTTrainer: padded, padding-free and packed batches give the same
loss; gradient accumulation 1 vs 4 the same update; evaluation runs; configurations that would bypass the loss
are refused; and the plug-in trains the same adapter as ``tokenclean train``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tokenclean.errors import ConfigError
from tokenclean.selection import select
from tokenclean.testing import require
from tokenclean.testing.stores import write_score_store

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory, tiny_tok: Any, tiny_tok_dir: Path) -> dict[str, Path]:
    """A cleaned set (kept tokens) and a soft-weighted set (sigmoid weights) of the builtin sample."""
    from tokenclean.data.prepare import prepare

    d = tmp_path_factory.mktemp("trl_sets")
    prepare("builtin:sample", tiny_tok, d / "prep", template="tulu", max_length=128, tokenizer_name=str(tiny_tok_dir))
    store = write_score_store(d / "scores", d / "prep", seed=0)
    select(store, 0.6, "global", d / "clean")
    select(store, 0.6, "global", d / "soft", weights="sigmoid", temperature=0.5)
    return {"clean": d / "clean", "soft": d / "soft", "prep": d / "prep"}


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
        gradient_checkpointing=False, dataloader_num_workers=0,
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
