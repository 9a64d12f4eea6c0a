"""``model.attn_implementation`` / ``--attn-implementation``: one per-process choice that every model
loaded through :func:`tokenclean.models.loader.load_model` gets (scoring, training, evaluation, merging,
ground truth, XTF all load through it)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tokenclean.errors import ModelError
from tokenclean.models import loader


@pytest.fixture(autouse=True)
def _restore():
    yield
    loader.set_attn_implementation("auto")


def test_resolution_on_cpu() -> None:
    assert loader.attn_implementation_for("auto", "fp32", "cpu") is None  # transformers' default (sdpa)
    assert loader.attn_implementation_for("eager", "fp32", "cpu") == "eager"
    assert loader.attn_implementation_for("sdpa", "bf16", "cpu") == "sdpa"
    with pytest.raises(ModelError, match="needs a CUDA device"):
        loader.attn_implementation_for("flash_attention_2", "bf16", "cpu")
    with pytest.raises(ModelError, match="unknown attn_implementation"):
        loader.set_attn_implementation("flash")


def test_process_choice_reaches_load_model(tiny_model_dir: Path) -> None:
    assert loader.load_model(str(tiny_model_dir)).config._attn_implementation == "sdpa"
    loader.set_attn_implementation("eager")
    assert loader.load_model(str(tiny_model_dir)).config._attn_implementation == "eager"
    explicit = loader.load_model(str(tiny_model_dir), attn_implementation="sdpa")
    assert explicit.config._attn_implementation == "sdpa"  # an explicit argument wins


def test_cli_flag_sets_the_process_choice() -> None:
    from tokenclean.cli.args import add_runtime, apply_runtime

    p = argparse.ArgumentParser()
    add_runtime(p)
    apply_runtime(p.parse_args(["--attn-implementation", "eager", "--threads", "1"]))
    assert loader._attn_default[0] == "eager"
    with pytest.raises(SystemExit):
        p.parse_args(["--attn-implementation", "flash"])


def test_run_config_sets_the_process_choice(tmp_path: Path) -> None:
    from tokenclean.pipelines.config import load_run_config
    from tokenclean.pipelines.stages import open_run

    cfg = load_run_config(
        None,
        [
            "model.base=smollm2",
            "data.path=builtin:sample",
            f"run_dir={tmp_path / 'run'}",
            "model.attn_implementation=eager",
            "model.device=cpu",
        ],
    )
    open_run(cfg)
    assert loader._attn_default[0] == "eager"
