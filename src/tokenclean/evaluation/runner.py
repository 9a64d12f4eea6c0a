"""``evaluate``: the evaluation stage's one entry point (CLI ``tokenclean eval`` and pipelines call it)."""

from __future__ import annotations

import importlib.metadata as md
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenclean.config import DEFAULT_DEVICE
from tokenclean.errors import ConfigError, ModelError
from tokenclean.evaluation import harness
from tokenclean.evaluation.local_data import resolve_data_dir
from tokenclean.evaluation.parallel import EvalGroup, eval_group
from tokenclean.evaluation.suites import SUITES, TaskSpec, suite_tasks, task_spec
from tokenclean.utils import get_logger, package_versions, write_json_atomic

log = get_logger("evaluation")


def _is_yaml(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def resolve_tasks(suite: str, tasks: Sequence[str] | None) -> tuple[list[TaskSpec], list[harness.CustomTask]]:
    """Benchmarks and user task YAMLs to run: the suite's tasks, or exactly ``tasks`` when given (names of
    known benchmarks, or paths to task YAMLs; the ``paper`` suite accepts only its own benchmarks)."""
    if suite not in SUITES:
        raise ConfigError(f"unknown suite '{suite}' (valid: {', '.join(SUITES)})")
    if not tasks:
        return list(suite_tasks(suite)), []
    specs, customs = [], []
    for t in tasks:
        if _is_yaml(t):
            if suite == "paper":
                raise ConfigError(f"--tasks {t}: the paper suite runs only its benchmarks; use --suite quick")
            customs.append(harness.custom_task(t))
        elif task_spec(t) not in specs:
            specs.append(task_spec(t))
    return specs, customs


def _output_path(out: str | Path, suite: str) -> Path:
    """``out`` itself when it ends in .json or is an existing file, else ``out/eval_{suite}.json``."""
    p = Path(out)
    return p if p.suffix == ".json" or p.is_file() else p / f"eval_{suite}.json"


def is_eval_result(obj: Any) -> bool:
    """A JSON value :func:`evaluate` wrote (the only kind of file ``eval --out`` replaces)."""
    return isinstance(obj, dict) and {"suite", "tasks", "average"} <= set(obj)


def check_eval_out(out: str | Path, suite: str, inputs: Sequence[Any]) -> Path:
    """The result file of ``out``, refused before any work when it is an input, inside one, or an existing
    file that is not an earlier result (:func:`tokenclean.outputs.check_file_target`)."""
    from tokenclean.outputs import check_file_target, check_path_text

    check_path_text(out)  # '' would become ./eval_SUITE.json
    return check_file_target(_output_path(out, suite), "eval", is_eval_result, inputs)


def _load(model: Any, adapter: str | None, tokenizer: Any, dtype: str, device: str) -> tuple[Any, Any]:
    """(model, tokenizer): loaded by name with the adapter applied in memory, or the objects given."""
    from tokenclean.models.loader import load_model, load_tokenizer, resolve_model

    if isinstance(model, (str, Path)):
        spec = resolve_model(str(model), adapter)
        return load_model(spec, dtype=dtype, device=device), tokenizer or load_tokenizer(spec)
    if tokenizer is None:
        raise ModelError("evaluate(model=<loaded model>) needs tokenizer=<its tokenizer>")
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        model.eval()
    return model, tokenizer


def _average(entries: dict[str, dict[str, Any]], names: Sequence[str]) -> float | None:
    """Unweighted mean of the benchmark scores (Table 1's AVG); None when no benchmark ran."""
    vals = [entries[n]["value"] for n in names]
    return float(sum(vals) / len(vals)) if vals else None


def _versions() -> dict[str, str]:
    v = package_versions()
    try:
        v["lm_eval"] = md.version("lm_eval")
    except md.PackageNotFoundError:
        v["lm_eval"] = "not installed"
    return v


def _harness(
    lm: Any,
    tok: Any,
    specs: list[TaskSpec],
    customs: list[harness.CustomTask],
    sources: dict[str, Any],
    limit: float | None,
    batch_size: int,
    group: EvalGroup,
) -> dict[str, Any] | None:
    """lm-evaluation-harness on the benchmarks and task YAMLs (rank 0 gets the results, other ranks None)."""
    with tempfile.TemporaryDirectory(prefix="tokenclean-eval-") as inc:
        names = harness.write_task_configs(Path(inc), specs, sources)
        names += harness.write_custom_configs(Path(inc), customs)
        return harness.run_harness(lm, tok, Path(inc), names, limit, batch_size, group)


def evaluate(
    model: Any,
    adapter: str | None = None,
    suite: str = "quick",
    tasks: Sequence[str] | None = None,
    heldout: str | Path | None = None,
    data_dir: str | Path | None = None,
    limit: float | None = None,
    out: str | Path | None = None,
    *,
    tokenizer: Any = None,
    batch_size: int = 8,
    device: str = DEFAULT_DEVICE,
    dtype: str = "fp32",
    batch_tokens: int = 2048,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` (a name/path, or a loaded model with ``tokenizer=``), with ``adapter`` applied in
    memory, on a suite; write the result to ``out`` (``*.json`` or a directory -> ``eval_{suite}.json``).

    Returns ``{"suite", "tasks": {name: {"metric", "value", "n", "shots", ...}}, "average", "seconds", ...}``.
    Benchmark values are fractions in [0, 1] (the paper prints x100). ``average`` is the unweighted mean over
    the benchmarks that ran (not the held-out loss); None when only held-out numbers were computed.
    ``limit`` caps samples per harness task (per MMLU subject) and held-out samples; None = all (the paper).
    Missing benchmark data fails before the model is loaded (see ``harness.plan_sources``).
    """
    t0 = time.perf_counter()
    target = None if out is None else check_eval_out(out, suite, [model, adapter, heldout, data_dir, tasks])
    specs, customs = resolve_tasks(suite, tasks)
    if not specs and not customs and heldout is None:
        raise ConfigError(
            "the quick suite needs --heldout PREPARED_DIR and/or --tasks (benchmarks or task YAMLs)"
        )
    sources = harness.plan_sources(specs, resolve_data_dir(data_dir)) if specs else {}
    if specs or customs:
        harness.harness_tasks_dir()  # lm-eval missing: say so before loading the model
    group, device = eval_group(device)
    lm, tok = _load(model, adapter, tokenizer, dtype, device)
    entries: dict[str, dict[str, Any]] = {}
    if heldout is not None:
        from tokenclean.evaluation.quick import heldout_entries, heldout_metrics

        n = int(limit) if limit is not None and limit >= 1 else None
        metrics = heldout_metrics(lm, heldout, tok, n, batch_tokens, progress and group.is_main, group)
        entries.update(heldout_entries(metrics))
    raw = _harness(lm, tok, specs, customs, sources, limit, batch_size, group) if specs or customs else {}
    if raw:  # rank 0 (the others get rank 0's result below)
        entries.update(harness.summarize(raw, specs, sources))
        entries.update(harness.summarize_custom(raw, customs))
    bench = [s.name for s in specs] + [c.name for c in customs]
    result = {
        "suite": suite,
        "model": str(model) if isinstance(model, (str, Path)) else type(model).__name__,
        "adapter": str(adapter) if adapter else None,
        "tasks": entries,
        "average": _average(entries, bench) if group.is_main else None,
        "average_over": bench,
        "limit": limit,
        "processes": group.world,
        "seconds": round(time.perf_counter() - t0, 2),
        "versions": _versions(),
        "harness_config": {k: raw.get(k) for k in ("n-shot", "versions", "config") if k in raw}
        if raw
        else {},
    }
    result = group.broadcast(result)  # every rank returns rank 0's numbers
    if target is not None and group.is_main:
        from tokenclean.outputs import output_lock

        with output_lock(target):
            write_json_atomic(target, result)
    return result
