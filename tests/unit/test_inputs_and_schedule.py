"""Issue 11, cases 7 and 8: inputs that used to be misread, configs that used to fall back to a demo
silently, and the arithmetic of a training schedule that gives no update."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenclean.data.formats import read_records
from tokenclean.errors import ConfigError, DataError
from tokenclean.pipelines.config import load_run_config
from tokenclean.training import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
ROW = {"prompt": "hello there", "completion": "general kenobi"}


def test_a_missing_local_path_is_not_looked_up_on_the_hub(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(
        DataError, match=r"^data/train: no such file or directory \(and no Hub lookup was made"
    ):
        list(read_records("data/train"))


def test_online_a_missing_path_says_both(monkeypatch, tmp_path: Path) -> None:
    import tokenclean.data.formats as formats

    monkeypatch.chdir(tmp_path)
    for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(v, raising=False)

    def no_hub(spec: str):
        raise DataError(f"hub:{spec}", "cannot load Hub dataset (DatasetNotFoundError: nope)")
        yield  # pragma: no cover

    monkeypatch.setattr(formats, "_iter_hub", no_hub)
    with pytest.raises(DataError, match=r"no such file or directory, and no Hub dataset of that name"):
        list(read_records("data/train"))


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_utf8_bom_is_stripped(tmp_path: Path, suffix: str) -> None:
    p = tmp_path / f"bom{suffix}"
    body = json.dumps(ROW) + "\n" if suffix == ".jsonl" else json.dumps([ROW])
    p.write_bytes(b"\xef\xbb\xbf" + body.encode())
    (rec,) = read_records(p)
    assert rec.messages[0].content == "hello there" and rec.location.endswith(("bom.jsonl:1", "[row 0]"))


@pytest.mark.parametrize(
    ("yaml_text", "match"),
    [
        ("name: x\n", r"^data\.path: required"),
        ("name: x\ndata:\n  template: tulu\nmodel:\n  base: smollm2\n", r"^data\.path: required"),
        ("name: x\ndata:\n  path: my.jsonl\n", r"^model\.base: required"),
    ],
)
def test_a_config_without_data_or_model_is_an_error(tmp_path: Path, yaml_text: str, match: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError, match=match):
        load_run_config(p)


def test_the_demo_config_names_its_data_and_model_explicitly() -> None:
    text = (ROOT / "src" / "tokenclean" / "resources" / "demo.yaml").read_text()
    assert "\n  base: smollm2" in text and "\n  synthetic:" in text
    cfg = load_run_config(ROOT / "src" / "tokenclean" / "resources" / "demo.yaml")
    assert cfg.model.base == "smollm2" and cfg.data.synthetic is not None


def test_a_schedule_with_no_update_is_named_with_its_numbers() -> None:
    from tokenclean.training.schedule import no_update_message

    cfg = TrainConfig()  # the paper's: batch 4 x accumulation 12, warm-up 3%
    msg = no_update_message(24, cfg, 1)
    assert msg is not None
    for part in (
        "24 samples / effective batch 48",
        "= 1 optimizer step(s)",
        "ceil(warmup_ratio 0.03 x 1) = 1",
    ):
        assert part in msg
    assert no_update_message(24, cfg.replace(warmup_ratio=0.0), 1) is None  # lr > 0 at step 0
    assert no_update_message(96, cfg, 2) is None  # step 2 decays from the peak


@pytest.mark.parametrize("n_steps", [1, 2, 3, 10, 34, 100])
@pytest.mark.parametrize("ratio", [0.0, 0.03, 0.5, 0.99])
def test_updating_steps_equals_the_transformers_schedule(n_steps: int, ratio: float) -> None:
    import math

    import torch
    from transformers import get_linear_schedule_with_warmup

    from tokenclean.training.schedule import lr_factor, updating_steps

    w = math.ceil(ratio * n_steps)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_linear_schedule_with_warmup(opt, w, n_steps)
    lrs = []
    for _ in range(n_steps):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([lr_factor(s, n_steps, w) for s in range(n_steps)])
    assert updating_steps(n_steps, w) == sum(lr > 0 for lr in lrs)
