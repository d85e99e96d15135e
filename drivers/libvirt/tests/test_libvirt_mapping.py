"""Unit tests of the pure translation layer: XML in and out, states, events."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtdrivers.capabilities import DiskFormat
from virtdrivers.errors import InvalidSpec
from virtdrivers.objects import EventType, PowerState
from virtdrivers_libvirt import mapping

UUID = "6f1c1c4e-8a53-4c1e-9d4e-1d2b3c4d5e6f"
HOSTILE = "a</name><devices><disk/></devices>&amp;'\"<!--"


def _disk(dev: str = "sda", **kw: object) -> mapping.DiskRecord:
    fields: dict[str, object] = {"dev": dev, "path": f"/images/{dev}.qcow2", "size_gib": 2, "format": DiskFormat.QCOW2}
    fields.update(kw)
    return mapping.DiskRecord(**fields)  # type: ignore[arg-type]


def _xml(**kw: object) -> str:
    fields: dict[str, object] = {"uuid": UUID, "name": "vm", "vcpus": 2, "memory_mb": 128, "domain_type": "qemu"}
    fields.update(kw)
    return mapping.domain_xml(**fields)  # type: ignore[arg-type]


def test_hostile_strings_do_not_change_the_structure() -> None:
    disk = _disk(label=HOSTILE)
    xml = _xml(name=HOSTILE, metadata={HOSTILE: HOSTILE}, disks=(disk,))
    root = ET.fromstring(xml)
    tags = "name uuid metadata memory vcpu os features on_poweroff on_reboot on_crash devices"
    assert [c.tag for c in root] == tags.split()
    assert len(root.findall("devices/disk")) == 1
    record = mapping.parse_domain_xml(xml)
    assert record.name == HOSTILE
    assert record.metadata == {HOSTILE: HOSTILE}
    assert record.disks[0].label == HOSTILE


@settings(max_examples=60, deadline=None)
@given(
    name=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=64).map(str.strip).filter(bool),
    value=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=200),
)
def test_any_name_and_metadata_round_trip(name: str, value: str) -> None:
    record = mapping.parse_domain_xml(_xml(name=name, metadata={"k": value}))
    assert (record.name, record.metadata) == (name, {"k": value})


def test_round_trip_of_a_managed_domain() -> None:
    disks = (_disk("sda", label="root"), _disk("sdb", format=DiskFormat.RAW, thin=False, path="/images/b.raw"))
    record = mapping.parse_domain_xml(_xml(disks=disks, metadata={"owner": "ops"}))
    assert record.managed
    assert (record.uuid, record.vcpus, record.memory_mb) == (UUID, 2, 128)
    assert record.disks == disks
    info = record.info(PowerState.RUNNING, "node-1")
    assert [d.id for d in info.disks] == ["sda", "sdb"]
    assert info.disks[1].thin is False
    assert (info.node, info.host) == ("node-1", "node-1")


def test_domain_made_by_someone_else_is_unmanaged_and_owns_nothing() -> None:
    xml = (
        "<domain type='kvm'><name>pet</name><uuid>" + UUID + "</uuid><memory unit='KiB'>1048576</memory>"
        "<currentMemory unit='KiB'>524288</currentMemory><vcpu current='2'>4</vcpu><devices>"
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/x.qcow2'/>"
        "<target dev='vda' bus='virtio'/></disk><disk type='file' device='cdrom'><target dev='hdc'/></disk>"
        "</devices></domain>"
    )
    record = mapping.parse_domain_xml(xml)
    assert not record.managed
    assert (record.vcpus, record.memory_mb) == (2, 512)
    assert [(d.dev, d.owned, d.format) for d in record.disks] == [("vda", False, DiskFormat.QCOW2)]


def test_resized_xml_changes_only_the_size() -> None:
    xml = _xml(disks=(_disk(),), metadata={"a": "b"})
    resized = mapping.parse_domain_xml(mapping.resized_xml(xml, vcpus=4, memory_mb=512))
    before = mapping.parse_domain_xml(xml)
    assert (resized.vcpus, resized.memory_mb) == (4, 512)
    assert (resized.disks, resized.metadata, resized.name) == (before.disks, before.metadata, before.name)
    only_cpu = mapping.parse_domain_xml(mapping.resized_xml(xml, vcpus=3, memory_mb=None))
    assert (only_cpu.vcpus, only_cpu.memory_mb) == (3, 128)


def test_redefined_disks_adds_and_removes_devices_and_metadata() -> None:
    a, b = _disk("sda"), _disk("sdb", path="/images/b.qcow2")
    xml = _xml(disks=(a,), metadata={"k": "v"})
    added = mapping.redefined_disks_xml(xml, {"k": "v"}, (a, b))
    assert mapping.parse_domain_xml(added).disks == (a, b)
    removed = mapping.parse_domain_xml(mapping.redefined_disks_xml(added, {"k": "v"}, (b,)))
    assert removed.disks == (b,)
    assert removed.metadata == {"k": "v"}
    assert len(ET.fromstring(added).findall(f"metadata/{{{mapping.NAMESPACE}}}instance")) == 1


def test_metadata_xml_for_set_metadata_has_no_namespace() -> None:
    # libvirt adds the namespace itself; a declared one makes virDomainSetMetadata fail.
    text = mapping.metadata_xml({"k": "<v>"}, (_disk(),))
    assert "xmlns" not in text
    assert ET.fromstring(text).find("meta").text == "<v>"  # type: ignore[union-attr]


def test_next_disk_dev() -> None:
    assert mapping.next_disk_dev(set()) == "sda"
    assert mapping.next_disk_dev({"sda", "sdc"}) == "sdb"
    with pytest.raises(InvalidSpec):
        mapping.next_disk_dev({f"sd{c}" for c in "abcdefghijklmnop"})


def test_volume_xml_and_qemu_img_args_follow_thin() -> None:
    thin = ET.fromstring(mapping.volume_xml("v<1>", 3, DiskFormat.RAW, True))
    thick = ET.fromstring(mapping.volume_xml("v", 3, DiskFormat.QCOW2, False))
    assert (thin.findtext("name"), thin.findtext("allocation"), thick.findtext("allocation")) == ("v<1>", "0", "3")
    assert thick.find("target/format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert "preallocation=falloc" in mapping.qemu_img_create_args("/p", 1, DiskFormat.QCOW2, False)
    assert mapping.qemu_img_create_args("/p", 1, DiskFormat.RAW, True)[-2:] == ["/p", "1G"]


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        (1, 1, PowerState.RUNNING),
        (2, 0, PowerState.RUNNING),
        (3, 1, PowerState.PAUSED),
        (4, 1, PowerState.RUNNING),
        (5, 1, PowerState.SHUTDOWN),
        (5, 5, PowerState.SUSPENDED),
        (6, 1, PowerState.CRASHED),
        (7, 0, PowerState.SUSPENDED),
        (0, 0, PowerState.NOSTATE),
    ],
)
def test_power_state(state: int, reason: int, expected: PowerState) -> None:
    assert mapping.power_state(state, reason) == expected


@pytest.mark.parametrize(
    ("event", "detail", "expected"),
    [
        (0, 0, EventType.CREATED),
        (0, 1, None),
        (1, 0, EventType.DESTROYED),
        (2, 0, EventType.STARTED),
        (2, 1, EventType.MIGRATED),
        (2, 2, EventType.RESUMED),
        (3, 0, EventType.PAUSED),
        (3, 1, None),
        (4, 0, EventType.RESUMED),
        (5, 1, EventType.STOPPED),
        (5, 3, None),
        (5, 4, EventType.SUSPENDED),
        (8, 0, EventType.STOPPED),
    ],
)
def test_event_type(event: int, detail: int, expected: EventType | None) -> None:
    assert mapping.event_type(event, detail) == expected


def test_resumed_is_reported_only_after_a_pause_or_suspend() -> None:
    assert not mapping.reportable(EventType.RESUMED, EventType.CREATED)
    assert not mapping.reportable(EventType.RESUMED, EventType.RESUMED)
    assert mapping.reportable(EventType.RESUMED, EventType.PAUSED)
    assert mapping.reportable(EventType.RESUMED, EventType.SUSPENDED)
    assert mapping.reportable(EventType.STARTED, EventType.STARTED)


def test_snapshot_memory_semantics() -> None:
    running = "<domainsnapshot><name>s</name><state>running</state><creationTime>1700000000</creationTime>"
    full = mapping.parse_snapshot_xml(running + "<memory snapshot='internal'/></domainsnapshot>")
    assert full.with_memory
    assert full.created_at is not None
    assert full.created_at.year == 2023
    marked = ET.fromstring(mapping.snapshot_xml("s", with_memory=False))
    disk_only = running + f"<description>{marked.findtext('description')}</description></domainsnapshot>"
    assert not mapping.parse_snapshot_xml(disk_only).with_memory
    assert not mapping.parse_snapshot_xml(
        "<domainsnapshot><name>s</name><state>shutoff</state></domainsnapshot>"
    ).with_memory


def test_node_file_has_pool_and_unmanaged_pets() -> None:
    root = ET.fromstring(mapping.node_file_xml("/pool", 10, pets=(("pet-1", UUID),)))
    assert root.find("pool/name").text == "default"  # type: ignore[union-attr]
    pets = [mapping.parse_domain_xml(ET.tostring(d, encoding="unicode")) for d in root.findall("domain")]
    assert [(p.name, p.uuid, p.managed) for p in pets] == [("pet-1", UUID, False)]


def test_name_limits_follow_the_uri() -> None:
    system, remote = "qemu:///system", "qemu+tls://host.example/system"
    embed_short, embed_long = "qemu:///embed?root=/r", "qemu:///embed?root=/" + "x" * 29  # 40 bytes left
    # The test driver keeps no files: anything the contract accepts.
    assert mapping.name_problem("😀" * 64, "test:///default") is None
    assert mapping.name_problem(".", "test+unix:///default?socket=/s") is None
    for uri in (system, remote, embed_short, embed_long, "qemu:///session"):
        assert mapping.name_problem(".", uri)
        assert mapping.name_problem("..", uri)
        assert mapping.name_problem("...", uri) is None
        assert mapping.name_problem("a" * 64, uri) is None  # only 20 characters reach the socket
        assert mapping.name_problem("😀" * 62, uri)  # 248 bytes: NAME.xml.new is over NAME_MAX
    # The monitor socket: /var/lib/libvirt/qemu leaves 58 bytes for the first 20 characters.
    assert mapping.name_problem("日" * 19 + "a", system) is None  # 58 bytes
    assert mapping.name_problem("日" * 19 + "ab", system) is None  # still 58: only 20 characters count
    assert mapping.name_problem("日" * 20, system)  # 60 bytes
    assert mapping.name_problem("日" * 20, remote)
    assert mapping.name_problem("日" * 19 + "a", embed_long)  # a longer root leaves less room
    assert mapping.name_problem("日" * 19 + "a", embed_short) is None


def test_unstorable_is_what_xml_cannot_hold() -> None:
    for bad in ("\x00", "a\x1bb", "\x08", "\x0b", "\ufffe", "\uffff"):
        assert mapping.unstorable(bad), repr(bad)
    for fine in ("", "\t", "\n", "\r", "\x85", "\u2028", "😀", "<&>"):
        assert mapping.unstorable(fine) is None, repr(fine)


def test_carriage_returns_survive_the_xml() -> None:
    xml = mapping.domain_xml(uuid="u", name="n", vcpus=1, memory_mb=64, domain_type="test", metadata={"k": "a\r\nb\r"})
    assert "\r" not in xml
    record = mapping.parse_domain_xml(xml)
    assert record.metadata == {"k": "a\r\nb\r"}
    assert mapping.parse_domain_xml(mapping.resized_xml(xml, vcpus=2, memory_mb=None)).metadata == record.metadata
