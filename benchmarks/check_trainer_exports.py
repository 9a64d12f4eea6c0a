"""Load ``tokenclean export`` outputs with the real axolotl / LLaMA-Factory data code (run in a venv that has
them; they are not tokenclean dependencies) and check that the first batch counts exactly the kept tokens.

    python benchmarks/check_trainer_exports.py llamafactory --export EXPORT_DIR --source CLEANED --model MODEL_DIR
    python benchmarks/check_trainer_exports.py axolotl --export EXPORT_DIR --source CLEANED --model MODEL_DIR

The source set is read with ``datasets`` only (plus tokenclean's ``token_signals`` when the source tree is on
PYTHONPATH), so this runs under the other tool's own transformers/torch. tests/integration/test_trainer_loaders.py
runs it in the venvs .ci/run builds (docs/integrations.md, "Checking the exports in the real packages"). For every sample of the first batch
the counted positions (``labels != -100`` after the tool's collator, shifted) must equal the kept tokens of the
cleaned set, and the tool's model loss on that batch must equal the token mean over the kept tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any


def source_kept(source: Path) -> dict[tuple[int, ...], list[int]]:
    """input_ids (as a tuple) -> kept positions j >= 1 of the cleaned set."""
    import datasets

    ds = datasets.load_from_disk(str(source))
    return {tuple(r["input_ids"]): [j for j, x in enumerate(r["labels"]) if j >= 1 and x != -100] for r in ds}


def check_batch(batch: dict[str, Any], kept: dict[tuple[int, ...], list[int]], model: Any) -> dict[str, Any]:
    import torch

    ids, labels, att = batch["input_ids"], batch["labels"], batch.get("attention_mask")
    n_kept = 0
    for r in range(ids.shape[0]):
        n = int(att[r].sum()) if att is not None and att.dim() == 2 else ids.shape[1]
        key = tuple(int(x) for x in ids[r, :n])
        got = [j for j in range(1, n) if int(labels[r, j]) != -100]
        assert key in kept, f"row {r}: its tokens are not a sample of the source set"
        assert got == kept[key], f"row {r}: counted {got} != kept {kept[key]}"
        n_kept += len(got)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=att if att is not None and att.dim() == 2 else None)
        logp = out.logits.float().log_softmax(-1)[:, :-1]  # (B, T-1, V)
        tgt = ids[:, 1:]
        m = labels[:, 1:] != -100
        by_hand = float(-(logp.gather(-1, tgt[..., None])[..., 0])[m].sum() / m.sum())
        tool = float(model(input_ids=ids, attention_mask=att if att is not None and att.dim() == 2 else None,
                           labels=labels).loss)  # fmt: skip
    assert abs(tool - by_hand) <= 1e-5 * max(1.0, abs(by_hand)), (tool, by_hand)
    return {
        "rows": int(ids.shape[0]),
        "kept_tokens": n_kept,
        "tool_loss": tool,
        "kept_token_mean_ce": by_hand,
    }


def stub_torchaudio() -> None:
    """LLaMA-Factory 0.9.5 imports ``torchaudio`` at module level for audio inputs only, and PyPI has no
    torchaudio build for torch 2.13: an empty module stands in when it is missing (text SFT never uses it)."""
    import importlib.machinery
    import importlib.util
    import types

    if importlib.util.find_spec("torchaudio") is None:
        stub = types.ModuleType("torchaudio")
        stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)  # find_spec() answers, no dist
        sys.modules["torchaudio"] = stub


def llamafactory(a: argparse.Namespace) -> dict[str, Any]:
    stub_torchaudio()
    import yaml
    from llamafactory.data import (
        SFTDataCollatorWith4DAttentionMask,
        get_dataset,
        get_template_and_fix_tokenizer,
    )
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer
    from transformers import AutoModelForCausalLM

    cfg = yaml.safe_load((a.export / "llamafactory.yaml").read_text())
    cfg.update(model_name_or_path=str(a.model), output_dir=tempfile.mkdtemp(), report_to="none",
               per_device_train_batch_size=a.batch, overwrite_output_dir=True)  # fmt: skip
    model_args, data_args, training_args, _ft, _gen = get_train_args(cfg)
    tm = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tm["tokenizer"], data_args)
    dm = get_dataset(template, model_args, data_args, training_args, stage="sft", **tm)
    coll = SFTDataCollatorWith4DAttentionMask(template=template, label_pad_token_id=-100, **tm)
    train = dm["train_dataset"]
    batch = coll([train[i] for i in range(min(a.batch, len(train)))])
    model = AutoModelForCausalLM.from_pretrained(str(a.model))
    return check_batch(batch, source_kept(a.source), model)


def axolotl(a: argparse.Namespace) -> dict[str, Any]:
    """axolotl's own config loader and dataset preparation (``load_cfg`` + ``load_datasets``) on the export's
    ``axolotl.yaml``, then axolotl's own padding collator for SFT batches (``DataCollatorForSeq2Seq``)."""
    import os

    os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")  # no telemetry upload attempts
    import yaml
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets
    from axolotl.utils.collators.batching import DataCollatorForSeq2Seq
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = yaml.safe_load((a.export / "axolotl.yaml").read_text())
    cfg.update(base_model=str(a.model), tokenizer_config=str(a.model), output_dir=tempfile.mkdtemp(),
               micro_batch_size=a.batch, gradient_accumulation_steps=1, num_epochs=1, learning_rate=1e-4,
               val_set_size=0, dataset_prepared_path=tempfile.mkdtemp(), adapter="lora", lora_r=4,
               lora_alpha=8, lora_target_linear=True, sample_packing=False)  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "axolotl.yaml"
    path.write_text(yaml.safe_dump(cfg))
    meta = load_datasets(cfg=load_cfg(str(path)))
    train = meta.train_dataset
    tok = AutoTokenizer.from_pretrained(str(a.model))
    coll = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100, return_tensors="pt")
    rows = [
        {k: train[i][k] for k in ("input_ids", "attention_mask", "labels")}
        for i in range(min(a.batch, len(train)))
    ]
    batch = coll(rows)
    model = AutoModelForCausalLM.from_pretrained(str(a.model))
    return check_batch(dict(batch), source_kept(a.source), model)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tool", choices=("llamafactory", "axolotl"))
    p.add_argument("--export", type=Path, required=True)
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--batch", type=int, default=4)
    a = p.parse_args()
    res = {"llamafactory": llamafactory, "axolotl": axolotl}[a.tool](a)
    print(json.dumps({"tool": a.tool, **res}))


if __name__ == "__main__":
    sys.exit(main())
