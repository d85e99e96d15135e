"""Snapshots, with or without memory: a concern of its own, so the driver stays its table of contents.

The engine lists an "Active VM" pseudo-snapshot (and previews) beside a user's snapshots;
only ``regular`` ones are shown. Every change is awaited by its job (correlation id) or state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from virtdrivers.errors import Conflict, NotFound
from virtdrivers.objects import InstanceInfo, SnapshotInfo
from virtdrivers_ovirt import mapping
from virtdrivers_ovirt.session import wait_until

if TYPE_CHECKING:
    from virtdrivers_ovirt.driver import OvirtDriver


def _snapshots(drv: OvirtDriver, instance_id: str) -> list[Any]:
    return mapping.user_snapshots(drv._call(lambda s: drv._vm_service(s, instance_id).snapshots_service().list()))


def create_snapshot(drv: OvirtDriver, instance_id: str, name: str, *, with_memory: bool = False) -> SnapshotInfo:
    types = drv._types()
    drv._vm(instance_id)
    if any(s.description == name for s in _snapshots(drv, instance_id)):
        raise Conflict(f"ovirt: snapshot {name!r} exists already")
    drv._wait_settled(instance_id)
    cid = drv._cid()
    snap = drv._call(
        lambda s: (
            drv._vm_service(s, instance_id)
            .snapshots_service()
            .add(types.Snapshot(description=name, persist_memorystate=with_memory), query=cid)
        ),
        idempotent=False,
    )
    done = wait_until(
        lambda: drv._call(
            lambda s: drv._vm_service(s, instance_id).snapshots_service().snapshot_service(snap.id).get()
        ),
        lambda sn: mapping.value(sn.snapshot_status) == "ok",
        timeout=drv.settings.operation_timeout,
        what=f"snapshot {name!r} of {instance_id}",
    )
    return mapping.snapshot_info(done, instance_id)


def list_snapshots(drv: OvirtDriver, instance_id: str) -> list[SnapshotInfo]:
    drv._vm(instance_id)
    return [mapping.snapshot_info(s, instance_id) for s in _snapshots(drv, instance_id)]


def _snapshot(drv: OvirtDriver, instance_id: str, snapshot_id: str) -> Any:
    for snap in _snapshots(drv, instance_id):
        if snap.id == snapshot_id:
            return snap
    raise NotFound(f"snapshot {snapshot_id!r} of {instance_id!r} not found")


def revert_snapshot(drv: OvirtDriver, instance_id: str, snapshot_id: str) -> InstanceInfo:
    drv._vm(instance_id)
    snap = _snapshot(drv, instance_id, snapshot_id)
    vm = drv._wait_settled(instance_id)
    if mapping.value(vm.status) != "down":
        drv._stop(instance_id)
    with_memory = bool(snap.persist_memorystate)
    cid = drv._cid()
    drv._call(
        lambda s: (
            drv._vm_service(s, instance_id)
            .snapshots_service()
            .snapshot_service(snapshot_id)
            .restore(restore_memory=with_memory, query=cid)
        ),
        idempotent=False,
    )
    drv._wait_job(cid, f"revert of {instance_id} to {snapshot_id}")
    vm = drv._wait_settled(instance_id)
    if with_memory and mapping.value(vm.status) == "suspended":
        # The engine resumes the saved memory on the next run: as the VM was when snapshotted.
        drv._start(instance_id)
    return drv._get_info(instance_id)


def delete_snapshot(drv: OvirtDriver, instance_id: str, snapshot_id: str) -> None:
    drv._vm(instance_id)
    _snapshot(drv, instance_id, snapshot_id)
    cid = drv._cid()
    drv._call(
        lambda s: drv._vm_service(s, instance_id).snapshots_service().snapshot_service(snapshot_id).remove(query=cid),
        idempotent=False,
    )
    drv._wait_job(cid, f"removal of snapshot {snapshot_id}")
