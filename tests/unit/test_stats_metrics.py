"""Intervals (two-level bootstrap), decisive-token metrics and the budget columns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tokenclean.groundtruth.metrics import label_breakdown
from tokenclean.stats import Interval, bootstrap, overlap_sentence, weighted_mean


def test_bootstrap_of_a_mean_matches_the_normal_interval() -> None:
    x = np.random.default_rng(0).normal(2.0, 1.0, 400)
    iv = bootstrap(lambda s, u: {"m": float(x[u].mean())}, 1, len(x))["m"]
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert iv.mean == pytest.approx(x.mean())
    assert iv.lo == pytest.approx(x.mean() - half, abs=0.25 * half)
    assert iv.hi == pytest.approx(x.mean() + half, abs=0.25 * half)
    again = bootstrap(lambda s, u: {"m": float(x[u].mean())}, 1, len(x))["m"]
    assert again == iv  # seeded: the same inputs give the same interval


def test_seed_level_widens_the_interval_and_the_point_is_the_seed_mean() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 200)
    shifts = [0.0, 1.0, 2.0]  # seeds disagree a lot

    def f(s: int, u: np.ndarray) -> dict[str, float]:
        return {"m": float((base[u] + shifts[s]).mean())}

    units_only = bootstrap(lambda s, u: {"m": float(base[u].mean() + 1.0)}, 1, 200)["m"]
    both = bootstrap(f, 3, 200)["m"]
    assert both.mean == pytest.approx(base.mean() + 1.0)
    assert (both.hi - both.lo) > 3 * (units_only.hi - units_only.lo)


def test_cluster_bootstrap_widens_for_correlated_units() -> None:
    from tokenclean.stats import clustered

    rng = np.random.default_rng(2)
    fact_effect = rng.normal(0, 1, 12)  # 12 facts, 10 near-identical questions each
    x = np.repeat(fact_effect, 10) + rng.normal(0, 0.05, 120)
    clusters = np.repeat(np.arange(12), 10)

    def stat(s: int, u: np.ndarray) -> dict[str, float]:
        return {"m": float(x[u].mean())}

    naive = bootstrap(stat, 1, 120)["m"]
    g, k = clustered(stat, clusters)
    by_fact = bootstrap(g, 1, k)["m"]
    assert k == 12 and by_fact.mean == pytest.approx(naive.mean)  # same point estimate
    assert (by_fact.hi - by_fact.lo) > 2.5 * (naive.hi - naive.lo)  # ~sqrt(10) wider


def test_weighted_mean_is_the_pooled_token_mean() -> None:
    v, w = np.array([1.0, 3.0, 10.0]), np.array([1, 3, 0])
    assert weighted_mean(v, w, np.arange(3)) == pytest.approx((1 + 9) / 4)
    assert weighted_mean(v, w, np.array([1, 1])) == 3.0
    assert weighted_mean(v, w, np.array([2])) is None


def test_overlap_sentence() -> None:
    ivs = {"a": Interval(1.0, 0.9, 1.1), "b": Interval(2.0, 1.8, 2.2), "c": Interval(1.05, 1.0, 1.9)}
    s = overlap_sentence("answer loss", ivs, lower_is_better=True)
    assert "a > b" in s and "other 2 pair(s) overlap" in s
    assert "no difference" in overlap_sentence("x", {"a": ivs["a"], "c": ivs["c"]}, True)


def test_label_breakdown_decisive_by_hand() -> None:
    names = ["unlabelled", "informative", "noise:wrong_fact"]
    # one sample: 2 informative tokens, a 3-token wrong fact decided at its first token, 1 unlabelled
    labels = [np.array([-1, 1, 1, 2, 2, 2, 0])]
    decisive = [np.array([-1, 1, -1, 2, -1, -1, -1])]  # label index of the span each token decides
    scores = [np.array([0.0, 5.0, 4.0, 1.0, 6.0, 6.0, 0.0])]  # the decisive token scores low, its tail high
    keep = [np.array([False, True, True, False, True, True, False])]
    out = label_breakdown(labels, decisive, keep, names, scores, is_noise=lambda n: n.startswith("noise"))
    w = out["noise:wrong_fact"]
    assert w["kept"] == pytest.approx(2 / 3) and w["dropped"] == pytest.approx(1 / 3)  # token level: 1/3
    assert w["decisive_dropped"] == 1.0 and w["spans"] == 1 and w["spans_removed"] == 1  # span removed
    assert w["auroc_decisive"] == 1.0  # the decisive token is below both informative tokens
    assert w["auroc_tokens"] == pytest.approx(2 / 6)  # the tail outscores them
    assert "decisive_dropped" not in out["informative"]


def test_budget_columns_from_the_stage_records(tmp_path: Path) -> None:
    from tokenclean.pipelines.budget import method_budget, self_evolving_updates

    def done(d: Path, steps: int, inp: int, kept: int) -> None:
        d.mkdir(parents=True)
        (d / "done.json").write_text(json.dumps({"steps": steps, "tokens": {"input": inp, "kept": kept}}))

    def store(d: Path, tokens: int, adapter: Path | None = None) -> None:
        d.mkdir(parents=True)
        m = {"counts": {"tokens": tokens}, "reference": {"adapter": str(adapter) if adapter else None}}
        (d / "manifest.json").write_text(json.dumps(m))

    done(tmp_path / "warmup", 50, 5000, 1500)
    store(tmp_path / "scores" / "pool", 12000, tmp_path / "warmup" / "adapter")
    store(tmp_path / "scores" / "external", 12000)  # an external reference model: no training behind it
    done(tmp_path / "methods" / "fixed_model" / "train", 30, 11000, 2000)
    done(tmp_path / "methods" / "random" / "train", 30, 11500, 2000)
    for t in (1, 2):
        store(tmp_path / "rounds" / f"round_{t}" / "scores", 4000)
        done(tmp_path / "rounds" / f"round_{t}" / "train", 10, 3500, 700)
    fm = {"adapter": "methods/fixed_model/train/adapter", "scores": "scores/pool"}
    assert method_budget(tmp_path, "fixed_model", fm, []) == {
        "updates": 30,
        "trained_tokens": 2000,
        "forward_tokens": 5000 + 11000 + 2 * 12000,  # warm-up + training + base and reference scoring
        "backward_tokens": 5000 + 11000,
    }
    ext = method_budget(tmp_path, "fixed_model", dict(fm, scores="scores/external"), [])
    assert ext["backward_tokens"] == 11000 and ext["forward_tokens"] == 11000 + 2 * 12000
    rnd = method_budget(tmp_path, "random", {"adapter": "methods/random/train/adapter"}, [])
    assert rnd["forward_tokens"] == rnd["backward_tokens"] == 11500  # random needs no score
    rounds = [
        {"adapter": f"rounds/round_{t}/train/adapter", "scores": f"rounds/round_{t}/scores"} for t in (1, 2)
    ]
    se = method_budget(tmp_path, "self_evolving", {"adapter": rounds[-1]["adapter"]}, rounds)
    assert se == {
        "updates": 70,
        "trained_tokens": 1500 + 1400,
        "forward_tokens": 5000 + 7000 + 2 * 8000,
        "backward_tokens": 12000,
    }
    assert self_evolving_updates(tmp_path, rounds) == 70
    assert method_budget(tmp_path, "base", {"adapter": None}, [])["updates"] == 0
