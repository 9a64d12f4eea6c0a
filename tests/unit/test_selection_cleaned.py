"""The select stage on synthetic score stores: the cleaned dataset contract, stats, mismatches, reuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tokenclean import IGNORE_INDEX
from tokenclean.errors import DataError
from tokenclean.outputs import OutputError
from tokenclean.selection import select, select_many
from tokenclean.testing.stores import write_prepared, write_score_store

NAN = float("nan")
X = IGNORE_INDEX

IDS = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16, 17, 18]]
LABELS = [[X, X, 3, 4, 5], [X, 7, 8], [X, X, X, 12], [X, 14, 15, X, 17, 18]]
SCORES = [
    [NAN, NAN, 3.0, 1.0, 2.0],
    [NAN, 0.5, 0.4],
    [NAN, NAN, NAN, -1.0],
    [NAN, 2.5, NAN, NAN, 0.0, 4.0],  # position 2 is a response token the scorer left NaN
]
# response tokens, flat: 3 1 2 | .5 .4 | -1 | 2.5 nan 0 4  -> N = 10, one NaN


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    prep = write_prepared(tmp_path / "prep", IDS, LABELS)
    return write_score_store(tmp_path / "scores", prep, scores=SCORES)


def load(out: Path) -> dict[str, list]:
    """The cleaned dataset's columns as Python lists."""
    import datasets

    return datasets.load_from_disk(str(out))[:]


def test_global_cleaned_dataset_follows_the_contract(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "clean"
    st = select(store, 0.5, "global", out)
    # floor(0.5 * 10) = 5 kept: 4, 3, 2.5, 2, 1 -> samples 0 (3 kept), 3 (2 kept); samples 1, 2 emptied
    assert st["kept_tokens"] == 5 and st["total_response_tokens"] == 10 and st["nan_scores"] == 1
    assert st["samples_emptied"] == 2 and st["samples_kept"] == 2
    ds = load(out)
    assert list(ds) == [
        "sample_id",
        "input_ids",
        "attention_mask",
        "labels",
        "response_labels",
        "score",
        "completion_mask",
    ]
    assert ds["sample_id"] == ["s000000", "s000003"]
    assert ds["input_ids"] == [IDS[0], IDS[3]]
    assert ds["response_labels"] == [LABELS[0], LABELS[3]]
    assert ds["labels"] == [[X, X, 3, 4, 5], [X, 14, X, X, X, 18]]
    assert ds["completion_mask"] == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0, 1]]
    assert ds["attention_mask"] == [[1] * 5, [1] * 6]
    got = np.asarray(ds["score"][1], dtype=np.float32)
    np.testing.assert_array_equal(got, np.asarray(SCORES[3], dtype=np.float32))  # NaN where not scored
    assert json.loads((out / "selection_stats.json").read_text()) == st
    dropped = [json.loads(x) for x in (out / "dropped.jsonl").read_text().splitlines()]
    assert [(d["row"], d["sample_id"], d["response_tokens"]) for d in dropped] == [
        (1, "s000001", 2),
        (2, "s000002", 1),
    ]
    m = json.loads((out / "manifest.json").read_text())
    assert m["stage"] == "select" and m["level"] == "global" and m["ratio"] == 0.5
    assert m["scores"]["dir"] == str(store.resolve()) and len(m["scores"]["sha256"]) == 64
    assert m["prepared"]["dir"] == str((tmp_path / "prep").resolve()) and m["prepared"]["cache_key"]
    assert m["tokenizer"] == {"name": "none"}
    assert not list(tmp_path.glob(".clean.tmp-*"))  # written atomically


def test_sample_level_keeps_floor_k_ni_of_each_sample(store: Path, tmp_path: Path) -> None:
    st = select(store, 0.5, "sample", tmp_path / "rho")
    # n_i = 3, 2, 1, 4 -> floor(0.5 n_i) = 1, 1, 0, 2; sample 3 keeps 4.0 and 2.5 (its NaN never)
    assert st["kept_tokens"] == 4 and st["requested_tokens"] == 4 and st["samples_emptied"] == 1
    ds = load(tmp_path / "rho")
    assert ds["labels"] == [[X, X, 3, X, X], [X, 7, X], [X, 14, X, X, X, 18]]


def test_random_level_is_seeded(store: Path, tmp_path: Path) -> None:
    a = select(store, 0.6, "random", tmp_path / "a", seed=1)
    select(store, 0.6, "random", tmp_path / "b", seed=1)
    assert a["kept_tokens"] == 6 and a["seed"] == 1
    assert load(tmp_path / "a")["labels"] == load(tmp_path / "b")["labels"]
    masks = set()
    for seed in range(6):
        select(store, 0.6, "random", tmp_path / f"r{seed}", seed=seed)
        masks.add(json.dumps(load(tmp_path / f"r{seed}")["labels"]))
    assert len(masks) > 1  # different seeds give different selections


def test_threshold_level(store: Path, tmp_path: Path) -> None:
    st = select(store, None, "threshold", tmp_path / "t", threshold=2.0)
    assert st["kept_tokens"] == 3 and st["threshold"] == 2.0 and st["requested_ratio"] is None  # 3, 2.5, 4


def test_sweep_reuses_one_load_and_masks_are_nested(store: Path, tmp_path: Path) -> None:
    outs = [tmp_path / f"k{r}" for r in (0.3, 0.6, 0.9)]
    stats = select_many(store, [0.3, 0.6, 0.9], outs)
    assert [s["kept_tokens"] for s in stats] == [3, 6, 9]
    kept = [
        {(i, j) for i, row in enumerate(load(o)["labels"]) for j, v in enumerate(row) if v != X} for o in outs
    ]
    ids = [load(o)["sample_id"] for o in outs]
    keyed = [{(ids[n][i], j) for i, j in kept[n]} for n in range(3)]
    assert keyed[0] <= keyed[1] <= keyed[2]
    single = select(store, 0.6, "global", tmp_path / "single")
    assert load(tmp_path / "single")["labels"] == load(outs[1])["labels"] and single == stats[1]


def test_reuse_and_force(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    first = select(store, 0.5, "global", out)
    assert "reused" not in first
    again = select(store, 0.5, "global", out)
    assert again["reused"] is True and again["kept_tokens"] == first["kept_tokens"]
    assert "reused" not in select(store, 0.5, "global", out, force=True)
    with pytest.raises(OutputError, match=r"differs in: .*settings\.ratio"):  # other settings: refused
        select(store, 0.6, "global", out)
    assert "reused" not in select(store, 0.6, "global", out, replace_stale=True)  # a pipeline recomputes


def test_selection_that_keeps_nothing_is_an_error(store: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="kept no token"):
        select(store, 0.0, "global", tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_default_prepared_dir_comes_from_the_manifest_and_can_be_overridden(
    store: Path, tmp_path: Path
) -> None:
    other = write_prepared(tmp_path / "other", IDS, LABELS)
    st = select(store, 0.5, "global", tmp_path / "o", prepared_dir=other)
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["prepared"]["dir"] == str(other.resolve()) and st["kept_tokens"] == 5


# ---------------------------------------------------------------- mismatches name the row


def test_sample_id_mismatch_names_the_row(tmp_path: Path) -> None:
    prep = write_prepared(tmp_path / "prep", IDS, LABELS)
    bad = write_score_store(
        tmp_path / "s", prep, scores=SCORES, sample_ids=["s000000", "s000001", "zzz", "s000003"]
    )
    with pytest.raises(DataError, match=r"\[row 2\]: field 'sample_id': sample_id 'zzz'.*'s000002' at row 2"):
        select(bad, 0.5, "global", tmp_path / "o")


def test_length_mismatch_names_the_row(tmp_path: Path) -> None:
    prep = write_prepared(tmp_path / "prep", IDS, LABELS)
    short = [*SCORES[:3], SCORES[3][:-1]]
    bad = write_score_store(tmp_path / "s", prep, scores=short)
    with pytest.raises(
        DataError, match=r"\[row 3\]: field 'score': sample 's000003' has 5 scores but 6 input_ids"
    ):
        select(bad, 0.5, "global", tmp_path / "o")


def test_row_count_mismatch(tmp_path: Path) -> None:
    prep = write_prepared(tmp_path / "prep", IDS, LABELS)
    store = write_score_store(tmp_path / "s", prep, scores=SCORES)
    fewer = write_prepared(tmp_path / "fewer", IDS[:3], LABELS[:3])
    with pytest.raises(DataError, match=r"score store has 4 rows but the prepared dataset .* has 3"):
        select(store, 0.5, "global", tmp_path / "o", prepared_dir=fewer)


def test_score_at_an_untrained_position_is_misalignment(tmp_path: Path) -> None:
    prep = write_prepared(tmp_path / "prep", IDS, LABELS)
    shifted = [list(s) for s in SCORES]
    shifted[1] = [0.3, 0.5, NAN]  # one position to the left: position 0 is never trained
    bad = write_score_store(tmp_path / "s", prep, scores=shifted)
    with pytest.raises(DataError, match=r"\[row 1\].*score at position 0, which is not a trained token"):
        select(bad, 0.5, "global", tmp_path / "o")


def test_not_a_score_store(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    with pytest.raises(DataError, match="not a score store"):
        select(tmp_path / "s", 0.5, "global", tmp_path / "o")
