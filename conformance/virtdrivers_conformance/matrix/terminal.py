"""The parity matrix as a ``rich`` table, for the operator who just ran the suite.

Two layouts, chosen by whether the full table fits the console:

* **wide**: every column headed by its driver@endpoint, backend, evidence level and driver, every cell
  spelled out (``✓ passes``);
* **narrow** (an 80-column terminal, a CI log): one symbol per cell under a short key (A, B, C…), with a
  key table mapping each key to its column, backend and evidence below. Spelled-out cells would wrap into
  three lines each at 80 columns and the grid would stop being a grid.

Both end with the legends (outcomes and evidence levels) and the errors of columns that did not run. On a
console that cannot encode the symbols, ASCII stand-ins are used throughout, so the output never dies
of ``UnicodeEncodeError`` half-way through a report.

Every string from the matrix goes into the table as ``rich.text.Text``, never as console markup: a
backend name or failure message containing ``[red]`` must print literally, not restyle the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

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
)
from virtdrivers_conformance.matrix.outcomes import OUTCOMES

__all__ = ["build_table", "column_key", "fits", "legend", "render_terminal"]

_UNLIMITED = 100_000
"""A console width no table reaches: measuring at it gives a table's own minimum width."""

_SIMPLE_HEAD_ASCII = box.Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)
"""``box.SIMPLE_HEAD`` drawn with ``-``: rich would otherwise swap in a fully ruled ASCII grid on such a console."""


@dataclass(frozen=True)
class _Glyphs:
    """The non-ASCII marks the views use, or their ASCII stand-ins."""

    ascii: bool

    @property
    def box(self) -> box.Box:
        return _SIMPLE_HEAD_ASCII if self.ascii else box.SIMPLE_HEAD

    @property
    def missing(self) -> str:
        return "-" if self.ascii else "—"

    @property
    def dot(self) -> str:
        return "-" if self.ascii else "·"

    def outcome(self, outcome_id: str) -> str:
        outcome = OUTCOMES[outcome_id]
        return outcome.ascii if self.ascii else outcome.symbol

    def text(self, value: str) -> str:
        """A matrix string the console can encode: a backend name with an ``é`` must not end the report."""
        return value.encode("ascii", "replace").decode("ascii") if self.ascii else value


def _glyphs(console: Console) -> _Glyphs:
    return _Glyphs(ascii=console.options.ascii_only)


def column_key(index: int) -> str:
    """A, B, … Z, AA, AB, …: the short key of the ``index``-th column in the narrow layout."""
    key = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        key = chr(ord("A") + rest) + key
    return key


def _evidence(column: ColumnDict, g: _Glyphs) -> Text:
    level = evidence_of(column)
    if level is None:
        # Null is allowed for a column that never ran; for one that ran it means the runner did not say.
        return Text(g.missing if column["error"] else "evidence unknown", style="bright_black")
    return Text(EVIDENCE[level].label, style=EVIDENCE[level].style)


def _header(column: ColumnDict, contract: str, g: _Glyphs) -> Text:
    text = Text(g.text(column["id"]), style="bold")
    text.append("\n" + g.text(backend_line(column)).replace("—", g.missing), style="")
    imitating = imitating_text(column)
    if imitating:
        text.append("\n" + g.text(imitating), style="italic")
    if evidence_of(column) is not None or not column["error"]:
        text.append("\n")
        text.append_text(_evidence(column, g))
    text.append("\n" + g.text(driver_line(column, contract)), style="bright_black")
    if column["error"]:
        text.append("\nERROR (see below)", style="bold red")
    return text


def _cell(cell: CellDict | None, column: ColumnDict, g: _Glyphs) -> Text:
    if column["error"]:
        return Text(f"{g.dot} not run", style="red")
    if cell is None:
        return Text(g.missing, style="bright_black")
    outcome = OUTCOMES[cell["outcome"]]
    return Text(f"{g.outcome(outcome.id)} {outcome.label}", style=outcome.style)


def _symbol(cell: CellDict | None, g: _Glyphs) -> Text:
    if cell is None:
        return Text(g.missing, style="bright_black")
    outcome = OUTCOMES[cell["outcome"]]
    return Text(g.outcome(outcome.id), style=outcome.style)


def _title(matrix: dict[str, Any], suffix: str = "") -> Text:
    return Text("virtdrivers feature parity" + suffix, style="bold")


def _caption(matrix: dict[str, Any], g: _Glyphs) -> Text:
    return Text(
        g.text(
            f"virtdrivers {matrix['virtdrivers_version']} {g.dot} contract {matrix['contract_version']}"
            f" {g.dot} generated {matrix['generated_at']}"
        )
    )


def _feature_label(title: str, mandatory: bool, g: _Glyphs) -> Text:
    label = Text("  " + g.text(title))
    if mandatory:
        label.append(" *", style="bright_black")
    return label


def _feature_width(view: MatrixView, g: _Glyphs) -> int:
    """The feature column's width: it never wraps, so rich must not measure it by its longest word."""
    labels = [Text(g.text(area["title"])) for area, _ in view.grouped()]
    labels += [_feature_label(f["title"], f["mandatory"], g) for _, fs in view.grouped() for f in fs]
    return max((label.cell_len for label in labels), default=len("Feature"))


def build_table(matrix: dict[str, Any], ascii_only: bool = False) -> Table:
    """The wide layout: features as rows under their area's header row, one spelled-out column per driver@endpoint.

    Each result column is at least as wide as its widest cell, so only headers fold when space is short;
    :func:`fits` says whether the console is wide enough for that.
    """
    g = _Glyphs(ascii_only)
    view = MatrixView.of(matrix)
    table = Table(
        title=_title(matrix),
        caption=_caption(matrix, g),
        box=g.box,
        show_lines=False,
        header_style="",
        pad_edge=False,
    )
    table.add_column(Text("Feature", style="bold"), no_wrap=True, min_width=_feature_width(view, g))
    features = [f for _, fs in view.grouped() for f in fs]
    for column in view.columns:
        widest = max((_cell(view.cell(column["id"], f["id"]), column, g).cell_len for f in features), default=1)
        table.add_column(_header(column, matrix["contract_version"], g), overflow="fold", min_width=widest)
    for area, area_features in view.grouped():
        table.add_row(Text(g.text(area["title"]), style="bold underline"), *(Text("") for _ in view.columns))
        for feature in area_features:
            table.add_row(
                _feature_label(feature["title"], feature["mandatory"], g),
                *(_cell(view.cell(c["id"], feature["id"]), c, g) for c in view.columns),
            )
    return table


def fits(table: Table, console: Console) -> bool:
    """Whether ``table`` can be laid out in the console's width without squeezing a column below its minimum."""
    measured = Measurement.get(console, console.options.update_width(_UNLIMITED), table)
    return measured.minimum <= console.width


def _grid(matrix: dict[str, Any], keyed: list[tuple[str, ColumnDict]], g: _Glyphs, title: str) -> Table:
    """The narrow layout's grid: one symbol per cell under the columns' short keys."""
    view = MatrixView.of(matrix)
    table = Table(
        title=_title(matrix, title),
        box=g.box,
        header_style="",
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column(
        Text("Feature", style="bold"), no_wrap=True, overflow="ellipsis", min_width=_feature_width(view, g)
    )
    for key, _ in keyed:
        table.add_column(Text(key, style="bold"), justify="center", no_wrap=True)
    for area, features in view.grouped():
        table.add_row(Text(g.text(area["title"]), style="bold underline"), *(Text("") for _ in keyed))
        for feature in features:
            table.add_row(
                _feature_label(feature["title"], feature["mandatory"], g),
                *(_symbol(view.cell(c["id"], feature["id"]), g) for _, c in keyed),
            )
    return table


def _grids(matrix: dict[str, Any], keyed: list[tuple[str, ColumnDict]], console: Console) -> list[Table]:
    """As few grids as fit side by side in the console: more columns than fit in one are split, keys kept."""
    g = _glyphs(console)
    if not keyed:
        return []
    grids: list[Table] = []
    start = 0
    while start < len(keyed):
        end = len(keyed)
        while end - start > 1 and not fits(_grid(matrix, keyed[start:end], g, ""), console):
            end -= 1
        part = keyed[start:end]
        suffix = "" if start == 0 and end == len(keyed) else f" ({part[0][0]}-{part[-1][0]})"
        grids.append(_grid(matrix, part, g, suffix))
        start = end
    return grids


def _key_table(matrix: dict[str, Any], keyed: list[tuple[str, ColumnDict]], g: _Glyphs) -> Table:
    """What each short key stands for: the column, what answered (and what it imitates), and how real it is."""
    table = Table(box=g.box, header_style="bold", pad_edge=False, title=Text("Columns", style="bold"))
    table.add_column("Key", no_wrap=True)
    table.add_column("Column", overflow="fold")
    table.add_column("Backend", overflow="fold")
    table.add_column("Evidence", no_wrap=True)
    for key, column in keyed:
        backend = Text(g.text(backend_line(column)).replace("—", g.missing))
        imitating = imitating_text(column)
        if imitating:
            backend.append(", " + g.text(imitating), style="italic")
        if column["error"]:
            backend = Text("did not run (see below)", style="bold red")
        table.add_row(Text(key, style="bold"), Text(g.text(column["id"])), backend, _evidence(column, g))
    return table


def legend(matrix: dict[str, Any], ascii_only: bool = False) -> Text:
    """One line per outcome with its count, plus the marks the table uses besides outcomes."""
    g = _Glyphs(ascii_only)
    counts = MatrixView.of(matrix).counts()
    text = Text()
    for outcome in OUTCOMES.values():
        text.append(f"{g.outcome(outcome.id)} {outcome.label}", style=outcome.style)
        text.append(f" ({counts[outcome.id]}): {outcome.description}\n")
    text.append(f"{g.missing} no test of the feature ran {g.dot} * mandatory core feature", style="bright_black")
    return text


def evidence_legend() -> Table:
    """The four evidence levels in the contract's own words, most real first."""
    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True)
    table.add_column()
    table.add_row(Text("Evidence", style="bold"), Text("how real the peer that answered a column is"))
    for level in EVIDENCE.values():
        table.add_row(Text("  " + level.label, style=level.style), Text(level.description))
    return table


def _notes(matrix: dict[str, Any], g: _Glyphs) -> Text | None:
    """How each simulated behaviour earned its cell: a green cell from a simulator is not the product's."""
    noted = MatrixView.of(matrix).noted()
    if not noted:
        return None
    text = Text("Evidence notes (cells earned against simulated behaviour)\n", style="bold")
    for column, feature, note in noted:
        text.append(g.text(f"{column['id']} · {feature['title']}"), style="bold")
        text.append(": " + g.text(note) + "\n")
    return text


def _errors(matrix: dict[str, Any], g: _Glyphs) -> Text | None:
    view = MatrixView.of(matrix)
    errored = view.errored()
    if not errored:
        return None
    text = Text("Columns that did not run\n", style="bold red")
    for column in errored:
        text.append(g.text(column["id"]), style="bold")
        took = duration_text(column["duration_s"])
        text.append(f" ({took})" if took else "")
        text.append(": ")
        text.append(g.text(str(column["error"]).rstrip()) + "\n")
    return text


def render_terminal(matrix: dict[str, Any], console: Console) -> None:
    """Print the table (wide or narrow, whichever fits ``console``), the legends, then why columns did not run."""
    g = _glyphs(console)
    wide = build_table(matrix, g.ascii)
    parts: list[RenderableType]
    if fits(wide, console):
        parts = [wide, legend(matrix, g.ascii)]
    else:
        columns = MatrixView.of(matrix).columns
        keyed = [(column_key(i), c) for i, c in enumerate(columns)]
        ran = [(k, c) for k, c in keyed if not c["error"]]
        parts = [*_grids(matrix, ran, console), _caption(matrix, g), Text(""), _key_table(matrix, keyed, g)]
        parts.append(legend(matrix, g.ascii))
    parts += [Text(""), evidence_legend()]
    errors = _errors(matrix, g)
    if errors is not None:
        parts += [Text(""), errors]
    notes = _notes(matrix, g)
    if notes is not None:
        parts += [Text(""), notes]
    console.print(Group(*parts))
