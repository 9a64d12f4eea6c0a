"""XTF: each filter against a naive computation on a tiny model, the union, and the cleaned output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenclean.selection.xtf import XtfSettings, iqr_fence_noise, otsu_low_class, xtf_select
from tokenclean.testing import require

pytestmark = pytest.mark.usefixtures("one_thread")


def test_iqr_fence_and_otsu_by_hand() -> None:
    v = np.array([5.0, 5.1, 4.9, 5.2, 0.1, 5.0, 9.0, 1.0, 1.1, 0.9, 1.2])
    off = np.array([0, 7, 11])
    got = iqr_fence_noise(v, off, 1.5)
    q1, q3 = np.quantile(v[:7], [0.25, 0.75])
    assert got[:7].tolist() == (v[:7] < q1 - 1.5 * (q3 - q1)).tolist() and got[4]
    assert not got[7:].any()  # a tight sample has no outlier
    vals = np.array([0.0, 0.01, 0.02, 0.5, 0.51, 0.52, 0.98, 0.99, 1.0])
    low, th = otsu_low_class(vals, 3)
    assert len(th) == 2 and low.tolist() == [True] * 3 + [False] * 6


def test_xtf_select_equals_naive_filters(tmp_path: Path, tiny_tok, tiny_tok_dir, tiny_model_dir) -> None:
    require("skimage")
    import datasets
    from transformers import AutoModelForCausalLM

    from tokenclean.data.prepare import prepare

    prep = tmp_path / "prep"
    prepare(
        "builtin:sample", tiny_tok, prep, template="tulu", max_length=128, tokenizer_name=str(tiny_tok_dir)
    )
    settings = XtfSettings(novelty_min=0.002)
    st = xtf_select(prep, str(tiny_model_dir), tmp_path / "xtf", settings)

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="eager").eval()
    ds = datasets.load_from_disk(str(prep))
    emb = model.get_input_embeddings().weight.detach().float()
    prompt_ids = np.concatenate([np.asarray(r["input_ids"])[np.asarray(r["labels"]) == -100] for r in ds])
    centre = emb[torch.as_tensor(prompt_ids)].mean(0)
    nov, att, rel, offs = [], [], [], [0]
    with torch.no_grad():
        for r in ds:
            x, lab = np.asarray(r["input_ids"]), np.asarray(r["labels"])
            out = model(input_ids=torch.as_tensor(x)[None], output_attentions=True)
            logp = torch.log_softmax(out.logits[0].float(), -1)
            a = out.attentions[-1][0].float().mean(0)  # (T, T)
            prompt = torch.as_tensor(lab == -100, dtype=torch.float32)
            for j in np.flatnonzero(lab != -100):
                nov.append(1 - float(logp[j - 1, x[j]].exp()))
                att.append(float((a[j] * prompt).sum()))
                rel.append(float(torch.nn.functional.cosine_similarity(emb[x[j]], centre, dim=0)))
            offs.append(len(nov))
    nov_a, att_a, rel_a = np.array(nov), np.array(att), np.array(rel)
    noise = (nov_a < 0.002) | iqr_fence_noise(att_a, np.array(offs), 1.5) | otsu_low_class(rel_a, 3)[0]
    assert st["kept_tokens"] == int((~noise).sum()) and 0 < st["kept_tokens"] < len(nov)
    counts = st["xtf"]["noise_tokens"]
    assert counts["novelty"] == int((nov_a < 0.002).sum())
    assert counts["relevance"] == int(otsu_low_class(rel_a, 3)[0].sum())
    clean = datasets.load_from_disk(str(tmp_path / "xtf"))
    kept = sum(int((np.asarray(r["labels"]) != -100).sum()) for r in clean)
    assert kept == st["kept_tokens"]
    assert json.loads((tmp_path / "xtf" / "manifest.json").read_text())["level"] == "xtf"


def test_xtf_settings_are_checked() -> None:
    from tokenclean.errors import ConfigError

    with pytest.raises(ConfigError, match=r"xtf\.filters"):
        XtfSettings(filters=("novelty", "vibes"))
    with pytest.raises(ConfigError, match=r"xtf\.otsu_classes"):
        XtfSettings(otsu_classes=1)
