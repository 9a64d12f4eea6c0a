"""`tokenclean run` on a user's own JSONL (OpenAI-style records) prints its result table and the report path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenclean.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _openai_rows(n: int, offset: int = 0) -> str:
    rows = []
    for i in range(offset, offset + n):
        rows.append(
            {
                "messages": [
                    {"role": "developer", "content": "Answer briefly."},
                    {"role": "user", "content": [{"type": "text", "text": f"What is {i} plus one?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": f"It is {i + 1}."}]},
                ]
            }
        )
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.mark.requires("matplotlib")
def test_own_data_run_prints_its_table_and_report(
    tmp_path: Path, tiny_model_dir: Path, one_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mine.jsonl").write_text(_openai_rows(12))
    (tmp_path / "test.jsonl").write_text(_openai_rows(4, offset=100))
    rc = main(
        [
            "run",
            str(ROOT / "configs" / "own_data_cpu.yaml"),
            f"data.path={tmp_path / 'mine.jsonl'}",
            f"data.heldout={tmp_path / 'test.jsonl'}",
            f"run_dir={tmp_path / 'run'}",
            f"model.base={tiny_model_dir}",
            "train.lora_r=4",
            "train.batch_size=2",
            "train.grad_accum=1",
            "data.max_length=64",
            "train.max_length=64",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("method "))
    assert "Held-out loss" in lines[head] and "updates" in lines[head]
    rows = {ln.split()[0]: ln for ln in lines[head + 2 : head + 5]}
    assert set(rows) == {"base", "warmup", "fixed_model"}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    loss = summary["methods"]["fixed_model"]["eval"]["tasks"]["heldout_loss"]["value"]
    assert f"{loss:.4f}" in rows["fixed_model"]  # the printed number is the stored one
    assert f"report: {tmp_path / 'run' / 'report' / 'index.html'}" in out
    assert "eval base: None" not in out
