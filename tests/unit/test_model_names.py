"""A model name is checked before anything loads or is written: a typo fails at once with what was meant."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tokenclean.cli import main
from tokenclean.errors import ModelError
from tokenclean.models import names
from tokenclean.models.names import check_model_name


def test_alias_typo_suggests_the_alias_without_asking_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelError, match=r"'smolm2' is not a local path.*HF_HUB_OFFLINE.*did you mean 'smollm2'"
    ):
        check_model_name("smolm2")


def test_path_typo_suggests_the_existing_sibling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "warmup" / "adapter").mkdir(parents=True)
    with pytest.raises(ModelError, match=r"did you mean 'warmup/adapter'"):
        check_model_name("warmup/adaptr", "reference")
    with pytest.raises(ModelError, match=r"'./warmup/adaptr': no such file or directory; did you mean"):
        check_model_name("./warmup/adaptr")
    check_model_name("warmup/adapter")  # an existing path passes
    check_model_name("SmolLM2")  # an alias passes, in any case


def test_hub_id_is_asked_once_with_a_short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import HfApi

    calls: list[float | None] = []

    def unreachable(self: HfApi, repo_id: str, timeout: float | None = None, **kw: object) -> None:
        calls.append(timeout)
        raise ConnectionError("no network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(HfApi, "model_info", unreachable)
    names._hub_lookup.cache_clear()
    for _ in range(2):
        with pytest.raises(ModelError, match=r"could not be asked within 5 s \(ConnectionError\)"):
            check_model_name("some-org/some-model")
    assert calls == [names.HUB_TIMEOUT_S]  # once per process, with the timeout
    names._hub_lookup.cache_clear()


def test_cli_refuses_a_typo_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "prepared").mkdir()
    out = tmp_path / "scores"
    assert main(["score", "--data", str(tmp_path / "prepared"), "--base", "smolm2", "--out", str(out)]) == 2
    assert "did you mean 'smollm2'" in capsys.readouterr().err
    assert not out.exists()
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # the suite never asks the Hub
