"""The parity matrix as one self-contained HTML page an operator can open offline or attach to a ticket.

Every string from the matrix passes through ``html.escape`` (quotes
included, since many land in attributes); the page loads nothing from
anywhere; and its Content-Security-Policy admits only the page's own style
and script by hash, so even a string that slipped past escaping could not
run. The per-cell details live in inert ``<template>`` elements the script
clones into a dialog: no matrix text is ever assembled into HTML or code in
the browser.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape
from typing import Any

from virtdrivers_conformance.matrix.evidence import EVIDENCE
from virtdrivers_conformance.matrix.model import (
    CellDict,
    ColumnDict,
    FeatureDict,
    MatrixView,
    backend_line,
    driver_line,
    duration_text,
    evidence_of,
    imitating_text,
    libraries_line,
)
from virtdrivers_conformance.matrix.outcomes import ATTENTION, OUTCOMES

__all__ = ["render_html"]

_TITLE_LIMIT = 1500
"""Tooltips longer than this are cut: the full text is one click away in the details dialog."""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _outcome_css() -> str:
    rules = []
    for o in OUTCOMES.values():
        rules.append(f".o-{o.id}{{color:{o.colour};background:{o.background}}}")
    for e in EVIDENCE.values():
        rules.append(f".ev-{e.label}{{color:{e.colour};background:{e.background}}}")
    return "\n".join(rules)


_STYLE = (
    """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--head:#f6f8fa;--area:#eef1f5;--accent:#0969da}
*{box-sizing:border-box}
body{margin:0;padding:20px 24px 40px;font:14px/1.45 system-ui,-apple-system,"Segoe UI","DejaVu Sans",sans-serif;
color:var(--fg);background:#fff}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:16px;margin:0 0 8px}
.meta{color:var(--muted);margin:0 0 16px}
.meta b{color:var(--fg);font-weight:600}
.toolbar{display:flex;flex-wrap:wrap;gap:12px 28px;align-items:flex-start;margin-bottom:16px}
#legend{border:1px solid var(--line);border-radius:8px;padding:10px 14px;background:#fff}
#legend ul{list-style:none;margin:0;padding:0;display:grid;grid-template-columns:auto auto 1fr;gap:4px 12px;
align-items:center}
#legend li{display:contents}
#legend .count{font-variant-numeric:tabular-nums;font-weight:600;text-align:right}
#legend .desc{color:var(--muted)}
#legend .notes{margin:8px 0 0;color:var(--muted);font-size:13px}
#legend h3{font-size:13px;margin:10px 0 4px}
#legend ul.evidence{grid-template-columns:auto auto 1fr}
.evb{display:inline-block;padding:0 7px;border-radius:10px;font-size:12px;font-weight:600;white-space:nowrap;
border:1px solid currentColor}
.col-imitates{font-size:12px;font-style:italic;overflow-wrap:anywhere}
.col-evidence{margin:2px 0}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;white-space:nowrap}
.sym{font-weight:700;margin-right:4px}
.filter{display:flex;gap:6px;align-items:center;color:var(--muted);padding-top:6px}
.errors{border:1px solid #ff8182;background:#fff5f5;border-radius:8px;padding:10px 14px;margin:0 0 16px;
max-width:1100px}
.errors h2{color:#a40e26}
.errors pre,dialog pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;border:1px solid var(--line);
border-radius:6px;padding:8px 10px;margin:4px 0 10px;font:12.5px/1.45 ui-monospace,"DejaVu Sans Mono",monospace;
max-height:50vh;overflow:auto}
table.matrix{border-collapse:separate;border-spacing:0;width:100%}
.matrix th,.matrix td{border-bottom:1px solid var(--line);padding:5px 10px;text-align:left;vertical-align:middle}
.matrix thead th{position:sticky;top:0;z-index:2;background:var(--head);vertical-align:bottom;
border-bottom:2px solid #afb8c1;min-width:140px;font-weight:400}
.matrix thead th.corner{left:0;z-index:3;min-width:290px}
.matrix th.feature{position:sticky;left:0;z-index:1;background:#fff;font-weight:400;min-width:290px;
max-width:400px;border-right:1px solid var(--line)}
.feature .ft{font-weight:600}
.feature .doc{display:block;color:var(--muted);font-size:12px;line-height:1.3}
.core{font-size:11px;color:var(--muted);border:1px solid var(--line);border-radius:8px;padding:0 5px;
margin-left:4px;vertical-align:1px}
.matrix tr.area th{background:var(--area);font-size:12px;font-weight:700;letter-spacing:.06em;
text-transform:uppercase;color:#424a53;padding:6px 10px;border-bottom:1px solid #c4ccd4}
.matrix tr.area th span{position:sticky;left:10px}
.col-id{font-weight:700;font-size:14px;color:var(--fg)}
.col-backend{font-weight:600}
.col-meta,.col-libs,.col-desc{color:var(--muted);font-size:12px;line-height:1.3;overflow-wrap:anywhere}
.col-err{color:#a40e26;font-size:12px;font-weight:600;margin-top:2px;overflow-wrap:anywhere}
th.errored{background:#fff5f5}
td.cell{padding:3px 6px;text-align:center;white-space:nowrap}
td.cell button{all:unset;box-sizing:border-box;display:block;width:100%;padding:3px 6px;border-radius:6px;
cursor:pointer;font-size:13px;text-align:center}
td.cell button:hover{outline:2px solid currentColor;outline-offset:-2px}
td.cell button:focus-visible{outline:3px solid var(--accent);outline-offset:1px}
td.o-declared_but_fails button,td.o-fails button{font-weight:700}
td.o-declared_but_fails button{box-shadow:inset 0 0 0 2px #bc4c00}
td.o-fails button{box-shadow:inset 0 0 0 2px #cf222e}
td.o-missing,td.o-error{color:var(--muted)}
td.o-error{background:repeating-linear-gradient(135deg,#fafbfc 0 6px,#f1f3f5 6px 12px);color:var(--muted);
font-size:12px}
tfoot td,tfoot th{font-size:12px;color:var(--muted);border-bottom:0;padding-top:8px}
tfoot .sum span{margin-right:6px;white-space:nowrap}
table.only-problems tr[data-problems="0"]{display:none}
dialog{border:1px solid var(--line);border-radius:10px;padding:0;width:min(900px,92vw);max-height:88vh;
box-shadow:0 12px 40px rgba(0,0,0,.25)}
dialog::backdrop{background:rgba(27,31,36,.45)}
dialog .dhead{display:flex;justify-content:space-between;align-items:center;gap:12px;padding:12px 16px;
border-bottom:1px solid var(--line);background:var(--head);position:sticky;top:0}
dialog .dbody{padding:12px 16px;overflow:auto}
dialog .close{font:inherit;padding:4px 12px;border-radius:6px;border:1px solid var(--line);background:#fff;
cursor:pointer}
dialog table{border-collapse:collapse;width:100%;margin-top:8px}
dialog td,dialog th{border-top:1px solid var(--line);padding:6px 8px;text-align:left;vertical-align:top}
dialog td.tid{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px;overflow-wrap:anywhere}
dialog .what{color:var(--muted);margin:4px 0 8px}
"""
    + _outcome_css()
    + "\n"
)

_SCRIPT = """
(function () {
  "use strict";
  var dialog = document.getElementById("details");
  var body = document.getElementById("details-body");
  var title = document.getElementById("details-title");
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-details]");
    if (!button) { return; }
    var template = document.getElementById(button.getAttribute("data-details"));
    body.replaceChildren(template.content.cloneNode(true));
    title.textContent = button.getAttribute("data-heading");
    dialog.showModal();
  });
  dialog.addEventListener("click", function (event) {
    if (event.target === dialog) { dialog.close(); }
  });
  document.getElementById("details-close").addEventListener("click", function () { dialog.close(); });
  var filter = document.getElementById("only-problems");
  filter.addEventListener("change", function () {
    document.getElementById("matrix").classList.toggle("only-problems", filter.checked);
  });
})();
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


_CSP = (
    f"default-src 'none'; style-src {_sha256(_STYLE)}; script-src {_sha256(_SCRIPT)};"
    " img-src data:; base-uri 'none'; form-action 'none'"
)


def _badge(outcome_id: str) -> str:
    o = OUTCOMES[outcome_id]
    return f'<span class="badge o-{o.id}"><span class="sym" aria-hidden="true">{o.symbol}</span>{_e(o.label)}</span>'


def _evidence_badge(column: ColumnDict) -> str:
    level = evidence_of(column)
    if level is None:
        if column["error"]:
            return ""
        return '<div class="col-evidence"><span class="evb" data-evidence="unknown">evidence unknown</span></div>'
    e = EVIDENCE[level]
    return (
        f'<div class="col-evidence"><span class="evb ev-{e.label}" data-evidence="{e.label}"'
        f' title="{_e(e.description)}">{_e(e.label)}</span></div>'
    )


def _legend(view: MatrixView) -> str:
    counts = view.counts()
    items = "".join(
        f'<li data-outcome="{o.id}">{_badge(o.id)}<span class="count">{counts[o.id]}</span>'
        f'<span class="desc">{_e(o.description)}</span></li>'
        for o in OUTCOMES.values()
    )
    levels = [evidence_of(c) for c in view.columns]
    evidence = "".join(
        f'<li data-evidence="{e.label}"><span class="evb ev-{e.label}">{_e(e.label)}</span>'
        f'<span class="count" title="columns">{levels.count(e.level)}</span>'
        f'<span class="desc">{_e(e.description)}</span></li>'
        for e in EVIDENCE.values()
    )
    return (
        '<section id="legend" aria-label="Legend"><h2>Legend</h2>'
        f"<ul>{items}</ul>"
        '<p class="notes">— no test of the feature ran · <span class="core">core</span> mandatory feature every'
        " driver must pass · click a cell for its tests and messages</p>"
        '<h3 id="evidence-legend">Evidence: how real the peer that answered a column is</h3>'
        f'<ul class="evidence">{evidence}</ul>'
        '<p class="notes">A simulator\'s column names the simulator as its backend and, separately, what it is'
        " imitating: its results are that simulator's reading of the product, not the product's.</p></section>"
    )


def _errors(view: MatrixView) -> str:
    errored = view.errored()
    if not errored:
        return ""
    items = "".join(f"<h3>{_e(c['id'])}</h3><pre>{_e(c['error'])}</pre>" for c in errored)
    return f'<section class="errors" id="column-errors"><h2>Columns that did not run</h2>{items}</section>'


def _column_header(column: ColumnDict, contract: str) -> str:
    parts = [
        f'<div class="col-id">{_e(column["id"])}</div>',
        f'<div class="col-backend">{_e(backend_line(column))}</div>' if column["backend"] else "",
    ]
    imitating = imitating_text(column)
    if imitating:
        parts.append(f'<div class="col-imitates">{_e(imitating)}</div>')
    parts += [_evidence_badge(column), f'<div class="col-meta">{_e(driver_line(column, contract))}</div>']
    libraries = libraries_line(column)
    if libraries:
        parts.append(f'<div class="col-libs">{_e(libraries)}</div>')
    meta = " · ".join(p for p in (column["endpoint_description"], duration_text(column["duration_s"])) if p)
    if meta:
        parts.append(f'<div class="col-desc">{_e(meta)}</div>')
    cls = ""
    if column["error"]:
        first = column["error"].strip().splitlines()[0] if column["error"].strip() else "error"
        if len(first) > 90:
            first = first[:90] + "…"
        parts.append(f'<div class="col-err" title="{_e(column["error"])}">did not run: {_e(first)}</div>')
        cls = ' class="errored"'
    evidence = evidence_of(column)
    level = f' data-evidence="{evidence.value}"' if evidence is not None else ""
    return f'<th scope="col"{cls} data-column="{_e(column["id"])}"{level}>{"".join(parts)}</th>'


def _tooltip(cell: CellDict) -> str:
    o = OUTCOMES[cell["outcome"]]
    text = f"{o.label}: {cell['message']}" if cell["message"] else f"{o.label}: {o.description}"
    if cell.get("note"):
        text += f" (simulated: {cell.get('note')})"
    return text if len(text) <= _TITLE_LIMIT else text[:_TITLE_LIMIT] + "… (click for the full text)"


_TEST_OUTCOMES = {"passed": "passes", "failed": "fails", "skipped": "not_declared"}
"""Which cell outcome's colours and symbol a single test's outcome borrows."""


def _test_outcome(outcome: str) -> str:
    o = OUTCOMES[_TEST_OUTCOMES[outcome]]
    return f'<span class="badge o-{o.id}"><span class="sym" aria-hidden="true">{o.symbol}</span>{_e(outcome)}</span>'


def _details(template_id: str, column: ColumnDict, feature: FeatureDict, cell: CellDict) -> str:
    o = OUTCOMES[cell["outcome"]]
    rows = "".join(
        f'<tr><td class="tid">{_e(t["id"])}</td><td>{_test_outcome(t["outcome"])}</td>'
        f"<td>{_e(duration_text(t['duration_s']))}</td></tr>"
        + (f'<tr><td colspan="3"><pre>{_e(t["message"])}</pre></td></tr>' if t["message"] else "")
        for t in cell["tests"]
    )
    capability = f"capability <code>{_e(feature['capability'])}</code>" if feature["capability"] else "mandatory"
    shown = {t["message"] for t in cell["tests"]}
    message = f"<pre>{_e(cell['message'])}</pre>" if cell["message"] and cell["message"] not in shown else ""
    return (
        f'<template id="{template_id}"><p>{_badge(o.id)}</p>'
        f'<p class="what">{_e(o.description)}</p>'
        f"<p>{_e(feature['doc'])} ({capability})</p>{message}"
        + (f'<p class="note">Evidence note: {_e(cell.get("note") or "")}</p>' if cell.get("note") else "")
        + f"<table><thead><tr><th>Test</th><th>Outcome</th><th>Took</th></tr></thead><tbody>{rows}</tbody></table>"
        + "</template>"
    )


def _cell(view: MatrixView, column: ColumnDict, feature: FeatureDict, templates: list[str]) -> tuple[str, bool]:
    hooks = f'data-column="{_e(column["id"])}" data-feature="{_e(feature["id"])}"'
    if column["error"]:
        error = _e(column["error"])
        return f'<td class="cell o-error" data-outcome="error" {hooks} title="{error}">not run</td>', False
    cell = view.cell(column["id"], feature["id"])
    if cell is None:
        return f'<td class="cell o-missing" data-outcome="missing" {hooks} title="no test of this ran">—</td>', False
    o = OUTCOMES[cell["outcome"]]
    template_id = f"d{len(templates)}"
    templates.append(_details(template_id, column, feature, cell))
    heading = f"{column['id']} · {feature['title']}"
    html = (
        f'<td class="cell o-{o.id}" data-outcome="{o.id}" {hooks} title="{_e(_tooltip(cell))}">'
        f'<button type="button" data-details="{template_id}" data-heading="{_e(heading)}">'
        f'<span class="sym" aria-hidden="true">{o.symbol}</span><span class="label">{_e(o.label)}</span>'
        + (
            '<span class="noted" title="earned against simulated behaviour: see the note">†</span>'
            if cell.get("note")
            else ""
        )
        + "</button></td>"
    )
    return html, o.id in ATTENTION


def _table(view: MatrixView, templates: list[str]) -> str:
    columns = view.columns
    head = "".join(_column_header(c, view.data["contract_version"]) for c in columns)
    body: list[str] = []
    for area, features in view.grouped():
        body.append(
            f'<tr class="area" data-area="{_e(area["id"])}"><th colspan="{len(columns) + 1}" scope="colgroup">'
            f"<span>{_e(area['title'])}</span></th></tr>"
        )
        for feature in features:
            cells = [_cell(view, c, feature, templates) for c in columns]
            problems = sum(1 for _, p in cells if p)
            core = ' <span class="core">core</span>' if feature["mandatory"] else ""
            body.append(
                f'<tr data-feature="{_e(feature["id"])}" data-problems="{problems}">'
                f'<th scope="row" class="feature" title="{_e(feature["doc"])}"><span class="ft">{_e(feature["title"])}'
                f'</span>{core}<span class="doc">{_e(feature["doc"])}</span></th>'
                + "".join(html for html, _ in cells)
                + "</tr>"
            )
    sums = []
    for c in columns:
        counts = view.column_counts(c["id"])
        text = "".join(
            f'<span class="o-{k}" title="{_e(OUTCOMES[k].label)}">{OUTCOMES[k].symbol} {n}</span>'
            for k, n in counts.items()
            if n
        )
        sums.append(f'<td class="sum">{text or "—"}</td>')
    foot = f'<tfoot><tr><th scope="row">Totals</th>{"".join(sums)}</tr></tfoot>'
    return (
        '<table class="matrix" id="matrix"><thead><tr><th scope="col" class="corner">Feature</th>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody>{foot}</table>"
    )


def render_html(matrix: dict[str, Any]) -> str:
    """The whole page; ``data-outcome``/``data-column``/``data-feature`` on cells and ``#legend`` are stable hooks."""
    view = MatrixView.of(matrix)
    templates: list[str] = []
    table = _table(view, templates)
    meta = (
        f"Generated <b>{_e(matrix['generated_at'])}</b> · virtdrivers <b>{_e(matrix['virtdrivers_version'])}</b>"
        f" · contract <b>{_e(matrix['contract_version'])}</b> · {len(view.columns)} columns,"
        f" {len(matrix['features'])} features · from test results, not typed by hand"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">
<title>virtdrivers feature parity</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
<h1>virtdrivers feature parity</h1>
<p class="meta">{meta}</p>
</header>
<div class="toolbar">
{_legend(view)}
<label class="filter"><input type="checkbox" id="only-problems"> Only rows that need attention</label>
</div>
{_errors(view)}
<main>
{table}
</main>
{"".join(templates)}
<dialog id="details" aria-labelledby="details-title">
<div class="dhead"><h2 id="details-title"></h2>
<button type="button" class="close" id="details-close">Close</button></div>
<div class="dbody" id="details-body"></div>
</dialog>
<script>{_SCRIPT}</script>
</body>
</html>
"""
