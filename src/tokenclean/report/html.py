"""The self-contained report page: tables, embedded figures and token-highlighted samples in one HTML file.

Offline by construction: no external scripts, styles, fonts or images (figures are ``data:`` URIs); a few
lines of inline JavaScript filter samples and figures by method and round and show a tooltip with a token's
base loss, reference loss and score (also kept in ``data-base``/``data-ref``/``data-score`` attributes).
Every piece of text goes through :func:`esc`: tokens can hold ``<``, ``&``, quotes, newlines and control
characters.

Token classes are the CSS classes ``t kept``, ``t dropped`` and ``t prompt`` (see
:mod:`tokenclean.report.inspect`). Soft methods (a ``weights`` column; DFT's counted weights) add ``w`` with
``--w`` = the token's training weight, which sets the strength of its green; online methods show the tokens
they counted in their last epoch as kept ("counted") and the rest as dropped; ``data-weight`` holds the weight; a preset filter can be given in the URL: ``index.html#method=rho&round=2``.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenclean.report.inspect import DROPPED, KEPT, PROMPT
from tokenclean.report.tables import Table, fmt_value, method_label
from tokenclean.report.tokens import SampleTokens

CLASS_NAMES = {PROMPT: "prompt", KEPT: "kept", DROPPED: "dropped"}
_CONTROL = {c: chr(0x2400 + c) for c in range(32) if c not in (9, 10)}  # visible control pictures
_CONTROL[127] = "\u2421"


@dataclass(frozen=True)
class Figure:
    """A figure file to embed; ``method``/``round`` make it follow the filters (None: always shown)."""

    path: Path
    caption: str
    method: str | None = None
    round: int | None = None


def esc(text: object) -> str:
    """Text safe for HTML content and double- or single-quoted attributes; control characters made visible."""
    return html.escape(str(text).translate(_CONTROL), quote=True)


def _num(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def table_html(t: Table) -> str:
    head = "".join(f"<th>{esc(c.label)}</th>" for c in t.columns)
    body = []
    for r in t.rows:
        cells = []
        for c in t.columns:
            s = esc(fmt_value(r.values[c.key], c, r.intervals.get(c.key))) + (
                "*" if c.key in r.partial else ""
            )
            cells.append(f'<td class="best"><strong>{s}</strong></td>' if r.best[c.key] else f"<td>{s}</td>")
        body.append(f'<tr data-key="{esc(r.key)}"><th scope="row">{esc(r.label)}</th>{"".join(cells)}</tr>')
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in t.notes)
    return (
        f'<div class="table-wrap"><table class="tbl" id="table-{esc(t.name)}"><caption>{esc(t.title)}</caption>'
        f"<thead><tr><th>Method</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{notes}</div>"
    )


def figure_html(f: Figure) -> str:
    svg, png = f.path.with_suffix(".svg"), f.path.with_suffix(".png")
    src = svg if svg.is_file() else png
    mime = "image/svg+xml" if src.suffix == ".svg" else "image/png"
    data = base64.b64encode(src.read_bytes()).decode("ascii")
    attrs = ""
    if f.method is not None:
        rnd = "" if f.round is None else str(f.round)
        attrs = f' data-method="{esc(f.method)}" data-round="{esc(rnd)}"'
    cls = "plot filterable" if f.method is not None else "plot"
    return (
        f'<figure class="{cls}"{attrs}><img alt="{esc(f.caption)}" src="data:{mime};base64,{data}">'
        f"<figcaption>{esc(f.caption)}</figcaption></figure>"
    )


def _truth_class(label: str) -> str:
    head = label.split(":", 1)[0]
    return (
        "tr-noise"
        if head in ("noise", "hallucination")
        else "tr-info"
        if head == "informative"
        else "tr-other"
    )


def token_span(
    piece: str,
    cls: int,
    base: float | None,
    ref: float | None,
    score: float | None,
    truth: str | None = None,
    weight: float | None = None,
    shade: bool = False,
) -> str:
    """One token as a span: its class (kept/dropped/prompt), truth label, and for soft methods (``shade``)
    a green background whose strength is the token's training weight (``--w``)."""
    names = ["t", CLASS_NAMES[cls]]
    if truth is not None:
        names.append(_truth_class(truth))
    if piece and not piece.strip() and "\n" in piece and cls != PROMPT:
        names.append("nl")  # a visible mark, so a highlighted newline token can be seen
    attrs = ""
    if cls != PROMPT or score is not None:
        attrs = f' data-base="{_num(base)}" data-ref="{_num(ref)}" data-score="{_num(score, True)}"'
    if weight is not None:
        attrs += f' data-weight="{weight:.3f}"'
        if shade:
            names.append("w")
            attrs += f' style="--w:{min(max(weight, 0.0), 1.0):.3f}"'
    if truth is not None:
        attrs += f' data-truth="{esc(truth)}" title="truth: {esc(truth)}"'
    return f'<span class="{" ".join(names)}"{attrs}>{esc(piece)}</span>'


def _soft(s: SampleTokens) -> bool:
    """Shade by weight when some weight lies strictly between 0 and 1 (soft Token Cleaning, DFT)."""
    return s.weight is not None and any(w is not None and 0.0 < w < 1.0 for w in s.weight)


def sample_html(s: SampleTokens) -> str:
    truth = s.truth or [None] * len(s.pieces)
    weight = s.weight or [None] * len(s.pieces)
    shade = _soft(s)
    spans = "".join(
        token_span(p, c, b, r, sc, tr, w, shade)
        for p, c, b, r, sc, tr, w in zip(s.pieces, s.classes, s.base, s.ref, s.score, truth, weight)
    )
    n_k, n_d, n_p = (s.classes.count(c) for c in (KEPT, DROPPED, PROMPT))
    rnd = "" if s.view.round is None else str(s.view.round)
    where = method_label(s.view.key) + (f", round {rnd}" if rnd else "")
    more = f'<span class="more">… {s.n_hidden} more tokens not shown</span>' if s.n_hidden else ""
    if s.weighting == "counted":
        counts = f"counted {n_k} · not counted {n_d} · prompt {n_p} (last epoch)"
    else:
        counts = f"kept {n_k} · dropped {n_d} · prompt {n_p}"
    if shade:
        ws = [w for w in weight if w is not None]
        counts += f" · mean weight {sum(ws) / max(len(ws), 1):.2f} (shade = weight)"
    return (
        f'<article class="sample filterable" data-method="{esc(s.view.key)}" data-round="{esc(rnd)}" '
        f'data-sample-id="{esc(s.sample_id)}"><h3>{esc(where)} <span class="sid">{esc(s.sample_id)}</span>'
        f'<span class="counts">{counts}</span></h3>'
        f'<div class="tokens">{spans}{more}</div></article>'
    )


def _select(id_: str, label: str, all_label: str, options: Sequence[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{esc(v)}">{esc(t)}</option>' for v, t in options)
    return f'<label>{esc(label)} <select id="{id_}"><option value="">{esc(all_label)}</option>{opts}</select></label>'


def legend(samples: Sequence[SampleTokens]) -> str:
    """Legend entries for what the page's samples show: dropped tokens, soft weights and truth labels only
    when some sample has them."""
    classes = {c for s in samples for c in s.classes}
    parts = ['<span class="t kept">kept</span>']
    if DROPPED in classes:
        parts.append('<span class="t dropped">dropped</span>')
    parts.append('<span class="t prompt">prompt</span>')
    if any(_soft(s) for s in samples):
        parts.append(
            '<span class="w" style="--w:.3">weight 0.3</span> <span class="w" style="--w:.9">0.9</span>'
        )
    labels = {t for s in samples for t in (s.truth or []) if t is not None}
    if any(_truth_class(t) == "tr-info" for t in labels):
        parts.append('<i class="tr-info">truth: informative</i>')
    if any(_truth_class(t) == "tr-noise" for t in labels):
        parts.append('<i class="tr-noise">truth: noise</i>')
    return " ".join(parts)


def render_page(
    title: str,
    meta: Sequence[Mapping[str, object]],
    tables: Sequence[Table],
    figures: Sequence[Figure],
    samples: Sequence[SampleTokens],
    notices: Sequence[str] = (),
) -> str:
    """The whole page as a string; ``notices`` (e.g. a view whose data could not be read) are listed on top."""
    methods = list(dict.fromkeys([s.view.key for s in samples] + [f.method for f in figures if f.method]))
    rounds = sorted(
        {r for r in [s.view.round for s in samples] + [f.round for f in figures] if r is not None}
    )
    filters = (
        '<div class="filters">'
        + _select("f-method", "Method", "all methods", [(m, method_label(m)) for m in methods])
        + _select("f-round", "Round", "all rounds", [(str(r), f"round {r}") for r in rounds])
        + f'<span id="f-count"></span><span class="legend">{legend(samples)}</span></div>'
    )
    meta_html = "".join(
        "<li>"
        + " · ".join(f"<b>{esc(k)}</b> {esc(v)}" for k, v in m.items() if v not in (None, ""))
        + "</li>"
        for m in meta
    )
    sample_filters = filters.replace(' id="f-', ' id="s-')
    fixed = [f for f in figures if f.method is None]
    per_view = [f for f in figures if f.method is not None]
    sections = [
        f'<section id="tables"><h2>Tables</h2>{"".join(map(table_html, tables)) or _empty("no results in summary.json")}</section>',
        '<section id="figures"><h2>Figures</h2>'
        + (f'<div class="grid">{"".join(map(figure_html, fixed))}</div>' if fixed else "")
        + (
            f'<h3>Per method and round</h3>{filters}<div class="grid">{"".join(map(figure_html, per_view))}</div>'
            if per_view
            else ""
        )
        + ("" if figures else _empty("no data for figures"))
        + "</section>",
        '<section id="samples"><h2>Samples</h2><p class="note">Hover a token for its base loss, reference loss and '
        f"score.</p>{sample_filters}"
        + ("".join(map(sample_html, samples)) or _empty("no cleaned datasets in this run"))
        + "</section>",
    ]
    if notices:
        items = "".join(f"<li>{esc(n)}</li>" for n in notices)
        sections.insert(
            0, f'<section id="notices"><h2>Notices</h2><ul class="notices">{items}</ul></section>'
        )
    nav = "".join(
        f'<a href="#{a}">{t}</a>'
        for a, t in (("tables", "Tables"), ("figures", "Figures"), ("samples", "Samples"))
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{esc(title)}</h1><ul class="meta">{meta_html}</ul><nav>{nav}</nav></header>'
        f'<main>{"".join(sections)}</main><div id="tip" role="tooltip" hidden></div>'
        f"<script>{JS}</script></body></html>\n"
    )


def _empty(msg: str) -> str:
    return f'<p class="empty">{esc(msg)}</p>'


CSS = """
:root{--kept:#b7ebc0;--kept-b:#1a9850;--drop:#f9c6c6;--drop-t:#b2182b;--prompt:#8a8f98;--bg:#fff;--fg:#1d2129}
*{box-sizing:border-box}body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:#f6f7f9}
header{background:#1d2b3a;color:#fff;padding:14px 28px}header h1{margin:0 0 4px;font-size:22px}
.meta{list-style:none;margin:0;padding:0;font-size:13px;color:#cfd8e3}.meta b{color:#fff;font-weight:600}
nav a{color:#9cd3ff;margin-right:16px;font-size:14px;text-decoration:none}
main{padding:10px 28px 40px;max-width:1400px}section{margin-top:18px}h2{font-size:19px;border-bottom:2px solid #d9dee5;padding-bottom:4px}
.table-wrap{overflow-x:auto;margin-bottom:18px}
.tbl{border-collapse:collapse;background:var(--bg);font-size:14px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.tbl caption{text-align:left;font-weight:600;padding:4px 0}.tbl th,.tbl td{padding:5px 12px;border-bottom:1px solid #e4e7eb;text-align:right;white-space:nowrap}
.tbl thead th{background:#eef1f5;text-align:right}.tbl th[scope=row],.tbl thead th:first-child{text-align:left}
.tbl td.best{background:#e7f6ea}.notices{color:#8a4b00}.note,.empty{font-size:12.5px;color:#5b6470;margin:3px 0}
.grid{display:flex;flex-wrap:wrap;gap:14px}.plot{margin:0;background:#fff;padding:8px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.plot img{max-width:100%;height:auto;display:block}.plot figcaption{font-size:12.5px;color:#5b6470}
.filters{display:flex;gap:18px;align-items:center;flex-wrap:wrap;margin:8px 0 12px;font-size:14px}
.filters select{font:inherit;padding:2px 6px}#f-count,#s-count{color:#5b6470;font-size:13px}.legend .t,.legend .w{padding:1px 6px}
.sample{background:#fff;margin:0 0 12px;padding:10px 14px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.sample h3{font-size:14px;margin:0 0 6px;display:flex;gap:12px;align-items:baseline}
.sid{font:12px ui-monospace,"DejaVu Sans Mono",monospace;color:#5b6470}.counts{font-weight:400;font-size:12.5px;color:#5b6470;margin-left:auto}
.tokens{font:13.5px/1.75 ui-monospace,"DejaVu Sans Mono",monospace;white-space:pre-wrap;word-break:break-word}
.t.prompt{color:var(--prompt)}.t.kept{background:var(--kept);border-bottom:2px solid var(--kept-b)}
.t.dropped{background:var(--drop);color:var(--drop-t);text-decoration:line-through}
.t.kept+.t.kept,.t.dropped+.t.dropped{box-shadow:inset 1px 0 0 rgba(255,255,255,.9)}
.t.w,.legend .w{background:rgba(26,152,80,calc(.08 + .62 * var(--w)));border-bottom:2px solid rgba(26,152,80,var(--w))}
.tr-noise{border-top:2px dotted #c0392b}.tr-info{border-top:2px solid #2e86c1}i.tr-info,i.tr-noise{font-style:normal}
.t.nl::before{content:"\\21B5";opacity:.6}.t[data-score]:hover{outline:1px solid #333}.more{color:#5b6470;font-style:italic}
#tip{position:fixed;z-index:10;background:#1d2b3a;color:#fff;font:12.5px/1.45 ui-monospace,"DejaVu Sans Mono",monospace;
padding:6px 9px;border-radius:4px;pointer-events:none;white-space:pre;box-shadow:0 2px 6px rgba(0,0,0,.3)}
[hidden]{display:none!important}
"""

JS = """
(function(){
  "use strict";
  var pairs=[["f-method","f-round","f-count"],["s-method","s-round","s-count"]];
  function apply(ids){
    var m=document.getElementById(ids[0]),r=document.getElementById(ids[1]);
    if(!m||!r)return;
    var scope=m.closest("section"),shown=0,total=0;
    scope.querySelectorAll(".filterable").forEach(function(el){
      var ok=(m.value===""||el.dataset.method===m.value)&&(r.value===""||el.dataset.round===r.value);
      el.hidden=!ok;total++;if(ok)shown++;
    });
    var c=document.getElementById(ids[2]);if(c)c.textContent=shown+" of "+total+" shown";
  }
  function preset(){
    var q={};location.hash.replace(/^#/,"").split("&").forEach(function(kv){
      var i=kv.indexOf("=");if(i>0)q[decodeURIComponent(kv.slice(0,i))]=decodeURIComponent(kv.slice(i+1));});
    pairs.forEach(function(ids){
      [["method",0],["round",1]].forEach(function(k){
        var s=document.getElementById(ids[k[1]]);
        if(s&&q[k[0]]!==undefined&&Array.prototype.some.call(s.options,function(o){return o.value===q[k[0]];}))s.value=q[k[0]];
      });apply(ids);});
  }
  pairs.forEach(function(ids){
    [ids[0],ids[1]].forEach(function(id){var s=document.getElementById(id);if(s)s.addEventListener("change",function(){apply(ids);});});
  });
  window.addEventListener("hashchange",preset);preset();
  var tip=document.getElementById("tip");
  document.addEventListener("mouseover",function(e){
    var t=e.target.closest?e.target.closest(".t[data-score]"):null;
    if(!t||!t.closest(".tokens")){tip.hidden=true;return;}
    var kind=t.classList.contains("kept")?"kept":(t.classList.contains("dropped")?"dropped":"prompt");
    tip.textContent="token      "+JSON.stringify(t.textContent)+"\\n"+kind+"\\nbase loss  "+t.dataset.base+
      "\\nref loss   "+t.dataset.ref+"\\nscore      "+t.dataset.score+
      (t.dataset.weight!==undefined?"\\nweight     "+t.dataset.weight:"");
    var b=t.getBoundingClientRect();tip.hidden=false;
    var x=Math.min(b.left,window.innerWidth-tip.offsetWidth-8),y=b.bottom+6;
    if(y+tip.offsetHeight>window.innerHeight)y=b.top-tip.offsetHeight-6;
    tip.style.left=Math.max(4,x)+"px";tip.style.top=y+"px";
  });
})();
"""
