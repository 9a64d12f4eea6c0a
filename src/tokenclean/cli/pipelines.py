"""``tokenclean run``, ``tokenclean demo``, ``tokenclean validate-config`` and ``tokenclean settings``."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenclean.cli.args import Command, add_runtime, apply_runtime, existing


def _resource(name: str) -> Path:
    return Path(__file__).resolve().parents[1] / "resources" / name  # tokenclean/resources


def _print_report(summary: dict) -> None:
    """Where the run's report page is (build_report returns {relative name: path})."""
    files = summary.get("report") or {}
    page = files.get("index.html") or files.get("report.md")
    if page:
        print(f"report: {page}")


def _not_rank0() -> bool:
    from tokenclean.runtime import launched_world

    return launched_world()[0] != 0  # under a launcher rank 0 prints


def _run(a: argparse.Namespace) -> int:
    from tokenclean.pipelines.config import load_run_config

    cfg = load_run_config(a.config, a.overrides)  # a bad key fails here, before torch loads
    apply_runtime(a)
    from tokenclean.pipelines.runner import run
    from tokenclean.report.text import eval_text_table
    from tokenclean.report.truth_tables import print_all

    summary = run(cfg, adopt=a.adopt_run_dir)
    if _not_rank0():
        return 0
    print()
    truth = cfg.data.synthetic is not None or cfg.data.truth is not None
    if truth:
        print_all(summary)
    if not truth or any((m.get("eval") or {}).get("tasks") for m in summary.get("methods", {}).values()):
        print(eval_text_table(summary))
    print(f"run directory: {cfg.run_dir} (summary.json, config.yaml)")
    _print_report(summary)
    return 0


def _demo(a: argparse.Namespace) -> int:
    import time

    from tokenclean.pipelines.config import load_run_config

    overrides = [f"run_dir={a.out}", *a.overrides]
    cfg = load_run_config(_resource("demo.yaml"), overrides)
    t0 = time.time()
    apply_runtime(a)
    from tokenclean.pipelines.runner import run
    from tokenclean.report.truth_tables import print_all

    summary = run(cfg, adopt=a.adopt_run_dir)
    if _not_rank0():
        return 0
    print()
    print("Token cleaning on a ground-truth pool (SmolLM2-135M-Instruct, LoRA, CPU)")
    print(f"pool: {cfg.data.synthetic}; keep ratio {cfg.selection.ratio}")
    print_all(summary)
    print()
    print("precision/recall = of informative (fact) tokens among kept; AUROC = of the method's score for")
    print("informative tokens; noise kept vs all = share of noise tokens among kept vs among all response")
    print("tokens (paper Thm. 5.1); test = clean held-out facts; updates = optimizer steps behind the model;")
    print("trained tok = tokens in its loss; fwd/bwd tok = token-passes incl. warm-up and scoring.")
    print("wrong fact = a learnable wrong answer, gibberish = an unlearnable span; both are noise.")
    print(f"wall time: {time.time() - t0:.0f} s; artifacts: {cfg.run_dir}")
    _print_report(summary)
    return 0


def _validate(a: argparse.Namespace) -> int:
    import sys

    from tokenclean.config import to_yaml
    from tokenclean.errors import TokencleanError
    from tokenclean.pipelines.config import load_run_config

    failed = 0
    for path in a.configs:  # every file is checked; each error names its file
        try:
            cfg = load_run_config(path, a.set or [])
        except TokencleanError as e:
            print(f"{path}: error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: ok" if not a.show else f"# {path}\n{to_yaml(cfg)}")
    if failed:
        print(f"{failed} of {len(a.configs)} config(s) invalid", file=sys.stderr)
    return 2 if failed else 0


def _settings(a: argparse.Namespace) -> int:
    from tokenclean.cli.settings_doc import settings_markdown

    print(settings_markdown(), end="")
    return 0


def _adopt_arg(s: argparse.ArgumentParser, where: str) -> None:
    from tokenclean.outputs import RUN_ENTRIES

    s.add_argument(
        "--adopt-run-dir",
        action="store_true",
        help=f"use an existing {where} that tokenclean did not make (refused otherwise); your files in it "
        f"stay, and the run writes {RUN_ENTRIES} there",
    )


def _run_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("config", type=existing("config file"), help="YAML config (see configs/)")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. selection.ratio=0.5")
    add_runtime(s, device=False)  # the device is model.device of the config
    _adopt_arg(s, "run_dir")


def _demo_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--out", default="runs/demo", help="run directory (re-running resumes / reuses it)")
    s.add_argument("overrides", nargs="*", help="key=value overrides of the demo config")
    add_runtime(s, device=False)
    _adopt_arg(s, "--out")


def _validate_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("configs", nargs="+", type=existing("config file"), help="YAML configs")
    s.add_argument("--set", action="append", help="key=value override (repeatable)")
    s.add_argument("--show", action="store_true", help="print the resolved config")


COMMANDS = (
    Command(
        "run",
        "run a pipeline config (fixed_model, self_evolving, baselines) in a run dir",
        _run_args,
        _run,
        example="tokenclean run configs/own_data_cpu.yaml data.path=my.jsonl run_dir=runs/mine",
    ),
    Command(
        "demo",
        "offline demo: base, full tokens, random, RHO, fixed-model and self-evolving cleaning on a ground-truth "
        "pool with SmolLM2-135M (every method: configs/compare_smollm2.yaml)",
        _demo_args,
        _demo,
        example="tokenclean demo --out runs/demo",
    ),
    Command(
        "validate-config",
        "check run configs (unknown keys and bad values fail)",
        _validate_args,
        _validate,
        example="tokenclean validate-config configs/tiny_cpu.yaml --set selection.ratio=0.5 --show",
    ),
    Command(
        "settings",
        "print every setting of every stage with its default, bounds and help (docs/settings.md)",
        lambda s: None,
        _settings,
        example="tokenclean settings > docs/settings.md",
    ),
)
