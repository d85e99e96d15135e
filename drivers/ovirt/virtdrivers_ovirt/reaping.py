"""Crash safety: finding and removing what killed creates left behind (REAP).

See :mod:`virtdrivers_ovirt.mapping` for the create tokens this reads: a VM's marker names the
create that is still making it, a disk's description the create that made it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from virtdrivers.errors import InstanceNotFound, NotFound
from virtdrivers.objects import Leftover
from virtdrivers.reaping import CreateToken
from virtdrivers_ovirt import mapping
from virtdrivers_ovirt.session import wait_until

if TYPE_CHECKING:
    from virtdrivers_ovirt.driver import OvirtDriver

log = logging.getLogger("virtdrivers_ovirt.driver")


def reap(drv: OvirtDriver, *, dry_run: bool = False, grace_s: float = 3600.0) -> list[Leftover]:
    """Remove what killed creates left: VMs whose marker still names an abandoned create, and
    floating disks whose description does.

    One paged VM listing gives both the leftover VMs and every disk any VM refers to; one
    disk search gives the floating disks that carry a token (the engine's own
    ``number_of_vms=0``, checked again against that listing). A leftover VM goes with its
    disks. Pets carry no marker and finished creates no token, so neither can match.
    """
    drv._host_names(refresh=True)
    vms = drv._pages("disk_attachments")
    referenced = {mapping.attachment_disk_id(att) for vm in vms for att in vm.disk_attachments or ()}
    found: list[Leftover] = []
    for vm in vms:
        token = mapping.marker_token(vm.comment)
        why = _abandoned(token, grace_s)
        if token is None or why is None:
            continue
        found.append(
            Leftover(
                kind="instance",
                ref=vm.id,
                name=vm.name,
                node=drv._hosts.get(vm.host.id) if vm.host is not None else None,
                token=token,
                reason=why,
            )
        )
        if not dry_run:
            try:
                drv._remove(vm.id)
            except InstanceNotFound:
                log.info("ovirt: leftover VM %s went away while being reaped", vm.id)
    search = f"number_of_vms=0 and description={mapping.DISK_TOKEN_PREFIX.split()[0]}*"
    disks: list[Any] = drv._call(lambda s: s.disks_service().list(search=search))
    for disk in disks:
        token = mapping.disk_token(disk.description)
        why = _abandoned(token, grace_s)
        if token is None or why is None or disk.id in referenced:
            continue
        found.append(Leftover(kind="disk", ref=disk.id, name=disk.alias or disk.name, token=token, reason=why))
        if not dry_run:
            _remove_disk(drv, disk.id)
    return found


def _remove_disk(drv: OvirtDriver, disk_id: str) -> None:
    """Remove a floating disk once the engine has unlocked it, and wait until it is gone."""

    def look() -> Any:
        try:
            return drv._call(lambda s: s.disks_service().disk_service(disk_id).get())
        except NotFound:
            return None

    disk = wait_until(
        look,
        lambda d: d is None or mapping.value(d.status) != "locked",
        timeout=drv.settings.operation_timeout,
        what=f"unlocking of disk {disk_id}",
    )
    if disk is None:
        return
    cid = drv._cid()
    try:
        drv._call(lambda s: s.disks_service().disk_service(disk_id).remove(query=cid), idempotent=False)
    except NotFound:
        return
    wait_until(look, lambda d: d is None, timeout=drv.settings.operation_timeout, what=f"removal of disk {disk_id}")


def _abandoned(token: str | None, grace_s: float) -> str | None:
    """Why the create holding ``token`` counts as abandoned, or None while it may still run."""
    decoded = CreateToken.decode(token)
    if decoded is None or not decoded.abandoned(grace_s):
        return None
    if decoded.owner_alive() is False:
        return "its create never completed and its process is gone"
    return f"its create began more than {grace_s:g} s ago and never completed"
