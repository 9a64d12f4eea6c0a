"""Cleaned data trains one step with the Hugging Face Trainer, as written (no conversion)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tokenclean import IGNORE_INDEX
from tokenclean.selection import select
from tokenclean.testing import require
from tokenclean.testing.stores import write_score_store


@pytest.fixture()
def cleaned_dir(tmp_path: Path, tiny_tok: Any, tiny_tok_dir: Path) -> Path:
    from tokenclean.data.prepare import prepare

    prep = tmp_path / "prep"
    prepare(
        "builtin:sample", tiny_tok, prep, template="tulu", max_length=256, tokenizer_name=str(tiny_tok_dir)
    )
    store = write_score_store(tmp_path / "scores", prep, seed=0)
    st = select(store, 0.6, "global", tmp_path / "clean")
    assert 0 < st["kept_tokens"] < st["total_response_tokens"]
    return tmp_path / "clean"


def pad_collator(pad_id: int):
    """Right-pad input_ids with the pad id, attention_mask with 0 and labels with -100."""
    import torch

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(r["input_ids"]) for r in rows)
        out = {}
        for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
            out[key] = torch.tensor(
                [list(r[key]) + [fill] * (width - len(r[key])) for r in rows], dtype=torch.long
            )
        return out

    return collate


def test_cleaned_data_trains_one_step_with_hf_trainer(
    cleaned_dir: Path, tiny_model_dir: Path, tiny_tok: Any, tmp_path: Path
) -> None:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    ds = datasets.load_from_disk(str(cleaned_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=ds, data_collator=pad_collator(tiny_tok.pad_token_id)
    )
    result = trainer.train()
    assert math.isfinite(result.training_loss) and result.training_loss > 0
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(changed) == len(before)  # every trained weight moved


def test_trainer_loss_counts_only_kept_tokens(cleaned_dir: Path, tiny_model_dir: Path, tiny_tok: Any) -> None:
    """The model's loss on a cleaned batch equals the mean over kept tokens (HF shifts labels itself)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM

    ds = datasets.load_from_disk(str(cleaned_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()

    # a sample that keeps some of its response tokens and drops others
    def n_trained(labels: list[int]) -> int:
        return sum(x != IGNORE_INDEX for x in labels)

    row = next(r for r in ds if 0 < n_trained(r["labels"]) < n_trained(r["response_labels"]))
    n_resp = n_trained(row["response_labels"])
    batch = pad_collator(tiny_tok.pad_token_id)([row])
    with torch.no_grad():
        out = model(**batch)
        logp = torch.log_softmax(out.logits[0].float(), dim=-1)  # (T, V)
    labels = torch.tensor(row["labels"])
    kept = torch.nonzero(labels != IGNORE_INDEX).flatten()  # positions j >= 1 of kept tokens
    naive = -logp[kept - 1, labels[kept]].mean()  # loss(j) from the logits at j - 1
    assert torch.allclose(out.loss, naive, atol=1e-5)
    assert 0 < kept.numel() < n_resp


def test_trl_sft_trainer_consumes_cleaned_data_as_is(
    cleaned_dir: Path, tiny_model_dir: Path, tiny_tok: Any, tmp_path: Path
) -> None:
    """TRL's SFTTrainer keeps a provided ``labels`` column: its batches carry our labels unchanged."""
    require("trl")
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    ds = datasets.load_from_disk(str(cleaned_dir))
    cfg = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=1,
        per_device_train_batch_size=2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tiny_tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for i in range(2):
        want = ds[i]["labels"]
        assert batch["labels"][i][: len(want)].tolist() == want
    assert math.isfinite(trainer.train().training_loss)


def test_soft_weights_train_with_tokenclean_and_trl(
    tmp_path: Path, tiny_tok: Any, tiny_tok_dir: Path, tiny_model_dir: Path
) -> None:
    """select --weights sigmoid writes a weights column; tokenclean train --policy weights and TRL's
    SFTTrainer with tokenclean's plug-in (tokenclean.interop.sft_trainer) both train on it with the rule sum w*l / sum w."""
    require("trl")
    import datasets
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    from tokenclean.data.prepare import prepare
    from tokenclean.interop import sft_trainer, token_collator, weighted_token_loss
    from tokenclean.training import TrainConfig, train

    prep = tmp_path / "prep"
    prepare(
        "builtin:sample", tiny_tok, prep, template="tulu", max_length=256, tokenizer_name=str(tiny_tok_dir)
    )
    store = write_score_store(tmp_path / "scores", prep, seed=0)
    st = select(store, 0.6, "global", tmp_path / "soft", weights="sigmoid", temperature=0.5)
    ds = datasets.load_from_disk(str(tmp_path / "soft"))
    w = np.concatenate([np.asarray(r, dtype=np.float32) for r in ds["weights"]])
    lab = np.concatenate([np.asarray(r) for r in ds["labels"]])
    assert "weights" in ds.column_names and st["weights"]["mapping"] == "sigmoid"
    assert ((w > 0) == (lab != IGNORE_INDEX)).all() and w.max() < 1 and (w[w > 0] < 0.5).any()
    assert st["weights"]["sum"] == pytest.approx(float(w.sum()), rel=1e-5)

    cfg = TrainConfig(lora_r=4, batch_size=2, grad_accum=2, max_steps=2, policy="weights", lora_dropout=0.0)
    done = train(tmp_path / "soft", str(tiny_model_dir), tmp_path / "tc", cfg, progress=False, device="cpu")
    assert done["policy"]["name"] == "weights" and math.isfinite(done["final_loss"])

    args = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    trainer = sft_trainer(model, args, tmp_path / "soft", processing_class=tiny_tok)
    assert trainer.token_policy.name == "weights"
    batch = token_collator(tiny_tok.pad_token_id)([ds[i] for i in range(3)])
    with torch.no_grad():  # the weighted loss equals a per-token computation by hand
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        tgt = batch["input_ids"][:, 1:]
        nll = -logp.gather(-1, tgt[..., None])[..., 0]
        ww = batch["token_weights"][:, 1:]
        by_hand = float((ww * nll).sum() / ww.sum())
        got = float(weighted_token_loss(logits, batch["labels"], batch["token_weights"], ww.sum()))
        plug = float(trainer.compute_loss(model, dict(batch)))
    assert got == pytest.approx(by_hand, rel=1e-5) and plug == pytest.approx(by_hand, rel=1e-5)
    assert math.isfinite(trainer.train().training_loss)
