"""Worker of test_trl_plugin.py::test_two_processes_equal_one: TRL + tokenclean's plug-in on a weighted set,
one process (micro-batch 2B) or two under torchrun (micro-batch B each); every step sees the whole set, so
both take the same SGD steps. Writes the LoRA tensors (rank 0) to OUT.

    python trl_dp_worker.py DATA MODEL OUT BATCH ACCUM
"""

from __future__ import annotations

import os
import sys

import torch
from safetensors.torch import save_file
from trl import SFTConfig

from tokenclean.interop import sft_trainer
from tokenclean.models.loader import resolve_model
from tokenclean.training import TrainConfig
from tokenclean.training.model import build_lora_model


def main() -> None:
    data, model_dir, out, batch, accum = sys.argv[1:6]
    torch.set_num_threads(1)
    model = build_lora_model(
        resolve_model(model_dir), TrainConfig(lora_r=4, lora_dropout=0.0, seed=0), None, "cpu"
    )
    args = SFTConfig(
        output_dir=out + ".trainer", use_cpu=True, bf16=False, report_to=[], save_strategy="no", disable_tqdm=True,
        max_length=128, per_device_train_batch_size=int(batch), gradient_accumulation_steps=int(accum),
        max_steps=2, optim="sgd", learning_rate=1e-2, lr_scheduler_type="constant", seed=0,
        gradient_checkpointing=False, dataloader_num_workers=0,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )  # fmt: skip
    trainer = sft_trainer(model, args, data)
    trainer.train()
    if trainer.accelerator.is_main_process:
        lora = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(lora, out)


if __name__ == "__main__":
    main()
