"""``tokenclean pool`` without the optional engine extra, and its executor options (no datatrove needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tokenclean.cli import main
from tokenclean.errors import ConfigError


def test_without_datatrove_pool_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "datatrove" else real(name, *a)
    )
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "m").mkdir()
    args = ["pool", "--data", str(tmp_path / "d.jsonl"), "--base", str(tmp_path / "m"), "--tasks", "2"]
    assert main([*args, "--out", str(tmp_path / "pool")]) == 2
    err = capsys.readouterr().err
    assert "tokenclean pool: error: the datatrove engine is not installed" in err
    assert "pip install 'tokenclean[engine]'" in err
    assert not (tmp_path / "pool").exists()  # refused before anything is written


def test_executor_options_and_choices() -> None:
    from tokenclean.cli import pool
    from tokenclean.engines import datatrove_engine

    assert pool.EXECUTORS == datatrove_engine.EXECUTORS
    opts = pool._options(["partition=gpu", "gpus_per_task=1", "time=12:00:00", "requeue=false"])
    assert opts == {"partition": "gpu", "gpus_per_task": 1, "time": "12:00:00", "requeue": False}
    with pytest.raises(ConfigError, match="expected KEY=VALUE, got 'gpu'"):
        pool._options(["gpu"])
