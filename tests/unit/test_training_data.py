"""Training data: validation, truncation, dropping samples with no kept token, seeded order, micro-batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tokenclean import IGNORE_INDEX
from tokenclean.errors import DataError
from tokenclean.training.collate import (
    collate,
    epoch_order,
    micro_batches,
    step_samples,
    steps_per_epoch,
    total_steps,
)
from tokenclean.training.data import load_train_data

M = IGNORE_INDEX


def save(path: Path, input_ids: list[list[int]], labels: list[list[int]], **extra: list) -> Path:
    import datasets

    cols = {"sample_id": [f"s{i}" for i in range(len(input_ids))], "input_ids": input_ids, "labels": labels}
    datasets.Dataset.from_dict(cols | extra).save_to_disk(str(path))
    return path


def test_drops_samples_without_kept_tokens_and_counts(tmp_path: Path) -> None:
    ids = [[5, 6, 7, 8], [5, 6, 7], [9, 9, 9], [4, 3, 2, 1, 0]]
    labels = [
        [M, M, 7, 8],  # 2 kept
        [M, M, M],  # nothing kept: dropped
        [9, M, M],  # only position 0 "kept": never trained, so dropped
        [M, 3, M, 1, 0],  # 3 kept
    ]
    d = load_train_data(save(tmp_path / "d", ids, labels), max_length=16)
    assert d.sample_ids == ["s0", "s3"]
    assert d.n_kept.tolist() == [2, 3]
    assert d.counts == {
        "samples_read": 4,
        "samples": 2,
        "samples_dropped_no_kept": 2,
        "samples_truncated": 0,
        "tokens_input": 9,
        "tokens_kept": 5,
    }


def test_truncation_can_empty_a_sample(tmp_path: Path) -> None:
    ids = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]]
    labels = [[M, M, M, M, 5, 6], [M, 2, M, M, 5, 6]]
    d = load_train_data(save(tmp_path / "d", ids, labels), max_length=3)
    assert d.sample_ids == ["s1"] and d.input_ids[0].tolist() == [1, 2, 3] and d.n_kept.tolist() == [1]
    assert d.counts["samples_truncated"] == 2 and d.counts["samples_dropped_no_kept"] == 1


def test_label_must_be_ignore_or_the_token(tmp_path: Path) -> None:
    path = save(tmp_path / "d", [[1, 2, 3], [4, 5, 6]], [[M, 2, 3], [M, 5, 7]])
    with pytest.raises(DataError, match=r"\[row 1\] \(sample_id s1\): field 'labels': label 7 at position 2"):
        load_train_data(path, 16)


def test_missing_column_and_length_mismatch(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"input_ids": [[1, 2]]}).save_to_disk(str(tmp_path / "a"))
    with pytest.raises(DataError, match="field 'labels': missing column"):
        load_train_data(tmp_path / "a", 16)
    with pytest.raises(DataError, match=r"\[row 0\].*len\(labels\) != len\(input_ids\)"):
        load_train_data(save(tmp_path / "b", [[1, 2, 3]], [[M, 2]]), 16)
    with pytest.raises(DataError, match="nothing to train on"):
        load_train_data(save(tmp_path / "c", [[1, 2, 3]], [[M, M, M]]), 16)
    with pytest.raises(DataError, match="not a dataset"):
        load_train_data(tmp_path / "nowhere", 16)


def test_attention_mask_is_kept_and_checked(tmp_path: Path) -> None:
    p = save(tmp_path / "a", [[1, 2, 3, 0]], [[M, 2, 3, M]], attention_mask=[[1, 1, 1, 0]])
    d = load_train_data(p, 16)
    assert d.attention_mask is not None and d.attention_mask[0].tolist() == [1, 1, 1, 0]
    p = save(tmp_path / "b", [[1, 2, 3]], [[M, 2, 3]], attention_mask=[[1, 1, 0]])
    with pytest.raises(DataError, match="kept label sits where attention_mask is 0"):
        load_train_data(p, 16)


def test_seeded_order() -> None:
    a, b = epoch_order(100, 42, 0), epoch_order(100, 42, 0)
    assert np.array_equal(a, b) and sorted(a.tolist()) == list(range(100))
    assert not np.array_equal(a, epoch_order(100, 42, 1))  # reshuffled every epoch
    assert not np.array_equal(a, epoch_order(100, 7, 0))  # depends on the seed
    assert (
        steps_per_epoch(100, 48) == 3
        and total_steps(100, 48, 2, None) == 6
        and total_steps(100, 48, 2, 5) == 5
    )
    seen = np.concatenate([step_samples(100, 48, 42, s) for s in range(3)])
    assert np.array_equal(seen, a)  # one epoch = the permutation, cut into steps (last step has 4)
    assert len(step_samples(100, 48, 42, 2)) == 4
    assert np.array_equal(step_samples(100, 48, 42, 3), epoch_order(100, 42, 1)[:48])  # cycles into epoch 1


def test_micro_batches_group_by_length() -> None:
    lengths = np.array([5, 50, 7, 30, 12, 9])
    samples = np.array([0, 1, 2, 3, 4, 5])
    grouped = micro_batches(samples, lengths, 2, group_by_length=True)
    assert [b.tolist() for b in grouped] == [[1, 3], [4, 5], [2, 0]]
    plain = micro_batches(samples, lengths, 4, group_by_length=False)
    assert [b.tolist() for b in plain] == [[0, 1, 2, 3], [4, 5]]


def test_collate_follows_the_alignment_rule(tmp_path: Path) -> None:
    ids = [[10, 11, 12, 13], [20, 21]]
    labels = [[M, M, 12, 13], [M, 21]]
    d = load_train_data(save(tmp_path / "d", ids, labels), 16)
    mb = collate(d, np.array([0, 1]))
    b = mb.batch
    assert b.input_ids.tolist() == [[10, 11, 12, 13], [20, 21, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # candidate tokens are the trained positions j (their logits sit at j - 1)
    assert b.rows.tolist() == [0, 0, 1] and b.pos.tolist() == [2, 3, 1]
    assert b.targets.tolist() == [12, 13, 21]
    assert mb.keys.tolist() == [[0, 2], [0, 3], [1, 1]]
    assert (mb.n_kept, mb.n_tokens) == (3, 6)
    counted, w = mb.counted(np.array([0.0, 2.0, 1.0], dtype=np.float32))
    assert counted.pos.tolist() == [3, 1] and w.tolist() == [2.0, 1.0]


def test_rank_share_splits_a_step_by_length(tmp_path: Path) -> None:
    from tokenclean.training.collate import rank_share

    lengths = np.array([5, 9, 2, 7, 3, 8])
    step = np.array([0, 1, 2, 3, 4, 5])
    r0 = rank_share(step, lengths, 0, 2, True)
    r1 = rank_share(step, lengths, 1, 2, True)
    assert r0.tolist() == [1, 3, 4] and r1.tolist() == [5, 0, 2]  # sorted 1,5,3,0,4,2 dealt out in turn
    assert sorted(r0.tolist() + r1.tolist()) == step.tolist()
    assert rank_share(step, lengths, 0, 1, False).tolist() == step.tolist()


def test_a_rank_loads_only_its_rows_and_they_equal_the_full_load(tmp_path: Path) -> None:
    """Issue 18: each rank reads its own samples (every row's length and kept count, the arrays of its
    rows only), read in record batches of 7 rows; the loaded rows equal the full load's."""
    import datasets

    from tokenclean.training.collate import packed_micro_batches, rank_rows, rank_share

    rng = np.random.default_rng(0)
    ids = [rng.integers(1, 50, int(rng.integers(2, 20))).tolist() for _ in range(60)]
    labels = [[M if (j == 0 or rng.random() < 0.4) else t for j, t in enumerate(r)] for r in ids]
    labels[3] = [M] * len(labels[3])  # dropped: no kept token
    weights = [[0.5 if x != M else 0.0 for x in lab] for lab in labels]
    old = datasets.config.DEFAULT_MAX_BATCH_SIZE
    datasets.config.DEFAULT_MAX_BATCH_SIZE = 7
    try:
        path = save(tmp_path / "d", ids, labels, weights=weights)
    finally:
        datasets.config.DEFAULT_MAX_BATCH_SIZE = old
    full = load_train_data(path, 12)
    n, steps, gb = len(full), 4, 8  # 4 steps of 8 samples: about half of one epoch
    seen = set(np.concatenate([step_samples(n, gb, 3, s) for s in range(steps)]).tolist())
    for packed in (False, True):
        shares = []
        for rank in range(2):
            rows = rank_rows(n, full.lengths, rank, 2, steps, gb, 3, 2, True, packed)
            part = load_train_data(path, 12, lambda d, r=rows: r)  # type: ignore[misc]
            assert part.counts == dict(full.counts, samples_loaded=len(rows))
            assert part.sample_ids == full.sample_ids and np.array_equal(part.lengths, full.lengths)
            assert part.max_id == max(int(x.max()) for x in full.input_ids)
            mine_set = set(rows.tolist())
            for i in range(n):
                if i in mine_set:
                    assert part.input_ids[i].tolist() == full.input_ids[i].tolist()
                    assert part.labels[i].tolist() == full.labels[i].tolist()
                    assert part.weights is not None and full.weights is not None
                    assert part.weights[i].tolist() == full.weights[i].tolist()
                else:
                    assert part.input_ids[i] is None and part.labels[i] is None
            for step in range(steps):  # every micro-batch this rank builds is loaded, and equal
                idx = step_samples(n, gb, 3, step)
                parts = (
                    packed_micro_batches(idx, full.lengths, rank, 2, 2)
                    if packed
                    else [rank_share(idx, full.lengths, rank, 2, True)]
                )
                for b in [*parts, idx[:1]]:
                    a, f = collate(part, b), collate(full, b)
                    assert a.keys.tolist() == f.keys.tolist()
                    assert a.batch.input_ids.tolist() == f.batch.input_ids.tolist()
            shares.append(mine_set)
            not_mine = np.setdiff1d(np.arange(n), rows)
            with pytest.raises(RuntimeError, match="not loaded by this process"):
                collate(part, not_mine[:1])
        assert shares[0] | shares[1] == seen  # together: every sample trained on, nothing else
        firsts = {int(step_samples(n, gb, 3, s)[0]) for s in range(steps)}
        assert not (shares[0] & shares[1]) - firsts  # apart from the stand-ins, no sample on both ranks
