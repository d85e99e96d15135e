"""The parity matrix as GitHub-flavoured Markdown, for READMEs, release notes and PR comments.

Table cells escape every character that Markdown or the HTML it allows could
act on (``|`` would split the cell, ``<`` could open a tag), so a hostile
failure message shows up as text. Full messages go in fenced blocks whose
fence is longer than any backtick run inside them, where nothing needs
escaping.
"""

from __future__ import annotations

import re
from typing import Any

from virtdrivers_conformance.matrix.evidence import EVIDENCE
from virtdrivers_conformance.matrix.model import (
    CellDict,
    ColumnDict,
    MatrixView,
    backend_line,
    driver_line,
    duration_text,
    evidence_of,
    imitating_text,
    libraries_line,
)
from virtdrivers_conformance.matrix.outcomes import OUTCOMES

__all__ = ["escape", "fenced", "render_markdown"]

_ENTITIES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_PUNCTUATION = re.compile(r"([\\`*_\[\]|~])")


def escape(text: str) -> str:
    """Inline text safe in a table cell or heading: entities for HTML, backslashes for Markdown, one line."""
    one_line = " ".join(text.split())
    return _PUNCTUATION.sub(r"\\\1", one_line.translate(_ENTITIES))


def fenced(text: str, info: str = "text") -> str:
    """``text`` verbatim in a code fence no backtick run inside it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text.rstrip()}\n{fence}"


def _cell(cell: CellDict | None, column: ColumnDict) -> str:
    if column["error"]:
        return "not run"
    if cell is None:
        return "—"
    outcome = OUTCOMES[cell["outcome"]]
    return f"{outcome.symbol} {outcome.label}" + (" †" if cell.get("note") else "")


def _evidence(column: ColumnDict) -> str:
    level = evidence_of(column)
    if level is not None:
        return level.value
    return "—" if column["error"] else "unknown"


def _backend(column: ColumnDict) -> str:
    """The backend, then what it imitates: a simulator's column must never read as the product itself."""
    imitating = imitating_text(column)
    return escape(backend_line(column)) + (f", *{escape(imitating)}*" if imitating else "")


def _header(column: ColumnDict) -> str:
    imitating = imitating_text(column)
    lines = [f"**{escape(column['id'])}**", escape(backend_line(column))]
    if imitating:
        lines.append(f"*{escape(imitating)}*")
    if evidence_of(column) is not None or not column["error"]:
        lines.append(f"evidence: {_evidence(column)}")
    return "<br>".join(lines)


def _columns_table(view: MatrixView) -> list[str]:
    lines = [
        "| Column | Endpoint | Backend | Evidence | Driver | Libraries | Declared | Took |",
        "| --- | --- | --- | --- | --- | --- | ---: | ---: |",
    ]
    for c in view.columns:
        status = f"**error**: {escape(c['error'])}" if c["error"] else escape(c["endpoint_description"])
        lines.append(
            f"| {escape(c['id'])} | {status} | {_backend(c)} | {_evidence(c)} | {escape(driver_line(c))}"
            f" | {escape(libraries_line(c)) or '—'} | {len(c['declared'])} | {duration_text(c['duration_s']) or '—'} |"
        )
    return lines


def _matrix_table(view: MatrixView) -> list[str]:
    cols = view.columns
    lines = [
        "| Feature | " + " | ".join(_header(c) for c in cols) + " |",
        "| --- |" + " :---: |" * len(cols),
    ]
    for area, features in view.grouped():
        lines.append(f"| **{escape(area['title'])}** |" + " |" * len(cols))
        for feat in features:
            title = escape(feat["title"]) + (" \\*" if feat["mandatory"] else "")
            cells = " | ".join(_cell(view.cell(c["id"], feat["id"]), c) for c in cols)
            lines.append(f"| {title} | {cells} |")
    return lines


def _legend(view: MatrixView) -> list[str]:
    counts = view.counts()
    lines = ["| Outcome | Cells | Meaning |", "| --- | ---: | --- |"]
    for o in OUTCOMES.values():
        lines.append(f"| {o.symbol} {o.label} | {counts[o.id]} | {escape(o.description)} |")
    lines += ["", "— no test of the feature ran; \\* a mandatory core feature every driver must pass."]
    levels = [evidence_of(c) for c in view.columns]
    lines += ["", "| Evidence | Columns | Meaning |", "| --- | ---: | --- |"]
    for style in EVIDENCE.values():
        lines.append(f"| {style.label} | {levels.count(style.level)} | {escape(style.description)} |")
    lines += [
        "",
        "Evidence says how real the peer that answered a column is; a simulator's column names the simulator"
        " as its backend and the product it imitates separately.",
    ]
    return lines


def _notes(view: MatrixView) -> list[str]:
    """Every cell a simulated behaviour earned, with how: a reader must not take it for the product's."""
    noted = view.noted()
    if not noted:
        return []
    lines = ["## Evidence notes", "", "† marks a cell earned against simulated behaviour; how, per cell:", ""]
    lines += [f"- **{escape(c['id'])} · {escape(f['title'])}**: {escape(note)}" for c, f, note in noted]
    return [*lines, ""]


def _failures(view: MatrixView) -> list[str]:
    lines: list[str] = ["## Failures", ""]
    found = view.attention()
    errored = view.errored()
    if not found and not errored:
        return [*lines, "None: every declaration matches what the driver does.", ""]
    for column in errored:
        lines += [f"### {escape(column['id'])}: did not run", "", fenced(column["error"] or ""), ""]
    for column, feat, cell in found:
        outcome = OUTCOMES[cell["outcome"]]
        lines += [f"### {outcome.symbol} {escape(column['id'])} · {escape(feat['title'])}: {outcome.label}", ""]
        lines += [f"{escape(outcome.description)}", ""]
        if cell["message"]:
            lines += [fenced(cell["message"]), ""]
        for test in cell["tests"]:
            lines.append(f"- {escape(test['id'])}: {escape(test['outcome'])}")
        lines.append("")
    return lines


def render_markdown(matrix: dict[str, Any]) -> str:
    """The whole report: header, columns, the matrix, the legend, then every failing or lying cell."""
    view = MatrixView.of(matrix)
    header = (
        f"Generated {escape(matrix['generated_at'])} by virtdrivers {escape(matrix['virtdrivers_version'])}"
        f" against contract {escape(matrix['contract_version'])}:"
        f" {len(view.columns)} columns, {len(matrix['features'])} features."
        " Generated from test results, not typed by hand: see `parity.json` for the source of truth."
    )
    lines = [
        "# virtdrivers feature parity",
        "",
        header,
        "",
        "## Columns",
        "",
        *_columns_table(view),
        "",
        "## Matrix",
        "",
        *_matrix_table(view),
        "",
        "## Legend",
        "",
        *_legend(view),
        "",
        *_notes(view),
        *_failures(view),
    ]
    return "\n".join(lines).rstrip() + "\n"
