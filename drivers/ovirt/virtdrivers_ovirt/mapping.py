"""Between virtdrivers objects and the engine's API objects: pure functions.

Functions that read engine objects take anything shaped like ``ovirtsdk4.types``
(attribute access, enums with ``.value``); functions that build them take the
``ovirtsdk4.types`` module as an argument, so this module never imports the SDK.

Management marker: a VM is managed by virtdrivers when its ``comment`` holds a line
``virtdrivers:{json}`` (the JSON carries the instance metadata). Adoption appends
that line and keeps whatever the administrator wrote in the comment.

Create tokens (:mod:`virtdrivers.reaping`): while a create runs, the marker also
carries ``"creating": "<token>"``, and every disk the create makes carries
``virtdrivers create <token>`` in its description. Both are written in the very
request that makes the object, so neither ever exists without its token, and
both are cleared as the create's last steps (disks first, the VM last).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from virtdrivers.capabilities import Capability, DiskFormat
from virtdrivers.errors import NotSupported
from virtdrivers.objects import (
    DiskInfo,
    DiskSpec,
    EventType,
    HAPriority,
    InstanceInfo,
    InstanceSpec,
    NicInfo,
    PowerState,
    SnapshotInfo,
)
from virtdrivers.reaping import CreateToken

GIB = 1024**3
MIB = 1024**2
MARKER = "virtdrivers:"
#: What a disk's description starts with while the create that made it runs.
DISK_TOKEN_PREFIX = "virtdrivers create "

#: oVirt's UI values for HA priority.
HA_PRIORITY = {HAPriority.LOW: 1, HAPriority.MEDIUM: 50, HAPriority.HIGH: 100}

_POWER = {
    "up": PowerState.RUNNING,
    "powering_up": PowerState.RUNNING,
    "wait_for_launch": PowerState.RUNNING,
    "reboot_in_progress": PowerState.RUNNING,
    "migrating": PowerState.RUNNING,
    "powering_down": PowerState.RUNNING,
    "restoring_state": PowerState.RUNNING,
    "paused": PowerState.PAUSED,
    "saving_state": PowerState.SUSPENDED,
    "suspended": PowerState.SUSPENDED,
    "down": PowerState.SHUTDOWN,
    "image_locked": PowerState.SHUTDOWN,
    "not_responding": PowerState.NOSTATE,
    "unknown": PowerState.NOSTATE,
    "unassigned": PowerState.NOSTATE,
}

#: Statuses the engine passes through on its own; callers wait for them to settle.
TRANSIENT = frozenset(
    {
        "image_locked",
        "powering_up",
        "wait_for_launch",
        "reboot_in_progress",
        "migrating",
        "powering_down",
        "restoring_state",
        "saving_state",
    }
)

_FORMATS = {DiskFormat.QCOW2: "cow", DiskFormat.RAW: "raw"}
_FORMATS_BACK = {v: k for k, v in _FORMATS.items()}


#: The engine's ids are UUIDs in their canonical text form; nothing else names an engine object.
_ENGINE_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def is_engine_id(text: object) -> bool:
    """Whether ``text`` can be an engine id, checked before it becomes part of a URL.

    An id goes into the request path verbatim (``/vms/{id}``): ``..``, ``?x=1``, ``#frag``
    or ``../hosts`` would address another resource, and non-ASCII or NUL break the
    transport. None of them can name a VM, so they are refused without a request.
    """
    return isinstance(text, str) and _ENGINE_ID.fullmatch(text) is not None


def value(enum_or_text: Any) -> str:
    """The wire text of an SDK enum (or a plain string)."""
    return str(getattr(enum_or_text, "value", enum_or_text) or "")


def power_state(status: Any) -> PowerState:
    return _POWER.get(value(status), PowerState.NOSTATE)


def ha_priority_to_ovirt(priority: HAPriority | str) -> int:
    return HA_PRIORITY[HAPriority(priority)]


def ha_priority_from_ovirt(priority: int | None) -> HAPriority:
    """Engine priorities are any integer; they fall into the nearest of the three UI bands."""
    if priority is None or priority <= 25:
        return HAPriority.LOW
    if priority <= 75:
        return HAPriority.MEDIUM
    return HAPriority.HIGH


# -- the management marker ------------------------------------------------------------------------


def parse_marker(comment: str | None) -> tuple[bool, dict[str, str]]:
    """Whether ``comment`` marks a managed VM, and the metadata it carries."""
    for line in (comment or "").splitlines():
        if line.startswith(MARKER):
            try:
                data = json.loads(line[len(MARKER) :])
            except ValueError:
                return True, {}
            meta = data.get("metadata", {}) if isinstance(data, dict) else {}
            return True, {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
    return False, {}


def with_marker(comment: str | None, metadata: Mapping[str, str], *, creating: str | None = None) -> str:
    """``comment`` with the marker line set to ``metadata``, other lines kept as they were.

    ``creating`` is the token of a create still in progress; without it the marker says
    the instance is complete.
    """
    kept = [line for line in (comment or "").splitlines() if not line.startswith(MARKER)]
    data: dict[str, object] = {"metadata": dict(metadata)}
    if creating is not None:
        data["creating"] = creating
    marker = MARKER + json.dumps(data, separators=(",", ":"), sort_keys=True)
    return "\n".join([*kept, marker])


def marker_token(comment: str | None) -> str | None:
    """The token of the unfinished create the marker names, or None (complete, a pet, no marker)."""
    for line in (comment or "").splitlines():
        if line.startswith(MARKER):
            try:
                data = json.loads(line[len(MARKER) :])
            except ValueError:
                return None
            token = data.get("creating") if isinstance(data, dict) else None
            return token if isinstance(token, str) and CreateToken.decode(token) is not None else None
    return None


def disk_description(token: str) -> str:
    """The description of a disk made by the create holding ``token``."""
    return DISK_TOKEN_PREFIX + token


def disk_token(description: str | None) -> str | None:
    """The create token a disk's description carries, or None.

    Only a description that is exactly what :func:`disk_description` writes counts: a
    token quoted in an administrator's own text never makes a disk reapable.
    """
    text = description or ""
    if not text.startswith(DISK_TOKEN_PREFIX):
        return None
    token = text[len(DISK_TOKEN_PREFIX) :]
    decoded = CreateToken.decode(token)
    return token if decoded is not None and decoded.encode() == token else None


# -- topology ------------------------------------------------------------------------------------


def topology(vcpus: int, current: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """Sockets, cores, threads for ``vcpus``: keep a VM's cores and threads per socket when they divide it."""
    if current is not None:
        _, cores, threads = current
        per_socket = max(cores, 1) * max(threads, 1)
        if vcpus % per_socket == 0:
            return vcpus // per_socket, cores, threads
    return vcpus, 1, 1


def vcpus_of(cpu: Any) -> int:
    topo = getattr(cpu, "topology", None)
    if topo is None:
        return 0
    return (topo.sockets or 1) * (topo.cores or 1) * (topo.threads or 1)


# -- reading engine objects -----------------------------------------------------------------------


def disk_format(fmt: Any) -> DiskFormat | None:
    return _FORMATS_BACK.get(value(fmt))


def disk_info(disk: Any) -> DiskInfo:
    return DiskInfo(
        id=disk.id,
        size_gib=(disk.provisioned_size or 0) // GIB,
        format=disk_format(disk.format),
        thin=disk.sparse,
        label=disk.alias or disk.name or None,
    )


def attachment_disk_id(att: Any) -> str:
    """The id of the disk an attachment holds (the engine gives the attachment the disk's id)."""
    disk = getattr(att, "disk", None)
    return str(disk.id if disk is not None and disk.id else att.id)


def locked_disks(vm: Any) -> list[str]:
    """Ids of the disks of a VM (read with ``follow=disk_attachments.disk``) that are locked."""
    return [
        att.disk.id
        for att in getattr(vm, "disk_attachments", None) or ()
        if getattr(att, "disk", None) is not None and value(att.disk.status) == "locked"
    ]


def instance_info(
    vm: Any, host_names: Mapping[str, str], *, nics: tuple[NicInfo, ...] = (), image: str | None = None
) -> InstanceInfo:
    """Our view of an engine VM read with ``follow=disk_attachments.disk,nics``."""
    managed, metadata = parse_marker(vm.comment)
    host = getattr(vm, "host", None)
    node = host_names.get(host.id) if host is not None and host.id else None
    disks = []
    for att in getattr(vm, "disk_attachments", None) or ():
        disk = getattr(att, "disk", None)
        if disk is not None and getattr(disk, "provisioned_size", None) is not None:
            disks.append(disk_info(disk))
    return InstanceInfo(
        id=vm.id,
        name=vm.name,
        power_state=power_state(vm.status),
        vcpus=vcpus_of(vm.cpu),
        memory_mb=(vm.memory or 0) // MIB,
        node=node,
        host=node,
        disks=tuple(disks),
        metadata=metadata,
        managed=managed,
        image=image,
        nics=nics,
    )


def snapshot_info(snap: Any, instance_id: str) -> SnapshotInfo:
    return SnapshotInfo(
        id=snap.id,
        name=snap.description or "",
        instance_id=instance_id,
        created_at=snap.date.astimezone(datetime.UTC) if snap.date is not None else None,
        with_memory=bool(snap.persist_memorystate),
    )


def user_snapshots(snaps: Iterable[Any]) -> list[Any]:
    """Snapshots a user took: not the "Active VM" pseudo-snapshot, previews or stateless ones."""
    return [s for s in snaps if value(s.snapshot_type) == "regular"]


# -- building engine objects -------------------------------------------------------------------------


def vm_for_spec(
    types: Any,
    spec: InstanceSpec,
    cluster: str,
    host_id: str | None,
    *,
    token: str | None = None,
    template: Any = None,
    initialization: Any = None,
) -> Any:
    """The VM to add for ``spec``; ``token`` (a create in progress) goes into its marker.

    ``template`` is the SDK ``Template`` to make it from (Blank when None); ``initialization``
    its cloud-init fields, kept with the VM and attached by the engine on its first run.
    """
    sockets, cores, threads = topology(spec.vcpus)
    placement = None
    if host_id is not None:
        placement = types.VmPlacementPolicy(affinity=types.VmAffinity.MIGRATABLE, hosts=[types.Host(id=host_id)])
    return types.Vm(
        name=spec.name,
        comment=with_marker("", spec.metadata, creating=token),
        cluster=types.Cluster(name=cluster),
        template=template if template is not None else types.Template(name="Blank"),
        initialization=initialization,
        cpu=types.Cpu(topology=types.CpuTopology(sockets=sockets, cores=cores, threads=threads)),
        memory=spec.memory_mb * MIB,
        memory_policy=types.MemoryPolicy(guaranteed=spec.memory_mb * MIB, max=spec.memory_mb * MIB * 4),
        type=types.VmType.SERVER,
        placement_policy=placement,
    )


def disk_attachment_for_spec(
    types: Any,
    disk: DiskSpec,
    default: DiskFormat,
    name: str,
    storage_domain: str,
    bootable: bool,
    *,
    token: str | None = None,
) -> Any:
    """The attachment (with its new disk) for ``disk``; ``token`` (a create in progress) goes into
    the disk's description, so the disk never exists without it."""
    fmt = disk.format or default
    if fmt not in _FORMATS:
        raise NotSupported(f"ovirt has no {fmt} disks", capability=Capability.for_disk_format(fmt))
    return types.DiskAttachment(
        disk=types.Disk(
            name=disk.label or name,
            description=disk_description(token) if token is not None else None,
            format=types.DiskFormat(_FORMATS[fmt]),
            provisioned_size=disk.size_gib * GIB,
            sparse=disk.thin,
            storage_domains=[types.StorageDomain(name=storage_domain)],
        ),
        interface=types.DiskInterface.VIRTIO_SCSI,
        bootable=bootable,
        active=True,
    )


# -- lifecycle events from status changes ---------------------------------------------------------

#: What the event poller remembers of a VM between two looks: status, host id, name.
Seen = tuple[str, str | None, str]


def seen(vm: Any) -> Seen:
    host = getattr(vm, "host", None)
    return value(vm.status), (host.id if host is not None else None), vm.name


def lifecycle_events(before: Mapping[str, Seen], after: Mapping[str, Seen]) -> list[tuple[str, EventType]]:
    """The events that explain the move from one look at the VMs to the next.

    The engine's transient statuses are folded into the stable one they lead to, so a
    start seen half-way (``powering_up``) and one seen finished (``up``) give one STARTED.
    """
    events: list[tuple[str, EventType]] = []
    for vm_id, (status, host, _name) in after.items():
        old = before.get(vm_id)
        state = _settle(status)
        if old is None:
            events.append((vm_id, EventType.CREATED))
            if state == PowerState.RUNNING:
                events.append((vm_id, EventType.STARTED))
            continue
        old_state = _settle(old[0])
        if state != old_state:
            if state == PowerState.RUNNING:
                events.append((vm_id, EventType.RESUMED if old_state in _HELD else EventType.STARTED))
            elif state == PowerState.SHUTDOWN:
                events.append((vm_id, EventType.STOPPED))
            elif state == PowerState.SUSPENDED:
                events.append((vm_id, EventType.SUSPENDED))
            elif state == PowerState.PAUSED:
                events.append((vm_id, EventType.PAUSED))
        elif host is not None and old[1] is not None and host != old[1] and {status, old[0]} <= _MOVING:
            # Only a host change between two looks at a running or migrating VM is a migration:
            # a VM that resumes or starts elsewhere (seen mid-way, restoring_state or powering_up,
            # on the host it had before) was placed, not migrated.
            events.append((vm_id, EventType.MIGRATED))
    events.extend((vm_id, EventType.DESTROYED) for vm_id in before if vm_id not in after)
    return events


_HELD = (PowerState.SUSPENDED, PowerState.PAUSED)
_MOVING = {"up", "migrating"}
_SETTLED = {
    "powering_up": PowerState.RUNNING,
    "wait_for_launch": PowerState.RUNNING,
    "restoring_state": PowerState.RUNNING,
    "powering_down": PowerState.RUNNING,
    "saving_state": PowerState.RUNNING,
    "image_locked": PowerState.SHUTDOWN,
}


def _settle(status: str) -> PowerState:
    """The state a status stands for until its transition is over (a VM saving state still runs)."""
    return _SETTLED.get(status) or power_state(status)
