"""The Python snippet of docs/training.md runs as written: each is executed with a tiny model in place of
``MODEL`` and test datasets in place of the ``runs/...`` paths (the only lines changed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tokenclean.selection import select
from tokenclean.testing import require
from tokenclean.testing.stores import write_score_store

ROOT = Path(__file__).resolve().parents[2]


def snippets(doc: str, section: str) -> list[str]:
    text = (ROOT / "docs" / doc).read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)\n```", body, flags=re.S)


def _assign(code: str, name: str, value: str) -> str:
    pattern = rf"^{name} = .*$"
    assert re.search(pattern, code, flags=re.M), f"snippet has no `{name} = ...` line"
    return re.sub(pattern, f"{name} = {value!r}", code, count=1, flags=re.M)


@pytest.fixture()
def outputs(tmp_path: Path, tiny_tok: Any, tiny_tok_dir: Path) -> dict[str, Path]:
    from tokenclean.data.prepare import prepare

    prep = tmp_path / "prep"
    prepare(
        "builtin:sample", tiny_tok, prep, template="tulu", max_length=96, tokenizer_name=str(tiny_tok_dir)
    )
    store = write_score_store(tmp_path / "scores", prep, seed=0)
    select(store, 0.6, "global", tmp_path / "cleaned")
    return {"CLEANED": tmp_path / "cleaned"}


def test_training_md_trl_snippets_run_as_written(
    outputs: dict[str, Path],
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
) -> None:
    require("trl")
    monkeypatch.chdir(tmp_path)  # the snippets write runs/trl*
    codes = snippets("training.md", "Training with Trainer / TRL on tokenclean's outputs")
    assert len(codes) == 1  # hard labels (weights and policies: docs/integrations.md, its own test)
    for code in codes:
        code = _assign(code, "MODEL", str(tiny_model_dir))
        for name, path in outputs.items():
            if re.search(rf"^{name} = ", code, flags=re.M):
                code = _assign(code, name, str(path))
        scope: dict[str, Any] = {"__name__": "snippet"}
        exec(compile(code, "docs/training.md", "exec"), scope)
        state = scope["trainer"].state
        assert state.global_step >= 1 and all(
            0 < e["train_loss"] < 100 for e in state.log_history if "train_loss" in e
        )
    assert (tmp_path / "runs" / "trl").is_dir()
    from tokenclean.outputs import verify_input

    verify_input(outputs["CLEANED"], "manifest.json")  # TRL wrote nothing into the cleaned set
