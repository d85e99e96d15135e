"""The parity matrix as a ``rich`` table, for the operator who just ran the suite.

Every string from the matrix goes into the table as ``rich.text.Text``, never
as console markup: a backend name or failure message containing ``[red]``
must print literally, not restyle the table.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from virtdrivers_conformance.matrix.model import (
    CellDict,
    ColumnDict,
    MatrixView,
    backend_line,
    driver_line,
    duration_text,
)
from virtdrivers_conformance.matrix.outcomes import OUTCOMES

__all__ = ["build_table", "legend", "render_terminal"]

_MISSING = Text("—", style="bright_black")


def _header(column: ColumnDict, contract: str) -> Text:
    text = Text(column["id"], style="bold")
    text.append("\n" + backend_line(column), style="")
    text.append("\n" + driver_line(column, contract), style="bright_black")
    if column["error"]:
        text.append("\nERROR (see below)", style="bold red")
    return text


def _cell(cell: CellDict | None, column: ColumnDict) -> Text:
    if column["error"]:
        return Text("· not run", style="red")
    if cell is None:
        return _MISSING
    outcome = OUTCOMES[cell["outcome"]]
    return Text(f"{outcome.symbol} {outcome.label}", style=outcome.style)


def build_table(matrix: dict[str, Any]) -> Table:
    """Features as rows under their area's header row, one column per driver@endpoint."""
    view = MatrixView.of(matrix)
    table = Table(
        title=Text("virtdrivers feature parity", style="bold"),
        caption=Text(
            f"virtdrivers {matrix['virtdrivers_version']} · contract {matrix['contract_version']}"
            f" · generated {matrix['generated_at']}",
        ),
        box=box.SIMPLE_HEAD,
        show_lines=False,
        header_style="",
        pad_edge=False,
    )
    table.add_column(Text("Feature", style="bold"), no_wrap=True)
    for column in view.columns:
        table.add_column(_header(column, matrix["contract_version"]), overflow="fold")
    for area, features in view.grouped():
        table.add_row(Text(area["title"], style="bold underline"), *(Text("") for _ in view.columns))
        for feature in features:
            label = Text("  " + feature["title"])
            if feature["mandatory"]:
                label.append(" *", style="bright_black")
            table.add_row(label, *(_cell(view.cell(c["id"], feature["id"]), c) for c in view.columns))
    return table


def legend(matrix: dict[str, Any]) -> Text:
    """One line per outcome with its count, plus the marks the table uses besides outcomes."""
    counts = MatrixView.of(matrix).counts()
    text = Text()
    for outcome in OUTCOMES.values():
        text.append(f"{outcome.symbol} {outcome.label}", style=outcome.style)
        text.append(f" ({counts[outcome.id]}): {outcome.description}\n")
    text.append("— no test of the feature ran · * mandatory core feature", style="bright_black")
    return text


def _errors(matrix: dict[str, Any]) -> Text | None:
    view = MatrixView.of(matrix)
    errored = view.errored()
    if not errored:
        return None
    text = Text("Columns that did not run\n", style="bold red")
    for column in errored:
        text.append(f"{column['id']}", style="bold")
        took = duration_text(column["duration_s"])
        text.append(f" ({took})" if took else "")
        text.append(": ")
        text.append(str(column["error"]).rstrip() + "\n")
    return text


def render_terminal(matrix: dict[str, Any], console: Console) -> None:
    """Print the table, the legend and the errors of columns that did not run."""
    parts: list[Any] = [build_table(matrix), legend(matrix)]
    errors = _errors(matrix)
    if errors is not None:
        parts += [Text(""), errors]
    console.print(Group(*parts))
