"""Run by tests/integration/test_fsdp.py under torchrun (2 gloo processes): kill and resume under FSDP2.

The tiny LoRA Llama sharded by ``fully_shard`` as in ``fsdp_cpu.py``, trained ``STEPS`` optimizer steps
(AdamW, a linear-decay schedule, fixed random batches per step). With ``STOP`` > 0 the run writes a
checkpoint through :func:`tokenclean.training.checkpoint.save_checkpoint` after step ``STOP`` and exits (the
"kill"); with ``resume`` it loads that checkpoint (:func:`load_checkpoint`) and trains the remaining steps.
Rank 0 writes OUT/adapter.safetensors (the LoRA matrices gathered at the end) and OUT/info.json. With
``full`` it also writes, for comparison, what ``accelerator.save_state`` writes under FSDP (a
``torch.distributed.checkpoint`` of every model weight and the optimizer state) into OUT/all_weights.

``python fsdp_resume.py MODEL_DIR OUT STEPS STOP [resume] [full]``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from safetensors.torch import save_file
from torch.distributed.fsdp import fully_shard

from tokenclean.models.loader import resolve_model
from tokenclean.signals import make_token_batch, signal_model, token_signals
from tokenclean.training.checkpoint import load_checkpoint, read_checkpoint_state, save_checkpoint
from tokenclean.training.config import TrainConfig
from tokenclean.training.model import build_lora_model, no_split_modules, trainable_state

model_dir, out, steps, stop = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
resume, full = "resume" in sys.argv[5:], "full" in sys.argv[5:]
dist.init_process_group("gloo")
acc = Accelerator(cpu=True)
rank = acc.process_index
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
net = build_lora_model(resolve_model(model_dir), TrainConfig(lora_r=4, lora_dropout=0.0), None, "cpu")
wrapper = signal_model(net)
wrapper._no_split_modules = no_split_modules(net)
plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
policy = fsdp2_prepare_auto_wrap_policy(plugin, wrapper)
for m in list(wrapper.modules()):
    if policy(m):
        fully_shard(m)
fully_shard(wrapper)
params = [p for p in wrapper.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
start = 0
if resume:
    start = int(load_checkpoint(out, acc, wrapper, net, opt, sched)["step"])
for step in range(start, steps):
    rng = np.random.default_rng([step, rank])  # this rank's batch of this step, whether resumed or not
    ids = [rng.integers(3, 100, int(n)) for n in rng.integers(6, 14, 2)]
    batch = make_token_batch(ids, [np.arange(1, len(x)) for x in ids])
    token_signals(wrapper, batch, ("loss",), grad=True)["loss"].mean().backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    if step + 1 == stop:
        save_checkpoint(out, acc, wrapper, net, opt, sched, {"step": stop, "world_size": 2})
        break
if full:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(wrapper, opt)
    dcp.save({"model": weights, "optimizer": optim}, checkpoint_id=str(out / "all_weights"))
lora = trainable_state(net)
if rank == 0:
    info = {
        "stopped": stop if stop and not resume else None,
        "start": start,
        "state": read_checkpoint_state(out),
    }
    if not stop or resume:
        save_file({k: v.contiguous() for k, v in lora.items()}, str(out / "adapter.safetensors"))
    (out / "info.json").write_text(json.dumps(info))
dist.barrier()
dist.destroy_process_group()
