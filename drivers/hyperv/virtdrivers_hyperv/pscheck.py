"""Checks a script against a real PowerShell grammar and the documented cmdlet signatures.

A script is parsed with tree-sitter-powershell; any ERROR or missing node is a syntax
error. Then every command in the syntax tree must be a function the script itself
defines, a built-in alias, or a cmdlet in ``cmdlets.toml`` (each row naming the
learn.microsoft.com page it comes from), and every named parameter it passes must be one
that cmdlet documents (or a common parameter, or -WhatIf/-Confirm where the cmdlet takes
them). Where the table lists parameter sets, the parameters of one call must all belong to
one set. Parameter names are compared case-insensitively and in full: PowerShell would
accept an unambiguous prefix, but a script that relies on one breaks when a later module
version adds a parameter with the same prefix.

The driver's tests run this over every script the driver can send; the simulator runs it
over every script it receives and refuses the ones that fail, so neither can drift from the
documented cmdlets without a test failing. Not checked: .NET method calls
(``[IO.File]::WriteAllBytes``), positional arguments, argument types and values.

tree-sitter is imported on first use, so importing the driver never needs it.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

__all__ = ["Problem", "Table", "check", "commands", "table"]


@dataclass(frozen=True)
class Problem:
    """One reason a script fails the check, with where it is (1-based line)."""

    script: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.script}: line {self.line}: {self.message}"


@dataclass(frozen=True)
class Cmdlet:
    name: str
    doc: str
    checked: str | None
    parameters: frozenset[str]
    """Lower-case names: documented parameters, their aliases, common ones, -WhatIf/-Confirm where taken."""
    aliases: dict[str, str]
    sets: dict[str, frozenset[str]]
    """Lower-case parameter names per documented parameter set; empty when the row lists none."""


@dataclass(frozen=True)
class Table:
    cmdlets: dict[str, Cmdlet]
    """By lower-case name."""
    aliases: dict[str, str]
    common: frozenset[str]
    """Lower-case common parameter names and their aliases."""

    def resolve(self, name: str) -> Cmdlet | None:
        target = self.aliases.get(name.lower(), name)
        return self.cmdlets.get(target.lower())


@functools.cache
def table() -> Table:
    """The cmdlet table shipped with the package (``cmdlets.toml``)."""
    raw = tomllib.loads(resources.files("virtdrivers_hyperv").joinpath("cmdlets.toml").read_text(encoding="utf-8"))
    common_raw: dict[str, Any] = raw["common"]
    common_aliases = {k.lower(): v.lower() for k, v in common_raw.get("aliases", {}).items()}
    risk = {p.lower() for p in common_raw["should_process"]}
    common = frozenset({p.lower() for p in common_raw["parameters"]} | set(common_aliases) - risk - {"wi", "cf"})
    cmdlets: dict[str, Cmdlet] = {}
    for name, row in raw["cmdlets"].items():
        sets = {k: frozenset(p.lower() for p in v) for k, v in row.get("sets", {}).items()}
        params = {p.lower() for p in row.get("parameters", [])}
        for members in sets.values():
            params |= members
        aliases = {k.lower(): v.lower() for k, v in row.get("aliases", {}).items()}
        if row.get("should_process"):
            params |= risk
            aliases |= {"wi": "whatif", "cf": "confirm"}
        cmdlets[name.lower()] = Cmdlet(
            name=name,
            doc=row["doc"],
            checked=row.get("checked"),
            parameters=frozenset(params | set(aliases)),
            aliases=aliases,
            sets=sets,
        )
    return Table(cmdlets=cmdlets, aliases={k.lower(): v for k, v in raw["aliases"].items()}, common=common)


@functools.cache
def _parser() -> Any:
    import tree_sitter_powershell
    from tree_sitter import Language, Parser

    return Parser(Language(tree_sitter_powershell.language()))


@dataclass(frozen=True)
class Command:
    name: str
    parameters: tuple[str, ...]
    line: int


def _walk(node: Any) -> Any:
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children))


def _syntax(script: str, text: str) -> tuple[Any, list[Problem]]:
    tree = _parser().parse(text.encode("utf-8"))
    problems = [
        Problem(
            script,
            n.start_point[0] + 1,
            f"syntax error: missing {n.type!r}"
            if n.is_missing
            else f"syntax error near {n.text.decode('utf-8', 'replace')[:40]!r}",
        )
        for n in _walk(tree.root_node)
        if n.type == "ERROR" or n.is_missing
    ]
    return tree, problems


def commands(text: str) -> tuple[list[Command], set[str]]:
    """The commands a script calls (name, named parameters, line) and the functions it defines (lower case)."""
    tree = _parser().parse(text.encode("utf-8"))
    found: list[Command] = []
    functions: set[str] = set()
    for node in _walk(tree.root_node):
        if node.type == "function_statement":
            functions |= {c.text.decode().lower() for c in node.children if c.type == "function_name"}
        elif node.type == "command":
            name = next((c.text.decode() for c in node.children if c.type == "command_name"), "")
            params = tuple(
                e.text.decode().lstrip("-").rstrip(":")
                for c in node.children
                if c.type == "command_elements"
                for e in c.children
                if e.type == "command_parameter"
            )
            found.append(Command(name, params, node.start_point[0] + 1))
    return found, functions


def check(text: str, script: str = "<script>") -> list[Problem]:
    """Every reason ``text`` fails the grammar-and-signature check; empty when it passes."""
    _, problems = _syntax(script, text)
    if problems:
        return problems
    known = table()
    calls, functions = commands(text)
    for call in calls:
        if call.name.lower() in functions:
            continue  # the script's own function: positional arguments only
        cmdlet = known.resolve(call.name)
        if cmdlet is None:
            problems.append(Problem(script, call.line, f"{call.name!r} is not a cmdlet in the table"))
            continue
        named: set[str] = set()
        for param in call.parameters:
            key = param.lower()
            if key in known.common:
                continue
            if key not in cmdlet.parameters:
                problems.append(
                    Problem(script, call.line, f"{cmdlet.name} has no parameter -{param} (see {cmdlet.doc})")
                )
                continue
            named.add(cmdlet.aliases.get(key, key))
        named -= {"whatif", "confirm"}
        if cmdlet.sets and named and not any(named <= members for members in cmdlet.sets.values()):
            listed = " ".join(f"-{p}" for p in sorted(named))
            problems.append(
                Problem(script, call.line, f"{cmdlet.name}: no documented parameter set takes {listed} ({cmdlet.doc})")
            )
    return problems
