"""``tokenclean run``, ``tokenclean demo`` and ``tokenclean validate-config``."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenclean import cli


def _resource(name: str) -> Path:
    return Path(__file__).resolve().parent / "resources" / name


def _print_report(summary: dict) -> None:
    """Where the run's report page is (build_report returns {relative name: path})."""
    files = summary.get("report") or {}
    page = files.get("index.html") or files.get("report.md")
    if page:
        print(f"report: {page}")


def _threads(a: argparse.Namespace) -> None:
    from tokenclean.utils import apply_threads

    apply_threads(getattr(a, "threads", None))


def _not_rank0() -> bool:
    from tokenclean.training.distributed import launched_world

    return launched_world()[0] != 0  # under a launcher rank 0 prints


@cli.command("run")
def _run(a: argparse.Namespace) -> int:
    from tokenclean.pipelines.config import load_run_config
    from tokenclean.pipelines.runner import run
    from tokenclean.report.truth_tables import print_all

    cfg = load_run_config(a.config, a.overrides)
    _threads(a)
    summary = run(cfg)
    if _not_rank0():
        return 0
    if cfg.data.synthetic is not None or cfg.data.truth is not None:
        print_all(summary)
    print(f"run directory: {cfg.run_dir} (summary.json, config.yaml)")
    _print_report(summary)
    return 0


@cli.command("demo")
def _demo(a: argparse.Namespace) -> int:
    import time

    from tokenclean.pipelines.config import load_run_config
    from tokenclean.pipelines.runner import run
    from tokenclean.report.truth_tables import print_all

    overrides = [f"run_dir={a.out}", *a.overrides]
    cfg = load_run_config(_resource("demo.yaml"), overrides)
    t0 = time.time()
    _threads(a)
    summary = run(cfg)
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


@cli.command("validate-config")
def _validate(a: argparse.Namespace) -> int:
    from tokenclean.config import to_yaml
    from tokenclean.pipelines.config import load_run_config

    for path in a.configs:
        cfg = load_run_config(path, a.set or [])
        print(f"{path}: ok" if not a.show else f"# {path}\n{to_yaml(cfg)}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "run", help="run a pipeline config (fixed_model, self_evolving, baselines) in a run dir"
    )
    s.add_argument("config", help="YAML config (see configs/)")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. selection.ratio=0.5")
    s.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per process (default: the cores idle at start; OMP_NUM_THREADS if set)",
    )

    s = sub.add_parser("demo", help="offline demo: every method on a ground-truth pool with SmolLM2-135M")
    s.add_argument("--out", default="runs/demo", help="run directory (re-running resumes / reuses it)")
    s.add_argument("overrides", nargs="*", help="key=value overrides of the demo config")
    s.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per process (default: the cores idle at start; OMP_NUM_THREADS if set)",
    )

    s = sub.add_parser("validate-config", help="check run configs (unknown keys and bad values fail)")
    s.add_argument("configs", nargs="+")
    s.add_argument("--set", action="append", help="key=value override")
    s.add_argument("--show", action="store_true", help="print the resolved config")


cli._EXTRA_PARSERS.append(add_parsers)
