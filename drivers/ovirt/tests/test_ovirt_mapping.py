"""The pure translations between virtdrivers objects and engine objects."""

from __future__ import annotations

import datetime

import ovirtsdk4.types as types
import pytest

from virtdrivers.capabilities import Capability, DiskFormat
from virtdrivers.errors import NotSupported
from virtdrivers.objects import DiskSpec, EventType, HAPriority, InstanceSpec, PowerState
from virtdrivers_ovirt import mapping


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("up", PowerState.RUNNING),
        ("migrating", PowerState.RUNNING),
        ("down", PowerState.SHUTDOWN),
        ("image_locked", PowerState.SHUTDOWN),
        ("suspended", PowerState.SUSPENDED),
        ("saving_state", PowerState.SUSPENDED),
        ("paused", PowerState.PAUSED),
        ("not_responding", PowerState.NOSTATE),
        ("something_new", PowerState.NOSTATE),
    ],
)
def test_power_state_from_engine_status(status: str, state: PowerState) -> None:
    assert mapping.power_state(status) == state
    assert mapping.power_state(types.VmStatus(status) if status != "something_new" else status) == state


def test_ha_priority_uses_the_ui_values_and_bands() -> None:
    assert [mapping.ha_priority_to_ovirt(p) for p in HAPriority] == [1, 50, 100]
    for priority in HAPriority:
        assert mapping.ha_priority_from_ovirt(mapping.ha_priority_to_ovirt(priority)) == priority
    assert mapping.ha_priority_from_ovirt(None) == HAPriority.LOW
    assert mapping.ha_priority_from_ovirt(30) == HAPriority.MEDIUM
    assert mapping.ha_priority_from_ovirt(90) == HAPriority.HIGH


def test_marker_keeps_the_administrators_comment() -> None:
    assert mapping.parse_marker("do not reboot") == (False, {})
    marked = mapping.with_marker("do not reboot\nticket 42", {"owner": "ops <&>"})
    assert marked.startswith("do not reboot\nticket 42\n")
    assert mapping.parse_marker(marked) == (True, {"owner": "ops <&>"})
    # Re-marking replaces the marker line and keeps the rest.
    again = mapping.with_marker(marked, {"a": "b"})
    assert again.count(mapping.MARKER) == 1
    assert mapping.parse_marker(again) == (True, {"a": "b"})
    assert mapping.parse_marker(None) == (False, {})
    assert mapping.parse_marker("virtdrivers:{broken") == (True, {})


def test_topology_keeps_a_pets_cores_per_socket_when_it_can() -> None:
    assert mapping.topology(4) == (4, 1, 1)
    assert mapping.topology(8, (2, 2, 1)) == (4, 2, 1)
    assert mapping.topology(3, (2, 2, 1)) == (3, 1, 1)


def test_instance_info_from_engine_vm() -> None:
    vm = types.Vm(
        id="v1",
        name="web",
        comment=mapping.with_marker("", {"k": "v"}),
        status=types.VmStatus.UP,
        cpu=types.Cpu(topology=types.CpuTopology(sockets=2, cores=2, threads=1)),
        memory=2 * 1024**3,
        host=types.Host(id="h1"),
        disk_attachments=[
            types.DiskAttachment(
                disk=types.Disk(
                    id="d1", alias="root", provisioned_size=10 * 1024**3, format=types.DiskFormat.COW, sparse=True
                )
            )
        ],
    )
    info = mapping.instance_info(vm, {"h1": "host1"})
    assert (info.id, info.name, info.power_state, info.vcpus, info.memory_mb) == (
        "v1",
        "web",
        PowerState.RUNNING,
        4,
        2048,
    )
    assert (info.node, info.host, info.managed, info.metadata) == ("host1", "host1", True, {"k": "v"})
    assert [(d.id, d.size_gib, d.format, d.thin, d.label) for d in info.disks] == [
        ("d1", 10, DiskFormat.QCOW2, True, "root")
    ]


def test_vm_and_disk_requests_are_built_from_specs() -> None:
    spec = InstanceSpec(name="db", vcpus=2, memory_mb=512, metadata={"a": "b"})
    vm = mapping.vm_for_spec(types, spec, "Default", "h2")
    assert (vm.name, vm.memory, vm.cpu.topology.sockets, vm.cluster.name, vm.template.name) == (
        "db",
        512 * 1024**2,
        2,
        "Default",
        "Blank",
    )
    assert vm.placement_policy.hosts[0].id == "h2"
    assert mapping.parse_marker(vm.comment) == (True, {"a": "b"})
    att = mapping.disk_attachment_for_spec(types, DiskSpec(size_gib=3, thin=False), DiskFormat.RAW, "d", "sd", True)
    assert (att.disk.format, att.disk.sparse, att.disk.provisioned_size, att.bootable) == (
        types.DiskFormat.RAW,
        False,
        3 * 1024**3,
        True,
    )
    with pytest.raises(NotSupported) as err:
        mapping.disk_attachment_for_spec(types, DiskSpec(size_gib=1, format="vmdk"), DiskFormat.QCOW2, "d", "sd", True)
    assert err.value.capability == Capability.DISK_VMDK


def test_snapshot_info_is_in_utc() -> None:
    tz = datetime.timezone(datetime.timedelta(hours=2))
    snap = types.Snapshot(
        id="s", description="before", date=datetime.datetime(2024, 1, 1, 12, tzinfo=tz), persist_memorystate=True
    )
    info = mapping.snapshot_info(snap, "v")
    assert info.created_at == datetime.datetime(2024, 1, 1, 10, tzinfo=datetime.UTC)
    assert (info.name, info.with_memory) == ("before", True)


def test_lifecycle_events_from_status_changes() -> None:
    before = {"a": ("down", None, "a"), "b": ("up", "h1", "b"), "c": ("up", "h1", "c"), "d": ("suspended", "h1", "d")}
    after = {
        "a": ("powering_up", "h1", "a"),
        "b": ("up", "h2", "b"),
        "d": ("up", "h1", "d"),
        "e": ("up", "h2", "e"),
    }
    events = set(mapping.lifecycle_events(before, after))
    assert events == {
        ("a", EventType.STARTED),
        ("b", EventType.MIGRATED),
        ("c", EventType.DESTROYED),
        ("d", EventType.RESUMED),
        ("e", EventType.CREATED),
        ("e", EventType.STARTED),
    }
    # Half-way transitions are not reported as their own state.
    assert mapping.lifecycle_events({"a": ("up", "h", "a")}, {"a": ("powering_down", "h", "a")}) == []
    assert mapping.lifecycle_events({"a": ("up", "h", "a")}, {"a": ("down", None, "a")}) == [("a", EventType.STOPPED)]
    assert mapping.lifecycle_events({"a": ("up", "h", "a")}, {"a": ("suspended", "h", "a")}) == [
        ("a", EventType.SUSPENDED)
    ]
