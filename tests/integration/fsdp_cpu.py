"""Run by tests/integration/test_fsdp.py under torchrun (2 gloo processes): the tiny LoRA Llama sharded by
torch FSDP2 (``fully_shard``) with accelerate's transformer auto-wrap policy, whose layer class comes from
the model's ``_no_split_modules`` (no class named in the config), one optimizer step, then the adapter
written from :func:`tokenclean.training.model.trainable_state` (LoRA matrices gathered, base weights not).

``python fsdp_cpu.py MODEL_DIR OUT``: rank 0 writes OUT/adapter and OUT/info.json. Started without a
launcher it runs the same step in one process without FSDP (the reference).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from torch.distributed.fsdp import fully_shard

from tokenclean.models.loader import resolve_model
from tokenclean.signals import make_token_batch, signal_model, token_signals
from tokenclean.training.config import TrainConfig
from tokenclean.training.model import build_lora_model, no_split_modules, trainable_state

model_dir, out = sys.argv[1], Path(sys.argv[2])
launched = "WORLD_SIZE" in os.environ
if launched:
    dist.init_process_group("gloo")
net = build_lora_model(resolve_model(model_dir), TrainConfig(lora_r=4, lora_dropout=0.0), None, "cpu")
wrapper = signal_model(net)
wrapper._no_split_modules = no_split_modules(net)
plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
policy = fsdp2_prepare_auto_wrap_policy(plugin, wrapper)
wrapped = [type(m).__name__ for m in wrapper.modules() if policy(m)]
if launched:
    for m in list(wrapper.modules()):
        if policy(m):
            fully_shard(m)
    fully_shard(wrapper)
params = [p for p in wrapper.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-2)
rng = np.random.default_rng(0)
ids = [rng.integers(3, 100, 12), rng.integers(3, 100, 9)]
batch = make_token_batch(ids, [np.arange(1, len(x)) for x in ids])
loss = token_signals(wrapper, batch, ("loss",), grad=True)["loss"].mean()  # through the root's forward
loss.backward()
norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
opt.step()
sharded = [n for n, p in net.named_parameters() if type(p.data).__name__ == "DTensor"]
lora = trainable_state(net)
if not launched or dist.get_rank() == 0:
    net.save_pretrained(str(out / "adapter"), save_embedding_layers=False, state_dict=lora)
    info = {"wrapped": wrapped, "sharded": len(sharded), "gathered": sorted(lora), "norm": float(norm)}
    (out / "info.json").write_text(json.dumps(info))
if launched:
    dist.barrier()
    dist.destroy_process_group()
