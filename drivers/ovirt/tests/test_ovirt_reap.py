"""Reap on oVirt: what a killed create leaves is found and removed, what anything refers to never is.

A create killed in this process cannot be arranged without killing the test, so the
leftovers are made with the same requests a create sends (the VM add carrying the
token in its marker, the disk attachment carrying it in the disk's description),
under a token whose owner process has exited, through the real SDK over the wire.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from typing import Any

import ovirtsdk4.types as types
import pytest

from virtdrivers.capabilities import DiskFormat
from virtdrivers.objects import DiskSpec, InstanceSpec
from virtdrivers.reaping import CreateToken
from virtdrivers_ovirt import mapping
from virtdrivers_ovirt.driver import OvirtDriver
from virtdrivers_ovirt.simulator import Simulator


def _dead_token() -> str:
    """A token of a process of this host that has exited (a killed create's)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    token = dataclasses.replace(CreateToken.new(), pid=proc.pid, pid_start=1)
    assert token.owner_alive() is False
    return token.encode()


def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the simulator did not get there in time"
        time.sleep(0.01)


def _half_made(drv: OvirtDriver, sim: Simulator, name: str, token: str, *, disk: bool = True) -> tuple[str, str | None]:
    """A VM and (optionally) its first disk as a create holding ``token`` makes them; no completion."""
    spec = InstanceSpec(name=name, vcpus=1, memory_mb=256)
    new_vm = mapping.vm_for_spec(types, spec, "Default", None, token=token)
    vm = drv.session.call(lambda s: s.vms_service().add(new_vm))
    _until(lambda: sim.engine.vms[vm.id].status == "down")
    if not disk:
        return vm.id, None
    att = mapping.disk_attachment_for_spec(
        types, DiskSpec(size_gib=1), DiskFormat.QCOW2, f"{name}_Disk1", "nfs-data", True, token=token
    )
    added = drv.session.call(lambda s: s.vms_service().vm_service(vm.id).disk_attachments_service().add(att))
    return vm.id, added.disk.id


def test_a_floating_disk_with_an_abandoned_token_is_reaped_and_a_referenced_one_is_not(
    sim: Simulator, driver: OvirtDriver
) -> None:
    token = _dead_token()
    # A disk left without its VM: the engine dropped the VM but kept its disks (detach_only).
    vm_id, floating = _half_made(driver, sim, "orphaned", token)
    assert floating is not None
    _until(lambda: sim.engine.disks[floating].status == "ok")
    driver.session.call(lambda s: s.vms_service().vm_service(vm_id).remove(detach_only=True))
    _until(lambda: vm_id not in sim.engine.vms)
    # A finished instance whose disk description carries the same abandoned token: it is referenced.
    kept = driver.create(InstanceSpec(name="kept", vcpus=1, memory_mb=256, disks=[DiskSpec(size_gib=1)]))
    kept_disk = kept.disks[0].id
    driver.session.call(
        lambda s: (
            s.disks_service().disk_service(kept_disk).update(types.Disk(description=mapping.disk_description(token)))
        )
    )
    pets = {i.id: i for i in driver.list_unmanaged()}
    pet_disks = {d.id for p in pets.values() for d in p.disks}

    found = driver.reap(dry_run=True)
    assert [(f.kind, f.ref, f.token) for f in found] == [("disk", floating, token)]
    assert found[0].name == "orphaned_Disk1"
    assert floating in sim.engine.disks, "a dry run removed something"

    removed = driver.reap()
    assert [(f.kind, f.ref) for f in removed] == [("disk", floating)]
    assert floating not in sim.engine.disks
    assert kept_disk in sim.engine.disks
    assert pet_disks <= set(sim.engine.disks)
    assert driver.get_instance(kept.id) == kept
    assert {i.id: i for i in driver.list_unmanaged()} == pets
    assert driver.reap(dry_run=True, grace_s=0) == []


def test_a_finished_create_carries_no_token(sim: Simulator, driver: OvirtDriver) -> None:
    info = driver.create(
        InstanceSpec(name="done", vcpus=1, memory_mb=256, metadata={"k": "v"}, disks=[DiskSpec(size_gib=1)] * 2)
    )
    vm = sim.engine.vms[info.id]
    assert mapping.marker_token(vm.comment) is None
    assert mapping.parse_marker(vm.comment) == (True, {"k": "v"})
    assert [sim.engine.disks[d.id].description for d in info.disks] == ["", ""]
    assert driver.reap(dry_run=True, grace_s=0) == []


def test_a_vm_killed_while_its_disk_is_locked_is_reaped_once_the_engine_unlocks_it(
    sim: Simulator, driver: OvirtDriver
) -> None:
    sim.engine.delay = 0.4
    token = _dead_token()
    vm_id, disk_id = _half_made(driver, sim, "midway", token)
    assert sim.engine.disks[disk_id or ""].status == "locked"
    removed = driver.reap()
    assert [(f.kind, f.ref, f.name, f.token) for f in removed] == [("instance", vm_id, "midway", token)]
    assert vm_id not in sim.engine.vms
    assert disk_id not in sim.engine.disks, "the leftover VM's disk stayed"


def test_a_create_in_progress_in_a_live_process_is_left_alone_until_its_grace_runs_out(
    sim: Simulator, driver: OvirtDriver
) -> None:
    live = CreateToken.new().encode()  # this very process: alive, and just started
    vm_id, _ = _half_made(driver, sim, "inflight", live, disk=False)
    assert driver.reap() == []
    assert vm_id in sim.engine.vms
    assert [f.ref for f in driver.reap(dry_run=True, grace_s=3600)] == []
    time.sleep(1.1)  # tokens count whole seconds
    found = driver.reap(grace_s=0.5)
    assert [(f.ref, f.reason) for f in found] == [(vm_id, "its create began more than 0.5 s ago and never completed")]
    assert vm_id not in sim.engine.vms


def test_a_kept_detached_disk_and_a_token_quoted_in_an_administrators_text_are_never_reaped(
    sim: Simulator, driver: OvirtDriver
) -> None:
    token = _dead_token()
    pet = driver.list_unmanaged()[0]
    note = f"copied from {mapping.with_marker('', {}, creating=token)}"
    driver.session.call(lambda s: s.vms_service().vm_service(pet.id).update(types.Vm(comment=note)))
    # Disks of a finished create that the caller detached and kept: floating, and theirs.
    info = driver.create(InstanceSpec(name="owner", vcpus=1, memory_mb=256, disks=[DiskSpec(size_gib=1)] * 3))
    kept = [d.id for d in info.disks[1:]]
    for disk_id in kept:
        driver.detach_disk(info.id, disk_id, delete=False)
    assert driver.reap(dry_run=True, grace_s=0) == []
    # An administrator's descriptions that quote a token are not what a create writes.
    for disk_id, text in zip(kept, [f"see {token}", f"{mapping.disk_description(token)} (restored)"], strict=True):
        driver.session.call(
            lambda s, d=disk_id, t=text: s.disks_service().disk_service(d).update(types.Disk(description=t))
        )
    assert driver.reap(grace_s=0) == []
    assert pet.id in sim.engine.vms
    assert set(kept) <= set(sim.engine.disks)


@pytest.mark.parametrize("dry_run", [True, False])
def test_reap_of_nothing_is_two_calls(sim: Simulator, driver: OvirtDriver, dry_run: bool) -> None:
    """One VM page (the endpoint has fewer VMs than a page) and one disk search, plus the host names."""
    sim.requests.clear()
    assert driver.reap(dry_run=dry_run) == []
    assert dict(sim.requests) == {"GET /hosts": 1, "GET /vms": 1, "GET /disks": 1}
