"""LLaMA-Factory and axolotl read ``tokenclean export`` with their own data code: the first batch counts
exactly the cleaned set's kept tokens, and the model loss on that batch equals tokenclean's.

The two tools pin transformers/datasets/peft/trl releases other than tokenclean's dev environment (LLaMA-Factory
0.9.5: transformers <= 5.6.0, datasets <= 4.0.0; axolotl 0.21.0: transformers == 5.20.1, datasets == 5.0.1), so
each lives in its own venv (.ci/run builds them; docs/integrations.md has the commands) and
``benchmarks/check_trainer_exports.py`` runs there on an export written here. The venv's Python comes in
``TOKENCLEAN_LLAMAFACTORY_PYTHON`` / ``TOKENCLEAN_AXOLOTL_PYTHON``; without it (or when that Python cannot
import the tool) the test skips, and under ``CI=true`` it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tokenclean.interop.export import export
from tokenclean.testing.deps import in_ci

CHECK = Path(__file__).resolve().parents[2] / "benchmarks" / "check_trainer_exports.py"
TOOLS = {"llamafactory": "TOKENCLEAN_LLAMAFACTORY_PYTHON", "axolotl": "TOKENCLEAN_AXOLOTL_PYTHON"}
HOW = "docs/integrations.md, 'Checking the exports in the real packages' (.ci/run builds these venvs)"


def tool_python(tool: str) -> str:
    """The Python of the venv that has ``tool``, or skip (fail under CI) naming how to build it."""
    py = os.environ.get(TOOLS[tool], "")
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({tool!r}) is None)"
    if py and Path(py).exists() and subprocess.run([py, "-c", probe], check=False).returncode == 0:
        return py
    why = f"{TOOLS[tool]}={py or '(unset)'} is not a Python with {tool} installed; see {HOW}"
    if in_ci():
        pytest.fail(f"CI is set but {why}")
    pytest.skip(why)


def tokenclean_loss(clean: Path, model_dir: Path) -> tuple[float, int]:
    """tokenclean's training loss on one batch of every sample of ``clean`` (policy ``labels``: the token
    mean over the kept tokens, the LM head at kept positions only) and the number of kept tokens."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from tokenclean.training.collate import collate
    from tokenclean.training.data import load_train_data
    from tokenclean.training.loss import kept_token_ce_sum

    data = load_train_data(clean, 1 << 30)
    mb = collate(data, np.arange(len(data.sample_ids)))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        total = float(kept_token_ce_sum(model, mb))
    return total / mb.n_candidates, mb.n_candidates


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_first_batch_counts_the_kept_tokens(
    tool: str, cleaned_sets: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    py = tool_python(tool)
    m = export(cleaned_sets["clean"], tool, tmp_path / tool)
    n = m["counts"]["samples"]
    cmd = [py, str(CHECK), tool, "--export", str(tmp_path / tool), "--source", str(cleaned_sets["clean"])]
    cmd += ["--model", str(tiny_model_dir), "--batch", str(n)]  # one batch of every sample
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env |= {"AXOLOTL_DO_NOT_TRACK": "1", "PYTHONPATH": "", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900, check=False)
    assert r.returncode == 0, f"{tool} check failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    res: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    # every row's counted positions equal the kept tokens (asserted row by row inside the check script)
    assert res["rows"] == n and res["kept_tokens"] == m["counts"]["kept_tokens"]
    loss, kept = tokenclean_loss(cleaned_sets["clean"], tiny_model_dir)
    assert kept == res["kept_tokens"]
    assert res["tool_loss"] == pytest.approx(loss, rel=1e-5), (res, loss)
