"""How every view shows a column's evidence level.

The levels and what each means come from :class:`virtdrivers.endpoint.Evidence` (its ``.doc``), so the
matrix explains them in the same words as the contract; this module only adds how they look. Like the
outcomes, each level is always written out as its name, never shown by colour alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from virtdrivers.endpoint import Evidence

__all__ = ["EVIDENCE", "EvidenceStyle"]


@dataclass(frozen=True, slots=True)
class EvidenceStyle:
    """``colour``/``background`` for HTML badges and ``style`` for ``rich``, as in :class:`Outcome`."""

    level: Evidence
    colour: str
    background: str
    style: str

    @property
    def label(self) -> str:
        """The level exactly as ``parity.json`` spells it, so a reader can grep one for the other."""
        return self.level.value

    @property
    def description(self) -> str:
        return self.level.doc


#: Every level, most real first: the order legends list them in.
EVIDENCE: dict[Evidence, EvidenceStyle] = {
    s.level: s
    for s in (
        EvidenceStyle(Evidence.REAL, "#116329", "#dafbe1", "bold green"),
        EvidenceStyle(Evidence.VENDOR_SIMULATOR, "#0550ae", "#ddf4ff", "cyan"),
        EvidenceStyle(Evidence.PROJECT_SIMULATOR, "#7d4e00", "#fff8c5", "yellow"),
        EvidenceStyle(Evidence.IN_MEMORY, "#57606a", "#f3f4f6", "bright_black"),
    )
}
