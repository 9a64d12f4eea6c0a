"""docs/integrations.md: every snippet marked ``<!-- run: NAME -->`` runs (tiny model, test paths, one step)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from tokenclean.selection import select
from tokenclean.testing import require
from tokenclean.testing.stores import write_score_store

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

pytestmark = pytest.mark.usefixtures("one_thread")


def snippets() -> dict[str, tuple[str, str]]:
    found = re.findall(r"<!-- run: (\w+) -->\n```(\w+)\n(.*?)\n```", DOC.read_text(), flags=re.S)
    return {name: (lang, code) for name, lang, code in found}


@pytest.fixture()
def runs(tmp_path: Path, tiny_tok: Any, tiny_tok_dir: Path) -> Path:
    """runs/prep, runs/clean and runs/data.jsonl (with an axolotl message weight) of the builtin sample."""
    from tokenclean.data.formats import builtin_path
    from tokenclean.data.prepare import prepare

    r = tmp_path / "runs"
    rows = [json.loads(x) for x in builtin_path("sample").read_text().splitlines() if x.strip()]
    rows[0]["messages"][-1]["weight"] = 0
    (r / "data.jsonl").parent.mkdir(parents=True)
    (r / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    prepare(
        r / "data.jsonl",
        tiny_tok,
        r / "prep",
        template="tulu",
        max_length=128,
        tokenizer_name=str(tiny_tok_dir),
    )
    select(write_score_store(tmp_path / "scores", r / "prep", seed=0), 0.6, "global", r / "clean")
    return r


def test_every_trainer_has_a_snippet() -> None:
    assert set(snippets()) == {"trl", "axolotl", "llamafactory", "jsonl", "import"}


@pytest.mark.parametrize("name", ["trl", "axolotl", "llamafactory", "jsonl", "import"])
def test_snippet_runs(name: str, runs: Path, tiny_model_dir: Path, tiny_tok_dir: Path) -> None:
    lang, code = snippets()[name]
    code = code.replace("runs/", f"{runs}/").replace(MODEL, str(tiny_model_dir))
    if lang == "bash":
        from tokenclean.cli import main

        for line in code.splitlines():
            argv = shlex.split(line)
            assert argv[0] == "tokenclean" and main(argv[1:]) == 0, line
        out = Path(argv[argv.index("--out") + 1])
        assert (out / "manifest.json").is_file()
        return
    require("trl")
    code = code.replace("max_steps=200", "max_steps=1, use_cpu=True, bf16=False")  # one CPU step
    scope: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), scope)
    assert scope["trainer"].state.global_step == 1 and scope["trainer"].token_policy.name == "dft"
