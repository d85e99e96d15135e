"""Golden script texts, data-only arguments (no injection) and the cmd.exe length limit."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtdrivers_hyperv import scripts
from virtdrivers_hyperv.session import encoded_script
from virtdrivers_hyperv.simulator.handlers import HANDLERS, depth_of

GOLDEN = Path(__file__).parent / "golden"

HOSTILE = [
    "x'; Remove-VM * -Force; '",
    'x"; Stop-Computer; "',
    "$(Remove-Item C:\\ -Recurse)",
    "a`nb`$c ; & | > <",
    "line\nbreak\r\nand\ttab",
    "é ü 漢字 🙂 \u202e",
    "@{a=1}; $a=2",
    "'@\n" + "x" * 40,
]


@pytest.mark.parametrize("name", sorted(scripts.SCRIPTS))
def test_script_text_is_pinned(name: str) -> None:
    golden = (GOLDEN / f"{name}.ps1").read_text(encoding="utf-8")
    assert scripts.SCRIPTS[name] == golden, f"script {name!r} changed: review it, then update tests/golden"


def test_rendered_script_is_pinned() -> None:
    golden = (GOLDEN / "rendered-start.ps1").read_text(encoding="utf-8")
    assert scripts.render("start", {"id": "6bc328c0-f2b2-4e44-bbd1-6616623a60da"}) == golden
    assert scripts.STDIN_LINE == (
        "$a=[Text.Encoding]::UTF8.GetString([Convert]::FromBase64String((@($input) -join '').Trim()))"
        "|ConvertFrom-Json\n"
    )


def test_every_script_has_a_simulator_twin_and_json_depth() -> None:
    assert {name for name, _ in HANDLERS.values()} == set(scripts.SCRIPTS)
    for body in scripts.SCRIPTS.values():
        assert "ConvertTo-Json" in body
        assert depth_of(body) == 4


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_only_data(value: str) -> None:
    args = {"name": value, "id": value, "notes": value, "path": value}
    for name in scripts.SCRIPTS:
        text = scripts.render(name, args)
        # The only variable part is one base64 literal: the body is the fixed text, byte for byte.
        decoded, body = scripts.split_script(text)
        assert body == scripts.SCRIPTS[name]
        assert decoded == args
        assert value not in text
        payload = text[len(scripts.DATA_PREFIX) : text.index(scripts.DATA_SUFFIX)]
        assert set(payload) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", "id", "node", "notes"]), st.text(max_size=64)))
def test_any_arguments_round_trip_without_touching_the_body(args: dict[str, str]) -> None:
    text = scripts.render("create", args)
    decoded, body = scripts.split_script(text)
    assert decoded == args
    assert body == scripts.SCRIPTS["create"]


def test_command_line_is_powershell_encodedcommand() -> None:
    text = scripts.render("info")
    line = scripts.command_line(text)
    assert line.startswith("powershell -encodedcommand ")
    assert encoded_script(line) == text
    assert base64.b64decode(line.split()[-1]).decode("utf-16-le") == text


def test_every_body_leaves_room_for_arguments_under_the_cmd_limit() -> None:
    """Every script with the arguments of an ordinary spec stays under 8,191 with its data inline."""
    big = {
        "id": "6bc328c0-f2b2-4e44-bbd1-6616623a60da",
        "name": "web-frontend-01",
        "node": "HV-NODE2",
        "dir": "C:\\ClusterStorage\\Volume1\\virtdrivers\\vd-6bc328c0-f2b2-4e44-bbd1-6616623a60da",
        "disks": [{"size": 64 * 1024**4, "fixed": True}] * 2,
        "notes": json.dumps({"virtdrivers": 1, "meta": {"owner": "team-a", "purpose": "x" * 40}, "labels": {}}),
        "path": "C:\\ClusterStorage\\Volume1\\virtdrivers\\vd-6bc328c0\\disk-0123456789ab.vhdx",
    }
    for name in scripts.SCRIPTS:
        assert len(scripts.command_line(scripts.render(name, big))) <= scripts.CMD_LIMIT
    # The two scripts that carry a create token (the longest a CreateToken gets) in several fields.
    token = "vdc1-0123456789ab-4194304-123456789-1700000000-" + "h" * 64
    notes = json.loads(big["notes"])
    marked = json.dumps({**notes, "create": token})
    folder = f"C:\\ClusterStorage\\Volume1\\virtdrivers\\vd-{token}"
    create = {k: big[k] for k in ("name", "node", "disks")} | {"dir": folder, "notes": marked, "cpu": 2, "mem": 2**31}
    completion = {"id": big["id"], "dir": folder, "token": token, "was": marked, "notes": big["notes"]}
    for name, args in (("create", create), ("complete", completion)):
        assert len(scripts.command_line(scripts.render(name, args))) <= scripts.CMD_LIMIT


def test_oversized_arguments_go_on_stdin_with_the_same_body() -> None:
    args = {"notes": "x" * 70_000, "name": "漢" * 64}
    with pytest.raises(scripts.ScriptTooLong):
        scripts.command_line(scripts.render("create", args))
    script, stdin = scripts.render_stdin("create", args)
    assert len(scripts.command_line(script)) <= scripts.CMD_LIMIT
    assert script == scripts.STDIN_LINE + scripts.SCRIPTS["create"]
    # Any split into WinRM Send chunks (and line breaks between them) decodes to the same arguments.
    chunked = b"\r\n".join(stdin[i : i + 1000] for i in range(0, len(stdin), 1000))
    assert scripts.split_script(script, chunked) == (args, scripts.SCRIPTS["create"])
