"""The report builds from a tiny synthetic run directory (tokenclean.testing.runs: a prepared dataset with a
tiny tokenizer, score stores and cleaned datasets written by the stages' own code, made-up numbers)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import datasets
import numpy as np
import pytest

from tokenclean.errors import ConfigError, DataError, OutputError
from tokenclean.report import ReportConfig, build_report
from tokenclean.report.inspect import token_classes, token_pieces
from tokenclean.report.runs import View
from tokenclean.report.tokens import load_token_arrays, tokenizer_name
from tokenclean.testing.runs import make_synthetic_run, write_records

pytestmark = pytest.mark.requires("matplotlib")  # every report has figures


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_tok, tiny_tok_dir: Path) -> Path:
    d = tmp_path_factory.mktemp("report_run")
    data = write_records(d / "data.jsonl")
    return make_synthetic_run(d / "run", tiny_tok, data, tokenizer_name=str(tiny_tok_dir), name="tiny <run>")


@pytest.fixture(scope="module")
def built(tiny_run: Path) -> dict[str, Path]:
    return build_report([tiny_run], cfg=ReportConfig(samples=3))


class TokenSpans(HTMLParser):
    """(sample id, method, round) -> list of (class, text, data attrs) from the page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.samples: dict[tuple[str, str, str], list[tuple[str, str, dict]]] = {}
        self._key: tuple[str, str, str] | None = None
        self._tok: list | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "article" and "sample" in a.get("class", ""):
            self._key = (a["data-sample-id"], a["data-method"], a["data-round"])
            self.samples[self._key] = []
        elif tag == "span" and self._key and a.get("class", "").startswith("t "):
            self._tok = [a["class"].split()[1], "", {k: v for k, v in a.items() if k.startswith("data-")}]

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._tok is not None and self._key is not None:
            self.samples[self._key].append(tuple(self._tok))  # type: ignore[arg-type]
            self._tok = None
        elif tag == "article":
            self._key = None

    def handle_data(self, data: str) -> None:
        if self._tok is not None:
            self._tok[1] += data


def test_report_files_and_tables(tiny_run: Path, built: dict[str, Path]):
    out = tiny_run / "report"
    for name in ("index.html", "report.md", "manifest.json", "tables/results.md", "tables/results.csv",
                 "tables/results.json", "tables/recovery.json", "tables/heldout.json", "tables/rounds.json",
                 "tables/sweep.json", "figures/sweep.png", "figures/sweep.svg", "figures/rounds.png",
                 "figures/scatter_fixed_model.png", "figures/scatter_self_evolving_round1.svg",
                 "figures/scatter_self_evolving_round2.png", "figures/hist_rho.svg"):  # fmt: skip
        assert built[name] == out / name and (out / name).is_file(), name
    summary = json.loads((tiny_run / "summary.json").read_text())
    res = json.loads((out / "tables/results.json").read_text())
    # paper order, whatever the file's (sorted) key order
    assert [r["key"] for r in res["rows"]] == [
        "base",
        "warmup",
        "full",
        "random",
        "rho",
        "fixed_model",
        "self_evolving",
    ]
    assert sorted(summary["methods"]) == sorted(r["key"] for r in res["rows"])
    for r in res["rows"]:
        tasks = summary["methods"][r["key"]]["eval"]["tasks"]
        assert r["values"]["average"] == pytest.approx(np.mean([t["value"] for t in tasks.values()]))
    for col in ("mmlu", "average"):
        vals = {r["key"]: r["values"][col] for r in res["rows"]}
        assert [k for k, b in ((r["key"], r["best"][col]) for r in res["rows"]) if b] == [
            max(vals, key=vals.get)
        ]
    assert json.loads((out / "manifest.json").read_text())["stage"] == "report"
    assert "figures/sweep.png" in (out / "report.md").read_text()
    assert not list(out.glob("figures/scatter_random*"))  # random has no score store: no loss scatter
    assert (
        out / "figures/hist_random.png"
    ).is_file()  # ... but the cleaned set's score column gives a histogram


def test_html_tokens_match_the_cleaned_datasets(tiny_run: Path, built: dict[str, Path], tiny_tok):
    doc = built["index.html"].read_text(encoding="utf-8")
    parser = TokenSpans()
    parser.feed(doc)
    keys = set(parser.samples)
    assert {m for _, m, _ in keys} == {"random", "rho", "fixed_model", "self_evolving"}
    assert {r for _, m, r in keys if m == "self_evolving"} == {"1", "2"}
    assert sum(1 for _, m, _ in keys if m == "fixed_model") == 3  # the samples setting
    cleaned = datasets.load_from_disk(str(tiny_run / "cleaned/fixed_model"))
    store = datasets.load_from_disk(str(tiny_run / "scores/fixed_model"))
    checked = 0
    for row, srow in zip(cleaned, store):
        toks = parser.samples.get((row["sample_id"], "fixed_model", ""))
        if toks is None:
            continue
        classes = token_classes(row["labels"], row["response_labels"])
        names = {0: "prompt", 1: "kept", 2: "dropped"}
        assert [t[0] for t in toks] == [names[c] for c in classes]
        assert [t[1] for t in toks] == token_pieces(tiny_tok, row["input_ids"])
        for (cls, _, attrs), s in zip(toks, srow["score"]):
            if cls != "prompt":
                assert attrs["data-score"] == ("n/a" if s is None or np.isnan(s) else f"{s:+.4f}")
        checked += 1
    assert checked == 3
    assert "nasty-&lt;1&gt;" in doc and "<script>alert" not in doc  # the nasty sample is escaped
    assert "&lt;script&gt;" in doc or "&lt;" in doc


def test_score_store_joined_by_sample_id(tiny_run: Path, tmp_path: Path):
    store = datasets.load_from_disk(str(tiny_run / "scores/fixed_model"))
    shuffled = store.select(list(reversed(range(len(store)))))
    shuffled.save_to_disk(str(tmp_path / "scores"))
    a = load_token_arrays(
        View(
            "fixed_model",
            None,
            "r",
            tiny_run,
            tiny_run / "scores/fixed_model",
            tiny_run / "cleaned/fixed_model",
        )
    )
    b = load_token_arrays(
        View("fixed_model", None, "r", tiny_run, tmp_path / "scores", tiny_run / "cleaned/fixed_model")
    )
    assert a is not None and b is not None and a.kept is not None and b.kept is not None
    assert (
        np.array_equal(a.score, b.score) and np.array_equal(a.kept, b.kept) and np.array_equal(a.base, b.base)
    )
    # kept tokens are exactly the cleaned set's trained tokens, and global top-k keeps the highest scores
    cleaned = datasets.load_from_disk(str(tiny_run / "cleaned/fixed_model"))
    assert int(a.kept.sum()) == sum(sum(x != -100 for x in r) for r in cleaned["labels"])
    assert a.score[a.kept].min() >= a.score[~a.kept].max()


def test_tokenizer_found_through_manifests(tiny_run: Path, tiny_tok_dir: Path):
    v = View("rho", None, "r", tiny_run, None, tiny_run / "cleaned/rho", model="fallback")
    assert tokenizer_name(v) == str(tiny_tok_dir)  # cleaned -> prepared_dir -> tokenizer.source
    assert tokenizer_name(View("x", None, "r", tiny_run, None, None, model="fallback")) == "fallback"


def test_rebuild_refuses_foreign_dirs_and_cli(tiny_run: Path, built: dict[str, Path], tmp_path: Path, capsys):
    from tokenclean.cli import main

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a tokenclean output"):
        build_report(tiny_run, out=foreign)
    assert (foreign / "keep.txt").read_text() == "mine"
    out = tmp_path / "rep"
    assert main(["report", str(tiny_run), "--out", str(out), "--no-html", "--formats", "png"]) == 0
    assert "wrote report to" in capsys.readouterr().out
    assert (out / "tables/results.md").is_file() and not (out / "index.html").exists()
    assert (
        main(["report", str(tiny_run), "--out", str(out), "--no-html"]) == 0
    )  # an earlier report is replaced
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "nope: no such run directory or stage output" in capsys.readouterr().err


def test_missing_dataset_becomes_a_notice(tiny_run: Path, tmp_path: Path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("report"))
    shutil.rmtree(run / "cleaned/rho")
    got = build_report(run, cfg=ReportConfig(samples=1, formats=("svg",)))
    doc = got["index.html"].read_text()
    assert 'id="notices"' in doc and "cleaned/rho" in doc
    assert "results.md" in " ".join(got)  # the tables are still there


def test_report_of_stage_by_stage_outputs(tiny_run: Path, tmp_path: Path):
    """Outputs of stage commands (no summary.json) make a report: one method per path or NAME, the cleaned
    set's score store found through its manifest, an eval JSON joined to the method of the same NAME."""
    ev = {"suite": "quick", "tasks": {"heldout_loss": {"metric": "loss", "value": 1.25, "n": 3, "shots": 0}}}
    (tmp_path / "eval.json").write_text(json.dumps(ev))
    inputs = [
        f"mine={tiny_run}/cleaned/fixed_model",
        f"mine={tmp_path}/eval.json",
        str(tiny_run / "cleaned/rho"),
    ]
    with pytest.raises(ConfigError, match=r"stage outputs .* need --out"):
        build_report(inputs)
    built = build_report(inputs, out=tmp_path / "report", cfg=ReportConfig(samples=2))
    page = built["index.html"].read_text()
    assert 'data-method="mine"' in page and 'data-method="rho"' in page
    res = json.loads(built["tables/results.json"].read_text())
    assert {r["key"]: r["values"].get("heldout_loss") for r in res["rows"]}["mine"] == pytest.approx(1.25)
    assert "figures/hist_mine.png" in built  # the scores came from the cleaned set's manifest
    with pytest.raises(DataError, match="not a run directory"):
        build_report([str(tmp_path)], out=tmp_path / "r2")
