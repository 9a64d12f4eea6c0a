"""The files of each ``tokenclean export`` target: the data, a config with the exact lines to train on
it, and a README saying what was kept and what was lost (:mod:`tokenclean.interop.export`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

COLUMNS = ("input_ids", "attention_mask", "labels")


def _jsonl(path: Path, rows: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in keys if k in r}) + "\n")


def _dataset(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> Any:
    import datasets

    return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in keys if rows and k in rows[0]})


def _readme(tmp: Path, m: dict[str, Any], how: str) -> None:
    c = m["counts"]
    (tmp / "README.md").write_text(
        f"# tokenclean export for {m['to']}\n\n"
        f"From `{m['input']}` (tokenizer `{m['tokenizer']}`): {c['samples']} samples, {c['kept_tokens']} "
        f"counted tokens, longest sample {c['max_length']} tokens; {c['samples_left_out_no_kept_token']} "
        "samples with no counted token left out.\n\n"
        f"**Lost in this export:** {m['lost']}.\n\n{how}\n"
    )


def write_trl(tmp: Path, rows: list[dict[str, Any]], final: Path, m: dict[str, Any]) -> None:
    _dataset(rows, ("sample_id", *COLUMNS, "weights")).save_to_disk(str(tmp / "data"))
    n = max(m["counts"]["max_length"], 1)
    script = f'''"""Train on {final / "data"} with TRL's SFTTrainer and tokenclean's loss plug-in (tokenclean export)."""
from transformers import AutoTokenizer
from trl import SFTConfig

from tokenclean.interop import sft_trainer

MODEL = "{m["tokenizer"]}"  # the model whose tokenizer prepared the data
tok = AutoTokenizer.from_pretrained(MODEL)
args = SFTConfig(output_dir="trl-out", packing=True, padding_free=True, max_length={n})
trainer = sft_trainer(MODEL, args, "{final / "data"}", processing_class=tok)  # weights: policy "weights"
trainer.train()
'''
    (tmp / "train_trl.py").write_text(script)
    _readme(tmp, m, "Train with `python train_trl.py` (TRL `SFTTrainer` + `tokenclean.interop.sft_trainer`: "
            "packing and padding-free keep every token's label and weight).")  # fmt: skip


def write_jsonl_weights(tmp: Path, rows: list[dict[str, Any]], final: Path, m: dict[str, Any]) -> None:
    _jsonl(tmp / "data.jsonl", rows, ("sample_id", "input_ids", "labels", "weights"))
    _readme(tmp, m, "`data.jsonl`: one sample a line: `sample_id`, `input_ids`, `labels` (-100 = not trained) "
            "and `weights` (float per token, 0 where not trained; indexed like `input_ids`: the weight of "
            "token j multiplies -log P(x_j | x_<j)).")  # fmt: skip


def write_axolotl(tmp: Path, rows: list[dict[str, Any]], final: Path, m: dict[str, Any]) -> None:
    _jsonl(tmp / "train.jsonl", rows, COLUMNS)
    n = m["counts"]["max_length"]
    (tmp / "axolotl.yaml").write_text(
        f"# tokenclean export --to axolotl: pre-tokenized (input_ids, attention_mask, labels); merge into your config\n"
        f"base_model: {m['tokenizer']}  # the model whose tokenizer prepared the data\n"
        "datasets:\n"
        f"  - path: {final / 'train.jsonl'}\n"
        "    ds_type: json\n"
        "    # no `type:`: axolotl trains on these labels as they are\n"
        f"sequence_len: {max(n, 1)}  # >= the longest sample, so no label is cut\n"
    )  # fmt: skip
    _readme(tmp, m, "Merge `axolotl.yaml` into your axolotl config (`axolotl train CONFIG`).")


def write_llamafactory(tmp: Path, rows: list[dict[str, Any]], final: Path, m: dict[str, Any]) -> None:
    import datasets

    datasets.DatasetDict({"train": _dataset(rows, COLUMNS)}).save_to_disk(str(tmp / "tokenized"))
    n = m["counts"]["max_length"]
    (tmp / "llamafactory.yaml").write_text(
        "### tokenclean export --to llamafactory: LLaMA-Factory loads tokenized_path as is\n"
        f"model_name_or_path: {m['tokenizer']}  # the model whose tokenizer prepared the data\n"
        "stage: sft\ndo_train: true\nfinetuning_type: lora\nlora_target: all\n"
        f"tokenized_path: {final / 'tokenized'}  # its own dataset/template preprocessing is skipped\n"
        "dataset: tokenclean_export  # required by its argument check; unused when tokenized_path exists\n"
        "template: empty\n"
        f"cutoff_len: {max(n, 1)}  # >= the longest sample\n"
        "output_dir: llamafactory-out\n"
    )  # fmt: skip
    _readme(tmp, m, "Train with `llamafactory-cli train llamafactory.yaml` (edit output_dir and the training "
            "settings; keep tokenized_path).")  # fmt: skip


WRITERS: dict[str, Callable[[Path, list[dict[str, Any]], Path, dict[str, Any]], None]] = {
    "trl": write_trl,
    "jsonl-weights": write_jsonl_weights,
    "axolotl": write_axolotl,
    "llamafactory": write_llamafactory,
}
