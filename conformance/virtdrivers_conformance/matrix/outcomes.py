"""The five cell outcomes and how every view shows them.

Each outcome has a symbol *and* a label as well as a colour, so no view ever
relies on colour alone: the matrix must read the same on a monochrome
terminal, in a plain-text CI log and to a colour-blind operator.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ATTENTION", "OUTCOMES", "Outcome"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one cell outcome is displayed.

    ``colour`` is the foreground on a light background (HTML, and the
    hex colour offered to anything else), ``background`` the matching tint of
    an HTML cell, and ``style`` the ``rich`` style, given separately because
    named ANSI colours follow the operator's terminal theme where a hex value
    would not. ``ascii`` stands in for ``symbol`` on a console that cannot
    encode it (a legacy Windows code page, ``PYTHONIOENCODING=ascii``), and
    looks like it so the legend still reads across.
    """

    id: str
    label: str
    symbol: str
    colour: str
    background: str
    style: str
    description: str
    ascii: str


#: The five outcomes, in the order legends list them: the three plain answers, then the two lies.
OUTCOMES: dict[str, Outcome] = {
    o.id: o
    for o in (
        Outcome(
            "passes",
            "passes",
            "✓",
            "#116329",
            "#dafbe1",
            "green",
            "Every test of the feature passed.",
            "v",
        ),
        Outcome(
            "fails",
            "fails",
            "✗",
            "#a40e26",
            "#ffebe9",
            "bold red",
            "A mandatory feature failed: the driver does not meet the contract.",
            "X",
        ),
        Outcome(
            "not_declared",
            "not declared",
            "○",
            "#57606a",
            "#f3f4f6",
            "bright_black",
            "The driver does not declare the capability, and the probe confirmed it does not work (skipped).",
            "o",
        ),
        Outcome(
            "declared_but_fails",
            "declared but fails",
            "⚠",
            "#8a2a00",
            "#ffd8b5",
            "bold dark_orange",
            "The driver declares the capability but a test of it failed: callers will trust a broken feature.",
            "!",
        ),
        Outcome(
            "not_declared_but_works",
            "not declared but works",
            "✚",
            "#0550ae",
            "#ddf4ff",
            "bold cyan",
            "The driver does not declare the capability, yet every probe passed: callers will never use it.",
            "+",
        ),
    )
}

#: Outcomes a reader must act on; the Markdown "Failures" section and the HTML details list these.
ATTENTION: frozenset[str] = frozenset({"fails", "declared_but_fails", "not_declared_but_works"})
