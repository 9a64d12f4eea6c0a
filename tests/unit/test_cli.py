"""CLI smoke tests: prepare and inspect end to end on the tiny tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from tokenclean.cli import main


def test_prepare_then_inspect(tmp_path: Path, fixtures_dir: Path, tiny_tok_dir: Path, capsys) -> None:
    out = tmp_path / "prep"
    rc = main(
        [
            "prepare",
            "--data",
            str(fixtures_dir / "sharegpt.jsonl"),
            "--tokenizer",
            str(tiny_tok_dir),
            "--template",
            "chat",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "1 samples (1 read, 0 truncated" in capsys.readouterr().out
    rc = main(["inspect", str(out), "--n", "1", "--markers"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "[+Paris.<|im_end|>+]" in text and "[+Rome.<|im_end|>+]" in text
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in text  # prompt shown, unmarked


def test_bad_input_exits_2_with_location(tmp_path: Path, tiny_tok_dir: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]})
    )
    rc = main(["prepare", "--data", str(bad), "--tokenizer", str(tiny_tok_dir), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "bad.jsonl:1: field 'messages[1].role': unknown role 'bot'" in err
