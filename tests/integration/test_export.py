"""``tokenclean export``: every target's labels are the cleaned set's kept tokens, sample by sample; a weighted
set keeps its weights where the target has them and says what it loses where it does not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tokenclean import IGNORE_INDEX
from tokenclean.interop.export import TARGETS, export
from tokenclean.outputs import OutputError


@pytest.fixture(scope="module")
def sets(cleaned_sets: dict[str, Path]) -> dict[str, Path]:
    return cleaned_sets


def exported_rows(out: Path, target: str) -> list[dict[str, Any]]:
    """The exported samples as the target's own reader sees them (datasets dir, JSONL, DatasetDict)."""
    import datasets

    if target == "trl":
        return list(datasets.load_from_disk(str(out / "data")))
    if target == "llamafactory":
        return list(datasets.load_from_disk(str(out / "tokenized"))["train"])
    name = "data.jsonl" if target == "jsonl-weights" else "train.jsonl"
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def source_rows(path: Path) -> dict[tuple[int, ...], dict[str, Any]]:
    import datasets

    return {tuple(r["input_ids"]): r for r in datasets.load_from_disk(str(path))}


@pytest.mark.parametrize("target", TARGETS)
def test_token_level_labels_equal_the_kept_tokens(target: str, sets: dict[str, Path], tmp_path: Path) -> None:
    m = export(sets["clean"], target, tmp_path / target)
    src = source_rows(sets["clean"])
    rows = exported_rows(tmp_path / target, target)
    assert len(rows) == len(src) == m["counts"]["samples"]
    for r in rows:
        want = src[tuple(r["input_ids"])]["labels"]
        assert list(r["labels"]) == [IGNORE_INDEX, *want[1:]]
    if target == "axolotl":
        assert set(rows[0]) == {"input_ids", "attention_mask", "labels"}  # axolotl's pre-tokenized form
    assert m["lost"].startswith("nothing")
    cfg = {"axolotl": "axolotl.yaml", "llamafactory": "llamafactory.yaml", "trl": "train_trl.py"}.get(target)
    if cfg:
        assert str((tmp_path / target).resolve()) in (tmp_path / target / cfg).read_text()


def test_weighted_set_keeps_weights_or_says_what_is_lost(sets: dict[str, Path], tmp_path: Path) -> None:
    import numpy as np

    src = source_rows(sets["soft"])
    m = export(sets["soft"], "trl", tmp_path / "trl")
    for r in exported_rows(tmp_path / "trl", "trl"):
        want = np.asarray(src[tuple(r["input_ids"])]["weights"], dtype=np.float32)
        want[0] = 0.0
        np.testing.assert_allclose(r["weights"], want, rtol=1e-6)
    assert m["lost"].startswith("nothing")
    m = export(sets["soft"], "axolotl", tmp_path / "axo", min_weight=0.3)
    for r in exported_rows(tmp_path / "axo", "axolotl"):
        w = np.asarray(src[tuple(r["input_ids"])]["weights"])
        kept = [j for j, x in enumerate(r["labels"]) if x != IGNORE_INDEX]
        assert kept == [j for j in range(1, len(w)) if w[j] >= 0.3]
    assert "magnitudes" in m["lost"] and m["counts"]["weight_mass_moved"] > 0
    assert "Lost in this export" in (tmp_path / "axo" / "README.md").read_text()


def test_export_output_is_guarded_and_reused(sets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "x"
    export(sets["clean"], "jsonl-weights", out)
    assert export(sets["clean"], "jsonl-weights", out).get("reused") is True
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a tokenclean output"):
        export(sets["clean"], "axolotl", tmp_path / "foreign")


def test_export_cli(sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tokenclean.cli import main

    rc = main(["export", "--data", str(sets["soft"]), "--to", "llamafactory", "--out", str(tmp_path / "lf")])
    out = capsys.readouterr().out
    assert rc == 0 and "lost: the soft weights' magnitudes" in out
    assert (tmp_path / "lf" / "llamafactory.yaml").read_text().count("tokenized_path:") == 1
