"""``tokenclean report PATH... [--out DIR]``: tables, figures and the HTML page of one or more runs, or of
stage-by-stage outputs (cleaned datasets, score stores, training directories, eval JSONs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenclean.cli.args import Command, existing


def _report(a: argparse.Namespace) -> int:
    from tokenclean.report.build import ReportConfig, build_report

    cfg = ReportConfig(
        samples=a.samples,
        max_tokens=a.max_tokens,
        scatter_points=a.scatter_points,
        seed=a.seed,
        formats=tuple(f for f in a.formats.split(",") if f),
        html=not a.no_html,
    )
    written = build_report(a.run_dirs, out=a.out, tokenizer=a.tokenizer, cfg=cfg)
    out = written["report.md"].parent
    index = written.get("index.html")
    n_tables = sum(1 for n in written if n.startswith("tables/") and n.endswith(".md"))
    n_figs = sum(1 for n in written if n.startswith("figures/") and n.endswith(".png"))
    print(
        f"wrote report to {out}: {n_tables} tables, {n_figs} figures" + (f"; open {index}" if index else "")
    )
    if a.screenshot:
        if index is None:
            print("no screenshot: --no-html was given")
            return 0
        from tokenclean.report.browser import screenshot

        html = index.read_text(encoding="utf-8")
        method = next((m for m in ("fixed_model", "self_evolving") if f'data-method="{m}"' in html), "")
        png = screenshot(
            index,
            a.screenshot,
            fragment=f"method={method}" if method else "",
            scroll_to="#samples",
            hover="#samples .tokens .t.kept",
        )
        print(f"screenshot: {png}")
    return 0


def _report_input(value: str) -> str:
    """A run directory or a stage output, optionally ``NAME=PATH``; the path must exist."""
    path = value.split("=", 1)[1] if "=" in value and not Path(value).exists() else value
    existing("run directory or stage output")(path)
    return value


def _report_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "run_dirs",
        nargs="+",
        metavar="PATH",
        type=_report_input,
        help="run directories (with summary.json), or stage outputs shown as one method each, optionally "
        "named NAME=PATH: a cleaned dataset (tokenclean select), a score store (score), a training directory "
        "(train) or an eval JSON (eval --out FILE.json); outputs given the same NAME form one method",
    )
    s.add_argument(
        "--out", default=None, help="output directory (default RUN_DIR/report; needed for several)"
    )
    s.add_argument("--tokenizer", default=None, help="tokenizer to decode samples (default: the run's own)")
    s.add_argument("--samples", type=int, default=8, help="samples shown per method and round")
    s.add_argument("--max-tokens", type=int, default=2048, help="tokens shown per sample")
    s.add_argument("--scatter-points", type=int, default=20_000, help="points per loss scatter")
    s.add_argument("--seed", type=int, default=0, help="seed of the scatter subsample")
    s.add_argument("--formats", default="png,svg", help="figure formats, comma-separated ('' for none)")
    s.add_argument("--no-html", action="store_true", help="tables and figures only")
    s.add_argument(
        "--screenshot", default=None, metavar="PNG", help="also save a screenshot (needs Chromium)"
    )


COMMANDS = (
    Command(
        "report",
        "tables (Markdown/CSV/JSON), figures and an HTML page of runs",
        _report_args,
        _report,
        example="tokenclean report runs/demo runs/mine --out runs/report\n"
        "  tokenclean report mine=out/cleaned mine=out/eval.json full=out/prepared --out out/report",
    ),
)
