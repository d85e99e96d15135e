"""The parity-matrix schema and its Markdown, terminal and HTML renderers, without a browser."""

from __future__ import annotations

import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import matrix_sample as sample  # registered by conftest.py
import pytest
from rich.console import Console

from virtdrivers_conformance.matrix import OUTCOMES, SCHEMA_PATH, render_text, validate, write_all
from virtdrivers_conformance.matrix.html import render_html
from virtdrivers_conformance.matrix.markdown import escape, fenced, render_markdown
from virtdrivers_conformance.matrix.terminal import render_terminal


@pytest.fixture
def matrix() -> dict[str, Any]:
    return sample.sample_matrix()


# --- the sample itself -------------------------------------------------------------------------------------------


def test_sample_covers_every_rendering_path(matrix: dict[str, Any]) -> None:
    outcomes = {c["outcome"] for c in matrix["cells"]}
    assert outcomes == set(OUTCOMES)
    assert any(c["error"] for c in matrix["columns"])
    ran = [c["id"] for c in matrix["columns"] if not c["error"]]
    present = {(c["column"], c["feature"]) for c in matrix["cells"]}
    assert any((col, f["id"]) not in present for col in ran for f in matrix["features"]), "no missing cell"


# --- schema and validate() ----------------------------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert SCHEMA_PATH.parent.name == "matrix", "the schema must ship inside the package"


def test_sample_is_valid(matrix: dict[str, Any]) -> None:
    validate(matrix)
    jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).validate(matrix)


def _bad_outcome(m: dict[str, Any]) -> None:
    m["cells"][3]["outcome"] = "mostly_works"


def _extra_key(m: dict[str, Any]) -> None:
    m["columns"][1]["colour"] = "red"


def _missing_key(m: dict[str, Any]) -> None:
    del m["cells"][0]["tests"][0]["duration_s"]


def _bad_test_outcome(m: dict[str, Any]) -> None:
    m["cells"][5]["tests"][0]["outcome"] = "xfailed"


def _bad_format(m: dict[str, Any]) -> None:
    m["format"] = "nova-support-matrix"


def _unknown_column(m: dict[str, Any]) -> None:
    m["cells"][2]["column"] = "nobody@nowhere"


def _unknown_feature(m: dict[str, Any]) -> None:
    m["cells"][4]["feature"] = "teleport"


def _cell_on_errored_column(m: dict[str, Any]) -> None:
    m["cells"][0]["column"] = "hyperv@winrm"


def _duplicate_cell(m: dict[str, Any]) -> None:
    m["cells"].append(dict(m["cells"][1]))


def _lie_about_declared(m: dict[str, Any]) -> None:
    m["columns"][1]["declared"].remove("snapshot_memory")  # its cell still says declared_but_fails


@pytest.mark.parametrize(
    ("mutate", "path", "words"),
    [
        (_bad_outcome, "$.cells[3].outcome", "mostly_works"),
        (_extra_key, "$.columns[1]", "colour"),
        (_missing_key, "$.cells[0].tests[0]", "duration_s"),
        (_bad_test_outcome, "$.cells[5].tests[0].outcome", "xfailed"),
        (_bad_format, "$.format", "virtdrivers-parity-matrix"),
        (_unknown_column, "$.cells[2].column", "nobody@nowhere"),
        (_unknown_feature, "$.cells[4].feature", "teleport"),
        (_cell_on_errored_column, "$.cells[0].column", "has an error"),
        (_duplicate_cell, "$.cells[", "second cell"),
        (_lie_about_declared, ".outcome", "'snapshot_memory' is not declared by 'libvirt@qemu'"),
    ],
)
def test_invalid_matrix_is_refused_naming_the_path(
    matrix: dict[str, Any], mutate: Any, path: str, words: str, tmp_path: Path
) -> None:
    mutate(matrix)
    with pytest.raises(ValueError, match="invalid parity matrix at") as info:
        validate(matrix)
    assert path in str(info.value)
    assert words in str(info.value)
    with pytest.raises(ValueError, match="invalid parity matrix"):
        write_all(matrix, tmp_path / "out")
    assert not (tmp_path / "out" / "parity.json").exists(), "nothing is written for an invalid matrix"


def test_runner_nulls_for_a_column_that_never_loaded_are_valid(matrix: dict[str, Any]) -> None:
    broken = matrix["columns"][3]
    broken.update(driver=None, distribution=None, backend=None, duration_s=None, libraries={}, declared=[])
    validate(matrix)


# --- write_all ----------------------------------------------------------------------------------------------------


def test_write_all_writes_the_four_files(matrix: dict[str, Any], tmp_path: Path) -> None:
    paths = write_all(matrix, tmp_path)
    assert {k: p.name for k, p in paths.items()} == {
        "json": "parity.json",
        "markdown": "parity.md",
        "html": "parity.html",
        "text": "parity.txt",
    }
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == matrix
    text = paths["text"].read_text(encoding="utf-8")
    assert "\x1b[" not in text, "plain text has no ANSI escapes"
    assert max(len(line) for line in text.splitlines()) <= 200
    assert paths["html"].read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


# --- Markdown -----------------------------------------------------------------------------------------------------


def test_markdown_has_header_tables_legend_and_failures(matrix: dict[str, Any]) -> None:
    md = render_markdown(matrix)
    assert "Generated 2026-11-24T12:00:00+00:00" in md
    assert "virtdrivers 0.1.0" in md
    assert "contract 1.1" in md
    for area in matrix["areas"]:
        assert f"| **{area['title']}** |" in md
    for outcome in OUTCOMES.values():
        assert f"| {outcome.symbol} {outcome.label} |" in md, f"legend lacks {outcome.label}"
    failures = md.split("## Failures", 1)[1]
    assert "libvirt@qemu · Memory snapshots: declared but fails" in failures
    assert "libvirt@qemu · Graceful shutdown: fails" in failures
    assert "fake@memory · Suspend / resume: not declared but works" in failures
    assert "hyperv@winrm: did not run" in failures
    assert f"```text\n{sample.LIE_MESSAGE}\n```" in failures, "the full message, verbatim, in a fence"
    assert "Resize vCPUs" not in failures, "not_declared is no failure"


def test_markdown_tables_keep_their_shape_with_hostile_strings(matrix: dict[str, Any]) -> None:
    md = render_markdown(matrix)
    table_rows = [line for line in md.splitlines() if line.startswith("| ")]
    for table in md.split("\n\n"):
        rows = [r for r in table.splitlines() if r.startswith("|")]
        if not rows:
            continue
        widths = {len(re.findall(r"(?<!\\)\|", r)) for r in rows}
        assert len(widths) == 1, f"a table row has the wrong number of cells:\n{table}"
    tables = "\n".join(table_rows)
    assert "<script>" not in tables
    assert '&lt;script&gt;alert(1)&lt;/script&gt; &amp; "quoted" \\| piped' in tables
    assert "\\[bold red\\]not markup\\[/\\]" in tables


def test_markdown_escape_and_fence() -> None:
    assert escape("a|b <i>&\nc") == "a\\|b &lt;i&gt;&amp; c"
    assert fenced("x ``` y").startswith("````text\n")
    assert fenced("x ``` y").endswith("\n````")


def test_markdown_shows_missing_and_errored_cells(matrix: dict[str, Any]) -> None:
    md = render_markdown(matrix)
    events = next(line for line in md.splitlines() if line.startswith("| Lifecycle events"))
    assert [c.strip() for c in events.strip("|").split("|")][1:] == ["—", "✓ passes", "○ not declared", "not run"]


# --- terminal -----------------------------------------------------------------------------------------------------


def test_terminal_table(matrix: dict[str, Any]) -> None:
    buffer = io.StringIO()
    render_terminal(matrix, Console(file=buffer, width=200, color_system="truecolor", force_terminal=True))
    coloured = buffer.getvalue()
    assert "\x1b[" in coloured, "a colour terminal gets colour"
    text = render_text(matrix)
    for column in matrix["columns"]:
        assert column["id"] in text
    assert "QEMU 8.2.2" in text
    assert "virtdrivers-libvirt 0.1.0" in text
    for area in matrix["areas"]:
        assert area["title"] in text
    lines = text.splitlines()
    row = next(line for line in lines if "Memory snapshots" in line)
    assert re.search(r"✓ passes\s+⚠ declared but fails\s+✓ passes\s+· not run", row), row
    assert re.search(r"Lifecycle events\s+—\s+✓ passes", text)
    for outcome in OUTCOMES.values():
        assert f"{outcome.symbol} {outcome.label} (" in text, f"legend lacks {outcome.label}"
    assert "Columns that did not run" in text
    assert "connection refused to 127.0.0.1:5986" in text


def test_terminal_prints_strings_literally_not_as_markup(matrix: dict[str, Any]) -> None:
    matrix["columns"][0]["backend"] = "[bold red]fake[/]"
    assert "[bold red]fake[/]" in render_text(matrix)


# --- HTML ---------------------------------------------------------------------------------------------------------


class _Page(HTMLParser):
    """Collects what the HTML tests look at: every tag with its attributes, script bodies, visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        (self.scripts if self._in_script else self.text).append(data)


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def test_html_is_self_contained(matrix: dict[str, Any]) -> None:
    html = render_html(matrix)
    page = _parse(html)
    for tag, attrs in page.tags:
        assert tag not in ("link", "img", "iframe", "object", "embed"), f"external-capable <{tag}>"
        for name in ("src", "href", "action", "data", "srcset", "poster"):
            assert name not in attrs, f"<{tag} {name}=...> references a resource"
    assert not re.search(r"\b(?:https?|ftp|file|wss?):|@import|url\(", html, re.IGNORECASE)
    assert len([t for t, _ in page.tags if t == "script"]) == 1
    csp = next(a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert csp is not None
    assert "default-src 'none'" in csp
    assert "'unsafe-inline'" not in csp


def test_html_escapes_hostile_strings(matrix: dict[str, Any]) -> None:
    html = render_html(matrix)
    assert "<script>alert" not in html
    assert "<img" not in html
    page = _parse(html)
    assert page.scripts[0].count("alert") == 0
    text = "".join(page.text)
    assert sample.SCRIPT in text, "the hostile string is shown as text"
    assert 'expected power_state == "running" & memory restored' in text
    titles = [a.get("title") or "" for _, a in page.tags]
    assert any("<script>alert(1)</script>" in t for t in titles), "attribute values round-trip literally"


def test_html_cells_have_stable_hooks(matrix: dict[str, Any]) -> None:
    page = _parse(render_html(matrix))
    cells = [a for t, a in page.tags if t == "td" and "data-outcome" in a]
    features = [f["id"] for f in matrix["features"]]
    assert len(cells) == len(features) * len(matrix["columns"])
    by_key = {(a["data-column"], a["data-feature"]): a["data-outcome"] for a in cells}
    for cell in matrix["cells"]:
        assert by_key[(cell["column"], cell["feature"])] == cell["outcome"]
    assert by_key[("fake@memory", "events")] == "missing"
    assert by_key[("hyperv@winrm", "create")] == "error"
    assert any(a.get("id") == "legend" for _, a in page.tags)
    legend = [a["data-outcome"] for t, a in page.tags if t == "li" and "data-outcome" in a]
    assert legend == list(OUTCOMES)


def test_html_headers_show_backend_versions_and_libraries(matrix: dict[str, Any]) -> None:
    text = " ".join(_parse(render_html(matrix)).text)
    for expected in ("QEMU 8.2.2", "virtdrivers-libvirt 0.1.0", "libvirt-python 10.0.0", "pyvmomi 8.0.3.0.1"):
        assert expected in text
    assert "(contract 1.1)" not in text, "the matrix's own contract version is not repeated per column"
    assert "virtdrivers-vmware 0.1.0 (contract 1.0)" in text, "an older plugin's contract is shown"
    assert "did not run: BackendUnavailable" in text
