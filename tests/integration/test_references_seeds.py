"""Reference choices (clean warm-up data, cross-fitted references), seeds with intervals and equal-update
budgets, end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenclean.pipelines.config import load_run_config
from tokenclean.pipelines.runner import run

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_cpu.yaml"
POOL = "data.synthetic={n_facts: 6, repeats: 4, noise_rate: 0.5, seed: 0, heldout_phrasings: 2, clean_repeats: 2}"


def _cfg(tmp_path: Path, model_dir: Path, *extra: str):
    return load_run_config(
        TINY, [f"run_dir={tmp_path / 'run'}", f"model.base={model_dir}", POOL, "report=false", *extra]
    )


def test_cross_fit_scores_every_fold_with_a_reference_that_never_saw_it(tmp_path, tiny_model_dir) -> None:
    import datasets

    summary = run(_cfg(tmp_path, tiny_model_dir, "methods=[fixed_model]", "warmup.cross_fit=2"))
    root = tmp_path / "run"
    m = summary["methods"]["fixed_model"]
    assert m["scores"] == "scores/pool_crossfit_2" and m["recovery"]["auroc"] is not None
    pool_ids = datasets.load_from_disk(str(root / "data" / "pool"))["sample_id"]
    assert datasets.load_from_disk(str(root / m["scores"]))["sample_id"] == pool_ids  # pool order
    seen = []
    for k in range(2):
        d = root / "crossfit" / f"fold_{k}_of_2"
        fold = set(datasets.load_from_disk(str(d / "fold"))["sample_id"])
        trained_on = set(datasets.load_from_disk(str(d / "rest"))["sample_id"])
        assert not fold & trained_on and fold | trained_on == set(pool_ids)
        warm = json.loads((d / "warmup" / "done.json").read_text())
        assert Path(warm["data"]["path"]) == (d / "rest").resolve()
        seen += sorted(fold)
    assert sorted(seen) == sorted(pool_ids)
    b = m["budget"]  # both references' training and both folds' scoring are counted
    warm_in = sum(
        json.loads((root / "crossfit" / f"fold_{k}_of_2" / "warmup" / "done.json").read_text())["tokens"][
            "input"
        ]
        for k in range(2)
    )
    own = json.loads((root / "methods" / "fixed_model" / "train" / "done.json").read_text())
    assert b["backward_tokens"] == warm_in + own["tokens"]["input"]
    assert b["updates"] == own["steps"] and b["trained_tokens"] == own["tokens"]["kept"]


def test_clean_warmup_data_trains_the_reference(tmp_path, tiny_model_dir) -> None:
    summary = run(_cfg(tmp_path, tiny_model_dir, "methods=[warmup]", "warmup.data=synthetic:clean"))
    done = json.loads((tmp_path / "run" / "warmup" / "done.json").read_text())
    assert Path(done["data"]["path"]) == (tmp_path / "run" / "data" / "warmup").resolve()
    assert summary["methods"]["warmup"]["heldout"]["questions"] == 12  # 6 facts x 2 phrasings


@pytest.mark.requires("matplotlib")  # the seeds run's report
def test_seeds_give_means_with_intervals_and_matched_updates(tmp_path, tiny_model_dir) -> None:
    cfg = _cfg(
        tmp_path,
        tiny_model_dir,
        "methods=[full,fixed_model,self_evolving]",
        "seeds=[0,1]",
        "budget.match_updates=true",
        "report=true",
    )
    summary = run(cfg)
    root = tmp_path / "run"
    assert summary["seeds_used"] == [0, 1] and set(summary["per_seed"]) == {"0", "1"}
    per = [json.loads((root / f"seed_{s}" / "summary.json").read_text()) for s in (0, 1)]
    se_updates = per[0]["methods"]["self_evolving"]["budget"]["updates"]
    for p in per:  # every single-stage method trained as many updates as self-evolving's adapter
        assert p["matched_updates"] == se_updates
        for name in ("full", "fixed_model"):
            assert p["methods"][name]["budget"]["updates"] == se_updates
            assert p["methods"][name]["adapter"].endswith(f"train_steps_{se_updates}/adapter")
    cfg0 = json.loads((root / "seed_0" / "summary.json").read_text())
    assert cfg0["methods"]["full"]["heldout_questions"] != per[1]["methods"]["full"]["heldout_questions"]
    for name, m in summary["methods"].items():
        assert m["seeds"] == 2
        for key, (lo, hi) in m["heldout_ci"].items():
            assert lo <= m["heldout"][key] <= hi, (name, key)
        mean = sum(p["methods"][name]["heldout"]["answer_loss"] for p in per) / 2
        assert abs(m["heldout"]["answer_loss"] - mean) < 1e-9  # the point estimate is the mean over seeds
    # the splits stay fixed across seeds (same samples scored), the training seed changes
    for s in (0, 1):
        done = json.loads((root / f"seed_{s}" / "warmup" / "done.json").read_text())
        assert done["config"]["seed"] == s
    from tokenclean.report.truth_tables import overlap_notes, results_table

    assert "[" in results_table(summary) and overlap_notes(summary)
    # the seeds run has its own report: aggregated figures, and the first seed's tokens
    assert (root / "report" / "figures" / "classes.png").is_file()
    assert summary["methods"]["fixed_model"]["cleaned"].startswith("seed_0/")
    page = (root / "report" / "index.html").read_text()
    assert 'data-method="fixed_model"' in page and not (root / "seed_0" / "report").exists()
    assert 'data-truth="' in page  # the token truth of the first seed's pool
