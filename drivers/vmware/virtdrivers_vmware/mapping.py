"""Translation between virtdrivers objects and vSphere's managed-object data.

Everything here is a pure function over plain values or pyVmomi data objects
(which exist without a connection), so it is unit-tested without a server. The
functions that build vSphere specs import pyVmomi when called, keeping this
module importable without the SDK.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from virtdrivers.capabilities import DiskFormat
from virtdrivers.errors import (
    AuthenticationFailed,
    BackendUnavailable,
    Conflict,
    DriverError,
    InstanceNotFound,
    InvalidSpec,
    InvalidState,
    NotFound,
    NotSupported,
    redact,
)
from virtdrivers.objects import (
    Aggregate,
    DiskInfo,
    DiskSpec,
    HAPriority,
    HAState,
    HostResources,
    InstanceSpec,
    PowerState,
)
from virtdrivers_vmware._sdk import sdk

#: extraConfig key marking a VM as created (or adopted) by virtdrivers.
MANAGED_KEY = "virtdrivers.managed"
#: extraConfig key holding the operation token of a create in progress (see :mod:`virtdrivers.reaping`).
#: CreateVM_Task sets it with everything else, so the VM never exists without it; the create's
#: last step empties it. A VM whose token outlived its create is a leftover ``reap`` removes.
CREATE_TOKEN_KEY = "virtdrivers.create_token"
#: extraConfig key keeping the token of the create that made a VM, for the VM's life: a disk
#: named with that token is this VM's even once detached and kept, so reap never takes it.
CREATED_BY_KEY = "virtdrivers.created_by"
#: extraConfig prefix for instance metadata; vSphere keeps extraConfig with the VM through moves and snapshots.
META_PREFIX = "virtdrivers.meta."
#: Metadata keys vSphere would refuse in extraConfig are stored hex-encoded under this prefix.
META_HEX_PREFIX = "virtdrivers.metax."
#: extraConfig prefix for disk labels, keyed by the disk's file name (stable where device keys are not).
LABEL_PREFIX = "virtdrivers.disklabel."
#: extraConfig key on an instance naming the template (image id) it was cloned from.
IMAGE_KEY = "virtdrivers.image"
#: Snapshot description marking a snapshot taken with memory; vSphere's snapshot tree has no such flag.
MEMORY_MARK = "virtdrivers:memory"
#: vSphere's guest id for "other 64-bit"; we boot no OS, so the choice only affects defaults.
GUEST_ID = "otherGuest64"
#: Unit 7 of a SCSI bus is the controller itself.
SCSI_CONTROLLER_UNIT = 7
MAX_SCSI_UNITS = 16

HYPERVISOR_TYPE = "vmware"

#: VM properties the placement decisions read for every VM (power, size, host) plus name and marks.
VM_LIST_PROPERTIES = (
    "name",
    "runtime.powerState",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "runtime.host",
    "config.extraConfig",
    "config.template",
)
#: Everything an InstanceInfo shows: the placement properties plus the devices (disks, NICs). The
#: bulk listing derives its entries from the same properties (cached per config version, see
#: listing.py), so a listed instance equals the same instance read alone.
VM_INFO_PROPERTIES = (*VM_LIST_PROPERTIES, "config.hardware.device", "config.changeVersion")
#: One instance in full adds where its files are (to place new disks next to them).
VM_DETAIL_PROPERTIES = (*VM_INFO_PROPERTIES, "config.files.vmPathName")
HOST_PROPERTIES = (
    "name",
    "parent",
    "summary.hardware.numCpuThreads",
    "summary.hardware.memorySize",
    "runtime.connectionState",
    "runtime.inMaintenanceMode",
    "datastore",
)
CLUSTER_PROPERTIES = ("name", "host", "resourcePool", "datastore", "configurationEx", "parent")
DATASTORE_PROPERTIES = ("name", "summary.capacity", "summary.freeSpace")
DATACENTER_PROPERTIES = ("name", "vmFolder", "hostFolder")

_POWER = {
    "poweredOn": PowerState.RUNNING,
    "poweredOff": PowerState.SHUTDOWN,
    "suspended": PowerState.SUSPENDED,
}


_ESCAPES = re.compile(r"%(2[fF]|5[cC]|25)")
#: vSphere's limit on an (escaped) inventory name.
MAX_VSPHERE_NAME = 80
#: A VM's directory holds files named after it ("<name>-Snapshot12.vmsn"): with room for the
#: longest suffix, file names stay within the 255 bytes a datastore's file system allows.
MAX_NAME_BYTES = 255 - len("-Snapshot999.vmsn")
#: A managed object id: "vm-42", "domain-c7", an ESXi host's "12". Anything else never reaches the wire.
_MOID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
#: What XML 1.0 cannot carry in text, or carries changed ('\r' arrives as '\n'): refused in metadata.
_XML_UNSAFE = re.compile("[\x00-\x08\x0b-\x0d\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def vm_name(value: object) -> str:
    """A VM name as given: vCenter stores '/', '\\' and '%' escaped as %2f, %5c and %25."""
    return _ESCAPES.sub(lambda m: bytes.fromhex(m.group(1)).decode(), str(value or ""))


def escaped_name(name: str) -> str:
    """The name as vCenter stores it, so that :func:`vm_name` gives ``name`` back exactly.

    vCenter escapes '%', '/' and '\\' itself but leaves a '%' that starts an escape
    sequence alone, so a name such as "a%25b" would come back as "a%b": we escape first.
    """
    return name.replace("%", "%25").replace("/", "%2f").replace("\\", "%5c")


def check_vm_name(name: str) -> None:
    """Refuse, before any call, a name vSphere would store differently or cannot store at all."""
    if name in (".", ".."):
        raise InvalidSpec(f"{name!r} names a directory on the datastore, not a VM", field="name")
    stored = escaped_name(name)
    if len(stored) > MAX_VSPHERE_NAME:
        raise InvalidSpec(
            f"vSphere names are at most {MAX_VSPHERE_NAME} characters with '%' escaped (this one has {len(stored)})",
            field="name",
        )
    if len(stored.encode()) > MAX_NAME_BYTES:
        raise InvalidSpec(
            f"the VM's file names would exceed 255 bytes: at most {MAX_NAME_BYTES} bytes of UTF-8 in a name",
            field="name",
        )


def check_metadata(metadata: Mapping[str, str]) -> None:
    """Refuse metadata values the SOAP wire would lose or alter (control characters, '\\r')."""
    for key, value in metadata.items():
        if _XML_UNSAFE.search(value):
            raise InvalidSpec(
                f"metadata {key!r}: control characters (other than tab and newline) and carriage "
                "returns do not survive vSphere's XML",
                field=f"metadata.{key}",
            )


def is_moid(value: str) -> bool:
    """Whether ``value`` could be a managed object id at all."""
    return _MOID.fullmatch(value) is not None


def power_state(value: str | None) -> PowerState:
    return _POWER.get(value or "", PowerState.NOSTATE)


# ---------------------------------------------------------------------------------------------
# Inventory rows: what one paged RetrievePropertiesEx returns, keyed by managed object id.


@dataclass(frozen=True)
class HostRow:
    moid: str
    name: str
    cluster: str | None
    """Managed object id of the cluster the host belongs to (None for a standalone host)."""
    vcpus: int = 0
    memory_mb: int = 0
    up: bool = True
    datastores: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterRow:
    moid: str
    name: str
    hosts: tuple[str, ...] = ()
    resource_pool: str | None = None
    datastores: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    datacenter: str | None = None


@dataclass(frozen=True)
class DatastoreRow:
    moid: str
    name: str
    capacity: int = 0
    free: int = 0


@dataclass(frozen=True)
class DatacenterRow:
    moid: str
    name: str
    vm_folder: str | None = None
    host_folder: str | None = None


@dataclass
class Inventory:
    """Clusters, hosts, datastores and VMs as fetched in one paged property retrieval."""

    clusters: dict[str, ClusterRow] = field(default_factory=dict)
    hosts: dict[str, HostRow] = field(default_factory=dict)
    datastores: dict[str, DatastoreRow] = field(default_factory=dict)
    datacenters: dict[str, DatacenterRow] = field(default_factory=dict)
    vms: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Per cluster id: VM id -> vSphere HA restart priority of its override ("disabled" switches HA off).
    ha_overrides: dict[str, dict[str, str]] = field(default_factory=dict)

    def cluster_named(self, name: str) -> ClusterRow | None:
        return next((c for c in self.clusters.values() if c.name == name), None)

    def cluster_of_host(self, host_moid: str | None) -> ClusterRow | None:
        host = self.hosts.get(host_moid or "")
        return self.clusters.get(host.cluster or "") if host else None


def moid(ref: Any) -> str | None:
    """The managed object id of a reference, without touching the network."""
    if ref is None:
        return None
    return str(ref._moId)


def type_name(ref: Any) -> str:
    """``VirtualMachine`` for a ``vim.VirtualMachine`` reference."""
    return type(ref).__name__.rsplit(".", 1)[-1]


def props_of(object_content: Any) -> dict[str, Any]:
    return {p.name: p.val for p in (object_content.propSet or ())}


def extra_config(props: Mapping[str, Any]) -> dict[str, str]:
    return {str(o.key): str(o.value) for o in (props.get("config.extraConfig") or ()) if o.value is not None}


def is_managed(props: Mapping[str, Any]) -> bool:
    return extra_config(props).get(MANAGED_KEY) == "true"


def metadata_key(key: str) -> str:
    """The extraConfig key for a metadata key: readable when vSphere allows it, hex-encoded otherwise."""
    if re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", key):
        return META_PREFIX + key
    return META_HEX_PREFIX + key.encode().hex()


def metadata_of(extra: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in extra.items():
        if k.startswith(META_HEX_PREFIX):
            try:
                out[bytes.fromhex(k[len(META_HEX_PREFIX) :]).decode()] = v
            except ValueError:
                continue
        elif k.startswith(META_PREFIX):
            out[k[len(META_PREFIX) :]] = v
    return out


def cluster_metadata(configuration: Any, datacenter: str | None = None) -> dict[str, str]:
    """DRS and HA settings of a cluster as aggregate metadata (vcsim leaves unset flags as None)."""
    meta: dict[str, str] = {}
    drs = getattr(configuration, "drsConfig", None)
    das = getattr(configuration, "dasConfig", None)
    meta["drs_enabled"] = _flag(getattr(drs, "enabled", None))
    behavior = getattr(drs, "defaultVmBehavior", None)
    if behavior:
        meta["drs_behavior"] = str(behavior)
    meta["ha_enabled"] = _flag(getattr(das, "enabled", None))
    admission = getattr(das, "admissionControlEnabled", None)
    if admission is not None:
        meta["ha_admission_control"] = _flag(admission)
    if datacenter:
        meta["datacenter"] = datacenter
    return meta


#: Our HA priorities on vSphere's restart priorities (which also know "lowest" and "highest").
_RESTART_PRIORITY = {HAPriority.LOW: "low", HAPriority.MEDIUM: "medium", HAPriority.HIGH: "high"}
_PRIORITY_OF = {
    "lowest": HAPriority.LOW,
    "low": HAPriority.LOW,
    "medium": HAPriority.MEDIUM,
    "high": HAPriority.HIGH,
    "highest": HAPriority.HIGH,
}


def ha_overrides(configuration: Any) -> dict[str, str]:
    """VM id -> restart priority of each per-VM HA override in a cluster's configuration."""
    out: dict[str, str] = {}
    for entry in getattr(configuration, "dasVmConfig", None) or ():
        settings = getattr(entry, "dasSettings", None)
        priority = getattr(settings, "restartPriority", None) or getattr(entry, "restartPriority", None)
        if entry.key is not None and priority:
            out[moid(entry.key) or ""] = str(priority)
    return out


def ha_state(instance_id: str, props: Mapping[str, Any], cluster: ClusterRow, overrides: Mapping[str, str]) -> HAState:
    """HA as the contract reports it: enabled when the VM has a restart priority other than "disabled".

    ``state`` tells whether the cluster's own HA is on, without which vSphere restarts nothing.
    """
    priority = overrides.get(instance_id)
    enabled = priority is not None and priority not in ("disabled", "clusterRestartPriority")
    cluster_ha = cluster.metadata.get("ha_enabled") == "true"
    state = None
    if enabled:
        state = "protected" if cluster_ha else "cluster-ha-disabled"
    return HAState(
        instance_id=instance_id,
        enabled=enabled,
        priority=_PRIORITY_OF.get(priority or "", HAPriority.MEDIUM),
        owner_node=cluster.name,
        state=state,
    )


def ha_override_spec(vm: Any, enabled: bool, priority: HAPriority, *, exists: bool) -> Any:
    """A ClusterConfigSpecEx adding or editing one VM's HA override."""
    vim, _ = sdk()
    settings = vim.cluster.DasVmSettings(restartPriority=_RESTART_PRIORITY[priority] if enabled else "disabled")
    info = vim.cluster.DasVmConfigInfo(key=vm, dasSettings=settings)
    change = vim.cluster.DasVmConfigSpec(operation="edit" if exists else "add", info=info)
    return vim.cluster.ConfigSpecEx(dasVmConfigSpec=[change])


def _flag(value: object) -> str:
    return "true" if value else "false"


def build_inventory(objects: Iterable[Any]) -> Inventory:
    """Sort the objects of one retrieval into an :class:`Inventory`."""
    inv = Inventory()
    objects = list(objects)
    for oc in objects:
        if type_name(oc.obj) == "Datacenter":
            props = props_of(oc)
            oid = moid(oc.obj) or ""
            inv.datacenters[oid] = DatacenterRow(
                moid=oid,
                name=str(props.get("name", oid)),
                vm_folder=moid(props.get("vmFolder")),
                host_folder=moid(props.get("hostFolder")),
            )
    datacenters = {d.host_folder: d for d in inv.datacenters.values() if d.host_folder}
    for oc in objects:
        kind, oid, props = type_name(oc.obj), moid(oc.obj) or "", props_of(oc)
        if kind == "VirtualMachine":
            inv.vms[oid] = props
        elif kind == "HostSystem":
            parent = props.get("parent")
            inv.hosts[oid] = HostRow(
                moid=oid,
                name=str(props.get("name", oid)),
                cluster=moid(parent) if parent is not None and type_name(parent) == "ClusterComputeResource" else None,
                vcpus=int(props.get("summary.hardware.numCpuThreads") or 0),
                memory_mb=int(props.get("summary.hardware.memorySize") or 0) // (1024 * 1024),
                up=props.get("runtime.connectionState", "connected") == "connected"
                and not props.get("runtime.inMaintenanceMode", False),
                datastores=tuple(moid(d) or "" for d in props.get("datastore") or ()),
            )
        elif kind == "ClusterComputeResource":
            dc = datacenters.get(moid(props.get("parent")) or "")
            inv.ha_overrides[oid] = ha_overrides(props.get("configurationEx"))
            inv.clusters[oid] = ClusterRow(
                moid=oid,
                name=str(props.get("name", oid)),
                hosts=tuple(moid(h) or "" for h in props.get("host") or ()),
                resource_pool=moid(props.get("resourcePool")),
                datastores=tuple(moid(d) or "" for d in props.get("datastore") or ()),
                metadata=cluster_metadata(props.get("configurationEx"), dc.name if dc else None),
                datacenter=dc.moid if dc else None,
            )
        elif kind == "Datastore":
            inv.datastores[oid] = DatastoreRow(
                moid=oid,
                name=str(props.get("name", oid)),
                capacity=int(props.get("summary.capacity") or 0),
                free=int(props.get("summary.freeSpace") or 0),
            )
    return inv


def host_resources(cluster: ClusterRow, inv: Inventory, version: str = "") -> HostResources:
    """A cluster's capacity as the sum of its connected hosts, its use as its running VMs."""
    hosts = [inv.hosts[h] for h in cluster.hosts if h in inv.hosts]
    up = [h for h in hosts if h.up]
    vcpus_used = memory_used = 0
    for props in inv.vms.values():
        if props.get("runtime.powerState") != "poweredOn":
            continue
        if moid(props.get("runtime.host")) in cluster.hosts:
            vcpus_used += int(props.get("config.hardware.numCPU") or 0)
            memory_used += int(props.get("config.hardware.memoryMB") or 0)
    stores = [inv.datastores[d] for d in cluster.datastores if d in inv.datastores]
    gib = 1024**3
    return HostResources(
        node=cluster.name,
        vcpus_total=sum(h.vcpus for h in up),
        vcpus_used=vcpus_used,
        memory_mb_total=sum(h.memory_mb for h in up),
        memory_mb_used=memory_used,
        disk_gib_total=sum(d.capacity for d in stores) // gib,
        disk_gib_used=sum(d.capacity - d.free for d in stores) // gib,
        hypervisor_type=HYPERVISOR_TYPE,
        hypervisor_version=version,
    )


def aggregate(cluster: ClusterRow, inv: Inventory) -> Aggregate:
    hosts = tuple(inv.hosts[h].name for h in cluster.hosts if h in inv.hosts)
    return Aggregate(name=cluster.name, hosts=hosts, metadata=dict(cluster.metadata))


def cluster_load(cluster: ClusterRow, inv: Inventory) -> float:
    """Fraction of a cluster's memory its running VMs use; placement picks the least loaded."""
    res = host_resources(cluster, inv)
    return res.memory_mb_used / res.memory_mb_total if res.memory_mb_total else 1.0


def pick_host(cluster: ClusterRow, inv: Inventory, *, exclude: str | None = None) -> HostRow | None:
    """The connected host of ``cluster`` with the least running memory, other than ``exclude``."""
    used: dict[str, int] = {h: 0 for h in cluster.hosts}
    for props in inv.vms.values():
        h = moid(props.get("runtime.host"))
        if h in used and props.get("runtime.powerState") == "poweredOn":
            used[h] += int(props.get("config.hardware.memoryMB") or 0)
    candidates = [inv.hosts[h] for h in cluster.hosts if h in inv.hosts and inv.hosts[h].up and h != exclude]
    if not candidates:
        return None
    return min(candidates, key=lambda h: (used[h.moid], h.name))


# ---------------------------------------------------------------------------------------------
# Disks


_DATASTORE_PATH = re.compile(r"^\[(?P<ds>[^\]]+)\]\s*(?P<path>.*)$")


def split_datastore_path(path: str) -> tuple[str, str]:
    """``[ds] dir/file.vmdk`` -> (``ds``, ``dir/file.vmdk``)."""
    m = _DATASTORE_PATH.match(path or "")
    if not m:
        raise InvalidSpec(f"not a datastore path: {path!r}", field="path")
    return m.group("ds"), m.group("path")


def vm_directory(vmx_path: str) -> tuple[str, str]:
    """Datastore and directory of a VM from its ``.vmx`` path."""
    ds, path = split_datastore_path(vmx_path)
    return ds, path.rsplit("/", 1)[0] if "/" in path else ""


def is_disk(device: Any) -> bool:
    return type_name(device) == "VirtualDisk"


def disks_of(devices: Sequence[Any] | None, extra: Mapping[str, str] | None = None) -> tuple[DiskInfo, ...]:
    """Virtual disks as DiskInfo; the id is the device key, the label our own if we set one."""
    out = []
    labels = extra or {}
    for dev in devices or ():
        if not is_disk(dev):
            continue
        backing = dev.backing
        name = str(getattr(backing, "fileName", "") or "")
        thin = getattr(backing, "thinProvisioned", None)
        out.append(
            DiskInfo(
                id=str(dev.key),
                size_gib=int(dev.capacityInKB or 0) // (1024 * 1024),
                format=DiskFormat.VMDK,
                thin=bool(thin) if thin is not None else None,
                label=labels.get(LABEL_PREFIX + label_key(name)),
            )
        )
    return tuple(out)


def restore_disk_changes(saved: Sequence[Any] | None, current: Sequence[Any] | None) -> list[Any]:
    """Device changes that give a VM back the disks a snapshot recorded, matched by backing file.

    Disks added since the snapshot are detached, not deleted: a newer snapshot may still
    hold them. Disks removed since come back on their old controller slot, from the file
    the snapshot still references. Removals come first so their slots are free.
    """
    vim, _ = sdk()

    def files(devices: Sequence[Any] | None) -> dict[str, Any]:
        return {str(d.backing.fileName): d for d in devices or () if is_disk(d)}

    before, now = files(saved), files(current)
    changes = [vim.vm.device.VirtualDeviceSpec(operation="remove", device=d) for f, d in now.items() if f not in before]
    changes += [vim.vm.device.VirtualDeviceSpec(operation="add", device=d) for f, d in before.items() if f not in now]
    return changes


def label_key(file_name: str) -> str:
    """extraConfig keys allow letters, digits, dots, dashes and underscores only."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", file_name.rsplit("/", 1)[-1])


def free_scsi_slots(devices: Sequence[Any] | None) -> tuple[int | None, list[int]]:
    """Key of the first SCSI controller and its free unit numbers (None when there is none)."""
    controller = None
    for dev in devices or ():
        if "SCSIController" in type_name(dev) or type_name(dev).endswith("SCSIController"):
            controller = dev
            break
    if controller is None:
        return None, []
    used = {dev.unitNumber for dev in devices or () if getattr(dev, "controllerKey", None) == controller.key} | {
        SCSI_CONTROLLER_UNIT
    }
    return int(controller.key), [u for u in range(MAX_SCSI_UNITS) if u not in used]


def disk_file(directory: str, vm_name: str, index: int, token: str | None = None) -> str:
    """The vmdk path of a VM's disk ``index``; a create's disks start with its operation token.

    A disk that CreateVM_Task made but no VM refers to (the task failed midway, a cleanup
    was cut short) is visible to nothing but a datastore search: the token at the start of
    its name, anchored and followed by '_' (outside the token's alphabet), says whose create
    it was. Tokens are at most about 120 bytes, a name 80: within a datastore's 255.
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", vm_name)
    base = f"{token}_{safe}_{index}.vmdk" if token else f"{safe}_{index}.vmdk"
    return f"{directory}/{base}" if directory else base


def create_token_of(props: Mapping[str, Any]) -> str | None:
    """The operation token of a VM whose create has not completed (None once it has)."""
    return extra_config(props).get(CREATE_TOKEN_KEY) or None


def disk_token(file_name: str) -> str | None:
    """The create token a vmdk's name starts with (as :func:`disk_file` writes it), or None.

    Anchored at the start of the base name, so a VM *named* like a token cannot plant one.
    """
    from virtdrivers.reaping import TOKEN_PATTERN

    base = file_name.rsplit("/", 1)[-1]
    m = TOKEN_PATTERN.match(base)
    if m is None or base[m.end() : m.end() + 1] != "_":
        return None
    return m.group(0)


def datastore_file(path: str) -> tuple[str, str] | None:
    """``[ds] dir/file.vmdk`` as (``ds``, ``dir/file.vmdk``), for comparing paths from different calls.

    vcsim's datastore browser reports sub-folders as ``[ds]/dir``, vCenter as ``[ds] dir``:
    the separator after the datastore is dropped, as are duplicate slashes.
    """
    m = _DATASTORE_PATH.match(path or "")
    if not m:
        return None
    rest = "/".join(p for p in m.group("path").split("/") if p)
    return m.group("ds"), rest


def referenced_files(props: Mapping[str, Any]) -> set[tuple[str, str]]:
    """Every datastore file a VM (or a snapshot's config) refers to: disk backings with
    their parent chains, and the VM's file layout."""
    out: set[tuple[str, str]] = set()
    for dev in props.get("config.hardware.device") or ():
        backing = getattr(dev, "backing", None)
        while backing is not None:
            name = datastore_file(str(getattr(backing, "fileName", "") or ""))
            if name is not None:
                out.add(name)
            backing = getattr(backing, "parent", None)
    for f in props.get("layoutEx.file") or ():
        name = datastore_file(str(getattr(f, "name", "") or ""))
        if name is not None:
            out.add(name)
    return out


def new_disk_change(disk: DiskSpec, *, datastore: str, file_path: str, controller_key: int, unit: int, key: int) -> Any:
    """A device change creating a vmdk (thin or eager-zeroed thick) on ``datastore``."""
    vim, _ = sdk()

    if disk.format not in (None, DiskFormat.VMDK):
        raise InvalidSpec(f"vSphere creates vmdk disks only, not {disk.format}", field="format")
    backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        fileName=f"[{datastore}] {file_path}",
        diskMode="persistent",
        thinProvisioned=disk.thin,
        eagerlyScrub=not disk.thin,
    )
    device = vim.vm.device.VirtualDisk(
        key=key,
        controllerKey=controller_key,
        unitNumber=unit,
        capacityInKB=disk.size_gib * 1024 * 1024,
        backing=backing,
    )
    return vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=device)


def label_options(labels: Mapping[str, str | None]) -> list[Any]:
    """extraConfig entries recording disk labels, keyed by disk file; None removes an entry."""
    vim, _ = sdk()

    return [vim.option.OptionValue(key=LABEL_PREFIX + label_key(f), value=v or "") for f, v in labels.items()]


def create_spec(
    spec: InstanceSpec, *, datastore: str, instance_uuid: str | None = None, token: str | None = None
) -> Any:
    """The ConfigSpec for CreateVM_Task: hardware, a paravirtual SCSI bus, disks and our marks.

    ``instance_uuid`` is chosen by us so that a create whose task fails (or whose answer is
    lost) can still find the VM it may have made, by ``SearchIndex.FindByUuid``, and remove it.
    ``token`` is the create's operation token: it goes into the VM's extraConfig and the name
    of every vmdk, in this one spec, so nothing the create makes ever exists without it.
    """
    vim, _ = sdk()

    controller_key = -100
    changes: list[Any] = [
        vim.vm.device.VirtualDeviceSpec(
            operation="add",
            device=vim.vm.device.ParaVirtualSCSIController(key=controller_key, busNumber=0, sharedBus="noSharing"),
        )
    ]
    labels: dict[str, str | None] = {}
    for i, disk in enumerate(spec.disks):
        # The VM's directory on the datastore is named after its (escaped) name.
        path = disk_file(escaped_name(spec.name), spec.name, i + 1, token)
        changes.append(
            new_disk_change(
                disk, datastore=datastore, file_path=path, controller_key=controller_key, unit=i, key=-(101 + i)
            )
        )
        if disk.label:
            labels[path] = disk.label
    extra = [vim.option.OptionValue(key=MANAGED_KEY, value="true")]
    if token:
        extra.append(vim.option.OptionValue(key=CREATE_TOKEN_KEY, value=token))
        extra.append(vim.option.OptionValue(key=CREATED_BY_KEY, value=token))
    extra += [vim.option.OptionValue(key=metadata_key(k), value=v) for k, v in spec.metadata.items()]
    extra += label_options(labels)
    return vim.vm.ConfigSpec(
        name=escaped_name(spec.name),
        numCPUs=spec.vcpus,
        memoryMB=spec.memory_mb,
        guestId=GUEST_ID,
        files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
        deviceChange=changes,
        extraConfig=extra,
        instanceUuid=instance_uuid,
    )


# ---------------------------------------------------------------------------------------------
# Snapshots


@dataclass(frozen=True)
class SnapshotRow:
    moid: str
    name: str
    created_at: Any
    with_memory: bool
    state: str | None


def flatten_snapshots(tree: Sequence[Any] | None) -> list[SnapshotRow]:
    """The snapshot tree of a VM, depth first."""
    out: list[SnapshotRow] = []
    for node in tree or ():
        out.append(
            SnapshotRow(
                moid=moid(node.snapshot) or "",
                name=str(node.name),
                created_at=node.createTime,
                with_memory=MEMORY_MARK in str(node.description or ""),
                state=str(node.state) if node.state else None,
            )
        )
        out.extend(flatten_snapshots(node.childSnapshotList))
    return out


# ---------------------------------------------------------------------------------------------
# Faults


#: vSphere fault class (by its vmodl name, most specific first along the MRO) -> our error type.
_FAULTS: dict[str, type[DriverError]] = {
    "vim.fault.InvalidPowerState": InvalidState,
    "vim.fault.InvalidState": InvalidState,
    "vim.fault.InvalidLogin": AuthenticationFailed,
    "vim.fault.NotAuthenticated": AuthenticationFailed,
    "vim.fault.NoPermission": AuthenticationFailed,
    "vim.fault.DuplicateName": InvalidSpec,
    "vim.fault.AlreadyExists": Conflict,
    "vim.fault.FileAlreadyExists": Conflict,
    "vim.fault.TaskInProgress": Conflict,
    "vim.fault.ResourceInUse": Conflict,
    "vim.fault.ConcurrentAccess": Conflict,
    "vim.fault.FileNotFound": NotFound,
    "vim.fault.NotFound": NotFound,
    "vim.fault.InsufficientResourcesFault": InvalidState,
    "vim.fault.ToolsUnavailable": InvalidState,
    "vim.fault.HostConnectFault": BackendUnavailable,
    "vmodl.fault.ManagedObjectNotFound": InstanceNotFound,
    "vmodl.fault.InvalidArgument": InvalidSpec,
    "vmodl.fault.InvalidRequest": InvalidSpec,
    "vmodl.fault.NotImplemented": NotSupported,
    "vmodl.fault.MethodNotFound": NotSupported,
    "vmodl.fault.NotSupported": NotSupported,
    "vmodl.fault.RequestCanceled": BackendUnavailable,
    "vmodl.fault.HostCommunication": BackendUnavailable,
    # "A general system error occurred": the server (or a host behind it) failed, not the
    # request; callers treat it as they treat an unreachable backend (retry later, elsewhere).
    "vmodl.fault.SystemError": BackendUnavailable,
}


def fault_name(fault: BaseException) -> str:
    return type(fault).__name__


def fault_text(fault: BaseException) -> str:
    """The vSphere message of a fault (or its class name when it carries none)."""
    msg = getattr(fault, "msg", None) or getattr(fault, "localizedMessage", None)
    faults = getattr(fault, "faultMessage", None) or ()
    extra = "; ".join(str(getattr(m, "message", "")) for m in faults if getattr(m, "message", None))
    text = str(msg) if msg else ""
    if extra:
        text = f"{text} ({extra})" if text else extra
    return text or fault_name(fault)


def error_from_fault(
    fault: BaseException, *, context: str, secrets: Iterable[str | None] = (), ref: str | None = None
) -> DriverError:
    """Our error for a vSphere fault, keeping vSphere's text and the fault's name, minus credentials.

    ``ref`` is the instance the call was about: ManagedObjectNotFound then becomes
    InstanceNotFound for it; without one it is a plain NotFound.
    """
    name = fault_name(fault)
    text = redact(f"{context}: {fault_text(fault)} [{name}]", secrets)
    for cls in type(fault).__mro__:
        kind = _FAULTS.get(cls.__name__)
        if kind is None:
            continue
        if kind is InstanceNotFound:
            return InstanceNotFound(ref, text) if ref is not None else NotFound(text)
        if kind is InvalidSpec:
            return InvalidSpec(text, field="name" if name == "vim.fault.DuplicateName" else None)
        if kind is NotSupported:
            return NotSupported(text)
        return kind(text)
    return DriverError(text)
