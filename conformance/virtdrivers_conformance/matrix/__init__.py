"""The feature-parity matrix: its JSON Schema and its renderers.

The runner produces one dict; :func:`validate` checks it against the
published ``schema.json`` (plus the cross-references a schema cannot express)
and :func:`write_all` writes the JSON source of truth next to the Markdown,
HTML and plain-text views rendered from it, so the views can never say
something the JSON does not.
"""

from __future__ import annotations

import io
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from rich.console import Console

from virtdrivers_conformance.matrix.html import render_html
from virtdrivers_conformance.matrix.markdown import render_markdown
from virtdrivers_conformance.matrix.outcomes import OUTCOMES, Outcome
from virtdrivers_conformance.matrix.terminal import render_terminal

__all__ = [
    "OUTCOMES",
    "SCHEMA_PATH",
    "Outcome",
    "render_html",
    "render_markdown",
    "render_terminal",
    "render_text",
    "validate",
    "write_all",
]

#: The published JSON Schema (draft 2020-12) of the matrix; shipped inside the package.
SCHEMA_PATH: Path = Path(__file__).with_name("schema.json")

#: Width of ``parity.txt``: wide enough for several columns without wrapping feature titles.
TEXT_WIDTH = 200


@cache
def _validator() -> Any:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _path(parts: Any) -> str:
    text = "$"
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def validate(matrix: dict[str, Any]) -> None:
    """Refuse a matrix the renderers could misreport.

    Raises ``ValueError`` naming the JSON path (``$.cells[3].outcome``) of the
    first problem: first against the schema, then the references between
    sections that a schema cannot check (a cell naming an unknown column, an
    outcome that contradicts what the column declares), because a view
    rendered from such a matrix would silently drop or mislabel results.
    """
    error = jsonschema.exceptions.best_match(_validator().iter_errors(matrix))
    if error is not None:
        raise ValueError(f"invalid parity matrix at {_path(error.absolute_path)}: {error.message}")
    problem = _consistency_problem(matrix)
    if problem is not None:
        path, message = problem
        raise ValueError(f"invalid parity matrix at {path}: {message}")


def _duplicate(ids: list[str]) -> int | None:
    seen: set[str] = set()
    for i, value in enumerate(ids):
        if value in seen:
            return i
        seen.add(value)
    return None


def _consistency_problem(matrix: dict[str, Any]) -> tuple[str, str] | None:
    for section in ("areas", "features", "columns"):
        ids = [item["id"] for item in matrix[section]]
        dup = _duplicate(ids)
        if dup is not None:
            return f"$.{section}[{dup}].id", f"duplicate id {ids[dup]!r}"
    areas = {a["id"] for a in matrix["areas"]}
    features = {f["id"]: f for f in matrix["features"]}
    for i, feat in enumerate(matrix["features"]):
        if feat["area"] not in areas:
            return f"$.features[{i}].area", f"unknown area {feat['area']!r}"
        if feat["mandatory"] != (feat["capability"] is None):
            return f"$.features[{i}].mandatory", "a feature is mandatory exactly when it has no capability"
    columns = {c["id"]: c for c in matrix["columns"]}
    seen: set[tuple[str, str]] = set()
    for i, cell in enumerate(matrix["cells"]):
        where = f"$.cells[{i}]"
        column = columns.get(cell["column"])
        if column is None:
            return f"{where}.column", f"unknown column {cell['column']!r}"
        if column["error"]:
            return f"{where}.column", f"column {cell['column']!r} has an error, so it cannot have cells"
        feat = features.get(cell["feature"])
        if feat is None:
            return f"{where}.feature", f"unknown feature {cell['feature']!r}"
        key = (cell["column"], cell["feature"])
        if key in seen:
            return where, f"second cell for {cell['column']!r} / {cell['feature']!r}"
        seen.add(key)
        problem = _outcome_problem(cell["outcome"], feat, column)
        if problem:
            return f"{where}.outcome", problem
    return None


def _outcome_problem(outcome: str, feature: dict[str, Any], column: dict[str, Any]) -> str | None:
    """Why ``outcome`` contradicts the feature or the column's declarations, if it does."""
    if outcome == "passes":
        return None
    if feature["mandatory"]:
        return None if outcome == "fails" else f"{outcome!r} on mandatory feature {feature['id']!r}"
    if outcome == "fails":
        return f"'fails' on optional feature {feature['id']!r} (use 'declared_but_fails')"
    declared = feature["capability"] in column["declared"]
    if declared != (outcome == "declared_but_fails"):
        state = "declared" if declared else "not declared"
        return f"{outcome!r} but {feature['capability']!r} is {state} by {column['id']!r}"
    return None


def render_text(matrix: dict[str, Any], width: int = TEXT_WIDTH) -> str:
    """The terminal table as plain text, for logs and CI artefacts that cannot show colour."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, legacy_windows=False)
    render_terminal(matrix, console)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def write_all(matrix: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Validate ``matrix`` and write ``parity.{json,md,html,txt}`` into ``out_dir``.

    Nothing is written when validation fails, so a stale but valid set of
    files is never mixed with views of a broken matrix. Returns the paths by
    format name (``json``, ``markdown``, ``html``, ``text``).
    """
    validate(matrix)
    out_dir.mkdir(parents=True, exist_ok=True)
    contents = {
        "json": ("parity.json", json.dumps(matrix, indent=2, ensure_ascii=False) + "\n"),
        "markdown": ("parity.md", render_markdown(matrix)),
        "html": ("parity.html", render_html(matrix)),
        "text": ("parity.txt", render_text(matrix)),
    }
    paths: dict[str, Path] = {}
    for kind, (name, text) in contents.items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        paths[kind] = path
    return paths
