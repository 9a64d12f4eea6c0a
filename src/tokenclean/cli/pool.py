"""``tokenclean pool``: prepare -> score -> select over N shard tasks on a data engine (datatrove), for a
pool too large for one job (:mod:`tokenclean.engines`; heavy imports stay inside the handler)."""

from __future__ import annotations

import argparse
import json

from tokenclean.cli.args import (
    Command,
    add_runtime,
    add_setting,
    add_settings,
    apply_runtime,
    data_source,
    model_name,
    settings_from_args,
)
from tokenclean.errors import ConfigError
from tokenclean.pipelines.config import DataConfig, ScoringConfig, SelectionConfig
from tokenclean.scoring import DEFAULT_SHARD_SIZE, SCORERS

ENGINES = ("datatrove",)
EXECUTORS = ("local", "slurm", "ray")  # tokenclean.engines.datatrove_engine.EXECUTORS (tested)
_DATA_SETTINGS = ("format", "template", "max_length", "skip_invalid")


def _options(pairs: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` executor options; a VALUE that parses as JSON is taken as such (numbers, true)."""
    out: dict[str, object] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--executor-option: expected KEY=VALUE, got '{p}'")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _pool(a: argparse.Namespace) -> int:
    data = settings_from_args(DataConfig, a, "data", only=_DATA_SETTINGS, path=a.data)
    sc = settings_from_args(ScoringConfig, a, "scoring")
    sel = settings_from_args(SelectionConfig, a, "selection", only=["ratio", "seed"])
    rt = apply_runtime(a)
    from tokenclean.engines.datatrove_engine import ExecutorSpec, require_datatrove
    from tokenclean.engines.pool import PoolSpec, run_pool

    require_datatrove()
    spec = PoolSpec(
        a.data, a.base, a.out, a.tasks, a.reference, a.tokenizer, sel.ratio, sel.seed, data.format,
        data.template, data.max_length, data.skip_invalid, a.scorer, sc.dtype, rt.device, sc.batch_tokens,
        sc.packing, a.shard_size, a.force,
    )  # fmt: skip
    r = run_pool(spec, ExecutorSpec(a.executor, a.workers, _options(a.executor_option or [])))
    s = r["selected"]
    print(
        f"wrote {a.out}: {r['prepared']['counts']['written']} samples prepared, "
        f"{r['scores']['counts']['scored_positions']} tokens scored, global K={s['requested_ratio']} kept "
        f"{s['kept_tokens']} of {s['total_response_tokens']} response tokens over {a.tasks} {a.engine} tasks "
        f"(cleaned data in {a.out}/selected)"
    )
    return 0


def _pool_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--engine", default="datatrove", choices=ENGINES, help="the data engine running the tasks")
    s.add_argument("--executor", default="local", choices=EXECUTORS, help="the engine's executor")
    s.add_argument("--tasks", type=int, required=True, help="shards: tasks of every stage (>= 1)")
    s.add_argument("--workers", type=int, default=1, help="local executor: tasks running at once")
    s.add_argument(
        "--executor-option",
        action="append",
        metavar="KEY=VALUE",
        help="passed to the executor, e.g. partition=gpu, time=24:00:00, gpus_per_task=1 (repeatable)",
    )
    s.add_argument("--data", required=True, type=data_source, help="SFT data (as tokenclean prepare)")
    s.add_argument("--base", required=True, type=model_name("base model"), help="base model")
    s.add_argument(
        "--reference",
        default=None,
        type=model_name("reference"),
        help="reference model, or a PEFT adapter dir on --base",
    )
    s.add_argument(
        "--tokenizer", default=None, type=model_name("tokenizer"), help="tokenizer (default: --base's)"
    )
    s.add_argument("--out", required=True, help="pool directory: prepared/, scores/, selected/")
    add_settings(s, DataConfig, "data", only=_DATA_SETTINGS)
    add_settings(s, ScoringConfig, "scoring")
    add_setting(s, SelectionConfig, "ratio", "selection")
    add_setting(s, SelectionConfig, "seed", "selection")
    s.add_argument("--scorer", default="token_cleaning", choices=sorted(SCORERS), help="token score")
    s.add_argument(
        "--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="samples per resumable score chunk"
    )
    add_runtime(s)
    s.add_argument(
        "--force", action="store_true", help="discard every stage output and engine record in --out"
    )


COMMANDS = (
    Command(
        "pool",
        "prepare, score and select (global top-K) over N shard tasks on a data engine",
        _pool_args,
        _pool,
        description="Run the pool stages as datatrove tasks (local processes, Slurm array jobs or Ray): "
        "each task writes one shard atomically, so a rerun of the same command skips finished tasks and "
        "redoes a killed one. Needs the optional extra: pip install 'tokenclean[engine]'.",
        example="tokenclean pool --data pool.jsonl --base smollm2 --reference runs/warmup/adapter --tasks 8 "
        "--workers 2 --out runs/pool",
    ),
)
