"""The CLI says each result once, on one line, without the libraries' progress bars and FutureWarnings."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from tokenclean.cli import main
from tokenclean.selection.stats import describe
from tokenclean.utils import quiet_libraries


def test_prepare_prints_one_result_line_and_no_library_bars(
    tmp_path: Path, tiny_tok_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(7)))
    assert (
        main(["prepare", "--data", str(src), "--tokenizer", str(tiny_tok_dir), "--out", str(tmp_path / "p")])
        == 0
    )
    out, err = capfd.readouterr()
    assert out.count("7 samples") == 1 and out.startswith("wrote ")
    assert "prepared 7 samples" not in err  # the library's own result line is not repeated
    assert "Saving the dataset" not in err
    assert "7/7" in err  # the prepare bar has its total


def test_library_future_warnings_are_silenced_but_not_the_users() -> None:
    with warnings.catch_warnings(record=True) as seen:  # the filters are restored afterwards
        warnings.simplefilter("always")
        quiet_libraries()
        warnings.warn_explicit(
            "old API", FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils"
        )
        warnings.warn_explicit("old API", FutureWarning, "tuners.py", 1, module="peft.tuners")
        warnings.warn_explicit("old API", FutureWarning, "mine.py", 1, module="mine")
    assert [w.filename for w in seen] == ["mine.py"]


def test_a_soft_selection_says_it_weights_every_token() -> None:
    st = {
        "total_response_tokens": 593,
        "kept_tokens": 593,
        "requested_ratio": 0.6,
        "achieved_ratio": 1.0,
        "samples_emptied": 0,
        "samples_total": 30,
        "weights": {
            "mapping": "sigmoid",
            "temperature": 1.0,
            "mean": 0.61,
            "effective_tokens": 361.7,
            "share_above_half": 0.6,
        },
    }
    line = describe(st, "global")
    assert "kept 593 of 593" not in line and "achieved" not in line
    assert line.startswith("soft weights (sigmoid, T=1.0) around the global K=0.6 cut: all 593 of 593")
    assert "mean weight 0.610 (361.7 effective tokens), 60.0% weighted above 0.5" in line


def test_validate_config_checks_every_file_and_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"
    (tmp_path / "a.yaml").write_text("selection:\n  ratio: 2\n")
    (tmp_path / "b.yaml").write_text("bogus_key: 1\n")
    assert main(["validate-config", str(tmp_path / "a.yaml"), str(good), str(tmp_path / "b.yaml")]) == 2
    out, err = capsys.readouterr()
    assert f"{good}: ok" in out
    assert f"{tmp_path / 'a.yaml'}: error: " in err and "selection.ratio" in err
    assert f"{tmp_path / 'b.yaml'}: error: " in err and "bogus_key" in err
    assert "2 of 3 config(s) invalid" in err


def test_help_texts_say_each_thing_once_and_truly(capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from tokenclean.cli import COMMANDS
    from tokenclean.cli.settings_doc import settings_markdown

    assert main(["eval", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "dtype of the evaluated model (on --device)" in text and "model.device" not in text
    assert "| `seeds` | `[]` |" in settings_markdown()  # as written in YAML, not ''
    demo = next(c for c in COMMANDS if c.name == "demo").help
    names = {"base": "base", "full": "full tokens", "random": "random", "rho": "RHO"}
    names |= {"fixed_model": "fixed-model", "self_evolving": "self-evolving"}
    root = Path(__file__).resolve().parents[2]
    methods = yaml.safe_load((root / "src/tokenclean/resources/demo.yaml").read_text())["methods"]
    assert all(names[m] in demo for m in methods) and "every method on" not in demo


def test_a_dashed_override_says_how_overrides_are_written(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"
    assert main(["run", str(cfg), "--data.path", "x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokenclean run: error: unrecognized arguments: --data.path")
    assert "config overrides are key=value, e.g. data.path=VALUE" in err and "usage:" not in err
