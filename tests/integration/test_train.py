"""Training end to end on a tiny Llama: LoRA learns while the base stays bit-identical, resume equality,
continuing an adapter, merge, options, CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tokenclean import IGNORE_INDEX
from tokenclean.errors import ConfigError, TokencleanError
from tokenclean.testing import WORDS
from tokenclean.training import TrainConfig, TrainingInterrupted, merge, train
from tokenclean.training import loop as loop_mod
from tokenclean.training.counted import counted_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


CFG = TrainConfig(lora_r=4, batch_size=2, grad_accum=2, warmup_ratio=0.0, lr=1e-3, save_steps=2)


def _records(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [{"prompt": say(rng.randint(2, 8)), "completion": say(rng.randint(2, 12))} for _ in range(n)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, tiny_tok) -> Path:
    from tokenclean.data.prepare import prepare

    d = tmp_path_factory.mktemp("train_data")
    src = d / "sft.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _records(24, seed=0)))
    prepare(src, tiny_tok, d / "prepared", progress=False)
    return d / "prepared"


@pytest.fixture(scope="module")
def cleaned(prepared: Path) -> tuple[Path, int]:
    """A cleaned-format dataset: half the response tokens dropped, every 4th sample emptied."""
    import datasets

    ds = datasets.load_from_disk(str(prepared))
    rng = np.random.default_rng(0)
    labels, emptied = [], 0
    for i, lab in enumerate(ds["labels"]):
        lab = np.array(lab)
        drop = rng.random(len(lab)) < 0.5
        if i % 4 == 0:
            drop[:] = True
            emptied += 1
        labels.append(np.where(drop, IGNORE_INDEX, lab).tolist())
    out = prepared.parent / "cleaned"
    ds = ds.rename_column("labels", "response_labels").add_column("labels", labels)
    ds = ds.add_column("attention_mask", [[1] * n for n in ds["length"]])
    ds.save_to_disk(str(out))
    (out / "manifest.json").write_text(json.dumps({"stage": "select"}))
    return out, emptied


@pytest.fixture()
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Keep a handle on the model train() builds, with a snapshot of its trainable weights at build time."""
    from peft import get_peft_model_state_dict

    box: dict[str, Any] = {}
    build = loop_mod.build_lora_model

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        net = build(*args, **kwargs)
        box["net"] = net
        box["init"] = {k: v.clone() for k, v in get_peft_model_state_dict(net).items()}
        return net

    monkeypatch.setattr(loop_mod, "build_lora_model", wrapper)
    return box


def adapter_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def log_losses(out: Path) -> list[float | None]:
    return [json.loads(ln)["loss"] for ln in (out / "log.jsonl").read_text().splitlines()]


def test_lora_learns_and_base_stays_bit_identical(
    tmp_path: Path, prepared: Path, tiny_model_dir: Path, captured: dict
) -> None:
    done = train(prepared, str(tiny_model_dir), tmp_path / "run", CFG.replace(max_steps=3), progress=False)
    net = captured["net"]
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    base = {k.replace(".base_layer", ""): v for k, v in net.get_base_model().state_dict().items()}
    base = {k: v for k, v in base.items() if "lora_" not in k}
    assert set(base) == set(original)
    assert all(torch.equal(base[k], original[k]) for k in original)  # base untouched, bit for bit
    assert not any(p.requires_grad for n, p in net.named_parameters() if "lora_" not in n)

    final = adapter_weights(tmp_path / "run")
    assert set(final) == set(captured["init"]) and len(final) == 28  # 7 modules x (A, B) x 2 layers
    assert all(not torch.equal(final[k], captured["init"][k]) for k in final)  # every LoRA weight moved
    assert done["steps"] == 3 and done["lora"]["r"] == 4 and done["trainable_params"] > 0
    cfg_json = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert cfg_json["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    assert not list((tmp_path / "run").glob("**/model.safetensors"))  # never a merged copy


def test_done_json_and_finished_run_returns_at_once(
    tmp_path: Path, prepared: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    done = train(prepared, str(tiny_model_dir), out, CFG.replace(max_steps=2), progress=False)
    for key in ("config", "data", "steps", "tokens", "final_loss", "tokens_per_s", "seconds", "identity"):
        assert key in done
    assert done["data"]["stage"] == "prepare" and done["data"]["manifest_sha256"]
    assert done["tokens"]["kept"] > 0 and np.isfinite(done["final_loss"])
    assert not (out / "checkpoint").exists()  # the checkpoint goes once the adapter is saved

    monkeypatch.setattr(loop_mod, "build_lora_model", lambda *a, **k: pytest.fail("must not retrain"))
    again = train(prepared, str(tiny_model_dir), out, CFG.replace(max_steps=2, save_steps=9), progress=False)
    assert again["reused"] is True and again["final_loss"] == done["final_loss"]
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.001 -> 0\.002"):
        train(prepared, str(tiny_model_dir), out, CFG.replace(max_steps=2, lr=2e-3), progress=False)


def test_resume_gives_the_same_adapter(
    tmp_path: Path, prepared: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = CFG.replace(epochs=2)  # 24 samples / 4 per step = 12 steps; LoRA dropout 0.1 is on
    ref = train(prepared, str(tiny_model_dir), tmp_path / "ref", cfg, progress=False)
    assert ref["steps"] == 12

    out = tmp_path / "resumed"
    monkeypatch.setenv(loop_mod.INTERRUPT_ENV, "5")
    with pytest.raises(TrainingInterrupted, match="after step 5"):
        train(prepared, str(tiny_model_dir), out, cfg, progress=False)
    assert not (out / "done.json").exists() and not (out / "adapter").exists()
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4  # the last checkpoint (save_steps=2); step 5 is redone
    monkeypatch.delenv(loop_mod.INTERRUPT_ENV)

    with pytest.raises(
        ConfigError, match=r"checkpoint was written by a different run \(train\.seed: 42 -> 1\); pass --force"
    ):
        train(prepared, str(tiny_model_dir), out, cfg.replace(seed=1), progress=False)
    done = train(prepared, str(tiny_model_dir), out, cfg, progress=False)
    assert done["resumed_from_step"] == 4
    a, b = adapter_weights(tmp_path / "ref"), adapter_weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical on CPU fp32
    assert log_losses(out) == log_losses(tmp_path / "ref")  # every step's loss, in order, once
    assert done["tokens"] == ref["tokens"]


@pytest.mark.parametrize(
    ("policy", "settings"),
    [
        ("sstoken", {"history": "ema", "ema_decay": 0.9, "attention_warmup_steps": 1}),
        ("rho1", {"reference": "base", "ratio": 0.5}),
        ("dft", {"weight_floor": 0.1}),
        ("profit", {"prob_threshold": 0.002}),
    ],
)
def test_online_policies_train_and_resume_exactly(
    tmp_path: Path, prepared: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, policy, settings
) -> None:
    """Every online policy trains end to end, counts fewer tokens than it sees (except DFT, which weights
    them), and resumes bit-identically (the ssToken EMA is part of the checkpoint)."""
    cfg = CFG.replace(max_steps=4, policy=policy, policy_settings=settings)
    ref = train(prepared, str(tiny_model_dir), tmp_path / "ref", cfg, progress=False)
    assert ref["policy"]["name"] == policy and math.isfinite(ref["final_loss"])
    counted = sum(r["kept_tokens"] for r in log_records(tmp_path / "ref"))
    assert counted == ref["tokens"]["kept"]
    assert (counted < _candidates(prepared, ref)) == (policy != "dft")
    recorded = counted_tokens(tmp_path / "ref", prepared)  # the tokens each step counted
    assert sum(len(v) for v in recorded.values()) == counted  # 4 steps of one epoch: each sample seen once
    monkeypatch.setenv(loop_mod.INTERRUPT_ENV, "3")
    with pytest.raises(TrainingInterrupted):
        train(prepared, str(tiny_model_dir), tmp_path / "cut", cfg, progress=False)
    monkeypatch.delenv(loop_mod.INTERRUPT_ENV)
    done = train(prepared, str(tiny_model_dir), tmp_path / "cut", cfg, progress=False)
    assert done["resumed_from_step"] == 2
    a, b = adapter_weights(tmp_path / "ref"), adapter_weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def log_records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def _candidates(prepared: Path, done: dict[str, Any]) -> int:
    """Trained labels (j >= 1) of the samples the run's steps saw."""
    from tokenclean.training.collate import step_samples
    from tokenclean.training.data import load_train_data

    data = load_train_data(prepared, 2048)
    seen = [step_samples(len(data), done["global_batch_size"], 42, s) for s in range(done["steps"])]
    return int(sum(int(data.n_kept[i]) for idx in seen for i in idx))


def test_cleaned_data_drops_empty_samples_and_never_nan(
    tmp_path: Path, cleaned: tuple[Path, int], tiny_model_dir: Path
) -> None:
    data, emptied = cleaned
    done = train(data, str(tiny_model_dir), tmp_path / "run", CFG.replace(epochs=1), progress=False)
    c = done["data"]["counts"]
    assert c["samples_dropped_no_kept"] == emptied == 6 and c["samples"] == 18
    assert done["data"]["stage"] == "select"
    assert done["tokens"]["kept"] == c["tokens_kept"]  # one epoch sees every kept token exactly once
    losses = log_losses(tmp_path / "run")
    assert len(losses) == done["steps"] == 5 and all(x is not None and np.isfinite(x) for x in losses)
    assert done["skipped_steps"] == 0 and done["nonfinite_steps"] == 0


def test_init_adapter_continues_from_its_weights(
    tmp_path: Path, prepared: Path, tiny_model_dir: Path, captured: dict
) -> None:
    first = tmp_path / "first"
    train(prepared, str(tiny_model_dir), first, CFG.replace(max_steps=3), progress=False)
    start = adapter_weights(first)
    done = train(
        prepared,
        str(tiny_model_dir),
        tmp_path / "second",
        CFG.replace(max_steps=3, lora_r=8, seed=7),
        init_adapter=str(first / "adapter"),
        progress=False,
    )
    assert set(captured["init"]) == set(start)
    assert all(torch.equal(captured["init"][k], start[k]) for k in start)  # starts from the given weights
    assert done["lora"]["r"] == 4 and done["init_adapter"] == str((first / "adapter").resolve())
    end = adapter_weights(tmp_path / "second")
    assert all(not torch.equal(end[k], start[k]) for k in start)  # and trains them further


def test_merge_equals_base_plus_adapter(tmp_path: Path, prepared: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokenclean.models.loader import load_model

    train(prepared, str(tiny_model_dir), tmp_path / "run", CFG.replace(max_steps=3), progress=False)
    m = merge(str(tiny_model_dir), str(tmp_path / "run" / "adapter"), tmp_path / "merged")
    assert m["dtype"] == "fp32"
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert merged.dtype == torch.float32 and not hasattr(merged, "peft_config")
    AutoTokenizer.from_pretrained(str(tmp_path / "merged"))  # the tokenizer is saved beside it
    peft_model = load_model(str(tiny_model_dir), adapter=str(tmp_path / "run" / "adapter"))
    base = load_model(str(tiny_model_dir))
    x = torch.tensor([[3, 40, 41, 42, 43, 44, 45]])
    with torch.no_grad():
        want, got, plain = peft_model(x).logits, merged(x).logits, base(x).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (want - plain).abs().max() > 1e-3  # the adapter matters, so the equality means something
    m16 = merge(str(tiny_model_dir), str(tmp_path / "run" / "adapter"), tmp_path / "m16", dtype="bf16")
    assert m16["dtype"] == "bf16"
    assert AutoModelForCausalLM.from_pretrained(str(tmp_path / "m16")).dtype == torch.bfloat16


def test_gradient_checkpointing_same_result_and_bf16_runs(
    tmp_path: Path, prepared: Path, tiny_model_dir: Path
) -> None:
    cfg = CFG.replace(max_steps=3)
    train(prepared, str(tiny_model_dir), tmp_path / "plain", cfg, progress=False)
    train(
        prepared,
        str(tiny_model_dir),
        tmp_path / "gc",
        cfg.replace(gradient_checkpointing=True),
        progress=False,
    )
    a, b = adapter_weights(tmp_path / "plain"), adapter_weights(tmp_path / "gc")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    done = train(prepared, str(tiny_model_dir), tmp_path / "bf16", cfg.replace(bf16=True), progress=False)
    assert done["bf16"] and np.isfinite(done["final_loss"])
    c = adapter_weights(tmp_path / "bf16")
    assert all(v.dtype == torch.float32 for v in c.values())  # LoRA weights stay fp32 under autocast
    assert abs(done["final_loss"] - log_losses(tmp_path / "plain")[-1]) < 0.1


def test_gradient_checkpointing_is_switched_on(tiny_model_dir: Path) -> None:
    from tokenclean.models.loader import resolve_model
    from tokenclean.training.model import build_lora_model

    spec = resolve_model(str(tiny_model_dir), None)
    for on in (False, True):
        net = build_lora_model(spec, CFG.replace(gradient_checkpointing=on), None, "cpu")
        base = net.get_base_model()
        flag = getattr(base, "is_activation_checkpointing", None)
        if flag is None:  # older transformers
            flag = base.is_gradient_checkpointing
        assert flag is on


def test_data_from_another_tokenizer_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"input_ids": [[1, 99999, 3]], "labels": [[-100, 99999, 3]]}).save_to_disk(
        str(tmp_path / "d")
    )
    with pytest.raises(TokencleanError, match="token id 99999 >= the model's vocabulary size"):
        train(tmp_path / "d", str(tiny_model_dir), tmp_path / "run", CFG, progress=False)


def test_data_prepared_with_another_tokenizer_is_refused(
    tmp_path: Path, tiny_tok_sp, tiny_model_dir: Path
) -> None:
    from tokenclean.data.prepare import prepare
    from tokenclean.errors import ModelError

    src = tmp_path / "sft.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _records(4, seed=1)))
    prepare(src, tiny_tok_sp, tmp_path / "prep_sp", progress=False)
    with pytest.raises(ModelError, match=r"was tokenised with .* differs from the tokenizer of model"):
        train(tmp_path / "prep_sp", str(tiny_model_dir), tmp_path / "run", CFG, progress=False)


def test_cli_train_and_merge(tmp_path: Path, prepared: Path, tiny_model_dir: Path, capsys) -> None:
    from tokenclean.cli import main

    args = ["train", "--data", str(prepared), "--model", str(tiny_model_dir), "--out", str(tmp_path / "r")]
    small = ["--lora-r", "4", "--batch-size", "2", "--grad-accum", "1", "--max-steps", "2", "--quiet"]
    assert main(args + small) == 0
    assert "trained 2 steps on 24 samples (0 dropped with no kept token)" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "done.json").read_text())["config"]["lora_r"] == 4
    assert main(args + small) == 0
    assert "already trained" in capsys.readouterr().out
    changed = [*small[:-2], "3", "--quiet"]  # --max-steps 3: another run, refused without --force
    assert main(args + changed) == 2
    assert "different run" in capsys.readouterr().err
    assert main([*args, *changed, "--force"]) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "done.json").read_text())["steps"] == 3
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    assert main([*args[:-1], str(tmp_path / "foreign"), *small, "--force"]) == 2  # never deleted
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "bad"), "--lr", "-1"]) == 2
    assert "train.lr: must be > 0, got -1" in capsys.readouterr().err
    merge_args = ["merge", "--model", str(tiny_model_dir), "--adapter", str(tmp_path / "r" / "adapter")]
    assert main([*merge_args, "--out", str(tmp_path / "m")]) == 0
    assert "(fp32) ->" in capsys.readouterr().out and (tmp_path / "m" / "model.safetensors").exists()


def test_packed_training_equals_padded_and_logs_padding_efficiency(
    tmp_path: Path, prepared: Path, tiny_model_dir: Path
) -> None:
    """Issue 17 (3): packed micro-batches (the default where the model supports it) train the padded run's
    steps: the same losses (rel 1e-4) and adapter (1e-5); the log and done.json record padding efficiency
    (real / computed tokens), 1.0 packed against < 1 padded."""
    cfg = CFG.replace(max_steps=4, lora_dropout=0.0)
    pk = train(prepared, str(tiny_model_dir), tmp_path / "packed", cfg, progress=False)
    pd = train(prepared, str(tiny_model_dir), tmp_path / "padded", cfg.replace(pack=False), progress=False)
    assert pk["packed"] and not pd["packed"]
    assert pk["padding_efficiency"] == 1.0 and pd["padding_efficiency"] < 1.0
    rec = [json.loads(x) for x in (tmp_path / "packed" / "log.jsonl").read_text().splitlines()]
    assert all(r["padding_efficiency"] == 1.0 for r in rec)
    np.testing.assert_allclose(log_losses(tmp_path / "packed"), log_losses(tmp_path / "padded"), rtol=1e-4)
    a, b = (
        load_file(str(tmp_path / d / "adapter" / "adapter_model.safetensors")) for d in ("packed", "padded")
    )
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_counted_tokens_hold_every_samples_last_visit_when_a_run_ends_mid_epoch(
    tmp_path: Path, prepared: Path, tiny_model_dir: Path
) -> None:
    """A run of 1.5 epochs (``budget.match_updates`` makes such runs): the recorded counted tokens cover every
    sample, each from its last visit, so two seeds measure recovery on the same samples. Before, only the
    last epoch-length of steps was kept, which misses the samples whose last visit came before it."""
    from tokenclean.training.data import load_train_data

    data = load_train_data(prepared, 64)
    spe = -(-len(data) // 4)  # steps per epoch at batch 2 x accumulation 2
    for seed in (0, 1):
        out = tmp_path / f"s{seed}"
        cfg = CFG.replace(max_steps=spe + spe // 2, policy="dft", policy_settings={}, seed=seed)
        train(prepared, str(tiny_model_dir), out, cfg, progress=False)
        recorded = counted_tokens(out, prepared)
        assert set(recorded) == set(data.sample_ids)  # DFT counts every candidate of every visited sample
        assert all(len(v) > 0 for v in recorded.values())
