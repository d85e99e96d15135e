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
import os
import re
import string
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from virtdrivers.capabilities import DiskFormat
from virtdrivers.errors import InvalidSpec
from virtdrivers.objects import DiskInfo, EventType, InstanceInfo, NicInfo, PowerState, SnapshotInfo

NAMESPACE = "https://virtdrivers.dev/xmlns/libvirt/1"
PREFIX = "vd"
_Q = f"{{{NAMESPACE}}}"

GIB = 1024**3

#: SCSI disks on a virtio-scsi controller: hot attach and detach complete without guest
#: cooperation (PCI hot-unplug of virtio-blk waits for an OS that our test guests lack).
DISK_BUS = "scsi"
_DEV_PREFIX = "sd"
#: The root disk made from an image: ``vda`` on virtio-blk.
ROOT_BUS, ROOT_DEV = "virtio", "vda"
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


def _tostring(el: ET.Element) -> str:
    """Serialise with every carriage return as a character reference.

    ElementTree writes a CR in text as it is, and every XML parser (libvirt's included) turns
    a literal CR or CR LF into LF, so a metadata value with CR LF line ends would come back with LF. A
    literal CR in the output can only come from a value (markup has none), so escaping them
    all is exact; libvirt keeps the reference and writes it back as one.
    """
    return ET.tostring(el, encoding="unicode").replace("\r", "&#13;")


#: What XML 1.0 cannot hold at all, escaped or not (its Char production): most C0 controls,
#: surrogates, U+FFFE and U+FFFF. Names, labels and metadata with them cannot be stored.
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def unstorable(text: str) -> str | None:
    """The first character of ``text`` that libvirt's XML cannot hold, or None."""
    found = _NOT_XML.search(text)
    return found.group() if found else None


# -- names as the hypervisor's files see them ----------------------------------------------------

#: A domain's name becomes file names (``etc/qemu/NAME.xml.new`` while libvirt saves a definition,
#: ``NAME.log``, ``NAME.save``, a snapshot directory): NAME_MAX (255 bytes) less the longest suffix.
MAX_NAME_BYTES = 255 - len(".xml.new")
#: libvirt's VIR_DOMAIN_SHORT_NAME_MAX: the monitor socket's directory holds this many characters.
SHORT_NAME_CHARS = 20
#: sun_path holds 108 bytes with the terminating NUL.
_SUN_PATH_MAX = 107
#: ``domain-<id>-``: ids count starts since the daemon started; six digits is a million starts.
_DOMAIN_DIR_PREFIX = len("/domain-") + len("999999-")
_MONITOR = len("/monitor.sock")
#: Where the home directory is unknown (``qemu:///session``, maybe on another host), assume a state
#: directory this long: ``/home/<16-byte user>/.config/libvirt/qemu/lib``. Any 20 ASCII
#: characters still fit; 31 bytes of short name do.
_UNKNOWN_STATE_DIR = 48


def _qemu_state_dir(uri: str) -> int | None:
    """Length in bytes of the directory a QEMU driver makes per-domain sockets in, or None when
    the URI is not QEMU's (the test driver makes no files)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.split("+", 1)[0] != "qemu":
        return None
    if parts.path == "/embed":
        root = urllib.parse.parse_qs(parts.query).get("root", [""])[0]
        return len(os.path.join(root, "lib", "qemu").encode()) if root else _UNKNOWN_STATE_DIR
    if parts.path == "/system":
        return len(b"/var/lib/libvirt/qemu")
    return _UNKNOWN_STATE_DIR


def name_problem(name: str, uri: str) -> str | None:
    """Why a hypervisor behind ``uri`` cannot hold a domain named ``name``, or None.

    Measured on QEMU (libvirt 9.0): a 64-emoji name fails to define ("File name too long"),
    a 16-character Japanese name defines but fails to start (its monitor socket path is too
    long for sun_path), and "." and ".." define but can never be undefined again. libvirt's
    test driver keeps no files and takes all of these.
    """
    if unstorable(name):
        return "the name holds a character XML cannot store"
    if uri.startswith("test"):
        return None
    if name in (".", ".."):
        return f"{name!r} cannot be a name: the hypervisor's files would be named after a directory"
    size = len(name.encode())
    if size > MAX_NAME_BYTES:
        return f"the name is {size} bytes in UTF-8; the hypervisor's file names allow {MAX_NAME_BYTES}"
    state_dir = _qemu_state_dir(uri)
    if state_dir is not None:
        budget = _SUN_PATH_MAX - state_dir - _DOMAIN_DIR_PREFIX - _MONITOR
        short = len(name[:SHORT_NAME_CHARS].encode())
        if short > budget:
            return (
                f"the name's first {SHORT_NAME_CHARS} characters are {short} bytes in UTF-8; QEMU's monitor socket"
                f" path on this host leaves room for {budget}"
            )
    return None


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
    image: str | None = None
    """The image this root disk was made from (it boots first)."""
    cow: bool = False
    """A copy-on-write child of the image: the image must outlive it."""

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
    create_token: str | None = None
    """The operation token of the create that made it, until that create completes."""
    nics: tuple[NicRecord, ...] = ()
    seed: str | None = None
    """The NoCloud seed file this driver made for it (a read-only disk not reported as one)."""
    console: str | None = None
    """The file its serial console is logged to."""
    agent_socket: str | None = None
    """The guest agent channel's UNIX socket, where this driver chose its path."""

    @property
    def image(self) -> str | None:
        return next((d.image for d in self.disks if d.image), None)

    @property
    def files(self) -> tuple[str, ...]:
        """Files other than disks that this driver made for the domain and removes with it."""
        return tuple(p for p in (self.seed, self.console, self.agent_socket) if p)

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
            image=self.image,
            nics=tuple(n.info() for n in self.nics),
        )


@dataclass(frozen=True)
class NicRecord:
    """One NIC of a domain: libvirt keys NICs by MAC, and so does the contract's NIC id."""

    mac: str
    network: str
    """``user`` for QEMU's user-mode networking, else the libvirt network's (or ``bridge:``) name."""
    model: str | None = None

    def info(self) -> NicInfo:
        return NicInfo(id=self.mac, network=self.network, mac=self.mac, model=self.model)


#: The network name that means QEMU's user-mode (SLIRP) networking: no host setup, NAT only.
USER_NETWORK = "user"
#: File roles in the names of what this driver makes besides disks: ``vd-<uuid>-<role>-<token>``.
SEED_ROLE, CONSOLE_ROLE = "seed", "console"
AGENT_CHANNEL = "org.qemu.guest_agent.0"


# -- domains ---------------------------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def _metadata_element(
    metadata: dict[str, str], disks: tuple[DiskRecord, ...], *, ns: str = _Q, create_token: str | None = None
) -> ET.Element:
    root = ET.Element(f"{ns}instance", {"managed": "yes"})
    if create_token is not None:
        # The create that made this domain has not completed (see virtdrivers.reaping).
        root.set("create", create_token)
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
        if d.image is not None:
            attrib["image"] = d.image
            attrib["cow"] = "yes" if d.cow else "no"
        _sub(root, f"{ns}disk", **attrib)
    return root


def metadata_xml(metadata: dict[str, str], disks: tuple[DiskRecord, ...]) -> str:
    """Our metadata element alone, for ``virDomainSetMetadata`` after a disk change.

    Without a namespace: libvirt puts it into the namespace and prefix passed with the call.
    """
    return _tostring(_metadata_element(metadata, disks, ns=""))


def disk_element(disk: DiskRecord) -> ET.Element:
    el = ET.Element("disk", {"type": "file", "device": "disk"})
    _sub(el, "driver", name="qemu", type=disk.format.value)
    _sub(el, "source", file=disk.path)
    if disk.image is not None:
        # The root disk is virtio-blk, as images expect (a cloud kernel may lack virtio-scsi
        # until its initramfs loads it), and it boots first whatever else is attached.
        _sub(el, "target", dev=disk.dev, bus=ROOT_BUS)
        _sub(el, "boot", order="1")
    else:
        _sub(el, "target", dev=disk.dev, bus=DISK_BUS)
    return el


def nic_element(nic: NicRecord) -> ET.Element:
    if nic.network == USER_NETWORK:
        el = ET.Element("interface", {"type": "user"})
    elif nic.network.startswith("bridge:"):
        el = ET.Element("interface", {"type": "bridge"})
        _sub(el, "source", bridge=nic.network.removeprefix("bridge:"))
    else:
        el = ET.Element("interface", {"type": "network"})
        _sub(el, "source", network=nic.network)
    _sub(el, "mac", address=nic.mac)
    if nic.model:
        _sub(el, "model", type=nic.model)
    return el


def nic_xml(nic: NicRecord) -> str:
    return _tostring(nic_element(nic))


def seed_element(path: str) -> ET.Element:
    """The NoCloud seed: a read-only virtio disk (the cloud kernel has no AHCI, so no SATA cdrom)."""
    el = ET.Element("disk", {"type": "file", "device": "disk"})
    _sub(el, "driver", name="qemu", type="raw")
    _sub(el, "source", file=path)
    _sub(el, "target", dev="vdz", bus="virtio")
    _sub(el, "readonly")
    return el


def _is_seed(el: ET.Element) -> bool:
    """A seed is told from a disk by being read-only and named by this driver as one."""
    source = el.find("source")
    name = os.path.basename(source.get("file", "")) if source is not None else ""
    return el.find("readonly") is not None and name.startswith("vd-") and f"-{SEED_ROLE}-" in name


def disk_xml(disk: DiskRecord) -> str:
    return _tostring(disk_element(disk))


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
    create_token: str | None = None,
    nics: tuple[NicRecord, ...] = (),
    seed: str | None = None,
    console: str | None = None,
    agent: bool = False,
    agent_socket: str | None = None,
    tcg_cache_mib: int | None = None,
) -> str:
    """A persistent domain definition for ``virDomainDefineXML``.

    Workloads add: NICs; the seed as a read-only virtio disk; a serial console logged to
    ``console`` with ``append='on'`` (without it libvirt truncates the log at every start);
    the guest agent's virtio-serial channel (``agent_socket`` names its UNIX socket where the
    path libvirt would choose may be too long for sun_path, else libvirt chooses); and a small
    TCG translation cache (QEMU's 1 GiB default makes each guest reset seconds slower).

    ``managed=False`` leaves out our metadata: a domain as someone else would have made it.

    The guest is the smallest useful one: no display, no balloon, ACPI on (so a graceful
    shutdown can at least be requested), and a virtio-scsi controller for the disks.
    """
    dom = ET.Element("domain", type=domain_type)
    _sub(dom, "name", name)
    _sub(dom, "uuid", uuid)
    if managed:
        meta = _sub(dom, "metadata")
        meta.append(_metadata_element(dict(metadata or {}), disks, create_token=create_token))
    _sub(dom, "memory", str(memory_mb), unit="MiB")
    _sub(dom, "vcpu", str(vcpus), placement="static")
    os_el = _sub(dom, "os")
    type_attrib = {"arch": arch}
    if machine:
        type_attrib["machine"] = machine
    _sub(os_el, "type", "hvm", **type_attrib)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    if tcg_cache_mib is not None and domain_type == "qemu":
        _sub(_sub(features, "tcg"), "tb-cache", str(tcg_cache_mib), unit="MiB")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    if domain_type != "test":
        _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    for d in disks:
        devices.append(disk_element(d))
    if seed is not None:
        devices.append(seed_element(seed))
    for nic in nics:
        devices.append(nic_element(nic))
    if console is not None:
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=console, append="on")
        _sub(serial, "target", port="0")
    if agent:
        channel = _sub(devices, "channel", type="unix")
        if agent_socket is not None:
            _sub(channel, "source", mode="bind", path=agent_socket)
        _sub(channel, "target", type="virtio", name=AGENT_CHANNEL)
    if domain_type != "test":
        video = _sub(devices, "video")
        _sub(video, "model", type="none")
        _sub(devices, "memballoon", model="none")
    return _tostring(dom)


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
    seed = None
    for el in root.findall("devices/disk"):
        if el.get("device", "disk") != "disk":
            continue
        if _is_seed(el):
            source = el.find("source")
            seed = source.get("file") if source is not None else None
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
                    image=x.get("image"),
                    cow=x.get("cow") == "yes",
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
        create_token=mine.get("create") if mine is not None else None,
        nics=_parse_nics(root),
        seed=seed,
        console=_console_path(root),
        agent_socket=_agent_socket(root),
    )


def _parse_nics(root: ET.Element) -> tuple[NicRecord, ...]:
    nics = []
    for el in root.findall("devices/interface"):
        mac_el, source, model = el.find("mac"), el.find("source"), el.find("model")
        kind = el.get("type", "")
        if kind == "user":
            network = USER_NETWORK
        elif kind == "bridge" and source is not None:
            network = "bridge:" + source.get("bridge", "")
        else:
            network = source.get("network", "") if source is not None else ""
        nics.append(
            NicRecord(
                mac=mac_el.get("address", "").lower() if mac_el is not None else "",
                network=network,
                model=model.get("type") if model is not None else None,
            )
        )
    return tuple(nics)


def _console_path(root: ET.Element) -> str | None:
    for el in root.findall("devices/serial"):
        source = el.find("source")
        if el.get("type") == "file" and source is not None and source.get("path"):
            return source.get("path")
    return None


def _agent_socket(root: ET.Element) -> str | None:
    for el in root.findall("devices/channel"):
        target, source = el.find("target"), el.find("source")
        if target is not None and target.get("name") == AGENT_CHANNEL and source is not None:
            path = source.get("path")
            # Only a path this driver chose (named after the domain) is ours to remove.
            if path and os.path.basename(path).startswith("vd-"):
                return path
    return None


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
    return _tostring(root)


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
        if el.get("device", "disk") == "disk" and dev not in wanted and not _is_seed(el):
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
    return _tostring(root)


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
    return _tostring(vol)


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
    auth: tuple[str, str] | None = None,
) -> str:
    """A node file for libvirt's test driver: one host, an empty ``default`` dir pool, and
    ``pets`` (name, uuid): domains made "outside" virtdrivers, for adoption.

    With ``auth`` (username, password) the test driver demands those credentials of every
    ``open`` through the auth callback and refuses others, as a SASL-protected daemon would.

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
    if auth is not None:
        _sub(_sub(node, "auth"), "user", auth[0], password=auth[1])
    for name, uid in pets:
        pet = domain_xml(uuid=uid, name=name, vcpus=1, memory_mb=128, domain_type="test", machine=None, managed=False)
        node.append(ET.fromstring(pet))
    # libvirt's usual NAT network, as a stock host has it: NICs join it by name.
    net = _sub(node, "network")
    _sub(net, "name", "default")
    _sub(net, "bridge", name="virbr0")
    _sub(net, "forward", mode="nat")
    ip = _sub(net, "ip", address="192.168.122.1", netmask="255.255.255.0")
    _sub(_sub(ip, "dhcp"), "range", start="192.168.122.2", end="192.168.122.254")
    pool = _sub(node, "pool", type="dir")
    _sub(pool, "name", "default")
    _sub(pool, "capacity", str(pool_capacity_gib), unit="GiB")
    _sub(pool, "available", str(pool_capacity_gib), unit="GiB")
    target = _sub(pool, "target")
    _sub(target, "path", pool_path)
    return _tostring(node)


# -- snapshots -------------------------------------------------------------------------------

_DISK_ONLY_MARK = "virtdrivers: disk state only"


def snapshot_xml(name: str, *, with_memory: bool) -> str:
    """A snapshot request. libvirt's internal snapshots of a running guest always hold its
    memory; a snapshot the caller asked without memory is marked so revert can power off."""
    snap = ET.Element("domainsnapshot")
    _sub(snap, "name", name)
    if not with_memory:
        _sub(snap, "description", _DISK_ONLY_MARK)
    return _tostring(snap)


@dataclass(frozen=True)
class SnapshotRecord:
    name: str
    created_at: datetime.datetime | None
    with_memory: bool

    def info(self, instance_id: str) -> SnapshotInfo:
        return SnapshotInfo(
            id=snapshot_id(instance_id, self.name),
            name=self.name,
            instance_id=instance_id,
            created_at=self.created_at,
            with_memory=self.with_memory,
        )


def snapshot_id(instance_id: str, name: str) -> str:
    """A snapshot's id: libvirt names snapshots per domain, so two instances can each have a
    snapshot "base"; the id names the instance too, so it identifies exactly one snapshot."""
    return f"{instance_id}:{name}"


def snapshot_name(instance_id: str, snapshot_id: str) -> str | None:
    """The libvirt name inside ``snapshot_id`` if that id belongs to this instance, else None."""
    prefix = f"{instance_id}:"
    return snapshot_id[len(prefix) :] if snapshot_id.startswith(prefix) else None


def snapshot_disks(xml: str) -> tuple[DiskRecord, ...]:
    """The disks of the domain definition a snapshot holds (what a revert brings back)."""
    domain = ET.fromstring(xml).find("domain")
    if domain is None:
        return ()
    return parse_domain_xml(ET.tostring(domain, encoding="unicode")).disks


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
