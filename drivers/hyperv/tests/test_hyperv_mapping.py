"""Pure mapping: Windows PowerShell 5.1 output quirks, CLIXML errors, Notes."""

from __future__ import annotations

import base64
import datetime
import json

import pytest

from virtdrivers.capabilities import DiskFormat
from virtdrivers.errors import Conflict, DriverError, InstanceNotFound, InvalidSpec, InvalidState, NotFound
from virtdrivers.objects import HAPriority, PowerState
from virtdrivers_hyperv import mapping
from virtdrivers_hyperv.simulator import psjson

# A real-shaped stream: a progress record first, then the error lines, CRLF escaped.
REAL_CLIXML = (
    b"#< CLIXML\r\n"
    b'<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
    b'<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T>'
    b'<T>System.Object</T></TN><MS><I64 N="SourceId">1</I64><PR N="Record"><AV>Preparing modules for first use.'
    b"</AV><AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR><SD> </SD></PR></MS></Obj>"
    b'<S S="Error">Get-VM : Hyper-V was unable to find a virtual machine with name "web &amp; db"._x000D__x000A_</S>'
    b'<S S="Error">At line:1 char:1_x000D__x000A_</S>'
    b'<S S="Error">+ Get-VM -Name x_x000D__x000A_</S>'
    b'<S S="Error">    + CategoryInfo          : InvalidArgument: (web &amp; db:String) [Get-VM], '
    b"VirtualizationException_x000D__x000A_</S>"
    b'<S S="Error">    + FullyQualifiedErrorId : InvalidParameter,'
    b"Microsoft.HyperV.PowerShell.Commands.GetVM_x000D__x000A_</S></Objs>"
)


def _out(text: str) -> bytes:
    return base64.b64encode(text.encode()) + b"\r\n"


def test_single_object_and_empty_pipeline_become_lists() -> None:
    assert mapping.as_list(None) == []
    assert mapping.as_list({"Id": "x"}) == [{"Id": "x"}]
    assert mapping.as_list([1, 2]) == [1, 2]
    # The simulator writes what 5.1 writes: nothing, an unwrapped object, or an array.
    assert psjson.convert_to_json([]) is None
    assert psjson.convert_to_json([{"a": 1}], compress=True) == '{"a":1}'
    assert psjson.convert_to_json([{"a": 1}, {"a": 2}], compress=True) == '[{"a":1},{"a":2}]'


def test_ps_dates_round_trip() -> None:
    when = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    text = psjson.convert_to_json({"Created": when}, compress=True)
    assert text == '{"Created":"\\/Date(1714566600000)\\/"}'
    assert mapping.parse_ps_date(json.loads(text or "")["Created"]) == when
    assert mapping.parse_ps_date("/Date(1714566600000+0200)/") == when
    assert mapping.parse_ps_date("yesterday") is None


def test_depth_limit_collapses_to_tostring() -> None:
    text = psjson.convert_to_json({"a": {"b": {"c": 1}}}, depth=1, compress=True)
    assert text == '{"a":{"b":"@{c=1}"}}'


def test_5_1_escapes_html_characters_and_decoder_restores_them() -> None:
    text = psjson.convert_to_json({"Name": "a<b>&'c"}, compress=True) or ""
    assert "<" not in text
    assert "'" not in text
    assert json.loads(text)["Name"] == "a<b>&'c"


@pytest.mark.parametrize(
    ("state", "power"),
    [
        (2, PowerState.RUNNING),
        (3, PowerState.SHUTDOWN),
        (6, PowerState.SUSPENDED),
        (9, PowerState.PAUSED),
        (10, PowerState.RUNNING),
        (32773, PowerState.SUSPENDED),
        (32776, PowerState.PAUSED),
        (32777, PowerState.RUNNING),
        (32786, PowerState.CRASHED),
        (1, PowerState.NOSTATE),
        ("Running", PowerState.NOSTATE),
    ],
)
def test_vm_state_integers(state: object, power: PowerState) -> None:
    assert mapping.power_state(state) == power


def test_parse_output_decodes_base64_json_and_empty() -> None:
    assert mapping.parse_output(b"\r\n") is None
    assert mapping.parse_output(_out('{"Name":"é"}')) == {"Name": "é"}
    with pytest.raises(DriverError):
        mapping.parse_output(b"not base64 at all!")


def test_instance_from_projection() -> None:
    notes = mapping.encode_notes({"owner": "a"}, {"disk0.vhdx": "root"})
    info = mapping.instance_from(
        {
            "Id": "6BC328C0-F2B2-4E44-BBD1-6616623A60DA",
            "Name": "web",
            "State": 2,
            "Cpu": 2,
            "Mem": 2048 * mapping.MIB,
            "Host": "HV-NODE1",
            "Notes": notes,
            "Disks": {"Path": "C:\\v\\disk0.vhdx", "Size": 3 * mapping.GIB, "Type": 3, "Format": 3},
        }
    )
    assert info.id == "6bc328c0-f2b2-4e44-bbd1-6616623a60da"
    assert (info.power_state, info.vcpus, info.memory_mb, info.node) == (PowerState.RUNNING, 2, 2048, "HV-NODE1")
    assert info.metadata == {"owner": "a"}
    assert info.managed
    (disk,) = info.disks
    assert (disk.size_gib, disk.format, disk.thin, disk.label) == (3, DiskFormat.VHDX, True, "root")


def test_notes_of_pets_are_unmanaged() -> None:
    assert mapping.decode_notes("web front end") == (False, {}, {})
    assert mapping.decode_notes('{"other": 1}') == (False, {}, {})
    assert mapping.decode_notes(None) == (False, {}, {})
    adopted = mapping.encode_notes({}, {}, original="web front end")
    assert mapping.decode_notes(adopted)[0] is True
    assert json.loads(adopted)["orig"] == "web front end"


def test_ha_priorities() -> None:
    assert mapping.priority_value(HAPriority.HIGH) == 3000
    ha = mapping.ha_from({"Enabled": True, "Owner": "N2", "State": 0, "Priority": 1000}, "id")
    assert (ha.enabled, ha.owner_node, ha.state, ha.priority) == (True, "N2", "online", HAPriority.LOW)
    assert not mapping.ha_from({"Enabled": False}, "id").enabled


def test_real_clixml_error_is_parsed() -> None:
    err = mapping.parse_clixml(REAL_CLIXML)
    assert err.message == 'Hyper-V was unable to find a virtual machine with name "web & db".'
    assert err.category == "InvalidArgument"
    assert err.error_id == "InvalidParameter"
    assert isinstance(mapping.error_from(err), InvalidSpec)


def test_simulator_clixml_parses_like_real_clixml() -> None:
    raw = psjson.clixml_error(
        cmdlet="Start-VM",
        message="'a<b>' failed to change state.\nsecond line",
        category="InvalidOperation",
        error_id="InvalidState,Microsoft.HyperV.PowerShell.Commands.StartVM",
        target="a<b>",
        exception="VirtualizationException",
    )
    err = mapping.parse_clixml(raw)
    assert err.message == "'a<b>' failed to change state."
    assert (err.category, err.error_id) == ("InvalidOperation", "InvalidState")
    assert isinstance(mapping.error_from(err), InvalidState)


def test_plain_stderr_from_cmd_exe() -> None:
    err = mapping.parse_clixml(b"The command line is too long.\r\n")
    assert err.message == "The command line is too long."
    assert type(mapping.error_from(err)) is DriverError


@pytest.mark.parametrize(
    ("error_id", "category", "kind"),
    [
        ("VDVMNotFound", "ObjectNotFound", InstanceNotFound),
        ("VDNameExists", "ResourceExists", InvalidSpec),
        ("VDSnapExists", "ResourceExists", Conflict),
        ("VDDiskNotFound", "ObjectNotFound", NotFound),
        ("OutOfMemory", "ResourceUnavailable", InvalidState),
        ("X", "ResourceExists", Conflict),
    ],
)
def test_error_kinds(error_id: str, category: str, kind: type[Exception]) -> None:
    err = mapping.error_from(mapping.PSError("m", category, error_id), instance_id="i")
    assert isinstance(err, kind)
    if kind is InvalidSpec and error_id == "VDNameExists":
        assert isinstance(err, InvalidSpec)
        assert err.field == "name"
