"""Settings are defined once: every CLI flag generated from a setting has that setting's default, the engine
functions default to the same values, bounds reject bad values naming the dotted key, docs/settings.md is
the generated text, and the CLI stays fast (no torch for --help, a typo'd path fails while parsing)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from tokenclean.cli import COMMANDS, build_parser, main
from tokenclean.cli.args import field_default
from tokenclean.config import DEFAULT_DEVICE, Runtime, from_dict, in_bounds
from tokenclean.errors import ConfigError
from tokenclean.pipelines.config import DataConfig, EvalConfig, ScoringConfig, SelectionConfig
from tokenclean.selection.xtf import XtfSettings
from tokenclean.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _setting_actions() -> list[tuple[str, argparse.Action]]:
    return [
        (name, a)
        for name, p in _subparsers().items()
        for a in p._actions
        if getattr(a, "setting", None) is not None
    ]


def test_commands_are_listed_once_and_all_reach_the_parser() -> None:
    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names))
    assert set(_subparsers()) == set(names)
    assert all(c.example.startswith(f"tokenclean {c.name}") for c in COMMANDS), "an example per command"


def test_every_generated_flag_defaults_to_its_setting() -> None:
    actions = _setting_actions()
    assert {n for n, _ in actions} >= {"prepare", "score", "select", "xtf", "train", "merge", "eval", "run"}
    for cmd, a in actions:
        cls, name, _ = a.setting  # type: ignore[attr-defined]
        f = {f.name: f for f in dataclasses.fields(cls)}[name]
        assert a.default == field_default(f), f"tokenclean {cmd} {a.option_strings[0]}"
        assert a.help and len(a.help) > 10, f"tokenclean {cmd} {a.option_strings[0]} has no help"


def test_parsing_no_flags_builds_the_default_settings(tmp_path: Path) -> None:
    from tokenclean.cli.args import settings_from_args
    from tokenclean.cli.training import train_config_from_args

    (tmp_path / "d").mkdir()
    subs = _subparsers()
    a = subs["train"].parse_args(["--data", str(tmp_path / "d"), "--model", "smollm2", "--out", "o"])
    assert train_config_from_args(a) == TrainConfig()
    assert settings_from_args(Runtime, a) == Runtime()
    a = subs["score"].parse_args(["--data", str(tmp_path / "d"), "--base", "smollm2", "--out", "o"])
    assert settings_from_args(ScoringConfig, a, "scoring") == ScoringConfig()
    a = subs["xtf"].parse_args(["--data", str(tmp_path / "d"), "--base", "smollm2", "--out", "o"])
    assert settings_from_args(XtfSettings, a, "xtf") == XtfSettings()
    a = subs["select"].parse_args(["--scores", str(tmp_path / "d"), "--out", "o"])
    assert float(a.ratio) == SelectionConfig().ratio and a.seed == SelectionConfig().seed


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()}


def test_engine_defaults_are_the_config_defaults() -> None:
    from tokenclean.data.prepare import prepare
    from tokenclean.evaluation.runner import evaluate
    from tokenclean.scoring import score_dataset
    from tokenclean.selection.cleaned import select, select_many
    from tokenclean.selection.xtf import xtf_select
    from tokenclean.training.loop import train
    from tokenclean.training.merging import merge

    d, s, e = DataConfig(), ScoringConfig(), EvalConfig()
    p = _defaults(prepare)
    assert (p["fmt"], p["template"], p["max_length"], p["skip_invalid"]) == (
        d.format,
        d.template,
        d.max_length,
        d.skip_invalid,
    )
    sd = _defaults(score_dataset)
    assert (sd["dtype"], sd["batch_tokens"], sd["device"]) == (s.dtype, s.batch_tokens, DEFAULT_DEVICE)
    for fn in (select, select_many):
        assert _defaults(fn)["seed"] == SelectionConfig().seed
    assert _defaults(select_many)["temperature"] == 1.0 == from_dict(type(_soft()), {}).temperature
    assert (
        _defaults(xtf_select)["settings"] == XtfSettings()
        and _defaults(xtf_select)["device"] == DEFAULT_DEVICE
    )
    assert _defaults(train)["cfg"] == TrainConfig() and _defaults(train)["device"] == DEFAULT_DEVICE
    assert _defaults(merge)["device"] == DEFAULT_DEVICE
    ev = _defaults(evaluate)
    assert (ev["suite"], ev["dtype"], ev["device"]) == (e.suite, e.dtype, DEFAULT_DEVICE)
    from tokenclean.pipelines.config import ModelConfig

    assert ModelConfig().device == DEFAULT_DEVICE == Runtime().device


def _soft():
    from tokenclean.methods.soft_token_cleaning import SoftWeightsSettings

    return SoftWeightsSettings()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--lr", "-1"], "train.lr: must be > 0, got -1"),
        (["train", "--lora-dropout", "1"], "train.lora_dropout: must be in [0, 1), got 1"),
        (["train", "--policy", "rho2"], "train.policy: unknown token policy 'rho2'"),
        (["score", "--batch-tokens", "8"], "scoring.batch_tokens: must be >= 16, got 8"),
        (["xtf", "--otsu-classes", "1"], "xtf.otsu_classes: must be >= 2, got 1"),
        (["select", "--ratio", "0"], "--ratio: must be in (0, 1], got 0"),
        (["select", "--ratio", "0.5,1.5", "--out", "o-{ratio}"], "--ratio: must be in (0, 1], got 1.5"),
        (
            ["select", "--temperature", "0", "--weights", "sigmoid"],
            "peers.soft_token_cleaning.temperature: must be > 0",
        ),
        (["train", "--threads", "0"], "threads: must be >= 1, got 0"),
    ],
)
def test_cli_bounds_fail_before_heavy_work(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    d = tmp_path / "d"
    d.mkdir()
    required = {
        "train": ["--data", str(d), "--model", "smollm2", "--out", str(tmp_path / "o")],
        "score": ["--data", str(d), "--base", "smollm2", "--out", str(tmp_path / "o")],
        "xtf": ["--data", str(d), "--base", "smollm2", "--out", str(tmp_path / "o")],
        "select": ["--scores", str(d)] + ([] if "--out" in argv else ["--out", str(tmp_path / "o")]),
    }[argv[0]]
    assert main([*argv, *required]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("selection.sweep=[0.5, 0]", "selection.sweep[1]: must be in (0, 1], got 0"),
        ("scoring.batch_tokens=8", "scoring.batch_tokens: must be >= 16, got 8"),
        ("peers.xtf.iqr_k=-1", "peers.xtf.iqr_k: must be in [0, inf), got -1"),
        ("peers.sstoken.gamma=2", "peers.sstoken.gamma: must be in [0, 1], got 2"),
        (
            "peers.profit.direction=up",
            "peers.profit.direction: expected one of ['higher', 'lower', 'middle']",
        ),
        ("train.max_steps=0", "train.max_steps: must be >= 1, got 0"),
        ("eval.limit=0", "eval.limit: must be >= 1, got 0"),
        ("warmup.cross_fit=-2", "warmup.cross_fit: must be >= 0, got -2"),
    ],
)
def test_config_bounds_name_the_dotted_key(override: str, message: str) -> None:
    from tokenclean.pipelines.config import load_run_config

    with pytest.raises(ConfigError) as e:
        load_run_config(ROOT / "configs" / "tiny_cpu.yaml", [override])
    assert str(e.value).startswith(message), str(e.value)


def test_bounds_spec() -> None:
    assert in_bounds(1, "(0, 1]") and not in_bounds(0, "(0, 1]") and not in_bounds(float("nan"), ">= 0")
    assert in_bounds(0, "[0, 1)") and not in_bounds(1, "[0, 1)") and in_bounds(5, "> 4")
    with pytest.raises(ValueError, match="expected an interval"):
        in_bounds(1, "between 0 and 1")


def test_docs_settings_md_is_the_generated_text() -> None:
    from tokenclean.cli.settings_doc import settings_markdown

    text = settings_markdown()
    assert "| `lr` | `0.0001` | > 0 | `train --lr` |" in text
    assert "| `batch_tokens` | `null` | >= 16 | `score --batch-tokens`, `pool --batch-tokens` |" in text
    assert (ROOT / "docs" / "settings.md").read_text() == text, (
        "regenerate: tokenclean settings > docs/settings.md"
    )


def test_a_typo_fails_while_parsing_with_the_path_named(tmp_path: Path, capsys) -> None:
    missing = str(tmp_path / "missing.jsonl")
    assert main(["prepare", "--data", missing, "--tokenizer", "smollm2", "--out", str(tmp_path / "o")]) == 2
    assert f"argument --data: {missing}: no such file or directory" in capsys.readouterr().err
    assert main(["train", "--data", missing, "--model", "m", "--out", str(tmp_path / "o")]) == 2
    assert "no such prepared or cleaned dataset" in capsys.readouterr().err


def test_cli_import_and_a_typo_load_no_heavy_library(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from tokenclean.cli import main\n"
        f"assert main(['prepare', '--data', {str(tmp_path / 'x.jsonl')!r}, '--tokenizer', 't', '--out', 'o']) == 2\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "no such file or directory" in res.stderr


def test_every_registered_method_resolves_its_pipeline_and_settings() -> None:
    """Every method of the registry has a pipeline callable, a ``peers:`` section exactly when it declares
    settings, and a policy registered under its policy name."""
    import dataclasses

    from tokenclean import methods
    from tokenclean.pipelines.config import METHODS, PeersConfig

    assert methods.names() == METHODS
    sections = {f.name for f in dataclasses.fields(PeersConfig)}
    for spec in methods.specs():
        assert callable(spec.pipeline()), spec.name
        assert (spec.name in sections) == (spec.settings is not None), spec.name
        if spec.policy is not None:
            assert methods.policy_class(spec.policy.name) is spec.policy
            assert spec.policy.Settings is spec.settings, spec.name
