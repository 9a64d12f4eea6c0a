"""The HTML page: nasty token texts are escaped and survive a round trip through an HTML parser, tokens carry
their class and hover data, and the page references nothing outside itself."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from tokenclean.report import html as page
from tokenclean.report.inspect import DROPPED, KEPT, PROMPT
from tokenclean.report.runs import View
from tokenclean.report.tables import results_table
from tokenclean.report.tokens import SampleTokens

NASTY = [
    "<|user|>",
    "\n",
    '<script>alert("x")</script>',
    " & ",
    "'q'",
    '"',
    "</span>",
    "a\nb",
    "\x00\x07\r",
    " ↵ é",
]


class Spans(HTMLParser):
    """Collects (classes, attrs, text) of every token span and any tag that is not expected."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.spans: list[tuple[list[str], dict[str, str | None], str]] = []
        self._cur: list | None = None
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        d = dict(attrs)
        if tag == "span" and "t" in (d.get("class") or "").split():
            self._cur = [(d.get("class") or "").split(), d, ""]

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._cur is not None:
            self.spans.append(tuple(self._cur))  # type: ignore[arg-type]
            self._cur = None

    def handle_data(self, data: str) -> None:
        if self._cur is not None:
            self._cur[2] += data


def _sample(pieces: list[str]) -> SampleTokens:
    classes = [[PROMPT, KEPT, DROPPED][i % 3] for i in range(len(pieces))]
    vals = [None if c == PROMPT else 0.5 + i for i, c in enumerate(classes)]
    view = View(key='rho"<x>', round=None, run="r", run_dir=Path("."), scores=None, cleaned=Path("c"))
    return SampleTokens(view, 's"<1>&', pieces, classes, vals, vals, vals)


def test_esc_handles_markup_quotes_and_controls():
    s = page.esc('<a href="x">\'&\x00\n')
    assert "<" not in s and '"' not in s and "'" not in s and "\x00" not in s
    assert s == "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;\u2400\n"


def test_nasty_tokens_round_trip_with_classes_and_hover_data():
    s = _sample(NASTY)
    doc = page.render_page("t <&>", [{"run": "<r>"}], [], [], [s])
    p = Spans()
    p.feed(doc)
    tokens = [sp for sp in p.spans if "legend" not in sp[0]][3:]  # the legends' 3 example spans come first
    assert [t[2] for t in tokens] == [x.translate(page._CONTROL) for x in NASTY]
    expected = {PROMPT: "prompt", KEPT: "kept", DROPPED: "dropped"}
    assert [t[0][1] for t in tokens] == [expected[c] for c in s.classes]
    for (_, attrs, _), c, v in zip(tokens, s.classes, s.score):
        if c == PROMPT:
            assert "data-score" not in attrs
        else:
            assert attrs["data-base"] == f"{v:.4f}" and attrs["data-score"] == f"{v:+.4f}"
    assert p.tags.count("script") == 1  # only the page's own script; the token's <script> stays text
    assert 'data-method="rho&quot;&lt;x&gt;"' in doc and "s&quot;&lt;1&gt;&amp;" in doc


def test_newline_tokens_are_marked_visible():
    assert 'class="t kept nl"' in page.token_span("\n", KEPT, 1.0, 0.5, 0.5)
    assert "nl" not in page.token_span("\n", PROMPT, None, None, None)
    assert page.token_span("x", DROPPED, None, None, None).count('"n/a"') == 3  # not scored -> n/a


def test_page_is_self_contained_and_has_filters(tmp_path: Path):
    png = tmp_path / "f.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 20)
    fig = page.Figure(png, "a <figure>", "rho", 2)
    t = results_table({"base": {"eval": {"tasks": {"mmlu": {"value": 0.5}}}}})
    assert t is not None
    doc = page.render_page("title", [{"run": "x"}], [t], [fig], [_sample(["a", "b", "c"])], ["note <1>"])
    assert (
        'id="f-method"' in doc and 'id="f-round"' in doc and 'id="s-method"' in doc and 'id="s-round"' in doc
    )
    assert '<option value="2">round 2</option>' in doc
    assert 'data-method="rho" data-round="2"' in doc and 'src="data:image/png;base64,' in doc
    assert "note &lt;1&gt;" in doc
    urls = re.findall(r'(?:src|href)="([^"]*)"', doc)
    assert urls and all(u.startswith(("data:", "#")) for u in urls)  # nothing loaded from outside
    assert "@import" not in doc and "url(" not in doc


def test_legend_lists_only_what_the_samples_show():
    import dataclasses

    view = View(key="full", round=None, run="r", run_dir=Path("."), scores=None, cleaned=Path("c"))
    plain = SampleTokens(view, "s1", ["a", "b"], [PROMPT, KEPT], [None, 1.0], [None, 1.0], [None, 0.0])
    assert page.legend([plain]) == '<span class="t kept">kept</span> <span class="t prompt">prompt</span>'
    noisy = dataclasses.replace(plain, classes=[PROMPT, DROPPED], truth=[None, "noise:gibberish"])
    text = page.legend([plain, noisy])
    assert "dropped" in text and "truth: noise" in text
    assert "truth: informative" not in text and "weight" not in text
    soft = dataclasses.replace(plain, weight=[None, 0.4])
    assert "weight 0.3" in page.legend([soft])
