"""Every script the driver can send, parsed by a real PowerShell grammar and checked against the
documented cmdlet signatures (``cmdlets.toml``); planted mistakes fail with the script and line;
the simulator refuses a script that fails the same check."""

from __future__ import annotations

import tomllib
from importlib import resources

import pytest

from virtdrivers.errors import DriverError
from virtdrivers_hyperv import pscheck, scripts
from virtdrivers_hyperv.driver import HypervDriver
from virtdrivers_hyperv.simulator import Simulator


def _renderings(name: str) -> list[str]:
    """Both forms a script is sent in: arguments inline, and arguments on stdin."""
    return [scripts.render(name, {"id": "6bc328c0-f2b2-4e44-bbd1-6616623a60da"}), scripts.render_stdin(name, {})[0]]


@pytest.mark.parametrize("name", sorted(scripts.SCRIPTS))
def test_every_script_parses_and_calls_only_documented_cmdlets_and_parameters(name: str) -> None:
    for text in _renderings(name):
        assert pscheck.check(text, name) == []
        calls, _ = pscheck.commands(text)
        assert calls, "the grammar found the script's commands"


def test_every_cmdlet_in_the_scripts_has_a_row_with_its_page() -> None:
    used = set()
    for name in scripts.SCRIPTS:
        calls, functions = pscheck.commands(scripts.render(name, {}))
        used |= {c.name.lower() for c in calls if c.name.lower() not in functions}
    table = pscheck.table()
    rows = [table.resolve(u) for u in used]
    assert None not in rows
    assert all(r is not None and r.doc.startswith("https://learn.microsoft.com/") for r in rows)
    # Rows nobody uses are dead weight that nobody will keep in step with the documentation.
    names = {r.name.lower() for r in rows if r is not None}
    assert set(table.cmdlets) == names, f"unused rows: {sorted(set(table.cmdlets) - names)}"


def test_the_table_says_which_rows_were_checked_against_their_page() -> None:
    raw = tomllib.loads(resources.files("virtdrivers_hyperv").joinpath("cmdlets.toml").read_text(encoding="utf-8"))
    checked = sorted(k for k, v in raw["cmdlets"].items() if v.get("checked"))
    assert {"New-VHD", "Add-VMNetworkAdapter", "Measure-VM", "Mount-VHD"} <= set(checked)
    assert all(raw["cmdlets"][k].get("sets") for k in checked), "a checked row lists its parameter sets"


PLANTS = [
    # (script, text to replace, replacement, what the message must say)
    ("prepare", "-ParentPath", "-ParentPth", "New-VHD has no parameter -ParentPth"),
    ("create", "-StaticMacAddress", "-StaticMac", "Add-VMNetworkAdapter has no parameter -StaticMac"),
    ("metrics", "Measure-VM -VM", "Measure-VMs -VM", "'Measure-VMs' is not a cmdlet"),
    ("prepare", "-Differencing", "-Fixed", "New-VHD: no documented parameter set takes"),
    ("stop", "-TurnOff -Force}", "-TurnOff -Force -Confirm:$false}", None),  # Stop-VM does take -Confirm
    ("detach", "Out-VD @()", "Out-Null -Confirm", "Out-Null has no parameter -Confirm"),
    ("attach", "try{Add-VMHardDiskDrive", "try{Add-VMHardDiskDrive (", "syntax error"),
]


@pytest.mark.parametrize(("name", "old", "new", "says"), PLANTS, ids=[f"{p[0]}:{p[2]}" for p in PLANTS])
def test_a_planted_mistake_fails_with_the_script_and_its_line(name: str, old: str, new: str, says: str | None) -> None:
    text = scripts.render(name, {})
    assert old in text
    planted = text.replace(old, new, 1)
    problems = pscheck.check(planted, name)
    if says is None:
        assert problems == []
        return
    line = planted[: planted.index(new)].count("\n") + 1
    assert problems, f"the planted {new!r} passed the check"
    assert any(says in str(p) for p in problems), [str(p) for p in problems]
    assert all(str(p).startswith(f"{name}: line ") for p in problems)
    if "syntax" not in says:
        assert [p.line for p in problems] == [line], "the problem is reported on the planted line"


def test_parameters_are_matched_in_full_and_aliases_resolve() -> None:
    assert pscheck.check("Get-VM -Id 1 -EA 0 -ErrorAction Stop") == []
    assert pscheck.check("Get-VM -VMName x") == []  # a documented alias of -Name
    assert [p.message for p in pscheck.check("Get-VM -Comp x")] == [
        "Get-VM has no parameter -Comp (see https://learn.microsoft.com/powershell/module/hyper-v/get-vm)"
    ], "PowerShell would take the prefix; the check does not"
    assert pscheck.check("function Out-X($a){};Out-X -Anything 1") == [], "the script's own functions"
    assert pscheck.check("Get-VM -WhatIf")[0].message.startswith("Get-VM has no parameter -WhatIf")


def test_the_simulator_refuses_a_script_that_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    with Simulator(user="admin", password="pw-ps", https=True, inventory={"vms": []}) as sim:
        settings = {"host": "127.0.0.1", "port": sim.port, "user": "admin", "password": "pw-ps"}
        with HypervDriver(settings, transport="basic", ca_file=str(sim.ca_file)) as d:
            assert d.list_networks()
            planted = scripts.SCRIPTS["networks"].replace("Get-VMSwitch", "Get-VMSwitches")
            monkeypatch.setitem(scripts.SCRIPTS, "networks", planted)
            with pytest.raises(DriverError) as err:
                d.list_networks()
            assert "grammar-and-signature check" in str(err.value)
            text = scripts.render("networks", {})
            line = text[: text.index("Get-VMSwitches")].count("\n") + 1
            assert f"line {line}: 'Get-VMSwitches' is not a cmdlet" in str(err.value)
