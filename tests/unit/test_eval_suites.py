"""The paper suite matches the paper's protocol (Token Cleaning, Sec. 6.1, Table 1 and App. D.2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenclean.errors import ConfigError
from tokenclean.evaluation import SUITES, TASKS, resolve_tasks, suite_tasks, task_spec
from tokenclean.testing import require

# (Table 1 column, shots, metric) as the paper states them: MMLU 5-shot accuracy; TruthfulQA MC2; TyDiQA 1-shot
# F1 on the gold passage; HellaSwag, ARC-C, BoolQ and LogiQA 0-shot accuracy.
PAPER = [
    ("TruthfulQA", 0, "mc2"),
    ("TyDiQA", 1, "f1"),
    ("LogiQA", 0, "acc"),
    ("MMLU", 5, "acc"),
    ("HellaSwag", 0, "acc"),
    ("ARC-C", 0, "acc"),
    ("BoolQ", 0, "acc"),
]


def test_paper_suite_matches_table_1() -> None:
    from tokenclean.report.tables import task_label  # the column names the report prints

    got = [(task_label(t.name), t.shots, t.metric) for t in suite_tasks("paper")]
    assert got == PAPER


def test_paper_suite_reproduces_harness_tasks_and_splits() -> None:
    by = {t.name: t for t in suite_tasks("paper")}
    assert (
        by["truthfulqa_mc2"].harness_task == "truthfulqa_mc2" and by["truthfulqa_mc2"].harness_metric == "acc"
    )
    assert by["arc_challenge"].hub.name == "ARC-Challenge" and by["arc_challenge"].split == "test"
    assert by["hellaswag"].harness_metric == "acc"  # not acc_norm: the paper reports plain accuracy
    assert by["mmlu"].split == "test" and by["boolq"].split == "validation"
    assert by["tydiqa"].harness_yaml is None  # the harness has no TyDiQA: tokenclean ships its own
    assert SUITES["quick"] == ()


def test_harness_yamls_exist_and_report_the_metric() -> None:
    require("lm_eval")
    from lm_eval.tasks._yaml_loader import load_yaml

    from tokenclean.evaluation.harness import harness_tasks_dir
    from tokenclean.evaluation.suites import MMLU_SUBJECTS

    root = harness_tasks_dir()
    for t in suite_tasks("paper"):
        if t.harness_yaml is None:
            continue
        rel = t.harness_yaml.format(subject=MMLU_SUBJECTS[0])
        cfg = load_yaml(Path(root) / rel, resolve_func=False)
        assert cfg["task"].startswith(t.harness_task), rel
        assert t.harness_metric in [m["metric"] for m in cfg["metric_list"]], rel
    subjects = sorted(p.stem[len("mmlu_") :] for p in (Path(root) / "mmlu/default").glob("mmlu_*.yaml"))
    assert subjects == sorted(MMLU_SUBJECTS) and len(subjects) == 57


def test_task_names_aliases_and_errors() -> None:
    assert task_spec("TruthfulQA").name == "truthfulqa_mc2"
    assert task_spec("arc-c").name == "arc_challenge"
    with pytest.raises(ConfigError, match="valid: truthfulqa_mc2, tydiqa"):
        task_spec("squad")
    with pytest.raises(ConfigError, match="unknown suite"):
        suite_tasks("leaderboard")
    assert set(TASKS) == set(SUITES["paper"])


def test_resolve_tasks() -> None:
    specs, customs = resolve_tasks("paper", None)
    assert len(specs) == 7 and customs == []
    specs, _ = resolve_tasks("paper", ["mmlu", "logiqa", "mmlu"])
    assert [s.name for s in specs] == ["mmlu", "logiqa"]
    assert resolve_tasks("quick", None) == ([], [])
    with pytest.raises(ConfigError, match="use --suite quick"):
        resolve_tasks("paper", ["my_task.yaml"])


def test_hub_mode_configs_keep_the_harness_dataset(tmp_path: Path) -> None:
    """Without local files the generated tasks keep the harness's Hub dataset and resolve our functions."""
    require("lm_eval")
    from lm_eval.tasks._yaml_loader import load_yaml

    from tokenclean.evaluation.harness import Source, write_task_configs
    from tokenclean.evaluation.tasks import tydiqa

    specs = suite_tasks("paper")
    names = write_task_configs(tmp_path, specs, {s.name: Source("hub", s.hub.path) for s in specs})
    assert names == [f"tc_{s.name}" for s in specs]
    group = load_yaml(tmp_path / "tc_mmlu.yaml")
    assert len(group["task"]) == 57 and group["aggregate_metric_list"][0]["weight_by_size"] is True
    anatomy = load_yaml(tmp_path / "tc_mmlu_anatomy.yaml", resolve_func=False)
    assert (anatomy["dataset_path"], anatomy["dataset_name"], anatomy["num_fewshot"]) == (
        "cais/mmlu",
        "anatomy",
        5,
    )
    assert anatomy["fewshot_split"] == "dev"
    arc = load_yaml(tmp_path / "tc_arc_challenge.yaml", resolve_func=False)
    assert (arc["dataset_path"], arc["dataset_name"], arc["test_split"]) == (
        "allenai/ai2_arc",
        "ARC-Challenge",
        "test",
    )
    ty = load_yaml(tmp_path / "tc_tydiqa.yaml")
    assert (ty["dataset_path"], ty["dataset_name"]) == ("google-research-datasets/tydiqa", "secondary_task")
    assert ty["process_results"] is tydiqa.process_results and ty["process_docs"] is tydiqa.process_docs
    assert ty["generation_kwargs"]["until"] == ["\n"]
