"""``build_report``: one or more run directories -> tables (Markdown, CSV, JSON), figures (PNG, SVG) and the
self-contained HTML page, all rebuilt from what the runs wrote to disk.

Output directory (default ``RUN_DIR/report`` for one run; required for several)::

    index.html               the page (tables, figures, highlighted samples; opens from disk, offline)
    report.md                every table in Markdown, with links to the figures
    tables/NAME.{md,csv,json} results (Table 1 layout), recovery, heldout, rounds (Table 2), sweep
    figures/sweep.*, rounds.*, scatter_VIEW.*, hist_VIEW.*   (PNG and SVG)
    manifest.json            stage "report", the runs, settings, versions

The directory is written atomically (a crash leaves the previous report), and only a directory that is
empty or holds an earlier report is ever replaced.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokenclean.errors import ConfigError, TokencleanError
from tokenclean.report import html as page
from tokenclean.report import plots, tables
from tokenclean.report.runs import Merged, View, load_run, load_stage_outputs, merge
from tokenclean.report.tokens import SampleTokens, load_samples, load_token_arrays, tokenizer_name, with_truth
from tokenclean.utils import atomic_dir, get_logger, package_versions

log = get_logger("report")


@dataclass(frozen=True)
class ReportConfig:
    """Settings of the report."""

    samples: int = 8  # samples shown per method/round in the page
    max_tokens: int = 2048  # tokens shown per sample (the rest is counted, not shown)
    scatter_points: int = 20_000  # points per loss scatter (deterministic subsample)
    seed: int = 0  # seed of the scatter subsample
    formats: tuple[str, ...] = ("png", "svg")  # figure formats
    html: bool = True  # write index.html


def _check_out(out: Path, dirs: Sequence[str | Path]) -> None:
    """Refuse, before any work, an ``--out`` that is neither new, empty nor an earlier report, or that is
    an input (a run's own ``RUN/report`` is its output, not its input)."""
    from tokenclean.outputs import check_target

    paths = [str(d).partition("=")[2] if "=" in str(d) and not Path(d).exists() else str(d) for d in dirs]
    inputs = [p for p in paths if Path(p).resolve() != out.resolve().parent or out.name != "report"]
    check_target(out, "report", inputs)


def _check_names(m: Merged) -> None:
    """Two methods whose names give the same file name (``m.1`` and ``m_1`` both make ``scatter_m_1.png``;
    ``A`` and ``a`` on a case-insensitive disk) are refused: one's figures would replace the other's."""
    seen: dict[str, str] = {}
    for v in m.views:
        k = v.slug.casefold()
        if k in seen and seen[k] != v.label:
            raise ConfigError(
                f"report: the methods '{seen[k]}' and '{v.label}' would share the figure file names "
                f"'*_{v.slug}.png'; rename one (NAME=PATH) so that they differ in more than punctuation or case"
            )
        seen[k] = v.label


def _write_tables(ts: Sequence[tables.Table], d: Path) -> None:
    (d / "tables").mkdir(parents=True, exist_ok=True)
    for t in ts:
        (d / "tables" / f"{t.name}.md").write_text(tables.to_markdown(t))
        (d / "tables" / f"{t.name}.csv").write_text(tables.to_csv(t))
        (d / "tables" / f"{t.name}.json").write_text(json.dumps(tables.to_json(t), indent=2) + "\n")


def _line_figures(m: Merged, d: Path, cfg: ReportConfig) -> list[page.Figure]:
    figs = []
    for name, entries, x, xlabel, title in (
        ("sweep", m.sweep, "ratio", "token proportion k", "Token-proportion sweep (paper Fig. 2)"),
        ("rounds", m.rounds, "round", "round", "Self-evolving cleaning per round (paper Tab. 2)"),
    ):
        entries = [e for e in entries if (e.get("eval") or e.get("heldout")) and e.get(x) is not None]
        cols = tables.mixed_columns(entries)
        series: dict[str, list[tuple[float, dict[str, float | None]]]] = {}
        for e in entries:
            key = str(e.get("method") if name == "sweep" else e.get("key"))
            series.setdefault(tables.method_label(key), []).append(
                (float(e[x]), tables.entry_values(e, cols)[0])
            )
        if plots.plot_lines(series, cols, d / "figures" / name, xlabel, title, cfg.formats, name == "rounds"):
            figs.append(page.Figure(d / "figures" / f"{name}.png", title))
    stem = d / "figures" / "classes"
    if plots.plot_classes(m.methods, stem, formats=cfg.formats):
        figs.append(
            page.Figure(stem.with_suffix(".png"), "Share of each truth label's tokens kept, per method")
        )
    return figs


def _view_figures(m: Merged, d: Path, cfg: ReportConfig, notices: list[str]) -> list[page.Figure]:
    figs = []
    for v in m.views:
        try:
            arr = load_token_arrays(v)
        except TokencleanError as e:
            notices.append(f"{v.label}: no token figures: {e}")
            log.warning("%s: no token figures: %s", v.label, e)
            continue
        title = tables.method_label(v.key) + ("" if v.round is None else f", round {v.round}")
        stem = d / "figures" / f"scatter_{v.slug}"
        if plots.plot_scatter(arr, stem, title, cfg.scatter_points, cfg.seed, cfg.formats):
            figs.append(
                page.Figure(
                    stem.with_suffix(".png"), f"Base vs reference loss per token: {title}", v.key, v.round
                )
            )
        stem = d / "figures" / f"hist_{v.slug}"
        if plots.plot_hist(arr, stem, f"Scores: {title}", formats=cfg.formats):
            figs.append(page.Figure(stem.with_suffix(".png"), f"Score histogram: {title}", v.key, v.round))
    return figs


def _tokenizer_for(v: View, given: Any, cache: dict[str, Any]) -> Any:
    if given is not None and not isinstance(given, str):
        return given
    name = given or tokenizer_name(v)
    if name is None:
        raise ConfigError(f"{v.label}: no tokenizer named in the manifests or summary.json; pass --tokenizer")
    if name not in cache:
        from tokenclean.models.loader import load_tokenizer

        cache[name] = load_tokenizer(name)
    return cache[name]


def _samples(m: Merged, cfg: ReportConfig, tokenizer: Any, notices: list[str]) -> list[SampleTokens]:
    out: list[SampleTokens] = []
    preferred: list[str] = []
    cache: dict[str, Any] = {}
    truth_cache: dict[Path, Any] = {}
    for v in m.views:
        if v.cleaned is None:
            continue
        try:
            tok = _tokenizer_for(v, tokenizer, cache)
            got = load_samples(v, tok, cfg.samples, preferred, cfg.max_tokens)
            truth = _run_truth(_truth_dir(v), tok, truth_cache)
            if truth is not None:
                got = with_truth(got, *truth)
        except TokencleanError as e:
            notices.append(f"{v.label}: no samples: {e}")
            log.warning("%s: no samples: %s", v.label, e)
            continue
        if not preferred:
            preferred = [s.sample_id for s in got]  # show the same samples across methods where possible
        out += got
    return out


def _truth_dir(v: View) -> Path:
    """The run whose pool a view's tokens come from: the view's run, or (a seeds run's aggregate, stage
    outputs) the nearest directory above its cleaned set that holds a run's pool."""
    for d in [v.run_dir, *(v.cleaned.parents if v.cleaned is not None else [])]:
        if (d / "config.yaml").is_file() and (d / "data" / "pool").is_dir():
            return d
    return v.run_dir


def _run_truth(run_dir: Path, tok: Any, cache: dict[Path, Any]) -> tuple[dict[str, Any], list[str]] | None:
    """Token truth labels of a run's pool (a generated pool, or ``data.truth``), cached per run; None if the
    run has no truth."""
    if run_dir in cache:
        return cache[run_dir]
    import yaml

    cfg_path, out = run_dir / "config.yaml", None
    data = (yaml.safe_load(cfg_path.read_text()) or {}).get("data") or {} if cfg_path.is_file() else {}
    pool = run_dir / "data" / "pool"
    if (pool / "manifest.json").is_file() and (data.get("synthetic") or data.get("truth")):
        if data.get("synthetic"):
            from tokenclean.groundtruth.truth import pool_truth

            tt = pool_truth(run_dir / "data" / "source" / "pool.jsonl", pool, tok)
        else:
            from tokenclean.groundtruth.user_truth import load_user_truth

            tt = load_user_truth(data["truth"], data["path"], pool, tok, data.get("format", "auto"))
        out = ({sid: st.labels for sid, st in tt.samples.items()}, tt.names)
    cache[run_dir] = out
    return out


def _markdown(
    title: str, ts: Sequence[tables.Table], figs: Sequence[page.Figure], d: Path, notices: Sequence[str]
) -> str:
    parts = [f"# {title}", ""]
    parts += [tables.to_markdown(t) for t in ts] or ["No results in summary.json.\n"]
    if figs:
        parts += ["### Figures", ""]
        parts += [f"![{f.caption}]({f.path.relative_to(d).as_posix()})" for f in figs]
    if notices:
        parts += ["", "### Notices", "", *(f"- {n}" for n in notices)]
    return "\n".join(parts) + "\n"


def build_report(
    run_dirs: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    tokenizer: Any = None,
    cfg: ReportConfig | None = None,
) -> dict[str, Path]:
    """Write the report of one or more runs; return ``{relative name: path}`` of every file written.

    ``tokenizer``: a tokenizer object or name used to decode samples (default: the one each run's prepared
    manifest names, else the run's model).
    """
    cfg = cfg or ReportConfig()
    dirs = [run_dirs] if isinstance(run_dirs, str | Path) else list(run_dirs)
    if not dirs:
        raise ConfigError("report: give at least one run directory")
    runs = [load_run(d) for d in dirs if (Path(d) / "summary.json").is_file()]
    stages = [d for d in dirs if not (Path(d) / "summary.json").is_file()]
    if stages:
        if out is None:
            raise ConfigError(
                "report: stage outputs (no summary.json) need --out DIR: "
                f"{', '.join(map(str, stages))} (a run directory has RUN_DIR/summary.json)"
            )
        runs.append(load_stage_outputs(stages))
    if out is None and len(runs) > 1:
        raise ConfigError("report: several run directories need --out DIR for the merged report")
    out = Path(out) if out is not None else runs[0].dir / "report"
    _check_out(out, dirs)
    m = merge(runs)
    _check_names(m)
    ts = [
        t
        for t in (
            tables.results_table(m.methods),
            tables.recovery_table(m.methods),
            tables.heldout_table(m.methods),
            tables.rounds_table(m.rounds),
            tables.sweep_table(m.sweep),
        )
        if t is not None
    ]
    title = "tokenclean report: " + ", ".join(r.name for r in runs)
    notices: list[str] = []
    from tokenclean.outputs import output_lock

    with output_lock(out), atomic_dir(out) as tmp:
        _write_tables(ts, tmp)
        figs = _line_figures(m, tmp, cfg) + _view_figures(m, tmp, cfg, notices)
        samples = _samples(m, cfg, tokenizer, notices) if cfg.html else []
        (tmp / "report.md").write_text(_markdown(title, ts, figs, tmp, notices))
        if cfg.html:
            meta = [
                {
                    "run": r.name,
                    "pipeline": r.summary.get("pipeline"),
                    "model": r.summary.get("model"),
                    "ratio": r.summary.get("ratio"),
                    "dir": str(r.dir),
                }
                for r in runs
            ]
            (tmp / "index.html").write_text(
                page.render_page(title, meta, ts, figs, samples, notices), encoding="utf-8"
            )
        manifest = {
            "stage": "report",
            "runs": [str(r.dir.resolve()) for r in runs],
            "config": asdict(cfg),
            "tables": [t.name for t in ts],
            "figures": [f.path.stem for f in figs],
            "samples": len(samples) if cfg.html else 0,
            "notices": notices,
            "versions": package_versions(),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        names = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    return {n: out / n for n in names}
