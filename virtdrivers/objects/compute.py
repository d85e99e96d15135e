"""The contract's value objects: what callers send to drivers and what drivers return.

They describe compute as a compute agent sees it, not as any database or vendor
API stores it. Limits are deliberately generous but finite, so that absurd input
is refused before it reaches a hypervisor.
"""

from __future__ import annotations

import datetime
import enum
import re
from typing import Annotated

from pydantic import AfterValidator, Field

from virtdrivers.capabilities import DiskFormat
from virtdrivers.objects.base import VersionedObject
from virtdrivers.objects.workloads import MAX_NICS, ImageMode, NicInfo, NicSpec, UserData

__all__ = [
    "Aggregate",
    "BackendInfo",
    "DiskInfo",
    "DiskSpec",
    "EventType",
    "Flavor",
    "HAPriority",
    "HAState",
    "HostResources",
    "InstanceInfo",
    "InstanceSpec",
    "Leftover",
    "LifecycleEvent",
    "NodeInfo",
    "PowerState",
    "SnapshotInfo",
]

#: Longest instance name accepted. vSphere allows 80, oVirt 64 in some versions, Hyper-V 100:
#: 64 is safe everywhere.
MAX_NAME_LENGTH = 64
MIN_MEMORY_MB = 16
#: 24 TiB: the largest single VM any supported hypervisor offers today.
MAX_MEMORY_MB = 24 * 1024 * 1024
MAX_VCPUS = 768
#: 64 TiB: the VHDX and VMDK ceiling.
MAX_DISK_GIB = 64 * 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_name(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    if "/" in value or "\\" in value:
        raise ValueError("must not contain path separators")
    return value


Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH), AfterValidator(_check_name)]
Label = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_check_name)]
MetadataValue = Annotated[str, Field(max_length=1024)]


class PowerState(enum.StrEnum):
    """Power state of an instance, as Nova has long named them."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    SUSPENDED = "suspended"
    CRASHED = "crashed"
    NOSTATE = "nostate"


class HAPriority(enum.StrEnum):
    """Restart priority of a highly available instance; each backend maps it onto its own scale."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class EventType(enum.StrEnum):
    CREATED = "created"
    STARTED = "started"
    STOPPED = "stopped"
    PAUSED = "paused"
    RESUMED = "resumed"
    SUSPENDED = "suspended"
    MIGRATED = "migrated"
    DESTROYED = "destroyed"


class Flavor(VersionedObject):
    """A named size that instance specs are often built from."""

    VERSION = "1.0"
    name: Name
    vcpus: int = Field(ge=1, le=MAX_VCPUS)
    memory_mb: int = Field(ge=MIN_MEMORY_MB, le=MAX_MEMORY_MB)
    root_gib: int = Field(default=0, ge=0, le=MAX_DISK_GIB)


class DiskSpec(VersionedObject):
    """A disk to create with an instance, or to attach later."""

    VERSION = "1.0"
    size_gib: int = Field(ge=1, le=MAX_DISK_GIB)
    format: DiskFormat | None = None
    """None lets the driver choose its native format (qcow2, vmdk, vhdx, ...)."""
    thin: bool = True
    """Thin (sparse, dynamic) or thick (preallocated, fixed) provisioning."""
    label: Label | None = None


def _distinct_macs(nics: tuple[NicSpec, ...]) -> tuple[NicSpec, ...]:
    macs = [n.mac for n in nics if n.mac]
    if len(macs) != len(set(macs)):
        raise ValueError("two NICs ask for the same MAC address")
    return nics


class InstanceSpec(VersionedObject):
    """Everything needed to create an instance."""

    VERSION = "1.2"
    FIELD_SINCE = {"node": "1.1", "image": "1.2", "image_mode": "1.2", "nics": "1.2", "user_data": "1.2"}
    CHILD_VERSIONS = {"disks": [("1.0", "1.0")], "nics": [("1.2", "1.0")], "user_data": [("1.2", "1.0")]}

    name: Name
    vcpus: int = Field(ge=1, le=MAX_VCPUS)
    memory_mb: int = Field(ge=MIN_MEMORY_MB, le=MAX_MEMORY_MB)
    disks: tuple[DiskSpec, ...] = Field(default=(), max_length=16)
    metadata: dict[Label, MetadataValue] = Field(default_factory=dict, max_length=64)
    start: bool = True
    """Power the instance on once it is created, as a compute agent's spawn does."""
    node: Name | None = None
    """Where to place it; None lets the backend (or its scheduler) choose."""
    image: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    """An image id or name from ``list_images``: the root disk is made from it, ahead of ``disks``."""
    image_mode: ImageMode | None = None
    """Copy-on-write child or full copy of the image; None takes copy-on-write where the backend can."""
    nics: Annotated[tuple[NicSpec, ...], Field(max_length=MAX_NICS), AfterValidator(_distinct_macs)] = ()
    user_data: UserData | None = None

    @classmethod
    def from_flavor(cls, flavor: Flavor, name: str, **kwargs: object) -> InstanceSpec:
        disks = (DiskSpec(size_gib=flavor.root_gib),) if flavor.root_gib else ()
        return cls(name=name, vcpus=flavor.vcpus, memory_mb=flavor.memory_mb, disks=disks, **kwargs)


class DiskInfo(VersionedObject):
    VERSION = "1.0"
    id: str
    size_gib: int = Field(ge=0)
    format: DiskFormat | None = None
    thin: bool | None = None
    label: str | None = None


class InstanceInfo(VersionedObject):
    """What a driver reports about one instance."""

    VERSION = "1.2"
    FIELD_SINCE = {"managed": "1.1", "host": "1.1", "image": "1.2", "nics": "1.2"}
    CHILD_VERSIONS = {"disks": [("1.0", "1.0")], "nics": [("1.2", "1.0")]}

    id: str
    name: str
    power_state: PowerState
    vcpus: int = Field(ge=0)
    memory_mb: int = Field(ge=0)
    node: str | None = None
    """The compute node it is scheduled on (a host, or a whole vSphere cluster)."""
    host: str | None = None
    """The physical host it runs on, where the backend tells; equals ``node`` on single-host nodes."""
    disks: tuple[DiskInfo, ...] = ()
    metadata: dict[str, str] = Field(default_factory=dict)
    managed: bool = True
    """False for an instance created outside virtdrivers and not yet adopted."""
    image: str | None = None
    """The id of the image its root disk was made from, where the backend remembers it."""
    nics: tuple[NicInfo, ...] = ()


class SnapshotInfo(VersionedObject):
    VERSION = "1.0"
    id: str
    name: str
    instance_id: str
    created_at: datetime.datetime | None = None
    with_memory: bool = False


class NodeInfo(VersionedObject):
    """A compute node as the agent schedules onto it: a host, or a whole vSphere cluster."""

    VERSION = "1.0"
    name: str
    hypervisor_type: str
    state: str = "up"


class HostResources(VersionedObject):
    VERSION = "1.0"
    node: str
    vcpus_total: int = Field(ge=0)
    vcpus_used: int = Field(ge=0)
    memory_mb_total: int = Field(ge=0)
    memory_mb_used: int = Field(ge=0)
    disk_gib_total: int = Field(default=0, ge=0)
    disk_gib_used: int = Field(default=0, ge=0)
    hypervisor_type: str
    hypervisor_version: str = ""


class Aggregate(VersionedObject):
    """A group of hosts, such as a vSphere cluster, with its settings as metadata."""

    VERSION = "1.0"
    name: str
    hosts: tuple[str, ...] = ()
    metadata: dict[str, str] = Field(default_factory=dict)


class HAState(VersionedObject):
    VERSION = "1.0"
    instance_id: str
    enabled: bool
    priority: HAPriority = HAPriority.MEDIUM
    owner_node: str | None = None
    state: str | None = None
    """Backend's own word for the HA resource's state (online, offline, pending, ...)."""


class LifecycleEvent(VersionedObject):
    VERSION = "1.0"
    instance_id: str
    type: EventType
    timestamp: datetime.datetime
    name: str | None = None
    node: str | None = None


class BackendInfo(VersionedObject):
    """What a connected driver talks to, for the parity matrix and for support tickets."""

    VERSION = "1.0"
    backend: str
    """The hypervisor or manager itself (QEMU, vCenter, Hyper-V, oVirt Engine), not the SDK."""
    backend_version: str = ""
    endpoint: str = ""
    """Where it is connected, with any credentials removed."""
    libraries: dict[str, str] = Field(default_factory=dict)
    """Client-side libraries and middleware with their versions (libvirt, pyvmomi, pywinrm, ...)."""


class Leftover(VersionedObject):
    """Something an interrupted create left on the backend, as ``Driver.reap`` finds it."""

    VERSION = "1.0"
    kind: str
    """``instance`` (a VM record) or ``disk`` (storage no instance refers to)."""
    ref: str
    """The backend's own reference: an instance id, a disk path or id."""
    name: str | None = None
    node: str | None = None
    token: str | None = None
    """The create's operation token (see :mod:`virtdrivers.reaping`)."""
    reason: str = ""
    """Why it counts as left over, for the operator reading a dry run."""
