"""Translation between virtdrivers objects and libvirt's XML, states and events.

Pure functions only: no libvirt import, no I/O. XML is built with ElementTree so every
user-supplied string (names, metadata, labels) is escaped by the serializer and can never
change the document's structure.

What libvirt cannot hold natively (the caller's metadata, a disk's label, whether a disk
was created thin, which disks this driver owns) lives in one element of the domain's
``<metadata>`` in our own XML namespace, so it travels with the domain: through daemon
restarts, migration and snapshots.
"""

from __future__ import annotations

import datetime
import string
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from virtdrivers.capabilities import DiskFormat
from virtdrivers.errors import InvalidSpec
from virtdrivers.objects import DiskInfo, EventType, InstanceInfo, PowerState, SnapshotInfo

NAMESPACE = "https://virtdrivers.dev/xmlns/libvirt/1"
PREFIX = "vd"
_Q = f"{{{NAMESPACE}}}"

GIB = 1024**3

#: SCSI disks on a virtio-scsi controller: hot attach and detach complete without guest
#: cooperation (PCI hot-unplug of virtio-blk waits for an OS that our test guests lack).
DISK_BUS = "scsi"
_DEV_PREFIX = "sd"
MAX_DISKS = 16

# libvirt enum values, repeated here so this module stays free of the SDK.
_STATE_NOSTATE, _STATE_RUNNING, _STATE_BLOCKED, _STATE_PAUSED = 0, 1, 2, 3
_STATE_SHUTDOWN, _STATE_SHUTOFF, _STATE_CRASHED, _STATE_PMSUSPENDED = 4, 5, 6, 7
_SHUTOFF_SAVED = 5

_EVENT_DEFINED, _EVENT_UNDEFINED, _EVENT_STARTED, _EVENT_SUSPENDED = 0, 1, 2, 3
_EVENT_RESUMED, _EVENT_STOPPED, _EVENT_SHUTDOWN, _EVENT_PMSUSPENDED, _EVENT_CRASHED = 4, 5, 6, 7, 8
_DEFINED_ADDED = 0
_STARTED_MIGRATED = 1
_STARTED_RESTORED = 2
_STOPPED_MIGRATED = 3
_STOPPED_SAVED = 4
_SUSPENDED_MIGRATED = 1

ET.register_namespace(PREFIX, NAMESPACE)


@dataclass(frozen=True)
class DiskRecord:
    """One disk of a domain as this driver tracks it."""

    dev: str
    path: str
    size_gib: int
    format: DiskFormat
    thin: bool = True
    label: str | None = None
    owned: bool = True
    """Created by this driver, so destroy and detach(delete=True) may remove its storage."""

    def info(self) -> DiskInfo:
        return DiskInfo(id=self.dev, size_gib=self.size_gib, format=self.format, thin=self.thin, label=self.label)


@dataclass(frozen=True)
class DomainRecord:
    """The static part of a domain (its persistent definition), parsed from its XML."""

    uuid: str
    name: str
    vcpus: int
    memory_mb: int
    disks: tuple[DiskRecord, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    managed: bool = False

    def info(self, power_state: PowerState, node: str | None) -> InstanceInfo:
        return InstanceInfo(
            id=self.uuid,
            name=self.name,
            power_state=power_state,
            vcpus=self.vcpus,
            memory_mb=self.memory_mb,
            node=node,
            host=node,  # a libvirt node is one host
            disks=tuple(d.info() for d in self.disks),
            metadata=dict(self.metadata),
            managed=self.managed,
        )


# -- domains ---------------------------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def _metadata_element(metadata: dict[str, str], disks: tuple[DiskRecord, ...], *, ns: str = _Q) -> ET.Element:
    root = ET.Element(f"{ns}instance", {"managed": "yes"})
    for key, value in metadata.items():
        _sub(root, f"{ns}meta", value, key=key)
    for d in disks:
        attrib = {
            "dev": d.dev,
            "path": d.path,
            "size_gib": str(d.size_gib),
            "format": d.format.value,
            "thin": "yes" if d.thin else "no",
            "owned": "yes" if d.owned else "no",
        }
        if d.label is not None:
            attrib["label"] = d.label
        _sub(root, f"{ns}disk", **attrib)
    return root


def metadata_xml(metadata: dict[str, str], disks: tuple[DiskRecord, ...]) -> str:
    """Our metadata element alone, for ``virDomainSetMetadata`` after a disk change.

    Without a namespace: libvirt puts it into the namespace and prefix passed with the call.
    """
    return ET.tostring(_metadata_element(metadata, disks, ns=""), encoding="unicode")


def disk_element(disk: DiskRecord) -> ET.Element:
    el = ET.Element("disk", {"type": "file", "device": "disk"})
    _sub(el, "driver", name="qemu", type=disk.format.value)
    _sub(el, "source", file=disk.path)
    _sub(el, "target", dev=disk.dev, bus=DISK_BUS)
    return el


def disk_xml(disk: DiskRecord) -> str:
    return ET.tostring(disk_element(disk), encoding="unicode")


def domain_xml(
    *,
    uuid: str,
    name: str,
    vcpus: int,
    memory_mb: int,
    domain_type: str,
    disks: tuple[DiskRecord, ...] = (),
    metadata: dict[str, str] | None = None,
    arch: str = "x86_64",
    machine: str | None = "pc",
    managed: bool = True,
) -> str:
    """A persistent domain definition for ``virDomainDefineXML``.

    ``managed=False`` leaves out our metadata: a domain as someone else would have made it.

    The guest is the smallest useful one: no display, no balloon, ACPI on (so a graceful
    shutdown can at least be requested), and a virtio-scsi controller for the disks.
    """
    dom = ET.Element("domain", type=domain_type)
    _sub(dom, "name", name)
    _sub(dom, "uuid", uuid)
    if managed:
        meta = _sub(dom, "metadata")
        meta.append(_metadata_element(dict(metadata or {}), disks))
    _sub(dom, "memory", str(memory_mb), unit="MiB")
    _sub(dom, "vcpu", str(vcpus), placement="static")
    os_el = _sub(dom, "os")
    type_attrib = {"arch": arch}
    if machine:
        type_attrib["machine"] = machine
    _sub(os_el, "type", "hvm", **type_attrib)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    if domain_type != "test":
        _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    for d in disks:
        devices.append(disk_element(d))
    if domain_type != "test":
        video = _sub(devices, "video")
        _sub(video, "model", type="none")
        _sub(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


def _memory_mb(el: ET.Element | None) -> int:
    if el is None or not el.text:
        return 0
    factor = {"b": 1 / 1024**2, "bytes": 1 / 1024**2, "k": 1 / 1024, "kib": 1 / 1024, "m": 1, "mib": 1}
    factor |= {"g": 1024, "gib": 1024, "t": 1024**2, "tib": 1024**2}
    unit = el.get("unit", "KiB").lower()
    return int(int(el.text) * factor.get(unit, 1 / 1024))


def parse_domain_xml(xml: str) -> DomainRecord:
    """Read a domain's definition back: what the contract reports about it.

    Disks are the ones in ``<devices>``; our metadata element only adds what libvirt does
    not know (label, thin, size asked for, ownership). A domain without our element was
    made by someone else and is reported unmanaged.
    """
    root = ET.fromstring(xml)
    mine = root.find(f"metadata/{_Q}instance")
    metadata: dict[str, str] = {}
    extra: dict[str, ET.Element] = {}
    if mine is not None:
        for m in mine.findall(f"{_Q}meta"):
            metadata[m.get("key", "")] = m.text or ""
        for d in mine.findall(f"{_Q}disk"):
            extra[d.get("path", "")] = d
    vcpu_el = root.find("vcpu")
    vcpus = int(vcpu_el.get("current") or vcpu_el.text or 0) if vcpu_el is not None else 0
    current = root.find("currentMemory")
    memory_mb = _memory_mb(root.find("memory"))
    if current is not None:
        memory_mb = _memory_mb(current) or memory_mb
    disks = []
    for el in root.findall("devices/disk"):
        if el.get("device", "disk") != "disk":
            continue
        target, source, driver = el.find("target"), el.find("source"), el.find("driver")
        dev = target.get("dev", "") if target is not None else ""
        path = ""
        if source is not None:
            path = source.get("file") or source.get("dev") or source.get("volume") or ""
        fmt_text = driver.get("type", "raw") if driver is not None else "raw"
        fmt = DiskFormat(fmt_text) if fmt_text in {f.value for f in DiskFormat} else DiskFormat.RAW
        x = extra.get(path)
        if x is not None:
            disks.append(
                DiskRecord(
                    dev=dev,
                    path=path,
                    size_gib=int(x.get("size_gib", "0")),
                    format=fmt,
                    thin=x.get("thin") != "no",
                    label=x.get("label"),
                    owned=x.get("owned") == "yes",
                )
            )
        else:
            disks.append(DiskRecord(dev=dev, path=path, size_gib=0, format=fmt, thin=True, owned=False))
    return DomainRecord(
        uuid=root.findtext("uuid", ""),
        name=root.findtext("name", ""),
        vcpus=vcpus,
        memory_mb=memory_mb,
        disks=tuple(disks),
        metadata=metadata,
        managed=mine is not None and mine.get("managed") == "yes",
    )


def resized_xml(xml: str, *, vcpus: int | None, memory_mb: int | None) -> str:
    """A domain definition with a new vCPU count and/or memory size, everything else kept."""
    root = ET.fromstring(xml)
    if vcpus is not None:
        vcpu = root.find("vcpu")
        if vcpu is None:
            vcpu = _sub(root, "vcpu")
        vcpu.text = str(vcpus)
        vcpu.attrib.pop("current", None)
    if memory_mb is not None:
        for tag in ("memory", "currentMemory"):
            el = root.find(tag)
            if el is None and tag == "memory":
                el = _sub(root, tag)
            if el is not None:
                el.text = str(memory_mb)
                el.set("unit", "MiB")
        max_mem = root.find("maxMemory")
        if max_mem is not None and _memory_mb(max_mem) < memory_mb:
            root.remove(max_mem)
    return ET.tostring(root, encoding="unicode")


def redefined_disks_xml(xml: str, metadata: dict[str, str], disks: tuple[DiskRecord, ...]) -> str:
    """A stopped domain's definition with exactly ``disks`` (and our metadata listing them).

    Used instead of device attach/detach on an inactive domain: one define does both the
    device and the metadata change atomically, and it works on drivers without hot plug.
    """
    root = ET.fromstring(xml)
    devices = root.find("devices")
    if devices is None:
        devices = _sub(root, "devices")
    wanted = {d.dev: d for d in disks}
    for el in devices.findall("disk"):
        target = el.find("target")
        dev = target.get("dev") if target is not None else None
        if el.get("device", "disk") == "disk" and dev not in wanted:
            devices.remove(el)
        elif dev in wanted:
            del wanted[dev]
    for d in disks:
        if d.dev in wanted:
            devices.append(disk_element(d))
    meta = root.find("metadata")
    if meta is None:
        meta = _sub(root, "metadata")
    for old in meta.findall(f"{_Q}instance"):
        meta.remove(old)
    meta.append(_metadata_element(metadata, disks))
    return ET.tostring(root, encoding="unicode")


def next_disk_dev(used: set[str] | frozenset[str]) -> str:
    """The first free target name (sda, sdb, ...) on our SCSI bus."""
    for letter in string.ascii_lowercase[:MAX_DISKS]:
        dev = _DEV_PREFIX + letter
        if dev not in used:
            return dev
    raise InvalidSpec(f"no free disk slot: at most {MAX_DISKS} disks", field="disks")


# -- storage ---------------------------------------------------------------------------------


def volume_xml(name: str, size_gib: int, fmt: DiskFormat, thin: bool) -> str:
    """A storage volume for ``virStoragePoolCreateXML``: thin means no allocation up front."""
    vol = ET.Element("volume")
    _sub(vol, "name", name)
    _sub(vol, "capacity", str(size_gib), unit="GiB")
    _sub(vol, "allocation", "0" if thin else str(size_gib), unit="GiB")
    target = _sub(vol, "target")
    _sub(target, "format", type=fmt.value)
    return ET.tostring(vol, encoding="unicode")


def qemu_img_create_args(path: str, size_gib: int, fmt: DiskFormat, thin: bool) -> list[str]:
    """``qemu-img create`` arguments; thick disks are preallocated with fallocate."""
    args = ["qemu-img", "create", "-q", "-f", fmt.value]
    if not thin:
        args += ["-o", "preallocation=falloc"]
    return [*args, path, f"{size_gib}G"]


def node_file_xml(
    pool_path: str,
    pool_capacity_gib: int,
    *,
    cpus: int = 16,
    memory_mib: int = 65536,
    pets: tuple[tuple[str, str], ...] = (),
) -> str:
    """A node file for libvirt's test driver: one host, an empty ``default`` dir pool, and
    ``pets`` (name, uuid): domains made "outside" virtdrivers, for adoption.

    Opening ``test:///<this file>`` gives every connection its own fresh copy of this host.
    """
    node = ET.Element("node")
    cpu = _sub(node, "cpu")
    for tag, value in (
        ("nodes", "1"),
        ("sockets", "1"),
        ("cores", str(cpus)),
        ("threads", "1"),
        ("active", str(cpus)),
        ("mhz", "2000"),
        ("model", "x86_64"),
    ):
        _sub(cpu, tag, value)
    _sub(node, "memory", str(memory_mib * 1024))
    for name, uid in pets:
        pet = domain_xml(uuid=uid, name=name, vcpus=1, memory_mb=128, domain_type="test", machine=None, managed=False)
        node.append(ET.fromstring(pet))
    pool = _sub(node, "pool", type="dir")
    _sub(pool, "name", "default")
    _sub(pool, "capacity", str(pool_capacity_gib), unit="GiB")
    _sub(pool, "available", str(pool_capacity_gib), unit="GiB")
    target = _sub(pool, "target")
    _sub(target, "path", pool_path)
    return ET.tostring(node, encoding="unicode")


# -- snapshots -------------------------------------------------------------------------------

_DISK_ONLY_MARK = "virtdrivers: disk state only"


def snapshot_xml(name: str, *, with_memory: bool) -> str:
    """A snapshot request. libvirt's internal snapshots of a running guest always hold its
    memory; a snapshot the caller asked without memory is marked so revert can power off."""
    snap = ET.Element("domainsnapshot")
    _sub(snap, "name", name)
    if not with_memory:
        _sub(snap, "description", _DISK_ONLY_MARK)
    return ET.tostring(snap, encoding="unicode")


@dataclass(frozen=True)
class SnapshotRecord:
    name: str
    created_at: datetime.datetime | None
    with_memory: bool

    def info(self, instance_id: str) -> SnapshotInfo:
        return SnapshotInfo(
            id=self.name,
            name=self.name,
            instance_id=instance_id,
            created_at=self.created_at,
            with_memory=self.with_memory,
        )


def parse_snapshot_xml(xml: str) -> SnapshotRecord:
    root = ET.fromstring(xml)
    created = root.findtext("creationTime")
    state = root.findtext("state", "")
    marked_disk_only = root.findtext("description", "") == _DISK_ONLY_MARK
    memory = root.find("memory")
    has_memory = state in ("running", "paused", "blocked") and (memory is None or memory.get("snapshot") != "no")
    return SnapshotRecord(
        name=root.findtext("name", ""),
        created_at=datetime.datetime.fromtimestamp(int(created), datetime.UTC) if created else None,
        with_memory=has_memory and not marked_disk_only,
    )


# -- states and events -----------------------------------------------------------------------


def power_state(state: int, reason: int) -> PowerState:
    """libvirt's (state, reason) as a contract power state.

    A domain shut off with reason "saved" holds a managed-save image: that is our SUSPENDED.
    """
    if state in (_STATE_RUNNING, _STATE_BLOCKED, _STATE_SHUTDOWN):
        return PowerState.RUNNING
    if state == _STATE_PAUSED:
        return PowerState.PAUSED
    if state == _STATE_SHUTOFF:
        return PowerState.SUSPENDED if reason == _SHUTOFF_SAVED else PowerState.SHUTDOWN
    if state == _STATE_CRASHED:
        return PowerState.CRASHED
    if state == _STATE_PMSUSPENDED:
        return PowerState.SUSPENDED
    return PowerState.NOSTATE


def event_type(event: int, detail: int) -> EventType | None:
    """A libvirt lifecycle event as a contract event, or None for ones we do not report."""
    if event == _EVENT_DEFINED:
        return EventType.CREATED if detail == _DEFINED_ADDED else None
    if event == _EVENT_UNDEFINED:
        return EventType.DESTROYED
    if event == _EVENT_STARTED:
        if detail == _STARTED_MIGRATED:
            return EventType.MIGRATED
        return EventType.RESUMED if detail == _STARTED_RESTORED else EventType.STARTED
    if event == _EVENT_SUSPENDED:
        return None if detail == _SUSPENDED_MIGRATED else EventType.PAUSED
    if event == _EVENT_RESUMED:
        return EventType.RESUMED
    if event == _EVENT_STOPPED:
        if detail == _STOPPED_MIGRATED:
            return None  # the destination reports MIGRATED; the source just lets go
        return EventType.SUSPENDED if detail == _STOPPED_SAVED else EventType.STOPPED
    if event == _EVENT_PMSUSPENDED:
        return EventType.SUSPENDED
    if event == _EVENT_CRASHED:
        return EventType.STOPPED
    return None


def reportable(type_: EventType, previous: EventType | None) -> bool:
    """Whether to pass an event on, given the previous one of the same domain.

    QEMU starts guests paused and resumes them, and restoring a managed save resumes twice;
    a RESUMED that does not follow a PAUSED or SUSPENDED is that plumbing, not news.
    """
    if type_ == EventType.RESUMED:
        return previous is None or previous in (EventType.PAUSED, EventType.SUSPENDED)
    return True
