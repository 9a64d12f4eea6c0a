"""Evaluation suites as data: which benchmark, which lm-evaluation-harness task it reproduces, how many shots,
which metric, and where its data comes from (Hub dataset or a local JSONL file).

The ``paper`` suite is the protocol of Token Cleaning (Pang et al., ICML 2025, Sec. 6.1 and App. D.2): seven
OpenLLM-leaderboard tasks on lm-evaluation-harness, all samples, accuracy everywhere except TruthfulQA (MC2)
and TyDiQA (1-shot F1 on the gold passage), and their unweighted average (Table 1's AVG column).
Tests compare these definitions with the paper; change them only together with docs/evaluation.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenclean.errors import ConfigError, TokencleanError


class EvalDataError(TokencleanError):
    """Benchmark data is missing or malformed; the message names the file to provide and how to make it."""


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face Hub dataset: ``load_dataset(path, name)[split]``."""

    path: str
    name: str | None
    split: str


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark of a suite."""

    name: str  # our task name; also the stem of the local file ``DATA_DIR/{name}.jsonl``
    harness_task: str  # the lm-evaluation-harness task whose prompt and metric are reproduced
    harness_yaml: str | None  # that task's YAML, relative to lm_eval/tasks (None: tokenclean's own task)
    shots: int  # few-shot examples in each prompt
    metric: str  # the metric reported, as the paper names it
    harness_metric: str  # the key of that metric in lm-evaluation-harness results ("acc" -> "acc,none")
    split: str  # the split that is evaluated
    hub: HubSource
    fields: tuple[str, ...]  # fields every record of the local file must have (the Hub dataset's schema)
    notes: str = ""

    @property
    def local_file(self) -> str:
        return f"{self.name}.jsonl"

    @property
    def wrapper_task(self) -> str:
        """Name of the generated harness task (or group, for MMLU) that evaluates this benchmark."""
        return f"tc_{self.name}"


MMLU_SUBJECTS: tuple[str, ...] = (
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
)

_TASKS = (
    TaskSpec(
        name="truthfulqa_mc2",
        harness_task="truthfulqa_mc2",
        harness_yaml="truthfulqa/truthfulqa_mc2.yaml",
        shots=0,
        metric="mc2",
        harness_metric="acc",
        split="validation",
        hub=HubSource("truthfulqa/truthful_qa", "multiple_choice", "validation"),
        fields=("question", "mc2_targets"),
        notes="MC2: normalised probability mass on the true answers (harness 'acc' of truthfulqa_mc2); the "
        "harness prompt carries its fixed 6-QA preamble, so the task counts as 0-shot",
    ),
    TaskSpec(
        name="tydiqa",
        harness_task="tydiqa (tokenclean; not in lm-evaluation-harness)",
        harness_yaml=None,
        shots=1,
        metric="f1",
        harness_metric="f1",
        split="validation",
        hub=HubSource("google-research-datasets/tydiqa", "secondary_task", "validation"),
        fields=("id", "context", "question", "answers"),
        notes="TyDiQA-GoldP (gold passage), 1-shot from another question of the same language, greedy "
        "generation up to a newline, SQuAD token F1 (max over gold answers), mean over questions",
    ),
    TaskSpec(
        name="logiqa",
        harness_task="logiqa",
        harness_yaml="logiqa/logiqa.yaml",
        shots=0,
        metric="acc",
        harness_metric="acc",
        split="test",
        hub=HubSource("EleutherAI/logiqa", "logiqa", "test"),
        fields=("context", "question", "options", "label"),
    ),
    TaskSpec(
        name="mmlu",
        harness_task="mmlu",
        harness_yaml="mmlu/default/mmlu_{subject}.yaml",
        shots=5,
        metric="acc",
        harness_metric="acc",
        split="test",
        hub=HubSource("cais/mmlu", "all", "test"),
        fields=("question", "subject", "choices", "answer"),
        notes="57 subjects; accuracy over all questions (harness group weighted by size); the 5 shots are the "
        "first 5 dev questions of the subject, or, when no mmlu_dev.jsonl is given, the first 5 other test "
        "questions of the subject",
    ),
    TaskSpec(
        name="hellaswag",
        harness_task="hellaswag",
        harness_yaml="hellaswag/hellaswag.yaml",
        shots=0,
        metric="acc",
        harness_metric="acc",
        split="validation",
        hub=HubSource("Rowan/hellaswag", None, "validation"),
        fields=("activity_label", "ctx_a", "ctx_b", "endings", "label"),
        notes="acc, not acc_norm: the paper reports 'accuracy' (App. D.2), and its BASE row (55.24 for "
        "Llama-3.2-3B) is that model's unnormalised accuracy; acc_norm is kept in the details",
    ),
    TaskSpec(
        name="arc_challenge",
        harness_task="arc_challenge",
        harness_yaml="arc/arc_challenge.yaml",
        shots=0,
        metric="acc",
        harness_metric="acc",
        split="test",
        hub=HubSource("allenai/ai2_arc", "ARC-Challenge", "test"),
        fields=("question", "choices", "answerKey"),
        notes="acc, not acc_norm (as for HellaSwag); acc_norm is kept in the details",
    ),
    TaskSpec(
        name="boolq",
        harness_task="boolq",
        harness_yaml="super_glue/boolq/default.yaml",
        shots=0,
        metric="acc",
        harness_metric="acc",
        split="validation",
        hub=HubSource("aps/super_glue", "boolq", "validation"),
        fields=("passage", "question", "label"),
    ),
)

TASKS: dict[str, TaskSpec] = {t.name: t for t in _TASKS}
"""Every benchmark tokenclean knows, by name."""

SUITES: dict[str, tuple[str, ...]] = {
    # Table 1's column order: TruthfulQA, TydiQA, LogiQA, MMLU, HellaSwag, ARC-C, BoolQ.
    "paper": tuple(t.name for t in _TASKS),
    # held-out response loss on the user's own data (--heldout) plus only the tasks named with --tasks.
    "quick": (),
}

ALIASES = {
    "truthfulqa": "truthfulqa_mc2",
    "arc_c": "arc_challenge",
    "arc-c": "arc_challenge",
    "tydiqa_goldp": "tydiqa",
}


def task_spec(name: str) -> TaskSpec:
    """The :class:`TaskSpec` named ``name`` (or an alias); an unknown name lists the valid ones."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise ConfigError(
            f"unknown evaluation task '{name}' (valid: {', '.join(TASKS)}; or a task YAML path)"
        )
    return TASKS[key]


def suite_tasks(suite: str) -> tuple[TaskSpec, ...]:
    """The tasks a suite runs when ``--tasks`` is not given."""
    if suite not in SUITES:
        raise ConfigError(f"unknown suite '{suite}' (valid: {', '.join(SUITES)})")
    return tuple(TASKS[n] for n in SUITES[suite])
