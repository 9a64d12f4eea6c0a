"""``tokenclean report RUN_DIR... [--out DIR]``: tables, figures and the HTML page of one or more runs."""

from __future__ import annotations

import argparse

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


def _report_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        type=existing("run directory (one with summary.json)"),
        help="run directories (with summary.json)",
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
        example="tokenclean report runs/demo runs/mine --out runs/report",
    ),
)
