"""Capability flags: what a driver says it can do.

A driver class declares a ``frozenset[Capability]`` as class data. Callers and
tests branch on these flags, never on driver names. Each capability carries the
contract minor version that introduced it, its area (for grouping in the parity
matrix) and a one-line statement of what a backend must do to claim it, in the
spirit of SQLAlchemy's ``SuiteRequirements``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from virtdrivers.version import CONTRACT_VERSION, ContractVersion

__all__ = ["AREAS", "Capability", "CapabilityInfo", "DiskFormat"]


class DiskFormat(enum.StrEnum):
    """On-disk image formats a disk can be created in."""

    RAW = "raw"
    QCOW2 = "qcow2"
    VMDK = "vmdk"
    VHDX = "vhdx"


@dataclass(frozen=True, slots=True)
class CapabilityInfo:
    area: str
    since: ContractVersion
    doc: str


#: Display order and titles of the areas features are grouped in.
AREAS: dict[str, str] = {
    "lifecycle": "Lifecycle",
    "power": "Power",
    "resize": "Resize",
    "storage": "Storage",
    "formats": "Disk formats",
    "snapshots": "Snapshots",
    "migration": "Migration",
    "cluster": "Cluster and HA",
    "events": "Events",
    "workloads": "Workloads",
    "pets": "Existing VMs",
}

_V1_0 = ContractVersion(1, 0)
_V1_1 = ContractVersion(1, 1)
_V1_2 = ContractVersion(1, 2)


class Capability(enum.StrEnum):
    """Optional features of the driver contract.

    The mandatory core (connect, list, get, create, destroy, power on/off,
    reboot, nodes, host resources) is not listed: every driver must do it.
    """

    PAUSE = "pause"
    SUSPEND = "suspend"
    RESIZE_CPU = "resize_cpu"
    RESIZE_MEMORY = "resize_memory"
    ATTACH_DISK = "attach_disk"
    DETACH_DISK = "detach_disk"
    SNAPSHOT = "snapshot"
    SNAPSHOT_MEMORY = "snapshot_memory"
    LIVE_MIGRATE = "live_migrate"
    COLD_MIGRATE = "cold_migrate"
    EVACUATE = "evacuate"
    AGGREGATES = "aggregates"
    HIGH_AVAILABILITY = "high_availability"
    HA_FAILOVER = "ha_failover"
    ADOPT = "adopt"
    EVENTS = "events"
    REAP = "reap"
    IMAGES = "images"
    IMAGE_COW = "image_cow"
    IMAGE_COPY = "image_copy"
    IMAGE_UPLOAD = "image_upload"
    NETWORKS = "networks"
    NIC_HOTPLUG = "nic_hotplug"
    USER_DATA = "user_data"
    GUEST_ADDRESSES = "guest_addresses"
    CONSOLE_OUTPUT = "console_output"
    CONSOLE_CONNECT = "console_connect"
    METRICS = "metrics"
    DISK_RAW = "disk_raw"
    DISK_QCOW2 = "disk_qcow2"
    DISK_VMDK = "disk_vmdk"
    DISK_VHDX = "disk_vhdx"

    @property
    def info(self) -> CapabilityInfo:
        return _INFO[self]

    @property
    def area(self) -> str:
        return _INFO[self].area

    @property
    def since(self) -> ContractVersion:
        return _INFO[self].since

    @property
    def doc(self) -> str:
        return _INFO[self].doc

    @classmethod
    def for_disk_format(cls, fmt: DiskFormat) -> Capability:
        return _FORMAT_CAPS[fmt]

    @classmethod
    def known_in(cls, version: ContractVersion) -> frozenset[Capability]:
        """Capabilities that existed in contract ``version`` (same major)."""
        return frozenset(c for c in cls if c.since.major == version.major and c.since <= version)


_INFO: dict[Capability, CapabilityInfo] = {
    Capability.PAUSE: CapabilityInfo("power", _V1_0, "Freeze a running instance in memory and thaw it again."),
    Capability.SUSPEND: CapabilityInfo(
        "power", _V1_0, "Save a running instance's memory to disk, stop it, and resume it later."
    ),
    Capability.RESIZE_CPU: CapabilityInfo("resize", _V1_0, "Change the vCPU count of an existing instance."),
    Capability.RESIZE_MEMORY: CapabilityInfo("resize", _V1_0, "Change the memory size of an existing instance."),
    Capability.ATTACH_DISK: CapabilityInfo("storage", _V1_0, "Create a new disk and attach it to an instance."),
    Capability.DETACH_DISK: CapabilityInfo("storage", _V1_0, "Detach a disk from an instance."),
    Capability.SNAPSHOT: CapabilityInfo(
        "snapshots", _V1_0, "Create, list, revert to and delete snapshots of an instance."
    ),
    Capability.SNAPSHOT_MEMORY: CapabilityInfo(
        "snapshots", _V1_0, "Snapshot a running instance including its memory state."
    ),
    Capability.LIVE_MIGRATE: CapabilityInfo(
        "migration", _V1_0, "Move a running instance to another node without stopping it."
    ),
    Capability.COLD_MIGRATE: CapabilityInfo("migration", _V1_0, "Move a stopped instance to another node."),
    Capability.EVACUATE: CapabilityInfo(
        "migration", _V1_0, "Rebuild an instance on another node after its node has failed."
    ),
    Capability.AGGREGATES: CapabilityInfo(
        "cluster", _V1_0, "List host aggregates (clusters) with their member hosts and metadata."
    ),
    Capability.HIGH_AVAILABILITY: CapabilityInfo(
        "cluster", _V1_1, "Enable or disable high availability with a priority, and report HA state."
    ),
    Capability.HA_FAILOVER: CapabilityInfo(
        "cluster", _V1_1, "Move an HA-protected instance to another owner node on demand."
    ),
    Capability.ADOPT: CapabilityInfo(
        "pets", _V1_1, "Discover instances created outside virtdrivers and take them under management intact."
    ),
    Capability.EVENTS: CapabilityInfo(
        "events", _V1_0, "Deliver lifecycle events (started, stopped, paused, ...) to a subscriber."
    ),
    Capability.REAP: CapabilityInfo(
        "lifecycle",
        _V1_2,
        "Mark every create before its first backend change, and find and remove what a create killed midway left.",
    ),
    Capability.IMAGES: CapabilityInfo(
        "workloads", _V1_2, "List bootable images and create instances whose root disk is made from one."
    ),
    Capability.IMAGE_COW: CapabilityInfo(
        "workloads", _V1_2, "Make the root disk a copy-on-write child of the image; the image is never written."
    ),
    Capability.IMAGE_COPY: CapabilityInfo("workloads", _V1_2, "Make the root disk a full copy of the image."),
    Capability.IMAGE_UPLOAD: CapabilityInfo(
        "workloads", _V1_2, "Register a local image file in the backend's image store, and delete it."
    ),
    Capability.NETWORKS: CapabilityInfo(
        "workloads", _V1_2, "List networks and create instances with NICs on them, keeping a given MAC."
    ),
    Capability.NIC_HOTPLUG: CapabilityInfo("workloads", _V1_2, "Attach and detach NICs on a running instance."),
    Capability.USER_DATA: CapabilityInfo(
        "workloads", _V1_2, "Hand cloud-init user data, hostname and network config to the guest at first boot."
    ),
    Capability.GUEST_ADDRESSES: CapabilityInfo(
        "workloads", _V1_2, "Report the guest's addresses per NIC, with who reported them and when."
    ),
    Capability.CONSOLE_OUTPUT: CapabilityInfo("workloads", _V1_2, "Return the tail of the instance's serial console."),
    Capability.CONSOLE_CONNECT: CapabilityInfo(
        "workloads", _V1_2, "Give a connection to the instance's interactive console (URL or host and port, ticket)."
    ),
    Capability.METRICS: CapabilityInfo(
        "workloads", _V1_2, "Report cumulative CPU, memory, disk and network counters with a timestamp."
    ),
    Capability.DISK_RAW: CapabilityInfo("formats", _V1_0, "Create disks in raw format."),
    Capability.DISK_QCOW2: CapabilityInfo("formats", _V1_0, "Create disks in qcow2 format."),
    Capability.DISK_VMDK: CapabilityInfo("formats", _V1_0, "Create disks in VMware vmdk format."),
    Capability.DISK_VHDX: CapabilityInfo("formats", _V1_0, "Create disks in Hyper-V vhdx format."),
}

_FORMAT_CAPS: dict[DiskFormat, Capability] = {
    DiskFormat.RAW: Capability.DISK_RAW,
    DiskFormat.QCOW2: Capability.DISK_QCOW2,
    DiskFormat.VMDK: Capability.DISK_VMDK,
    DiskFormat.VHDX: Capability.DISK_VHDX,
}

assert set(_INFO) == set(Capability), "every capability needs its CapabilityInfo"
assert all(i.since <= CONTRACT_VERSION for i in _INFO.values())
