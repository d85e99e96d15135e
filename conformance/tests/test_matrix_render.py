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

from virtdrivers.endpoint import Evidence
from virtdrivers_conformance.matrix import OUTCOMES, SCHEMA_PATH, render_text, validate, write_all
from virtdrivers_conformance.matrix.html import render_html
from virtdrivers_conformance.matrix.markdown import escape, fenced, render_markdown
from virtdrivers_conformance.matrix.terminal import column_key, render_terminal


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
    levels = [c["evidence"] for c in matrix["columns"]]
    assert sorted(v for v in levels if v) == sorted(e.value for e in Evidence), "one column of each evidence level"
    assert None in levels, "an errored column whose evidence is unknown"


def _column(matrix: dict[str, Any], column_id: str) -> dict[str, Any]:
    return next(c for c in matrix["columns"] if c["id"] == column_id)


# --- schema and validate() ----------------------------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert SCHEMA_PATH.parent.name == "matrix", "the schema must ship inside the package"


def test_sample_is_valid(matrix: dict[str, Any]) -> None:
    validate(matrix)
    jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).validate(matrix)


def test_schema_evidence_levels_are_the_contracts() -> None:
    """The schema's enum is a copy the contract's ``Evidence`` could drift from: a new level must reach both."""
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$defs"]["evidence"]["enum"] == [e.value for e in Evidence]
    assert schema["properties"]["format_version"]["const"] == "1.1", "evidence and imitates arrived in 1.1"


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


def _unknown_evidence(m: dict[str, Any]) -> None:
    m["columns"][2]["evidence"] = "simulated"


def _ran_without_evidence(m: dict[str, Any]) -> None:
    m["columns"][0]["evidence"] = None


def _missing_evidence(m: dict[str, Any]) -> None:
    del m["columns"][3]["evidence"]


def _missing_imitates(m: dict[str, Any]) -> None:
    del m["columns"][1]["imitates"]


def _empty_imitates(m: dict[str, Any]) -> None:
    m["columns"][3]["imitates"] = ""


def _old_format(m: dict[str, Any]) -> None:
    m["format_version"] = "1.0"


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
        (_unknown_evidence, "$.columns[2].evidence", "simulated"),
        (_ran_without_evidence, "$.columns[0].evidence", "None"),
        (_missing_evidence, "$.columns[3]", "'evidence' is a required property"),
        (_missing_imitates, "$.columns[1]", "'imitates' is a required property"),
        (_empty_imitates, "$.columns[3].imitates", "''"),
        (_old_format, "$.format_version", "1.1"),
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
    broken = _column(matrix, "hyperv@winrm")
    broken.update(driver=None, distribution=None, backend=None, duration_s=None, libraries={}, declared=[])
    assert broken["evidence"] is None, "an errored column may not know how real its peer was"
    validate(matrix)
    broken["evidence"] = "project-simulator"  # or it may: the endpoint was known, it just did not start
    validate(matrix)


def test_renderers_read_a_matrix_without_evidence_keys_as_null(matrix: dict[str, Any]) -> None:
    """``build_matrix`` output from before 1.1 lacks the keys: the views say so instead of crashing."""
    for column in matrix["columns"]:
        del column["evidence"], column["imitates"]
    assert "evidence unknown" in render_text(matrix)
    assert "evidence unknown" in render_text(matrix, width=80)
    assert "evidence: unknown" in render_markdown(matrix)
    assert "evidence unknown" in "".join(_parse(render_html(matrix)).text)


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
    assert [c.strip() for c in events.strip("|").split("|")][1:] == [
        "—",
        "✓ passes",
        "○ not declared",
        "○ not declared",
        "not run",
    ]


def test_markdown_shows_evidence_and_what_a_simulator_imitates(matrix: dict[str, Any]) -> None:
    md = render_markdown(matrix)
    columns = md.split("## Columns", 1)[1].split("## Matrix", 1)[0]
    ovirt = next(line for line in columns.splitlines() if line.startswith("| ovirt@simulator |"))
    assert "| oVirt REST simulator 0.1, *imitating oVirt Engine 4.5.6-1.el8* | project-simulator |" in ovirt
    for column in matrix["columns"]:
        row = next(line for line in columns.splitlines() if line.startswith(f"| {escape(column['id'])} |"))
        assert f"| {column['evidence'] or '—'} |" in row
    header = next(line for line in md.splitlines() if line.startswith("| Feature |"))
    for level in Evidence:
        assert f"evidence: {level.value}" in header
    assert "oVirt REST simulator 0.1<br>*imitating oVirt Engine 4.5.6-1.el8*<br>evidence: project-simulator" in header
    assert "imitating VMware vCenter Server 8.0.2 &lt;script&gt;" in header, "imitates is escaped like the rest"
    legend = md.split("## Legend", 1)[1].split("## Failures", 1)[0]
    for level in Evidence:
        assert f"| {level.value} | 1 | {escape(level.doc)} |" in legend


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
    assert re.search(r"✓ passes\s+⚠ declared but fails\s+✓ passes\s+○ not declared\s+· not run", row), row
    assert re.search(r"Lifecycle events\s+—\s+✓ passes", text)
    for outcome in OUTCOMES.values():
        assert f"{outcome.symbol} {outcome.label} (" in text, f"legend lacks {outcome.label}"
    assert "Columns that did not run" in text
    assert "connection refused to 127.0.0.1:5986" in text


def test_terminal_prints_strings_literally_not_as_markup(matrix: dict[str, Any]) -> None:
    matrix["columns"][0]["backend"] = "[bold red]fake[/]"
    assert "[bold red]fake[/]" in render_text(matrix)
    assert "[bold red]fake[/]" in render_text(matrix, width=80)
    assert "[bold red]not markup[/]" in render_text(matrix), "what a simulator imitates is literal too"


def _record(matrix: dict[str, Any], width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system="truecolor", force_terminal=True)
    render_terminal(matrix, console)
    return console.export_text()


def _grid_bodies(text: str) -> list[list[str]]:
    """The body rows of each feature table: the lines after a header rule up to the first blank line."""
    lines = text.splitlines()
    bodies = []
    for i, line in enumerate(lines):
        if set(line.strip()) in ({"─"}, {"-"}) and lines[i - 1].lstrip().startswith("Feature"):
            body = []
            for row in lines[i + 1 :]:
                if not row.strip():
                    break
                body.append(row)
            bodies.append(body)
    return bodies


def _expected_rows(matrix: dict[str, Any]) -> list[str]:
    rows = []
    for area in matrix["areas"]:
        titles = [f["title"] for f in matrix["features"] if f["area"] == area["id"]]
        if titles:
            rows += [area["title"], *titles]
    return rows


def _one_line_per_row(matrix: dict[str, Any], text: str) -> list[list[str]]:
    bodies = _grid_bodies(text)
    assert bodies, f"no feature table found in:\n{text}"
    expected = _expected_rows(matrix)
    for body in bodies:
        assert len(body) == len(expected), "a row took more than one line:\n" + "\n".join(body)
        for row, title in zip(body, expected, strict=True):
            assert row.lstrip().startswith(title), f"{row!r} is not the row of {title!r}"
    return bodies


def _key_entries(text: str) -> dict[str, str]:
    """The narrow layout's key table: each key with its (possibly wrapped) row's words joined."""
    lines = text.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.strip() == "Columns") :]
    start = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"}) + 1
    entries: dict[str, list[str]] = {}
    for line in lines[start:]:
        if not line.strip():
            break
        key = re.match(r"^ ?([A-Z]+) ", line)
        if key:
            entries[key.group(1)] = []
        entries[list(entries)[-1]] += line.split()
    return {k: " ".join(words) for k, words in entries.items()}


def test_terminal_at_80_columns_is_one_symbol_per_cell_with_a_key(matrix: dict[str, Any]) -> None:
    text = _record(matrix, 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    [body] = _one_line_per_row(matrix, text)
    row = next(line for line in body if "Memory snapshots" in line)
    assert re.fullmatch(r"\s+Memory snapshots\s+✓\s+⚠\s+✓\s+○\s*", row), row
    row = next(line for line in body if "Lifecycle events" in line)
    assert re.fullmatch(r"\s+Lifecycle events\s+—\s+✓\s+○\s+○\s*", row), "a missing cell is a dash: " + row
    assert "not run" not in "\n".join(body), "a column that never ran takes no room in the grid"
    header = text.splitlines()[text.splitlines().index(body[0]) - 2]
    assert re.fullmatch(r"\s*Feature\s+A\s+B\s+C\s+D\s*", header), header
    entries = _key_entries(text)
    assert list(entries) == [column_key(i) for i in range(len(matrix["columns"]))]
    assert entries["A"] == "A fake@memory fake 0.1.0 in-memory"
    assert entries["B"] == "B libvirt@qemu QEMU 8.2.2 real"
    assert entries["C"].startswith("C vmware@vcsim vcsim 0.37.3")
    assert "vendor-simulator" in entries["C"]
    assert "imitating VMware vCenter Server 8.0.2" in entries["C"]
    ovirt = entries["D"]
    assert ovirt.startswith("D ovirt@simulator oVirt REST simulator 0.1, project-simulator")
    assert ovirt.endswith("imitating oVirt Engine 4.5.6-1.el8"), "a wrapped key row keeps the imitated product"
    assert entries["E"] == "E hyperv@winrm did not run (see below) —"
    for outcome in OUTCOMES.values():
        assert f"{outcome.symbol} {outcome.label} (" in text, f"legend lacks {outcome.label}"
    for level in Evidence:
        assert level.doc.split()[-1] in text, f"the legend does not explain {level.value}"
    assert "connection refused to 127.0.0.1:5986" in text


def test_terminal_wide_keeps_spelled_out_cells_with_evidence(matrix: dict[str, Any]) -> None:
    text = _record(matrix, 200)
    assert max(len(line) for line in text.splitlines()) <= 200
    [body] = _one_line_per_row(matrix, text)
    row = next(line for line in body if "Memory snapshots" in line)
    assert re.search(r"✓ passes\s+⚠ declared but fails\s+✓ passes\s+○ not declared\s+· not run", row), row
    head = text.split("Feature", 1)[0]
    for level in Evidence:
        assert level.value in head, f"no column header says {level.value}"
    assert "oVirt REST simulator 0.1" in head
    assert "imitating oVirt Engine 4.5.6-1.el8" in head
    assert "Key" not in text, "the wide layout needs no key"


@pytest.mark.parametrize("width", [50, 60, 80, 100, 120, 140, 160, 200, 260])
def test_terminal_never_overflows_or_wraps_a_cell(matrix: dict[str, Any], width: int) -> None:
    """Whichever layout a width gets, nothing is cut off and every row stays on one line."""
    text = _record(matrix, width)
    assert max(len(line) for line in text.splitlines()) <= width
    _one_line_per_row(matrix, text)


def test_terminal_splits_more_columns_than_fit_into_several_grids(matrix: dict[str, Any]) -> None:
    template = _column(matrix, "libvirt@qemu")
    cells = [c for c in matrix["cells"] if c["column"] == template["id"]]
    for i in range(30):
        cid = f"libvirt@host{i}"
        matrix["columns"].append({**template, "id": cid, "endpoint": f"host{i}"})
        matrix["cells"] += [{**c, "column": cid} for c in cells]
    validate(matrix)
    text = _record(matrix, 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    bodies = _one_line_per_row(matrix, text)
    assert len(bodies) >= 2
    assert "(A-" in text, "each grid names the keys it covers"
    keys = re.findall(r"^\s*Feature((?:\s+[A-Z]+)+)\s*$", text, re.MULTILINE)
    assert " ".join(k.strip() for k in keys).split() == [column_key(i) for i in range(35) if i != 4]
    assert f"{column_key(34)} " in text.split("Columns", 1)[1]


def test_terminal_falls_back_to_ascii_where_the_console_cannot_encode(matrix: dict[str, Any]) -> None:
    """A cp1252 or ``PYTHONIOENCODING=ascii`` console gets stand-ins instead of a UnicodeEncodeError."""
    matrix["columns"][1]["backend"] = "QEMU émulateur"
    for width in (80, 200):
        raw = io.BytesIO()
        stream = io.TextIOWrapper(raw, encoding="ascii")
        render_terminal(matrix, Console(file=stream, width=width, color_system=None))
        stream.flush()
        text = raw.getvalue().decode("ascii")
        assert "QEMU ?mulateur" in text
        for outcome in OUTCOMES.values():
            assert f"{outcome.ascii} {outcome.label} (" in text
        assert "|" not in text.split("Columns that did not run")[0], "no ruled ASCII grid"
        _one_line_per_row(matrix, text)


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
    levels = [a["data-evidence"] for t, a in page.tags if t == "li" and "data-evidence" in a]
    assert levels == [e.value for e in Evidence]
    headers = {a["data-column"]: a.get("data-evidence") for t, a in page.tags if t == "th" and "data-column" in a}
    assert headers == {c["id"]: c["evidence"] for c in matrix["columns"]}


def test_html_legend_explains_the_evidence_levels(matrix: dict[str, Any]) -> None:
    text = " ".join(_parse(render_html(matrix)).text)
    legend = text.split("Legend", 1)[1].split("Feature", 1)[0]
    for level in Evidence:
        assert f"{level.value} 1 {level.doc}" in " ".join(legend.split()), f"the legend does not explain {level}"


def test_html_headers_show_backend_versions_and_libraries(matrix: dict[str, Any]) -> None:
    text = " ".join(_parse(render_html(matrix)).text)
    for expected in ("QEMU 8.2.2", "virtdrivers-libvirt 0.1.0", "libvirt-python 10.0.0", "pyvmomi 8.0.3.0.1"):
        assert expected in text
    assert "(contract 1.1)" not in text, "the matrix's own contract version is not repeated per column"
    assert "virtdrivers-vmware 0.1.0 (contract 1.0)" in text, "an older plugin's contract is shown"
    assert "did not run: BackendUnavailable" in text


def test_html_simulator_headers_name_the_simulator_and_what_it_imitates(matrix: dict[str, Any]) -> None:
    page = render_html(matrix)
    ovirt = page.split('data-column="ovirt@simulator"', 1)[1].split("</th>", 1)[0]
    assert '<div class="col-backend">oVirt REST simulator 0.1</div>' in ovirt
    assert '<div class="col-imitates">imitating oVirt Engine 4.5.6-1.el8</div>' in ovirt
    assert 'data-evidence="project-simulator"' in ovirt
    vcsim = page.split('data-column="vmware@vcsim"', 1)[1].split("</th>", 1)[0]
    assert "imitating VMware vCenter Server 8.0.2 &lt;script&gt;alert(1)&lt;/script&gt; [bold red]" in vcsim
    qemu = page.split('data-column="libvirt@qemu"', 1)[1].split("</th>", 1)[0]
    assert "imitating" not in qemu, "a real backend imitates nothing"


# --- evidence notes -----------------------------------------------------------------------------------------------


def test_every_view_shows_the_evidence_note_of_a_simulated_cell(matrix: dict[str, Any]) -> None:
    """A green cell earned against simulated behaviour must say so wherever the cell is shown."""
    validate(matrix)
    column, feature = sample.NOTED_CELL
    title = next(f["title"] for f in matrix["features"] if f["id"] == feature)
    md = render_markdown(matrix)
    notes = md.split("## Evidence notes", 1)[1].split("## Failures", 1)[0]
    assert f"- **{column} · {title}**: {escape(sample.NOTE)}" in notes
    row = next(line for line in md.split("## Matrix", 1)[1].splitlines() if line.startswith(f"| {title}"))
    assert row.count("†") == 1, "only the noted cell carries the mark"
    text = render_text(matrix)
    assert "Evidence notes" in text
    assert "[bold red]x[/]" in text, "the note prints literally"
    assert sample.NOTE.split(" | ")[0] in text
    html = render_html(matrix)
    assert "<script>alert" not in html
    page = _parse(html)
    shown = "".join(page.text)
    assert f"Evidence note: {sample.NOTE}" in shown
    titles = [a.get("title") or "" for _, a in page.tags]
    assert any(t.endswith(f"(simulated: {sample.NOTE})") for t in titles)


def test_a_matrix_without_notes_shows_no_notes_section(matrix: dict[str, Any]) -> None:
    for cell in matrix["cells"]:
        cell.pop("note", None)
    for column in matrix["columns"]:
        column.pop("notes", None)
    validate(matrix)
    assert "Evidence notes" not in render_markdown(matrix)
    assert "Evidence notes" not in render_text(matrix)
    assert "†" not in render_markdown(matrix)
