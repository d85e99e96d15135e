"""Disks: made on the VM's storage domain, awaited until the engine has made their volume.

A disk the engine marks ``illegal`` (its volume could not be made) ends the wait at once
with InvalidState, so a create can clean up instead of waiting out its timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from virtdrivers.capabilities import DiskFormat
from virtdrivers.errors import Conflict, InvalidSpec, InvalidState, NotFound
from virtdrivers.objects import DiskInfo, DiskSpec
from virtdrivers_ovirt import mapping
from virtdrivers_ovirt.session import wait_until

if TYPE_CHECKING:
    from virtdrivers_ovirt.driver import OvirtDriver


def add_disk(
    drv: OvirtDriver,
    instance_id: str,
    vm_name: str,
    disk: DiskSpec,
    n: int,
    *,
    bootable: bool,
    token: str | None = None,
) -> DiskInfo:
    types = drv._types()
    assert drv._storage_domain is not None
    att = mapping.disk_attachment_for_spec(
        types,
        disk,
        drv.default_disk_format or DiskFormat.QCOW2,
        f"{vm_name}_Disk{n + 1}",
        drv._storage_domain,
        bootable,
        token=token,
    )
    cid = drv._cid()
    added = drv._call(
        lambda s: drv._vm_service(s, instance_id).disk_attachments_service().add(att, query=cid),
        idempotent=False,
    )
    disk_id = added.disk.id
    try:
        found = wait_until(
            lambda: drv._call(lambda s: s.disks_service().disk_service(disk_id).get()),
            lambda d: mapping.value(d.status) == "ok",
            timeout=drv.settings.operation_timeout,
            what=f"creation of disk {disk_id}",
            failed=lambda d: "disk is illegal" if mapping.value(d.status) == "illegal" else None,
        )
    except NotFound as exc:
        raise InvalidState(f"ovirt: disk {disk_id} vanished while it was being created") from exc
    return mapping.disk_info(found)


def attach_disk(drv: OvirtDriver, instance_id: str, disk: DiskSpec) -> DiskInfo:
    vm = drv._vm(instance_id, follow="disk_attachments")
    if drv._storage_domain is None:
        raise InvalidSpec("the engine has no data storage domain for disks", field="disk")
    n = len(vm.disk_attachments or ())
    if n >= 16:
        raise Conflict(f"ovirt: instance {vm.name!r} has no free disk slot")
    return add_disk(drv, instance_id, vm.name, disk, n, bootable=n == 0)


def detach_disk(drv: OvirtDriver, instance_id: str, disk_id: str, *, delete: bool = True) -> None:
    drv._vm(instance_id)
    if not mapping.is_engine_id(disk_id):
        raise NotFound(f"disk {disk_id!r} not attached to {instance_id!r}")
    cid = drv._cid()
    try:
        drv._call(
            lambda s: (
                drv._vm_service(s, instance_id)
                .disk_attachments_service()
                .attachment_service(disk_id)
                .remove(detach_only=not delete, query=cid)
            ),
            idempotent=False,
        )
    except NotFound as exc:
        raise NotFound(f"disk {disk_id!r} not attached to {instance_id!r}") from exc
    if delete:
        drv._wait_job(cid, f"removal of disk {disk_id}")
