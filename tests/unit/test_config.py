"""Strict typed configs: unknown keys and bad values fail naming the dotted key; overrides; every YAML in
configs/ validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenclean.config import apply_overrides, to_dict
from tokenclean.errors import ConfigError
from tokenclean.pipelines.config import RunConfig, load_run_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [*sorted((ROOT / "configs").glob("*.yaml")), ROOT / "src/tokenclean/resources/demo.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_run_config(path)
    assert isinstance(cfg, RunConfig)
    assert path.read_text().startswith("# tokenclean ")  # each opens with the command to run it


def test_groundtruth_config_is_the_demo() -> None:
    """configs/groundtruth_smollm2.yaml says it is `tokenclean demo`: only the run directory may differ."""
    a = to_dict(load_run_config(ROOT / "configs" / "groundtruth_smollm2.yaml"))
    b = to_dict(load_run_config(ROOT / "src/tokenclean/resources/demo.yaml"))
    assert {k for k in a if a[k] != b[k]} == {"run_dir"}


def test_paper_configs_hold_the_paper_settings() -> None:
    for name in ("paper_llama3.2-3b.yaml", "paper_llama3.1-8b.yaml", "paper_mistral-7b.yaml"):
        cfg = load_run_config(ROOT / "configs" / name)
        t = cfg.train
        assert (t.lora_r, t.lora_alpha, t.lora_dropout, t.lr, t.epochs, t.max_length, t.seed) == (
            64,
            16.0,
            0.1,
            1e-4,
            1,
            2048,
            42,
        )
        assert t.step_batch(1) == (48, 12) and t.step_batch(8) == (48, 2) and t.warmup_ratio == 0.03
        assert set(t.target_modules) == {
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        }
        assert cfg.selection.ratio == 0.6 and cfg.self_evolving.rounds == 4 and cfg.data.template == "tulu"
        assert set(cfg.methods) == {"base", "warmup", "full", "random", "rho", "fixed_model", "self_evolving"}
        assert cfg.eval.suite == "paper"


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.lr=fast", r"^train\.lr: expected a number, got 'fast'"),
        ("bogus=1", r"^bogus: unknown key"),
        ("data.nope=1", r"^data\.nope: unknown key"),
        ("methods=[fixed]", r"^methods\[0\]: unknown method 'fixed'"),
        ("selection.ratio=1.5", r"^selection\.ratio: must be in \(0, 1\]"),
        ("data.template=jinja", r"^data\.template: expected one of \['tulu', 'chat', 'plain'\]"),
        ("self_evolving.rounds=0", r"^self_evolving\.rounds: must be >= 1"),
        ("train.batch_size=0", r"train\.batch_size"),
        ("eval.limit=many", r"^eval\.limit: expected"),
        ("report=yes please", r"^report: expected true or false"),
        (
            "selection.steps=avg",
            r"^selection\.steps: expected one of \['mean', 'min', 'cut_mean', 'cut_min'\] or null, got 'avg'",
        ),
    ],
)
def test_bad_values_name_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_run_config(ROOT / "configs" / "tiny_cpu.yaml", [override])


def test_overrides_and_round_trip(tmp_path: Path) -> None:
    cfg = load_run_config(
        ROOT / "configs" / "tiny_cpu.yaml",
        ["selection.ratio=0.5", "train.lr=3e-4", "selection.sweep=[0.2, 0.4]"],
    )
    assert cfg.selection.ratio == 0.5 and cfg.train.lr == 3e-4 and cfg.selection.sweep == (0.2, 0.4)
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_run_config(p) == cfg


def test_apply_overrides_creates_sections() -> None:
    assert apply_overrides({}, ["a.b.c=1", "a.d=[1, 2]"]) == {"a": {"b": {"c": 1}, "d": [1, 2]}}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["novalue"])


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nselection: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_run_config(p)
