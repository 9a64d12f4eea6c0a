"""The ground-truth pool generator, token-level truth and the recovery metrics."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from tokenclean.groundtruth.generator import PoolConfig, generate_pool
from tokenclean.groundtruth.metrics import auroc, recovery_metrics
from tokenclean.groundtruth.truth import INFORMATIVE, NOISE, NOT_RESPONSE, UNINFORMATIVE, token_truth


def test_pool_is_seeded_and_labelled(tmp_path: Path) -> None:
    cfg = PoolConfig(n_facts=6, repeats=5, noise_rate=0.5, seed=3)
    a = generate_pool(cfg, tmp_path / "a")
    generate_pool(cfg, tmp_path / "b")
    assert (tmp_path / "a" / "pool.jsonl").read_bytes() == (tmp_path / "b" / "pool.jsonl").read_bytes()
    assert a["pool"] == 30 and a["test"] == 6 and 0 < a["noisy"] < 30
    facts = json.loads((tmp_path / "a" / "facts.json").read_text())["facts"]
    for line in (tmp_path / "a" / "pool.jsonl").read_text().splitlines():
        row = json.loads(line)
        content = row["messages"][1]["content"]
        spans = row["truth"]
        assert spans[0][0] == 0 and spans[-1][1] == len(content)
        assert all(s[1] == t[0] for s, t in itertools.pairwise(spans))  # contiguous cover
        fact = facts[row["fact"]]
        labels = {content[s:e]: lab for s, e, lab in spans}
        if row["noise"] == "wrong_fact":
            assert fact["object"] not in content and "noise" in labels.values()
        else:
            assert labels.get(fact["object"]) == "informative"


def test_token_truth_aligns_with_prepared_tokens(tmp_path: Path, tiny_tok) -> None:
    from tokenclean.data.prepare import prepare

    generate_pool(PoolConfig(n_facts=4, repeats=3, noise_rate=1.0, wrong_fact_share=0.0, seed=1), tmp_path)
    prepare(tmp_path / "pool.jsonl", tiny_tok, tmp_path / "prep", progress=False)
    import datasets

    ds = datasets.load_from_disk(str(tmp_path / "prep"))
    truths = token_truth(tmp_path / "pool.jsonl", tmp_path / "prep", tiny_tok)
    for row, tr in zip(ds, truths):
        labels = np.asarray(row["labels"])
        assert ((labels != -100) == (tr != NOT_RESPONSE)).all()
        ids = np.asarray(row["input_ids"])
        noise_text = tiny_tok.decode(ids[tr == NOISE])
        assert len(noise_text.split()) == 3  # the three gibberish words
        assert (tr == INFORMATIVE).any() and (tr == UNINFORMATIVE).any()


def test_auroc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 200).astype(float)  # many ties
    y = rng.random(200) < 0.3
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert auroc(s, y) == pytest.approx(pairwise)
    assert auroc(np.array([1.0, 2.0]), np.array([False, True])) == 1.0
    assert auroc(np.array([1.0]), np.array([True])) is None


def test_recovery_metrics_hand_example() -> None:
    truth = [np.array([-1, 0, 1, 1, 2]), np.array([-1, -1, 2, 0])]
    keep = [np.array([0, 1, 1, 0, 1], bool), np.array([0, 0, 0, 1], bool)]
    m = recovery_metrics(truth, keep)
    # response tokens: 0,1,1,2 | 2,0 -> 6; kept: 0,1,2 | 0 -> 4 (1 informative, 1 noise)
    assert m["response_tokens"] == 6 and m["kept_tokens"] == 4
    assert m["precision"] == pytest.approx(1 / 4) and m["recall"] == pytest.approx(1 / 2)
    assert m["noise_rate_kept"] == pytest.approx(1 / 4) and m["noise_rate_all"] == pytest.approx(2 / 6)


def test_tables_list_methods_in_the_paper_order() -> None:
    from tokenclean.report.truth_tables import class_table, results_table

    cls = {"informative": {"tokens": 2, "kept": 0.5, "mean_score": 1.25}}
    methods = {  # as summary.json stores them: keys sorted
        name: {"recovery": {"kept_tokens": 1}, "heldout": {"loss": 1.0}, "classes": cls}
        for name in sorted(["base", "full", "random", "rho", "fixed_model", "self_evolving"])
    }
    first = [ln.split()[0] for ln in results_table({"methods": methods}).splitlines()[2:]]
    assert first == ["base", "full", "random", "rho", "fixed_model", "self_evolving"]
    rows = class_table({"methods": methods}).splitlines()[2:]
    assert rows[0].split() == ["base", "50.0%", "/", "1.25"]  # only labels some method has


def test_label_breakdown_mean_weight_of_soft_methods() -> None:
    """With weights (0 where not kept) each label gets its mean training weight; without, no such key."""
    from tokenclean.groundtruth.metrics import label_breakdown

    labels = [np.array([-1, 0, 0, 1, 1]), np.array([-1, 1, 0])]
    decisive = [np.full(5, -1), np.full(3, -1)]
    keep = [np.array([0, 1, 1, 1, 0], bool), np.array([0, 1, 1], bool)]
    weights = [np.array([0, 0.5, 1.0, 0.25, 0]), np.array([0, 0.75, 0.0])]
    names = ["informative", "uninformative"]
    got = label_breakdown(labels, decisive, keep, names, weights=weights)
    assert got["informative"]["mean_weight"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert got["uninformative"]["mean_weight"] == pytest.approx((0.25 + 0 + 0.75) / 3)
    assert "mean_weight" not in label_breakdown(labels, decisive, keep, names)["informative"]
