"""Images as vSphere templates, and the one CloneVM_Task spec that makes an instance from one.

An image is a VM marked as a template; its id is the template's managed-object id. A clone
is linked (a child disk of the template's current snapshot, ``createNewChildDiskBacking``)
where the template has a snapshot, else a full copy. The clone's spec carries everything
a plain create's does (CPU, memory, NICs, extra disks, our marks, the create token and the
user data), so the VM never exists without them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from virtdrivers.capabilities import DiskFormat
from virtdrivers.errors import InvalidSpec
from virtdrivers.objects import Image, InstanceSpec
from virtdrivers_vmware import guest_io, mapping, network
from virtdrivers_vmware._sdk import sdk

IMAGE_KEY = mapping.IMAGE_KEY
#: What an image is described from; read for templates only.
TEMPLATE_PROPERTIES = ("name", "config.hardware.device", "config.guestId", "snapshot.currentSnapshot")
_GIB = 1024**3


def is_template(props: Mapping[str, Any]) -> bool:
    return props.get("config.template") is True


def _disks(devices: Sequence[Any] | None) -> list[Any]:
    return [d for d in devices or () if mapping.is_disk(d)]


def _size(disk: Any) -> int:
    return int(getattr(disk, "capacityInBytes", 0) or 0) or int(disk.capacityInKB or 0) * 1024


def os_type(guest_id: object) -> str | None:
    """``windows`` or ``linux`` from vSphere's guest id, where it says; None for "other"."""
    text = str(guest_id or "").lower()
    if text.startswith("win"):
        return "windows"
    linux = ("linux", "ubuntu", "debian", "rhel", "centos", "sles", "suse", "fedora", "oracle", "photon", "coreos")
    if any(text.startswith(p) for p in linux):
        return "linux"
    return None


def image_of(oid: str, props: Mapping[str, Any]) -> Image:
    """A template as an Image: its first disk is the root disk instances get."""
    disks = _disks(props.get("config.hardware.device"))
    size = _size(disks[0]) if disks else 0
    return Image(
        id=oid,
        name=mapping.vm_name(props.get("name")),
        disk_format=DiskFormat.VMDK,
        virtual_size_bytes=size,
        min_disk_gib=math.ceil(size / _GIB),
        os_type=os_type(props.get("config.guestId")),
    )


def resolve(ref: str, templates: Mapping[str, Mapping[str, Any]]) -> str:
    """The template id ``ref`` names, by id first, then by name; ambiguity and absence are InvalidSpec."""
    if ref in templates:
        return ref
    named = sorted(oid for oid, props in templates.items() if mapping.vm_name(props.get("name")) == ref)
    if len(named) == 1:
        return named[0]
    if named:
        raise InvalidSpec(f"image name {ref!r} is ambiguous ({', '.join(named)}): give its id", field="image")
    raise InvalidSpec(f"no image {ref!r} (see list_images)", field="image")


def is_linked(devices: Sequence[Any] | None) -> bool:
    """Whether the first disk is a child of another (a linked clone's delta on its template's disk)."""
    disks = _disks(devices)
    return bool(disks) and getattr(disks[0].backing, "parent", None) is not None


def clone_spec(
    spec: InstanceSpec,
    *,
    template_id: str,
    template_devices: Sequence[Any] | None,
    networks: Sequence[network.NetworkRow],
    pool: Any,
    datastore: Any,
    datastore_name: str,
    snapshot: Any | None,
    instance_uuid: str,
    token: str,
    extra: Mapping[str, str],
) -> Any:
    """The VirtualMachineCloneSpec: linked on ``snapshot`` when given, powered off, with the spec's hardware.

    The template's own NICs and serial ports are removed and the spec's NICs added, so the
    instance has exactly the NICs asked for, and a serial port to its own console log; the
    spec's disks go on the template's SCSI controller after its own (or on a new paravirtual
    one), named with the create token like a plain create's.
    """
    vim, _ = sdk()

    devices = list(template_devices or ())
    changes: list[Any] = [
        vim.vm.device.VirtualDeviceSpec(operation="remove", device=d)
        for d in devices
        if network.is_nic(d) or isinstance(d, vim.vm.device.VirtualSerialPort)
    ]
    for i, nic in enumerate(spec.nics):
        row = network.resolve(nic.network, networks, f"nics.{i}.network")
        changes.append(network.nic_change(nic, row, key=-(200 + i)))
    controller, free = mapping.free_scsi_slots(devices)
    if controller is None:
        controller = -100
        free = [u for u in range(mapping.MAX_SCSI_UNITS) if u != mapping.SCSI_CONTROLLER_UNIT]
        if spec.disks:
            changes.append(
                vim.vm.device.VirtualDeviceSpec(
                    operation="add",
                    device=vim.vm.device.ParaVirtualSCSIController(key=controller, busNumber=0, sharedBus="noSharing"),
                )
            )
    if len(spec.disks) > len(free):
        raise InvalidSpec(f"the image's SCSI bus has room for {len(free)} more disks", field="disks")
    changes.append(guest_io.serial_port_change(datastore_name, mapping.escaped_name(spec.name)))
    labels: dict[str, str | None] = {}
    for i, disk in enumerate(spec.disks):
        path = mapping.disk_file(mapping.escaped_name(spec.name), spec.name, i + 1, token)
        changes.append(
            mapping.new_disk_change(
                disk, datastore=datastore_name, file_path=path, controller_key=controller, unit=free[i], key=-(101 + i)
            )
        )
        if disk.label:
            labels[path] = disk.label
    options = [
        vim.option.OptionValue(key=mapping.MANAGED_KEY, value="true"),
        vim.option.OptionValue(key=mapping.CREATE_TOKEN_KEY, value=token),
        vim.option.OptionValue(key=mapping.CREATED_BY_KEY, value=token),
        vim.option.OptionValue(key=IMAGE_KEY, value=template_id),
    ]
    options += [vim.option.OptionValue(key=mapping.metadata_key(k), value=v) for k, v in spec.metadata.items()]
    options += mapping.label_options(labels)
    options += [vim.option.OptionValue(key=k, value=v) for k, v in extra.items()]
    config = vim.vm.ConfigSpec(
        numCPUs=spec.vcpus,
        memoryMB=spec.memory_mb,
        deviceChange=changes,
        extraConfig=options,
        instanceUuid=instance_uuid,
    )
    location = vim.vm.RelocateSpec(pool=pool, datastore=datastore)
    clone = vim.vm.CloneSpec(location=location, powerOn=False, template=False, config=config)
    if snapshot is not None:
        location.diskMoveType = "createNewChildDiskBacking"
        clone.snapshot = snapshot
    return clone
