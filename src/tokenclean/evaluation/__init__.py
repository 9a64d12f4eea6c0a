"""Evaluation stage: the paper's benchmark suite on lm-evaluation-harness (offline from local files) and a
download-free held-out loss.

- :func:`evaluate` (``tokenclean eval``): run a suite on a model (+ LoRA adapter in memory), write JSON.
- :mod:`~tokenclean.evaluation.suites`: suite definitions as data (task, harness task, shots, metric, data).
- :mod:`~tokenclean.evaluation.local_data`: local benchmark files and converters (``tokenclean eval-data``).
- :mod:`~tokenclean.evaluation.quick`: held-out response loss / perplexity / exact match.

Importing this package does not import torch or lm-eval.
"""

from tokenclean.evaluation.runner import evaluate, resolve_tasks
from tokenclean.evaluation.suites import SUITES, TASKS, EvalDataError, TaskSpec, suite_tasks, task_spec

__all__ = [
    "SUITES",
    "TASKS",
    "EvalDataError",
    "TaskSpec",
    "evaluate",
    "resolve_tasks",
    "suite_tasks",
    "task_spec",
]
