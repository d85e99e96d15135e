"""Translation between what Windows PowerShell 5.1 prints and virtdrivers objects.

Pure functions, no I/O. They undo the quirks of ``ConvertTo-Json`` in Windows
PowerShell 5.1 that a real Hyper-V host produces:

- enums are written as their integer values (``State: 2`` for Running);
- a pipeline that yields one object is written as that object, not a one-element
  array, and one that yields nothing writes nothing at all;
- ``DateTime`` is written as ``"\\/Date(1700000000000)\\/"`` (milliseconds since 1970, UTC);
- objects nested deeper than ``-Depth`` collapse to their ``ToString()`` text.

Errors come back on stderr as CLIXML (``#< CLIXML`` then ``<Objs>``); the error
record's text carries ``CategoryInfo`` and ``FullyQualifiedErrorId`` lines, which
decide the virtdrivers error type.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import re
from dataclasses import dataclass
from typing import Any

from virtdrivers.capabilities import DiskFormat
from virtdrivers.errors import (
    Conflict,
    DriverError,
    InstanceNotFound,
    InvalidSpec,
    InvalidState,
    NotFound,
    Timeout,
)
from virtdrivers.objects import (
    Aggregate,
    DiskInfo,
    GuestAddress,
    HAPriority,
    HAState,
    HostResources,
    Image,
    InstanceInfo,
    InstanceMetrics,
    Network,
    NicInfo,
    NodeInfo,
    PowerState,
    SnapshotInfo,
)
from virtdrivers_hyperv.scripts import SEED_FILE

__all__ = [
    "GIB",
    "HYPERVISOR_TYPE",
    "MIB",
    "NIC_MODEL",
    "NOTES_MARKER",
    "PSError",
    "addresses_from",
    "aggregates_from",
    "as_list",
    "create_token_of",
    "decode_notes",
    "disk_from",
    "encode_notes",
    "error_from",
    "ha_from",
    "host_from",
    "image_from",
    "image_of",
    "instance_from",
    "mac_from",
    "mac_to",
    "metrics_from",
    "network_from",
    "nic_from",
    "nodes_from",
    "parse_clixml",
    "parse_output",
    "parse_ps_date",
    "power_state",
    "priority_value",
    "snapshot_from",
]

MIB = 1024 * 1024
GIB = 1024 * MIB
HYPERVISOR_TYPE = "hyperv"
#: Hyper-V's one NIC model on generation 2 VMs: the synthetic (VMBus) network adapter, netvsc in Linux.
NIC_MODEL = "synthetic"
#: Key in a VM's Notes (JSON) that marks it as created or adopted by virtdrivers.
NOTES_MARKER = "virtdrivers"

# Microsoft.HyperV.PowerShell.VMState values.
_STATES: dict[int, PowerState] = {
    2: PowerState.RUNNING,  # Running
    3: PowerState.SHUTDOWN,  # Off
    4: PowerState.RUNNING,  # Stopping: still running until it is Off
    6: PowerState.SUSPENDED,  # Saved
    9: PowerState.PAUSED,  # Paused
    10: PowerState.RUNNING,  # Starting
    11: PowerState.RUNNING,  # Reset
    32773: PowerState.SUSPENDED,  # Saving
    32776: PowerState.PAUSED,  # Pausing
    32777: PowerState.RUNNING,  # Resuming
    32779: PowerState.SUSPENDED,  # FastSaved
    32780: PowerState.SUSPENDED,  # FastSaving
    32781: PowerState.SHUTDOWN,  # ForceShutdown
    32782: PowerState.RUNNING,  # ForceReboot
    32783: PowerState.SUSPENDED,  # Hibernated
}
#: RunningCritical (32785) and the other *Critical states: storage lost under the VM.
_CRITICAL_FIRST = 32785
_MEMORY_STATES = {2, 6, 9, 32779}

# Microsoft.Vhd.PowerShell.VhdType / VhdFormat.
_VHD_FIXED = 2
_VHDX = 3

# Microsoft.FailoverClusters.PowerShell.ClusterNodeState / ClusterGroupState.
_NODE_STATES = {0: "up", 1: "down", 2: "paused", 3: "joining"}
_GROUP_STATES = {0: "online", 1: "offline", 2: "failed", 3: "partial_online", 4: "pending"}

# Cluster group priority: 3000 High, 2000 Medium, 1000 Low, 0 no auto start.
_PRIORITIES = {HAPriority.HIGH: 3000, HAPriority.MEDIUM: 2000, HAPriority.LOW: 1000}

_DATE = re.compile(r"^/Date\((-?\d+)(?:[+-]\d{4})?\)/$")


def parse_ps_date(value: Any) -> datetime.datetime | None:
    """``/Date(ms)/`` (as json.loads leaves ``\\/Date(ms)\\/``) to an aware UTC datetime."""
    if not isinstance(value, str):
        return None
    m = _DATE.match(value)
    if not m:
        return None
    return datetime.datetime.fromtimestamp(int(m.group(1)) / 1000, tz=datetime.UTC)


def parse_output(stdout: bytes) -> Any:
    """Decode a script's base64 ConvertTo-Json output; empty output (an empty pipeline) is None."""
    text = stdout.decode("ascii", errors="replace").strip()
    if not text:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DriverError("Hyper-V host returned output that is not a virtdrivers result") from exc
    body = raw.decode("utf-8-sig").strip()
    if not body:
        return None
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise DriverError("Hyper-V host returned malformed JSON") from exc


def as_list(value: Any) -> list[Any]:
    """Undo PowerShell's unrolling: nothing is [], one object is [object]."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    return [value]


def power_state(state: Any) -> PowerState:
    if not isinstance(state, int):
        return PowerState.NOSTATE
    if state in _STATES:
        return _STATES[state]
    if state >= _CRITICAL_FIRST:
        return PowerState.CRASHED
    return PowerState.NOSTATE


# -- Notes: where metadata, disk labels and the managed marker live --------------------------


def encode_notes(
    metadata: dict[str, str],
    labels: dict[str, str],
    original: str | None = None,
    token: str | None = None,
    image: str | None = None,
) -> str:
    """Notes text for a managed VM; ``original`` keeps an adopted pet's own notes, ``token`` marks a create,
    ``image`` is the image its root disk was made from (Hyper-V itself keeps no such link for a copy)."""
    doc: dict[str, Any] = {NOTES_MARKER: 1, "meta": metadata, "labels": labels}
    if original:
        doc["orig"] = original
    if token:
        doc["create"] = token
    if image:
        doc["image"] = image
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def decode_notes(notes: Any) -> tuple[bool, dict[str, str], dict[str, str]]:
    """(managed, metadata, labels by disk file name) from a VM's Notes."""
    if not isinstance(notes, str) or not notes.startswith("{"):
        return False, {}, {}
    try:
        doc = json.loads(notes)
    except json.JSONDecodeError:
        return False, {}, {}
    if not isinstance(doc, dict) or NOTES_MARKER not in doc:
        return False, {}, {}
    meta: dict[str, Any] = doc["meta"] if isinstance(doc.get("meta"), dict) else {}
    labels: dict[str, Any] = doc["labels"] if isinstance(doc.get("labels"), dict) else {}
    return True, {str(k): str(v) for k, v in meta.items()}, {str(k): str(v) for k, v in labels.items()}


def image_of(notes: Any) -> str | None:
    """The image id a managed VM's Notes record, else None."""
    if not decode_notes(notes)[0]:
        return None
    image = json.loads(notes).get("image")
    return image if isinstance(image, str) else None


def create_token_of(notes: Any) -> str | None:
    """The create token in a managed VM's Notes while its create has not completed, else None."""
    if not isinstance(notes, str) or not notes.startswith("{"):
        return None
    try:
        doc = json.loads(notes)
    except json.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or NOTES_MARKER not in doc or not isinstance(doc.get("create"), str):
        return None
    token: str = doc["create"]
    return token


def file_name(path: str) -> str:
    return path.replace("/", "\\").rsplit("\\", 1)[-1]


# -- objects ---------------------------------------------------------------------------------


def disk_from(obj: dict[str, Any], labels: dict[str, str] | None = None) -> DiskInfo:
    path = str(obj.get("Path") or "")
    size = obj.get("Size")
    fmt = obj.get("Format")
    kind = obj.get("Type")
    return DiskInfo(
        id=path,
        size_gib=int(size) // GIB if isinstance(size, int) else 0,
        format=DiskFormat.VHDX if fmt == _VHDX else None,
        thin=None if not isinstance(kind, int) else kind != _VHD_FIXED,
        label=(labels or {}).get(file_name(path)),
    )


def instance_from(obj: dict[str, Any]) -> InstanceInfo:
    managed, metadata, labels = decode_notes(obj.get("Notes"))
    host = obj.get("Host")
    return InstanceInfo(
        id=str(obj["Id"]).lower(),
        name=str(obj.get("Name", "")),
        power_state=power_state(obj.get("State")),
        vcpus=int(obj.get("Cpu") or 0),
        memory_mb=int(obj.get("Mem") or 0) // MIB,
        node=host,
        host=host,
        disks=tuple(
            disk_from(d, labels) for d in as_list(obj.get("Disks")) if file_name(str(d.get("Path") or "")) != SEED_FILE
        ),
        metadata=metadata,
        managed=managed,
        image=image_of(obj.get("Notes")),
        nics=tuple(nic_from(n) for n in as_list(obj.get("Nics"))),
    )


def mac_from(value: Any) -> str:
    """Hyper-V's ``00155D010203`` as ``00:15:5d:01:02:03``."""
    text = str(value or "").replace(":", "").replace("-", "").lower()
    return ":".join(text[i : i + 2] for i in range(0, len(text), 2))


def mac_to(mac: str) -> str:
    """A contract MAC (``52:54:00:12:34:56``) as Hyper-V's -StaticMacAddress wants it (``525400123456``)."""
    return mac.replace(":", "").replace("-", "").upper()


def nic_from(obj: dict[str, Any]) -> NicInfo:
    return NicInfo(
        id=str(obj.get("Id") or ""),
        network=str(obj.get("SwitchName") or ""),
        mac=mac_from(obj.get("MacAddress")),
        model=NIC_MODEL,
    )


def ip_list(value: Any) -> tuple[str, ...]:
    """An adapter's IPAddresses: a JSON array, one string (a one-element array unwrapped), or the
    space-joined text Windows PowerShell writes for an array nested deeper than ``-Depth``."""
    return tuple(a for item in as_list(value) for a in str(item).split() if a)


def image_from(obj: dict[str, Any]) -> Image:
    """An image in the library: a VHDX file. Its checksum is the file's length and last write time, which
    change whenever anything writes the file (reading the whole file for a hash would take minutes)."""
    written = parse_ps_date(obj.get("Time"))
    size = obj.get("Size")
    name = str(obj.get("Name") or "")
    return Image(
        id=name,
        name=name.rsplit(".", 1)[0],
        disk_format=DiskFormat.VHDX if name.lower().endswith(".vhdx") else None,
        virtual_size_bytes=int(size) if isinstance(size, int) else 0,
        min_disk_gib=-(-int(size) // GIB) if isinstance(size, int) else 0,
        checksum=f"{obj.get('Len')}-{int(written.timestamp() * 1000) if written else 0}",
    )


def network_from(obj: dict[str, Any]) -> Network:
    kind = {0: "private", 1: "internal", 2: "external"}.get(obj.get("Type"), "switch")  # type: ignore[arg-type]
    return Network(id=str(obj.get("Id") or "").lower(), name=str(obj.get("Name") or ""), kind=f"switch:{kind}")


def addresses_from(value: Any, now: datetime.datetime) -> list[GuestAddress]:
    """KVP's addresses per adapter, for adapters that have any (a guest that has not reported has none)."""
    found = []
    for obj in as_list(value):
        if not obj.get("Kvp"):
            continue
        addresses = ip_list(obj.get("IPAddresses"))
        if addresses:
            mac = mac_from(obj.get("MacAddress"))
            found.append(GuestAddress(mac=mac, addresses=addresses, source="kvp", observed_at=now))
    return found


def metrics_from(obj: dict[str, Any], instance_id: str, now: datetime.datetime) -> InstanceMetrics:
    """Measure-VM's report as cumulative counters.

    CPU time is derived: the average MHz over the metering duration, divided by the host's clock, is the
    number of busy cores on average; times the duration, the CPU seconds. Disk and network totals come in
    MB (whole megabytes), so they grow in 1 MiB steps.
    """

    def number(key: str) -> float | None:
        value = obj.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    mhz, clock, secs = number("Mhz"), number("Clock"), number("Secs")
    cpu = int(mhz / clock * secs * 1e9) if mhz is not None and clock and secs is not None else None

    def mb(key: str) -> int | None:
        value = number(key)
        return int(value) * MIB if value is not None else None

    ram = number("Ram")
    return InstanceMetrics(
        instance_id=instance_id,
        timestamp=now,
        cpu_time_ns=cpu,
        memory_used_mb=int(ram) if ram is not None else None,
        disk_read_bytes=mb("Read"),
        disk_write_bytes=mb("Written"),
        net_rx_bytes=mb("In"),
        net_tx_bytes=mb("Out"),
    )


def snapshot_from(obj: dict[str, Any], instance_id: str) -> SnapshotInfo:
    return SnapshotInfo(
        id=str(obj["Id"]).lower(),
        name=str(obj.get("Name", "")),
        instance_id=instance_id,
        created_at=parse_ps_date(obj.get("Created")),
        with_memory=obj.get("State") in _MEMORY_STATES,
    )


def priority_value(priority: HAPriority) -> int:
    return _PRIORITIES[HAPriority(priority)]


def ha_from(obj: dict[str, Any], instance_id: str) -> HAState:
    if not obj.get("Enabled"):
        return HAState(instance_id=instance_id, enabled=False)
    value = obj.get("Priority")
    value = value if isinstance(value, int) else 2000
    priority = HAPriority.HIGH if value >= 3000 else HAPriority.MEDIUM if value >= 2000 else HAPriority.LOW
    state = obj.get("State")
    return HAState(
        instance_id=instance_id,
        enabled=True,
        priority=priority,
        owner_node=obj.get("Owner"),
        state=_GROUP_STATES.get(state, str(state)) if state is not None else None,
    )


def nodes_from(value: Any) -> list[NodeInfo]:
    return [
        NodeInfo(
            name=str(n["Name"]),
            hypervisor_type=HYPERVISOR_TYPE,
            state=_NODE_STATES.get(n.get("State"), str(n.get("State"))),
        )
        for n in as_list(value)
    ]


def aggregates_from(value: Any) -> list[Aggregate]:
    return [
        Aggregate(name=str(c["Name"]), hosts=tuple(str(n) for n in as_list(c.get("Nodes"))), metadata={"ha": "true"})
        for c in as_list(value)
    ]


def host_from(obj: dict[str, Any]) -> HostResources:
    size = int(obj.get("DiskSize") or 0)
    free = int(obj.get("DiskFree") or 0)
    return HostResources(
        node=str(obj["Name"]),
        vcpus_total=int(obj.get("Cpu") or 0),
        vcpus_used=int(obj.get("CpuUsed") or 0),
        memory_mb_total=int(obj.get("Mem") or 0) // MIB,
        memory_mb_used=int(obj.get("MemUsed") or 0) // MIB,
        disk_gib_total=size // GIB,
        disk_gib_used=max(size - free, 0) // GIB,
        hypervisor_type=HYPERVISOR_TYPE,
        hypervisor_version=str(obj.get("Ver") or ""),
    )


# -- errors ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PSError:
    """The parts of a PowerShell error record that decide what went wrong."""

    message: str
    category: str = ""
    error_id: str = ""


_CATEGORY = re.compile(r"CategoryInfo\s*:\s*(\w+)")
_ERROR_ID = re.compile(r"FullyQualifiedErrorId\s*:\s*([^\s,]+)")
_CLIXML_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")


def _unescape(text: str) -> str:
    return _CLIXML_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def parse_clixml(stderr: bytes) -> PSError:
    """The first error record in a CLIXML stderr stream (or plain text, as cmd.exe writes it)."""
    text = stderr.decode("utf-8", errors="replace")
    if not text.startswith("#< CLIXML"):
        return PSError(message=text.strip() or "command failed without a message")
    import xml.etree.ElementTree as ET  # only when an error comes back: listing the driver stays light

    xml = text.split("\n", 1)[1] if "\n" in text else ""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return PSError(message="unreadable CLIXML error stream")
    lines = [
        _unescape(el.text or "") for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "S" and el.get("S") == "Error"
    ]
    full = "".join(lines)
    first = full.strip().splitlines()[0] if full.strip() else "command failed"
    # "Cmdlet : message" is how PowerShell prints the first line of an error record.
    message = first.split(" : ", 1)[1] if " : " in first else first
    category = _CATEGORY.search(full)
    error_id = _ERROR_ID.search(full)
    return PSError(
        message=message.strip(),
        category=category.group(1) if category else "",
        error_id=error_id.group(1) if error_id else "",
    )


_NIC_INDEX = re.compile(r" for NIC (\d+)\.$")


def _nic_field(message: str) -> str:
    """``nics.N.network`` for the create script's "... for NIC N." message, ``nic.network`` for attach_nic's."""
    match = _NIC_INDEX.search(message)
    return f"nics.{match.group(1)}.network" if match else "nic.network"


def error_from(err: PSError, *, instance_id: str | None = None) -> DriverError:
    """The virtdrivers error for a PowerShell error record."""
    msg = f"Hyper-V: {err.message}"
    by_id: dict[str, DriverError] = {
        "VDVMNotFound": InstanceNotFound(instance_id or "?", msg),
        "VDNameExists": InvalidSpec(err.message, field="name"),
        "VDSameNode": InvalidSpec(err.message, field="node"),
        "VDSnapExists": Conflict(msg),
        "VDNoImage": InvalidSpec(err.message, field="image"),
        "VDNoSwitch": InvalidSpec(err.message, field=_nic_field(err.message)),
        "VDNicNotFound": NotFound(msg),
    }
    if err.error_id in by_id:
        return by_id[err.error_id]
    category = err.category
    if category == "ObjectNotFound":
        return NotFound(msg)
    if category in ("InvalidOperation", "ResourceUnavailable", "NotEnabled", "DeviceError", "ResourceBusy"):
        return InvalidState(msg)
    if category == "ResourceExists":
        return Conflict(msg)
    if category in ("InvalidArgument", "InvalidData", "InvalidType", "LimitsExceeded"):
        return InvalidSpec(err.message, field="hyperv")
    if category == "OperationTimeout":
        return Timeout(msg)
    return DriverError(msg)
