"""Broken drivers for the conformance suite's mutation check.

Each mutant is a small subclass of the reference fake (:class:`virtdrivers.fake.FakeDriver`)
with exactly one bug of a kind real backends have, registered as its own
``virtdrivers.drivers`` entry point, so the parity runner treats it as just
another installed plugin and runs the whole suite against it on the fake's
embedded endpoint. The suite is strong enough when every mutant's column shows
a non-pass cell on the feature its docstring names.

A mutant's docstring is one line: the bug, then ``Feature: <matrix row id>.``
:func:`mutants` reads the catalogue from the classes; ``python -m vd_mutants``
prints it as JSON (with whether each entry point is registered), which is how
the mutation test learns it from the installed copy.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import asdict, dataclass

__all__ = ["MODULES", "Mutant", "mutants"]

#: The mutant modules, one per area of the contract, in report order.
MODULES = ("lifecycle", "power", "storage", "snapshots", "migration", "cluster", "pets_events", "workloads")

_DOC = re.compile(r"^(?P<bug>.+?)\s+Feature: (?P<feature>[a-z0-9_]+)\.$")


@dataclass(frozen=True)
class Mutant:
    """One broken driver: its entry-point name, where it lives, its bug and the feature that must catch it."""

    name: str
    target: str
    module: str
    bug: str
    feature: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def mutants() -> list[Mutant]:
    """Every mutant class in :data:`MODULES`, in source order; raises if a docstring breaks the format."""
    from virtdrivers.fake import FakeDriver

    found: list[Mutant] = []
    for short in MODULES:
        module = importlib.import_module(f"{__name__}.{short}")
        for attr, cls in vars(module).items():
            if not (isinstance(cls, type) and issubclass(cls, FakeDriver) and cls.__module__ == module.__name__):
                continue
            match = _DOC.match((cls.__doc__ or "").strip())
            if match is None:
                raise ValueError(f"{cls.__qualname__}: docstring must be one line ending 'Feature: <id>.'")
            found.append(Mutant(cls.name, f"{module.__name__}:{attr}", short, match["bug"], match["feature"]))
    return found
