"""Base and reference models of a scoring run: one loaded model with the adapter toggled equals two
separately loaded models; tokenizer mismatches stop with a clear error; the self-check catches heads the
engine does not reproduce; the real SmolLM2 agrees with the naive twin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tokenclean.errors import ConfigError, ModelError
from tokenclean.models.loader import load_model
from tokenclean.scoring import score_dataset
from tokenclean.scoring.engine import Sample, batch_token_losses, naive_token_losses
from tokenclean.scoring.models import load_pair, resolve_pair


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tok, tiny_model_dir: Path) -> dict[str, Path]:
    from tokenclean.data.formats import builtin_path
    from tokenclean.data.prepare import prepare
    from tokenclean.testing import make_lora_adapter

    d = tmp_path_factory.mktemp("models")
    make_lora_adapter(load_model(str(tiny_model_dir)), d / "adapter", base=str(tiny_model_dir), std=0.1)
    (d / "data.jsonl").write_text("\n".join(builtin_path("sample").read_text().splitlines()[:8]) + "\n")
    prepare(d / "data.jsonl", tiny_tok, d / "prep", tokenizer_name=str(tiny_model_dir), progress=False)
    return {"dir": d, "model": tiny_model_dir, "adapter": d / "adapter", "prep": d / "prep"}


def _samples(prep: Path) -> list[Sample]:
    import datasets

    ds = datasets.load_from_disk(str(prep))
    return [Sample(i, np.array(r["input_ids"]), np.array(r["labels"])) for i, r in enumerate(ds)]


def test_one_model_toggle_equals_two_separately_loaded_models(setup) -> None:
    pair = load_pair(str(setup["model"]), str(setup["adapter"]))
    assert pair.mode == "one_model" and pair.ref_model is None
    samples = _samples(setup["prep"])
    base1, ref1 = pair.losses(samples, pad_id=0)
    plain = load_model(str(setup["model"]))  # separately loaded base
    with_adapter = load_model(str(setup["model"]), adapter=str(setup["adapter"]))  # separately loaded ref
    base2, ref2 = batch_token_losses(plain, samples), batch_token_losses(with_adapter, samples)
    assert ref1 is not None
    for a, b in [*zip(base1, base2), *zip(ref1, ref2)]:
        assert np.array_equal(a.positions, b.positions)
        np.testing.assert_allclose(a.losses, b.losses, atol=1e-6)
    gap = max(np.abs(a.losses - b.losses).max() for a, b in zip(base1, ref1))
    assert gap > 1e-2  # the reference pass really used the adapter
    base3, _ = pair.losses(samples, pad_id=0)  # the toggle is restored: a second round is unchanged
    for a, b in zip(base1, base3):
        np.testing.assert_array_equal(a.losses, b.losses)


def test_fp32_reference_merged_in_place_is_exact(setup, tmp_path) -> None:
    """The fp32 reference phase merges the adapter into the loaded weights: bit-equal to a separately
    loaded merged checkpoint, within 1e-5 of the unmerged adapter; the base phase must come first."""
    samples = _samples(setup["prep"])
    pair = load_pair(str(setup["model"]), str(setup["adapter"]))
    assert pair.merge_reference and not pair.merged
    base = pair.base_losses(samples, 0)
    unmerged = batch_token_losses(load_model(str(setup["model"]), adapter=str(setup["adapter"])), samples)
    ref = pair.ref_losses(samples, 0)
    assert pair.merged and ref is not None
    merged_dir = tmp_path / "merged"
    load_model(str(setup["model"]), adapter=str(setup["adapter"])).merge_and_unload().save_pretrained(
        merged_dir
    )
    from_disk = batch_token_losses(load_model(str(merged_dir)), samples)
    plain = batch_token_losses(load_model(str(setup["model"])), samples)
    for r, d, u, b, p in zip(ref, from_disk, unmerged, base, plain):
        np.testing.assert_array_equal(r.losses, d.losses)
        np.testing.assert_allclose(r.losses, u.losses, atol=1e-5)
        np.testing.assert_array_equal(b.losses, p.losses)
    with pytest.raises(RuntimeError, match="base pass must come first"):
        pair.base_losses(samples, 0)
    assert not load_pair(str(setup["model"]), str(setup["adapter"]), dtype="bf16").merge_reference


def test_store_from_one_model_equals_store_from_external_merged_reference(setup, tmp_path) -> None:
    import datasets

    merged = tmp_path / "merged"  # the reference as a separate full model (two loads, tokenizer check)
    load_model(str(setup["model"]), adapter=str(setup["adapter"])).merge_and_unload().save_pretrained(merged)
    (merged / "tokenizer.json").write_bytes((setup["model"] / "tokenizer.json").read_bytes())
    (merged / "tokenizer_config.json").write_bytes((setup["model"] / "tokenizer_config.json").read_bytes())
    kw = {"progress": False, "batch_tokens": 300}
    one = score_dataset(setup["prep"], str(setup["model"]), str(setup["adapter"]), out=tmp_path / "a", **kw)
    two = score_dataset(setup["prep"], str(setup["model"]), str(merged), out=tmp_path / "b", **kw)
    assert one["mode"] == "one_model" and two["mode"] == "two_models"
    assert one["reference"]["hash"] == one["base"]["hash"] and one["reference"]["adapter_hash"]
    assert two["reference"]["hash"] != two["base"]["hash"] and two["reference"]["adapter"] is None
    a, b = datasets.load_from_disk(str(tmp_path / "a")), datasets.load_from_disk(str(tmp_path / "b"))
    for x, y in zip(a["score"], b["score"]):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), atol=1e-5)


def test_reference_with_another_tokenizer_is_refused(setup, tiny_tok_sp, tmp_path) -> None:
    from tokenclean.testing import make_tiny_llama

    make_tiny_llama(tiny_tok_sp, tmp_path / "other", seed=0)
    with pytest.raises(ModelError, match="use different tokenizers") as e:
        score_dataset(setup["prep"], str(setup["model"]), str(tmp_path / "other"), out=tmp_path / "o")
    assert str(tmp_path / "other") in str(e.value)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_prepared_with_another_tokenizer_is_refused(setup, tiny_tok_sp, tmp_path) -> None:
    from tokenclean.data.prepare import prepare

    prepare(setup["dir"] / "data.jsonl", tiny_tok_sp, tmp_path / "prep", progress=False)
    with pytest.raises(ModelError, match="prepared data was tokenised with"):
        score_dataset(tmp_path / "prep", str(setup["model"]), str(setup["adapter"]), out=tmp_path / "o")


def test_reference_arrangements(setup, tmp_path) -> None:
    m, a = str(setup["model"]), str(setup["adapter"])
    assert resolve_pair(m, a, None)[0] == "one_model"
    assert resolve_pair(m, None, a)[0] == "one_model"
    assert resolve_pair(m, None, None)[0] == "base_only"
    with pytest.raises(ConfigError, match="not both"):
        resolve_pair(m, a, a)
    with pytest.raises(ConfigError, match="is a PEFT adapter"):
        resolve_pair(a, None, None)
    other = tmp_path / "adapter_on_other"  # an adapter whose base is another copy: two models
    other.mkdir()
    for f in setup["adapter"].iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "copy")
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    (tmp_path / "copy").mkdir()
    for f in setup["model"].iterdir():
        (tmp_path / "copy" / f.name).write_bytes(f.read_bytes())
    assert resolve_pair(m, str(other), None)[0] == "two_models"


def test_self_check_catches_unknown_logit_processing(setup, tmp_path) -> None:
    """A config asking for a logit scaling the model's own forward does not apply: engine != full forward."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in setup["model"].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["logits_scaling"] = 4.0
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="self-check failed for the base model"):
        score_dataset(setup["prep"], str(bad), scorer="base_loss", out=tmp_path / "o", progress=False)


@pytest.mark.smollm
@pytest.mark.slow
def test_smollm2_engine_equals_naive_and_one_model_toggle(smollm_tok, tmp_path) -> None:
    """The real SmolLM2-135M (tied embeddings, 49k vocab): engine == naive, toggle == separate loads."""
    import copy

    from peft import PeftModel

    from tokenclean.testing import make_lora_adapter

    model = load_model("smollm2")
    rng = np.random.default_rng(0)
    samples = []
    for i, t in enumerate((40, 17, 63)):
        ids = rng.integers(100, 40000, size=t)
        labels = ids.copy()
        labels[: t // 3] = -100
        samples.append(Sample(i, ids, labels))
    fast, slow = batch_token_losses(model, samples, chunk_rows=50), naive_token_losses(model, samples)
    assert max(np.abs(a.losses - b.losses).max() for a, b in zip(fast, slow)) < 1e-4
    make_lora_adapter(model, tmp_path / "a", rank=4, std=0.02, targets=["q_proj", "v_proj"])
    pm = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "a")).eval()
    with pm.disable_adapter():
        off = batch_token_losses(pm, samples)
    on = batch_token_losses(pm, samples)
    for a, b in zip(off, fast):
        np.testing.assert_allclose(a.losses, b.losses, atol=1e-5)
    assert max(np.abs(a.losses - b.losses).max() for a, b in zip(on, fast)) > 1e-3
