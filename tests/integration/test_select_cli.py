"""CLI smoke tests: prepare -> (synthetic) score store -> select -> inspect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tokenclean import IGNORE_INDEX
from tokenclean.cli import main
from tokenclean.testing.stores import write_score_store


@pytest.fixture()
def store(tmp_path: Path, fixtures_dir: Path, tiny_tok_dir: Path, capsys) -> Path:
    prep = tmp_path / "prep"
    args = ["prepare", "--data", str(fixtures_dir / "sharegpt.jsonl"), "--tokenizer", str(tiny_tok_dir)]
    assert main([*args, "--template", "chat", "--out", str(prep)]) == 0
    import datasets

    labels = datasets.load_from_disk(str(prep))[0]["labels"]
    # score = the position index on response tokens: later tokens score higher
    scores = [[float(j) if x != IGNORE_INDEX else float("nan") for j, x in enumerate(labels)]]
    capsys.readouterr()
    return write_score_store(tmp_path / "scores", prep, scores=scores)


def test_select_then_inspect(store: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "clean"
    rc = main(["select", "--scores", str(store), "--ratio", "0.5", "--level", "global", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    stats = json.loads((out / "selection_stats.json").read_text())
    n = stats["total_response_tokens"]
    assert stats["kept_tokens"] == n // 2
    assert f"kept {n // 2} of {n} response tokens" in printed and "0 of 1 samples emptied" in printed

    rc = main(["inspect", str(out), "--n", "1", "--markers", "--scores"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "[+" in text and "[-" in text  # kept and dropped tokens both marked
    assert "Rome.<|im_end|>+]" in text  # the last answer scores highest: kept
    assert "[-Paris" in text  # the first answer scores lowest: dropped
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in text  # prompt unmarked
    kept_lines = [ln for ln in text.splitlines() if ln.startswith("  kept ")]
    dropped_lines = [ln for ln in text.splitlines() if ln.startswith("  dropped ")]
    assert len(kept_lines) == n // 2 and len(dropped_lines) == n - n // 2
    kept_scores = [float(ln.split()[1]) for ln in kept_lines]
    dropped_scores = [float(ln.split()[1]) for ln in dropped_lines]
    assert min(kept_scores) > max(dropped_scores)


def test_inspect_a_score_store_lists_scores(store: Path, capsys) -> None:
    assert main(["inspect", str(store), "--n", "1", "--markers"]) == 0
    text = capsys.readouterr().out
    lines = [ln.split() for ln in text.splitlines() if ln.startswith("  kept ")]
    assert lines and all(np.isfinite(float(ln[1])) for ln in lines)


def test_sweep_and_levels(store: Path, tmp_path: Path, capsys) -> None:
    pattern = str(tmp_path / "k{ratio}")
    assert main(["select", "--scores", str(store), "--ratio", "0.3,0.9", "--out", pattern]) == 0
    assert (tmp_path / "k0.3" / "selection_stats.json").exists() and (tmp_path / "k0.9").exists()
    assert (
        main(
            ["select", "--scores", str(store), "--level", "threshold", "--threshold", "1e9", "--out", pattern]
        )
        == 2
    )
    assert "kept no token" in capsys.readouterr().err
    rc = main(
        [
            "select",
            "--scores",
            str(store),
            "--ratio",
            "0.6",
            "--level",
            "random",
            "--seed",
            "3",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert rc == 0
    assert json.loads((tmp_path / "r" / "selection_stats.json").read_text())["seed"] == 3


def test_user_errors_exit_2(store: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "o")
    assert main(["select", "--scores", str(store), "--level", "sample", "--ratio", "1.5", "--out", out]) == 2
    assert "--ratio: must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert main(["select", "--scores", str(store), "--ratio", "0.3,0.6", "--out", str(tmp_path / "o")]) == 2
    assert "'{ratio}' in the output path" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert (
        main(["select", "--scores", str(tmp_path / "empty"), "--ratio", "0.5", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "not a score store" in capsys.readouterr().err


def test_cli_levels_match_the_library() -> None:
    from tokenclean.cli.selection import LEVELS as CLI_LEVELS
    from tokenclean.selection import LEVELS

    assert CLI_LEVELS == LEVELS
