"""The subset of the engine's search language the simulator understands.

``name=web*`` (``*`` matches anything), ``status=up``, terms joined by ``and``,
an optional ``sortby <field> [asc|desc]`` and ``page <n>``. Paging works with the
``max`` query parameter, as on the engine: page ``n`` holds items ``(n-1)*max+1``
to ``n*max`` of the sorted result.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

_TERM = re.compile(r"^\s*([a-z_]+)\s*(=|!=)\s*(\"[^\"]*\"|\S+)\s*$", re.IGNORECASE)


class SearchError(ValueError):
    """A query the engine would refuse with "Cannot search"."""


@dataclass(frozen=True)
class Query:
    terms: tuple[tuple[str, str, str], ...] = ()
    sort_field: str | None = None
    descending: bool = False
    page: int = 1
    extra: dict[str, str] = field(default_factory=dict)


def parse(text: str | None) -> Query:
    if not text or not text.strip():
        return Query()
    text = text.strip()
    page = 1
    m = re.search(r"\s*\bpage\s+(\d+)\s*$", text, re.IGNORECASE)
    if m:
        page = int(m.group(1))
        text = text[: m.start()]
    sort_field, descending = None, False
    m = re.search(r"\s*\bsortby\s+([a-z_]+)(?:\s+(asc|desc))?\s*$", text, re.IGNORECASE)
    if m:
        sort_field, descending = m.group(1).lower(), (m.group(2) or "asc").lower() == "desc"
        text = text[: m.start()]
    terms = []
    if text.strip():
        for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
            t = _TERM.match(part)
            if t is None:
                raise SearchError(f"Cannot search: syntax error near '{part}'")
            terms.append((t.group(1).lower(), t.group(2), t.group(3).strip('"')))
    if page < 1:
        raise SearchError("Cannot search: page must be positive")
    return Query(tuple(terms), sort_field, descending, page)


def run(
    query: Query,
    items: Sequence[T],
    fields: dict[str, Callable[[T], str]],
    max_results: int | None,
) -> list[T]:
    """Filter, sort and page ``items``; ``fields`` gives each searchable field's text."""
    result = list(items)
    for name, op, pattern in query.terms:
        getter = fields.get(name)
        if getter is None:
            raise SearchError(f"Cannot search: unknown field '{name}'")
        pat = pattern.lower()

        def match(item: T, getter: Callable[[T], str] = getter, pat: str = pat) -> bool:
            return fnmatch.fnmatchcase(getter(item).lower(), pat)

        result = [i for i in result if match(i) == (op == "=")]
    if query.sort_field is not None:
        getter = fields.get(query.sort_field)
        if getter is None:
            raise SearchError(f"Cannot search: cannot sort by '{query.sort_field}'")
        result.sort(key=lambda item: getter(item).lower(), reverse=query.descending)
    if max_results is not None and max_results >= 0:
        start = (query.page - 1) * max_results
        result = result[start : start + max_results]
    elif query.page > 1:
        result = []
    return result
