"""Issue 11 on tiny models: no silent wrong result, no user directory lost. A re-run reuses a stage only
when its identity matches (case 1); finished score stores and trainings are verified before reuse
(case 3); score never replaces what it must not (case 4); a torn log line is tolerated on resume (case 6);
a schedule with no update warns (case 8); every pipeline stage runs on the configured device and dtype
(case 10); scores equal to the base warn (case 11)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from tokenclean.errors import ModelError, TokencleanError
from tokenclean.pipelines.config import load_run_config
from tokenclean.pipelines.runner import run
from tokenclean.scoring import score_dataset
from tokenclean.selection import select
from tokenclean.testing import WORDS
from tokenclean.training import TrainConfig, TrainingInterrupted, train

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_cpu.yaml"
CFG = TrainConfig(lora_r=4, batch_size=2, grad_accum=2, warmup_ratio=0.0, lr=1e-3, save_steps=1)


def _records(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [{"prompt": say(rng.randint(2, 8)), "completion": say(rng.randint(2, 12))} for _ in range(n)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, tiny_tok, tiny_model_dir: Path) -> Path:
    from tokenclean.data.prepare import prepare

    d = tmp_path_factory.mktemp("integrity")
    (d / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(12, seed=0)))
    prepare(d / "sft.jsonl", tiny_tok, d / "prepared", tokenizer_name=str(tiny_model_dir), progress=False)
    return d / "prepared"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    from tokenclean.models.loader import load_model
    from tokenclean.testing import make_lora_adapter

    d = tmp_path_factory.mktemp("adapter")
    return make_lora_adapter(load_model(str(tiny_model_dir)), d / "a", base=str(tiny_model_dir), std=0.1)


def _score(prepared: Path, model: Path, out: Path, **kw: Any) -> dict[str, Any]:
    return score_dataset(prepared, str(model), out=out, batch_tokens=256, progress=False, shard_size=4, **kw)


def _tiny_cfg(root: Path, model_dir: Path, *extra: str):
    return load_run_config(TINY, [f"run_dir={root}", f"model.base={model_dir}", "selection.sweep=[]", *extra])


# ------------------------------------------------------------------------ case 1: stage identity in `run`


def test_rerun_with_other_ratio_and_lr_recomputes_the_stale_stages(
    tmp_path: Path, tiny_model_dir: Path, tc_log: list[str]
) -> None:
    root = tmp_path / "run"
    run(_tiny_cfg(root, tiny_model_dir, "methods=[fixed_model]"))
    d = root / "methods" / "fixed_model"
    stats = json.loads((d / "cleaned" / "selection_stats.json").read_text())
    assert stats["requested_ratio"] == 0.6
    tc_log.clear()
    summary = run(
        _tiny_cfg(root, tiny_model_dir, "methods=[fixed_model]", "selection.ratio=0.3", "train.lr=0.005")
    )
    stats = json.loads((d / "cleaned" / "selection_stats.json").read_text())
    assert stats["requested_ratio"] == 0.3 and stats["kept_tokens"] == int(
        0.3 * stats["total_response_tokens"]
    )
    for stage in (d / "train", root / "warmup"):
        assert json.loads((stage / "done.json").read_text())["config"]["lr"] == 0.005, stage
    assert summary["ratio"] == 0.3
    # the log says what was reused and what was recomputed, and why
    assert any("reusing" in m and "data/pool" in m for m in tc_log)
    assert any("recomputing" in m and "cleaned" in m and "settings.ratio" in m for m in tc_log)
    assert any("recomputing" in m and "train.lr: 0.001 -> 0.005" in m for m in tc_log)


def test_changed_synthetic_pool_config_regenerates_the_pool(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = tmp_path / "run"
    pool = "data.synthetic={n_facts: 4, repeats: 2, noise_rate: 0.5, seed: 0}"
    run(_tiny_cfg(root, tiny_model_dir, "methods=[base]", pool))
    first = (root / "data" / "source" / "pool.jsonl").read_text()
    run(_tiny_cfg(root, tiny_model_dir, "methods=[base]", pool.replace("seed: 0", "seed: 1")))
    second = (root / "data" / "source" / "pool.jsonl").read_text()
    assert first != second
    import datasets

    ids = datasets.load_from_disk(str(root / "data" / "pool"))["sample_id"]
    assert sorted(ids) == sorted(json.loads(ln)["id"] for ln in second.splitlines())


# ------------------------------------------------------------------------ case 3: verified before reuse


def test_changed_bytes_of_a_finished_score_store_are_recomputed(
    prepared: Path, tiny_model_dir: Path, adapter: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s"
    _score(prepared, tiny_model_dir, out, reference=str(adapter))
    f = sorted(out.glob("data-*.arrow"))[0]
    good = f.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0x55  # a flipped byte inside the float data, same size
    f.write_bytes(bytes(data))
    m = _score(prepared, tiny_model_dir, out, reference=str(adapter))
    assert not m.get("reused") and f.read_bytes() == good
    assert _score(prepared, tiny_model_dir, out, reference=str(adapter))["reused"]


def test_training_dir_whose_adapter_was_deleted_trains_again(
    prepared: Path, tiny_model_dir: Path, tmp_path: Path, tc_log: list[str]
) -> None:
    out = tmp_path / "t"
    train(prepared, str(tiny_model_dir), out, CFG, progress=False)
    weights = out / "adapter" / "adapter_model.safetensors"
    want = weights.read_bytes()
    weights.unlink()
    again = train(prepared, str(tiny_model_dir), out, CFG, progress=False)
    assert not again.get("reused") and weights.read_bytes() == want  # retrained, deterministically
    assert any("fails verification (adapter_model.safetensors is missing)" in m for m in tc_log)
    assert train(prepared, str(tiny_model_dir), out, CFG, progress=False)["reused"]


# ------------------------------------------------------------------------ case 4: score's --out


def test_score_refuses_out_equal_to_data_and_a_stale_store_without_force(
    prepared: Path, tiny_model_dir: Path, adapter: Path, tmp_path: Path
) -> None:
    before = sorted((p.name, p.stat().st_size) for p in prepared.iterdir())
    with pytest.raises(TokencleanError, match=r"is the input"):
        _score(prepared, tiny_model_dir, prepared, reference=str(adapter))
    assert sorted((p.name, p.stat().st_size) for p in prepared.iterdir()) == before
    out = tmp_path / "s"
    _score(prepared, tiny_model_dir, out, reference=str(adapter))
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(
        TokencleanError, match=r"finished score store of other settings .*differs in: .*dtype.*--force"
    ):
        _score(prepared, tiny_model_dir, out, reference=str(adapter), dtype="bf16")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # the finished store is intact
    assert (
        _score(prepared, tiny_model_dir, out, reference=str(adapter), dtype="bf16", force=True)["dtype"]
        == "bf16"
    )


# ------------------------------------------------------------------------ case 6: torn log line on resume


def test_a_torn_last_log_line_is_tolerated_on_resume(
    prepared: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from tokenclean.training.loop import INTERRUPT_ENV

    out = tmp_path / "t"
    monkeypatch.setenv(INTERRUPT_ENV, "2")
    with pytest.raises(TrainingInterrupted):
        train(prepared, str(tiny_model_dir), out, CFG, progress=False)
    monkeypatch.delenv(INTERRUPT_ENV)
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.2')  # the process died while writing this line
    done = train(prepared, str(tiny_model_dir), out, CFG, progress=False)
    steps = [json.loads(ln)["step"] for ln in (out / "log.jsonl").read_text().splitlines()]
    assert done["resumed_from_step"] == 2 and steps == list(range(1, done["steps"] + 1))


# ------------------------------------------------------------------------ case 8: a schedule with no update


def test_training_without_an_update_warns_with_the_numbers(
    prepared: Path, tiny_model_dir: Path, tmp_path: Path, tc_log: list[str]
) -> None:
    cfg = TrainConfig(lora_r=4, batch_size=4, grad_accum=12, warmup_ratio=0.03, save_steps=0)  # batch 48
    train(prepared, str(tiny_model_dir), tmp_path / "t", cfg, progress=False)
    warn = [m for m in tc_log if "no update" in m]
    assert len(warn) == 1 and warn[0].startswith("WARNING")
    assert "12 samples / effective batch 48 (batch_size 4 x grad_accum 12)" in warn[0]
    assert "= 1 optimizer step(s)" in warn[0] and "= 1 step(s)" in warn[0]


def test_cli_train_stops_before_loading_when_no_step_would_update(
    prepared: Path, tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """`tokenclean train` on too few samples for the default global batch (48) refuses before the model
    loads (no output written), naming the numbers and --allow-no-update; with the flag it trains."""
    from tokenclean.cli import main
    from tokenclean.training import model as training_model

    loads = []
    real = training_model.build_lora_model
    monkeypatch.setattr(
        "tokenclean.training.loop.build_lora_model", lambda *a, **k: loads.append(1) or real(*a, **k)
    )
    args = ["train", "--data", str(prepared), "--model", str(tiny_model_dir), "--lora-r", "4", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert (
        "this schedule gives no update: 12 samples / effective batch 48" in err and "--allow-no-update" in err
    )
    assert loads == [] and not (tmp_path / "t" / "adapter").exists()
    assert main([*args, "--out", str(tmp_path / "t2"), "--allow-no-update", "--save-steps", "0"]) == 0
    assert loads == [1] and (tmp_path / "t2" / "adapter").exists()


# ------------------------------------------------------------------------ case 10: device and dtype


def test_every_stage_gets_device_and_dtype_from_the_config(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch
) -> None:
    import tokenclean.evaluation as evaluation
    import tokenclean.scoring as scoring
    import tokenclean.training as training

    seen: dict[str, list[dict[str, Any]]] = {"train": [], "score": [], "eval": []}

    def spy(name: str, real: Any) -> Any:
        def call(*a: Any, **k: Any) -> Any:
            seen[name].append(k)
            return real(*a, **k)

        return call

    monkeypatch.setattr(training, "train", spy("train", training.train))
    monkeypatch.setattr(scoring, "score_dataset", spy("score", scoring.score_dataset))
    monkeypatch.setattr(evaluation, "evaluate", spy("eval", evaluation.evaluate))
    heldout = ROOT / "src" / "tokenclean" / "resources" / "sample_sft.jsonl"
    cfg = _tiny_cfg(
        tmp_path / "run",
        tiny_model_dir,
        "methods=[base,fixed_model]",
        "model.device=cpu",
        "scoring.dtype=fp32",
        "eval.suite=quick",
        "eval.dtype=fp16",
        "eval.limit=3",
        f"data.heldout={heldout}",
    )
    run(cfg)
    assert seen["train"] and all(k["device"] == "cpu" for k in seen["train"])
    assert seen["score"] and all((k["device"], k["dtype"]) == ("cpu", "fp32") for k in seen["score"])
    assert len(seen["eval"]) == 2 and all((k["device"], k["dtype"]) == ("cpu", "fp16") for k in seen["eval"])


def test_cuda_device_without_cuda_fails_before_any_stage(tmp_path: Path, tiny_model_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelError, match="device 'cuda' requested but CUDA is not available"):
        run(_tiny_cfg(tmp_path / "run", tiny_model_dir, "methods=[warmup]", "model.device=cuda"))
    assert not (tmp_path / "run" / "data").exists()


# ------------------------------------------------------------------------ case 11: reference == base


def test_scores_of_a_reference_equal_to_the_base_warn(
    prepared: Path, tiny_model_dir: Path, tmp_path: Path, tc_log: list[str]
) -> None:
    from peft import LoraConfig, get_peft_model

    from tokenclean.models.loader import load_model

    zero = tmp_path / "zero"  # a freshly initialised LoRA: B = 0, the same model as the base
    get_peft_model(
        load_model(str(tiny_model_dir)), LoraConfig(r=4, target_modules=["q_proj"])
    ).save_pretrained(str(zero))
    _score(prepared, tiny_model_dir, tmp_path / "s", reference=str(zero))
    warns = [m for m in tc_log if m.startswith("WARNING")]
    assert any("scores in" in m and "is exactly 0" in m for m in warns)
    assert any("changes nothing: all 2 lora_B tensors are zero" in m for m in warns)
    tc_log.clear()
    stats = select(tmp_path / "s", 0.5, "global", tmp_path / "c")
    assert stats["tie_decided_tokens"] == stats["kept_tokens"] > 0
    assert any("ties decided" in m for m in tc_log)
