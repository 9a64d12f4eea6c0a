"""Run by tests/integration/test_eval_parallel.py, under torchrun (2 gloo processes) or as one plain process:
:func:`tokenclean.evaluation.evaluate` on the tiny Llama, first the quick suite's held-out loss, then a task
YAML through lm-evaluation-harness, counting the tokens the model's embedding layer saw in each (a forward
pre-hook: what this rank computed, independent of what evaluate reports about itself).

``python eval_ranks.py MODEL_DIR PREPARED TASK_YAML OUT``: each rank writes OUT/rank{r}.json with both results
and its counts; rank 0 also writes OUT/eval_quick.json through ``evaluate(out=...)``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from tokenclean.evaluation import evaluate
from tokenclean.models.loader import load_model, load_tokenizer, resolve_model

model_dir, prepared, task_yaml, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
rank = int(os.environ.get("RANK", "0"))
torch.set_num_threads(1)
spec = resolve_model(model_dir)
model, tok = load_model(spec, device="cpu"), load_tokenizer(spec)
seen = {"tokens": 0, "calls": 0}


def count(_module: Any, args: tuple[Any, ...]) -> None:
    seen["tokens"] += int(args[0].numel())  # (B, T) input ids, padding included
    seen["calls"] += 1


model.get_input_embeddings().register_forward_pre_hook(count)
quick = evaluate(
    model, tokenizer=tok, suite="quick", heldout=prepared, out=out, batch_tokens=256, progress=False
)
quick_seen = dict(seen)
seen.update(tokens=0, calls=0)
task = evaluate(model, tokenizer=tok, suite="quick", tasks=[task_yaml], batch_size=2, progress=False)
rec = {"quick": quick, "quick_seen": quick_seen, "task": task["tasks"], "task_seen": dict(seen)}
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{rank}.json").write_text(json.dumps(rec))
