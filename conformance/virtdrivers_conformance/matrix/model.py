"""A read-only view over a validated matrix dict, shared by the renderers.

The JSON dict stays the source of truth; this view only answers the questions
every renderer asks (which features sit in which area, which cell is at a
(column, feature) pair, how many cells have each outcome), so the three
renderers cannot disagree about them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict, cast

from virtdrivers.endpoint import Evidence
from virtdrivers_conformance.matrix.outcomes import ATTENTION, OUTCOMES

__all__ = [
    "AreaDict",
    "CellDict",
    "ColumnDict",
    "FeatureDict",
    "MatrixDict",
    "MatrixView",
    "TestDict",
    "backend_line",
    "driver_line",
    "duration_text",
    "evidence_of",
    "imitates_of",
    "imitating_text",
    "libraries_line",
]


class AreaDict(TypedDict):
    id: str
    title: str


class FeatureDict(TypedDict):
    id: str
    area: str
    title: str
    doc: str
    capability: str | None
    mandatory: bool


class ColumnDict(TypedDict):
    id: str
    driver: str | None
    endpoint: str
    endpoint_description: str
    distribution: str | None
    driver_version: str | None
    contract_version: str | None
    backend: str | None
    backend_version: str | None
    libraries: dict[str, str]
    declared: list[str]
    duration_s: float | None
    error: str | None
    evidence: NotRequired[str | None]
    imitates: NotRequired[str | None]
    notes: NotRequired[dict[str, str]]


class TestDict(TypedDict):
    id: str
    outcome: str
    message: str | None
    duration_s: float | None


class CellDict(TypedDict):
    column: str
    feature: str
    outcome: str
    message: str | None
    tests: list[TestDict]
    note: NotRequired[str | None]


class MatrixDict(TypedDict):
    format: str
    format_version: str
    generated_at: str
    virtdrivers_version: str
    contract_version: str
    areas: list[AreaDict]
    features: list[FeatureDict]
    columns: list[ColumnDict]
    cells: list[CellDict]


@dataclass(frozen=True)
class MatrixView:
    """Lookups over one matrix; build it with :meth:`of` from a dict that passed ``validate``."""

    data: MatrixDict
    _cells: dict[tuple[str, str], CellDict] = field(repr=False)

    @classmethod
    def of(cls, matrix: dict[str, Any]) -> MatrixView:
        data = cast(MatrixDict, matrix)
        return cls(data, {(c["column"], c["feature"]): c for c in data["cells"]})

    @property
    def columns(self) -> list[ColumnDict]:
        return self.data["columns"]

    @property
    def features(self) -> dict[str, FeatureDict]:
        return {f["id"]: f for f in self.data["features"]}

    def grouped(self) -> list[tuple[AreaDict, list[FeatureDict]]]:
        """Areas in display order with their features; areas without features are left out."""
        groups: list[tuple[AreaDict, list[FeatureDict]]] = []
        for area in self.data["areas"]:
            features = [f for f in self.data["features"] if f["area"] == area["id"]]
            if features:
                groups.append((area, features))
        return groups

    def cell(self, column: str, feature: str) -> CellDict | None:
        return self._cells.get((column, feature))

    def counts(self) -> dict[str, int]:
        """Cells per outcome, every outcome present (zero included) in ``OUTCOMES`` order."""
        seen = Counter(c["outcome"] for c in self.data["cells"])
        return {o: seen[o] for o in OUTCOMES}

    def column_counts(self, column: str) -> dict[str, int]:
        seen = Counter(c["outcome"] for c in self.data["cells"] if c["column"] == column)
        return {o: seen[o] for o in OUTCOMES}

    def attention(self) -> list[tuple[ColumnDict, FeatureDict, CellDict]]:
        """Cells a reader must act on, column by column in display order."""
        features = self.features
        order = {f["id"]: i for i, f in enumerate(f for _, fs in self.grouped() for f in fs)}
        found: list[tuple[ColumnDict, FeatureDict, CellDict]] = []
        for column in self.columns:
            cells = [c for c in self.data["cells"] if c["column"] == column["id"] and c["outcome"] in ATTENTION]
            cells.sort(key=lambda c: order.get(c["feature"], len(order)))
            found.extend((column, features[c["feature"]], c) for c in cells)
        return found

    def errored(self) -> list[ColumnDict]:
        return [c for c in self.columns if c["error"]]

    def noted(self) -> list[tuple[ColumnDict, FeatureDict, str]]:
        """Cells that carry an evidence note (a simulated behaviour earned them), in display order."""
        features = self.features
        order = [f["id"] for _, fs in self.grouped() for f in fs]
        found: list[tuple[ColumnDict, FeatureDict, str]] = []
        for column in self.columns:
            for feature_id in order:
                cell = self.cell(column["id"], feature_id)
                note = cell.get("note") if cell is not None else None
                if note:
                    found.append((column, features[feature_id], note))
        return found


def backend_line(column: ColumnDict) -> str:
    """``backend version``, or a dash: an errored column may never have reached its backend."""
    parts = [p for p in (column["backend"], column["backend_version"]) if p]
    return " ".join(parts) or "—"


def evidence_of(column: ColumnDict) -> Evidence | None:
    """How real the column's peer is; None for a column that never said (an error, or a pre-1.1 matrix).

    ``validate`` requires the key, but renderers also run on what ``build_matrix`` hands them directly, so a
    missing key reads as null here rather than crashing a report that is otherwise fine.
    """
    value = column.get("evidence")
    return None if value is None else Evidence(value)


def imitates_of(column: ColumnDict) -> str | None:
    """The product a simulator imitates (``oVirt Engine 4.5.6-1.el8``), or None; a missing key reads as null."""
    return column.get("imitates") or None


def imitating_text(column: ColumnDict) -> str:
    """``imitating X`` for a simulator column, else empty.

    Every view puts this right after the backend, so a simulator's column can never read as if the product it
    imitates had answered.
    """
    imitates = imitates_of(column)
    return f"imitating {imitates}" if imitates else ""


def driver_line(column: ColumnDict, contract: str | None = None) -> str:
    """The distribution (or driver name) and version that produced the column.

    The column's contract version is shown only when it differs from ``contract`` (the matrix's own): a plugin
    built for an older contract is worth a reader's attention, the usual case is noise in a narrow header.
    """
    name = column["distribution"] or column["driver"] or "?"
    version = column["driver_version"]
    text = f"{name} {version}" if version else name
    if column["contract_version"] and column["contract_version"] != contract:
        text += f" (contract {column['contract_version']})"
    return text


def libraries_line(column: ColumnDict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(column["libraries"].items()))


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"
