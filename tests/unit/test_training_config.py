"""TrainConfig: paper defaults, help on every field, strict validation naming the dotted key."""

from __future__ import annotations

import dataclasses

import pytest

from tokenclean.errors import ConfigError
from tokenclean.training import TrainConfig


def test_paper_defaults() -> None:
    c = TrainConfig()
    assert (c.lora_r, c.lora_alpha, c.lora_dropout) == (64, 16.0, 0.1)
    assert c.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert (c.lr, c.warmup_ratio, c.epochs, c.max_length, c.seed) == (1e-4, 0.03, 1, 2048, 42)
    assert c.step_batch(1) == (48, 12) and c.step_batch(2) == (48, 6)  # the global batch, not per process
    assert c.max_steps is None and not c.bf16 and not c.gradient_checkpointing


def test_every_field_has_help() -> None:
    for f in dataclasses.fields(TrainConfig):
        assert len(f.metadata.get("help", "")) > 10, f.name


def test_round_trip_and_identity() -> None:
    c = TrainConfig(lr=3e-4, max_steps=7, target_modules=("q_proj",), save_steps=3)
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert "save_steps" not in c.identity() and "logging_steps" not in c.identity()
    assert c.identity()["lr"] == 3e-4


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"lr": -1}, "train.lr: must be > 0, got -1"),
        ({"lr": "fast"}, "train.lr: expected a number, got 'fast'"),
        ({"lrr": 1e-4}, "train.lrr: unknown key (valid keys: lora_r,"),
        ({"epochs": 1.5}, "train.epochs: expected an integer, got 1.5"),
        ({"epochs": True}, "train.epochs: expected an integer, got True"),
        ({"batch_size": 0}, "train.batch_size: must be >= 1, got 0"),
        ({"lora_dropout": 1.0}, "train.lora_dropout: must be in [0, 1), got 1.0"),
        ({"max_steps": 0}, "train.max_steps: must be >= 1, got 0"),
        ({"bf16": "yes"}, "train.bf16: expected true or false, got 'yes'"),
        ({"model_dtype": "fp8"}, "train.model_dtype: expected one of ['fp32', 'bf16', 'fp16'], got 'fp8'"),
        ({"target_modules": []}, "train.target_modules: expected a non-empty list of module names"),
        ({"lr": float("nan")}, "train.lr: must be > 0, got nan"),
    ],
)
def test_strict_errors_name_the_key(d: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict(d)
    assert str(e.value).startswith(message), str(e.value)


def test_prefix_is_used_and_constructor_validates() -> None:
    with pytest.raises(ConfigError, match=r"^pipeline\.warmup\.train\.seed: must be >= 0"):
        TrainConfig.from_dict({"seed": -3}, prefix="pipeline.warmup.train")
    with pytest.raises(ConfigError, match=r"^train\.grad_accum"):
        TrainConfig(grad_accum=0)
    with pytest.raises(ConfigError, match="expected a mapping"):
        TrainConfig.from_dict([1, 2])  # type: ignore[arg-type]


def test_yaml_friendly_coercions() -> None:
    c = TrainConfig.from_dict({"lr": "1e-4", "target_modules": "q_proj, v_proj", "max_steps": None})
    assert c.lr == 1e-4 and c.target_modules == ("q_proj", "v_proj") and c.max_steps is None
    assert TrainConfig.from_dict({"target_modules": ["q_proj"]}).target_modules == ("q_proj",)
    assert TrainConfig.from_dict(None) == TrainConfig()


def test_global_batch_means_the_same_step_on_any_number_of_processes() -> None:
    """Issue 17 (2): the paper's 48 on 1, 2 or 8 processes; the HF convention only when asked for."""
    c = TrainConfig(global_batch=48, batch_size=4)
    assert [c.step_batch(n) for n in (1, 2, 8)] == [(48, 12), (48, 6), (48, 2)]
    assert TrainConfig(batch_size=4, grad_accum=12).step_batch(8) == (384, 12)  # per-device x accum x N
    assert TrainConfig(global_batch=48, batch_size=4, grad_accum=6).step_batch(2) == (48, 6)
    with pytest.raises(
        ConfigError, match=r"^train\.global_batch: 48 differs from batch_size 4 x grad_accum 12 x 8"
    ):
        TrainConfig(global_batch=48, batch_size=4, grad_accum=12).step_batch(8)
    with pytest.raises(ConfigError, match=r"^train\.global_batch: 48 samples do not split evenly over 5"):
        c.step_batch(5)
