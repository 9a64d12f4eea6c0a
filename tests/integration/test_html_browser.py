"""The report page in a real headless Chromium (DevTools protocol over a pipe): it loads from disk without
console errors or outside requests, shows the expected tokens with the expected classes and hover data,
its filters work, and a screenshot is written.

Skipped when Chromium is missing, unless ``CI`` is set: then a missing Chromium is a failure. Install it with
``apt-get update && apt-get install -y --no-install-recommends chromium``. Set
``TOKENCLEAN_DOCS_SCREENSHOT=docs/img/report.png`` to also write the screenshot there.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from tokenclean.report import ReportConfig, build_report
from tokenclean.report.browser import Chromium, find_chromium, screenshot
from tokenclean.report.inspect import token_classes, token_pieces
from tokenclean.testing.runs import make_synthetic_run, write_records

pytestmark = pytest.mark.browser
INSTALL = "apt-get update && apt-get install -y --no-install-recommends chromium"


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI is set but no Chromium was found; install it in CI: {INSTALL}")
        pytest.skip(f"Chromium not installed ({INSTALL}); with CI=true this fails instead")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, tiny_tok, tiny_tok_dir: Path, chromium: str) -> Path:
    d = tmp_path_factory.mktemp("browser_run")
    run = make_synthetic_run(
        d / "run", tiny_tok, write_records(d / "data.jsonl"), tokenizer_name=str(tiny_tok_dir)
    )
    return build_report(run, cfg=ReportConfig(samples=6, formats=("svg",)))["index.html"]


@pytest.fixture(scope="module")
def page(report: Path, chromium: str):
    with Chromium(chromium) as browser:
        browser.load(report)
        yield browser


TOKENS_JS = """Array.prototype.map.call(document.querySelectorAll(
  'article.sample[data-method="fixed_model"][data-sample-id="nasty-<1>"] .tokens .t'),
  function(t){return [t.className, t.textContent, t.dataset.score === undefined ? null : t.dataset.score];})"""


def test_loads_offline_without_errors(page: Chromium):
    assert page.eval("document.title").startswith("tokenclean report")
    assert page.errors == []
    outside = [u for u in page.requests if not u.startswith(("file:", "data:"))]
    assert outside == []
    assert page.eval("document.querySelectorAll('#figures img').length") >= 6
    widths = page.eval(
        "Array.prototype.map.call(document.querySelectorAll('#figures img'), i => i.naturalWidth)"
    )
    assert all(w > 100 for w in widths)  # every embedded figure decoded


def test_tokens_have_expected_text_classes_and_hover_data(page: Chromium, report: Path, tiny_tok):
    cleaned = datasets.load_from_disk(str(report.parent.parent / "cleaned/fixed_model"))
    store = datasets.load_from_disk(str(report.parent.parent / "scores/fixed_model"))
    row = next(r for r in cleaned if r["sample_id"] == "nasty-<1>")
    srow = next(r for r in store if r["sample_id"] == "nasty-<1>")
    got = page.eval(TOKENS_JS)
    names = {0: "prompt", 1: "kept", 2: "dropped"}
    expected_cls = [names[c] for c in token_classes(row["labels"], row["response_labels"])]
    assert [g[0].split()[1] for g in got] == expected_cls
    assert [g[1] for g in got] == token_pieces(tiny_tok, row["input_ids"])
    assert "".join(g[1] for g in got) == tiny_tok.decode(row["input_ids"])  # incl. <script>, &, quotes, \n
    for (cls, _, score), s in zip(got, srow["score"]):
        if cls.split()[1] != "prompt":
            assert score == ("n/a" if s != s else f"{s:+.4f}")
    assert {"kept", "dropped", "prompt"} <= set(expected_cls)
    assert page.eval("document.querySelectorAll('script').length") == 1  # the token's <script> is only text


def test_hover_shows_losses_and_score(page: Chromium):
    xy = page.eval("""(function(){
      var t=document.querySelector('article.sample:not([hidden]) .t.kept');t.scrollIntoView({block:'center'});
      var r=t.getBoundingClientRect();return [r.left+r.width/2,r.top+r.height/2,t.dataset.base,t.dataset.ref,t.dataset.score];
    })()""")
    assert page.eval("document.getElementById('tip').hidden") is True
    page.mouse_move(xy[0], xy[1])
    tip = page.eval("[document.getElementById('tip').hidden, document.getElementById('tip').textContent]")
    assert tip[0] is False
    for label, v in (("base loss", xy[2]), ("ref loss", xy[3]), ("score", xy[4])):
        assert f"{label}" in tip[1] and v in tip[1]
    assert "kept" in tip[1]


def _visible() -> str:
    return "Array.prototype.map.call(document.querySelectorAll('#samples article.sample:not([hidden])'), a => [a.dataset.method, a.dataset.round])"


def test_filters_by_method_and_round(page: Chromium, report: Path):
    opts = page.eval("Array.prototype.map.call(document.querySelectorAll('#s-method option'), o => o.value)")
    assert opts == ["", "random", "rho", "fixed_model", "self_evolving"]
    assert page.eval(
        "Array.prototype.map.call(document.querySelectorAll('#s-round option'), o => o.value)"
    ) == ["", "1", "2"]
    total = len(page.eval(_visible()))
    change = (
        "(function(id,v){var s=document.getElementById(id);s.value=v;s.dispatchEvent(new Event('change'));})"
    )
    page.eval(f"{change}('s-method','rho')")
    vis = page.eval(_visible())
    assert vis and {m for m, _ in vis} == {"rho"} and len(vis) < total
    page.eval(f"{change}('s-method','')")
    page.eval(f"{change}('s-round','2')")
    vis = page.eval(_visible())
    assert vis and set(map(tuple, vis)) == {("self_evolving", "2")}
    assert page.eval("document.getElementById('s-count').textContent") == f"{len(vis)} of {total} shown"
    page.eval(f"{change}('s-round','')")
    assert len(page.eval(_visible())) == total
    page.load(f"{report}#method=self_evolving&round=1")  # filters preset from the URL
    page.wait_for("document.getElementById('s-round').value === '1'")  # hashchange runs after navigation
    assert {tuple(v) for v in page.eval(_visible())} == {("self_evolving", "1")}
    assert page.eval("document.getElementById('f-method').value") == "self_evolving"
    assert page.errors == []


def test_screenshot(report: Path, tmp_path: Path):
    png = screenshot(
        report,
        tmp_path / "report.png",
        fragment="method=fixed_model",
        scroll_to="#samples",
        hover="#samples .tokens .t.kept",
    )
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1280, 900)  # IHDR width, height
    assert len(data) > 20_000  # not a blank page
    docs = os.environ.get("TOKENCLEAN_DOCS_SCREENSHOT")
    if docs:
        shutil.copy(png, docs)


FRESH = """import os, sys
for fd in (3, 4):  # as in a process started from a shell: descriptors 3 and 4 are not open
    try:
        os.close(fd)
    except OSError:
        pass
from tokenclean.report.browser import screenshot
print(screenshot(sys.argv[1], sys.argv[2]))
"""


def test_screenshot_in_a_process_without_descriptors_3_and_4(report: Path, tmp_path: Path):
    png = tmp_path / "fresh.png"
    p = subprocess.run(
        [sys.executable, "-c", FRESH, str(report), str(png)], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_screenshot(report: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from tokenclean.cli import main

    run, png = report.parent.parent, tmp_path / "cli.png"
    args = [
        str(run),
        "--out",
        str(tmp_path / "r"),
        "--formats",
        "",
        "--samples",
        "2",
        "--screenshot",
        str(png),
    ]
    assert main(["report", *args]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"screenshot: {png}" in capsys.readouterr().out
