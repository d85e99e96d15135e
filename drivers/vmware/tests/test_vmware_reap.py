"""Crash-safe creation on vcsim: what an interrupted create leaves is found by its token and reaped.

The leftovers are made the way a crash leaves them, with a separate pyVmomi
connection (``admin``): a vmdk named with a dead process's create token that no VM
refers to (a CreateVM_Task that failed after making the disk), the same kind of
disk attached to a VM, and a VM whose create token was never emptied. The driver
must reap exactly the first and the last, and never a pet.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from virtdrivers import DiskSpec, InstanceNotFound, InstanceSpec
from virtdrivers.reaping import CreateToken
from virtdrivers_conformance.crash import kill_trials
from virtdrivers_vmware import VSphereDriver, mapping
from virtdrivers_vmware.simulator import Vcsim

DS = "LocalDS_0"


@pytest.fixture(scope="module")
def sim() -> Iterator[Vcsim]:
    with Vcsim(clusters=1, hosts=1, vms=1) as sim:
        yield sim


@pytest.fixture
def driver(sim: Vcsim) -> Iterator[VSphereDriver]:
    with VSphereDriver(sim.settings()) as d:
        yield d


@pytest.fixture
def admin(sim: Vcsim) -> Iterator[Any]:
    with sim.admin() as si:
        yield si.RetrieveContent()


def _dead_token() -> str:
    """A token of this host whose process has exited: its create is over, whatever it made is left over."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return dataclasses.replace(CreateToken.new(), pid=proc.pid, pid_start=0).encode()


def _wait(admin: Any, task: Any) -> Any:
    """A task's result, read by property (vcsim's disk-manager tasks name a non-entity as their entity,
    which pyVmomi refuses to read as a whole TaskInfo)."""
    pc = vmodl.query.PropertyCollector
    spec = pc.FilterSpec(
        objectSet=[pc.ObjectSpec(obj=task, skip=False)],
        propSet=[pc.PropertySpec(type=vim.Task, pathSet=["info.state", "info.error", "info.result"])],
    )
    info: dict[str, Any] = {}
    for _ in range(200):
        (oc,) = admin.propertyCollector.RetrieveContents([spec])
        info = {p.name: p.val for p in oc.propSet}
        if info.get("info.state") in ("success", "error"):
            break
        time.sleep(0.05)
    assert info.get("info.state") == "success", info.get("info.error")
    return info.get("info.result")


def _datacenter(admin: Any) -> Any:
    return admin.rootFolder.childEntity[0]


def _make_disk(admin: Any, path: str) -> None:
    """A vmdk made on its own, as CreateVM_Task makes one before it registers the VM."""
    dc = _datacenter(admin)
    folder = path.rsplit("/", 1)[0]
    admin.fileManager.MakeDirectory(name=folder, datacenter=dc, createParentDirectories=True)
    spec = vim.VirtualDiskManager.FileBackedVirtualDiskSpec(diskType="thin", adapterType="lsiLogic", capacityKb=1024)
    _wait(admin, admin.virtualDiskManager.CreateVirtualDisk_Task(name=path, datacenter=dc, spec=spec))


def _files(sim: Vcsim, fragment: str) -> list[Path]:
    return [p for p in Path(sim.dir).rglob("*.vmdk") if fragment in p.name]


def _make_vm(admin: Any, name: str, extra: dict[str, str], disk: str | None = None) -> str:
    """A VM made directly (not through the driver), with the given extraConfig and an existing disk."""
    dc = _datacenter(admin)
    cluster = dc.hostFolder.childEntity[0]
    changes = []
    if disk is not None:
        controller = vim.vm.device.VirtualDeviceSpec(
            operation="add",
            device=vim.vm.device.ParaVirtualSCSIController(key=-100, busNumber=0, sharedBus="noSharing"),
        )
        backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName=disk, diskMode="persistent")
        device = vim.vm.device.VirtualDisk(
            key=-101, controllerKey=-100, unitNumber=0, capacityInKB=1024, backing=backing
        )
        changes = [controller, vim.vm.device.VirtualDeviceSpec(operation="add", device=device)]
    config = vim.vm.ConfigSpec(
        name=name,
        numCPUs=1,
        memoryMB=64,
        guestId=mapping.GUEST_ID,
        files=vim.vm.FileInfo(vmPathName=f"[{DS}]"),
        deviceChange=changes,
        extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in extra.items()],
    )
    vm = _wait(admin, dc.vmFolder.CreateVM_Task(config, cluster.resourcePool))
    return str(vm._moId)


def test_unreferenced_disk_and_unfinished_vm_are_reaped_referenced_disk_and_pet_are_not(
    sim: Vcsim, driver: VSphereDriver, admin: Any
) -> None:
    token = _dead_token()
    orphan = f"[{DS}] vd-orphan/{token}_orphan_1.vmdk"
    held = f"[{DS}] vd-held/{token}_held_1.vmdk"
    _make_disk(admin, orphan)
    _make_disk(admin, held)
    holder = _make_vm(admin, "vd-holder", {mapping.MANAGED_KEY: "true"}, disk=held)
    unfinished = _make_vm(admin, "vd-unfinished", {mapping.MANAGED_KEY: "true", mapping.CREATE_TOKEN_KEY: token})
    pet = _make_vm(admin, "vd-pet", {mapping.CREATE_TOKEN_KEY: token})  # not ours: never reaped
    finished = driver.create(InstanceSpec(name="vd-finished", vcpus=1, memory_mb=64, disks=[DiskSpec(size_gib=1)]))
    try:
        # grace 0: every token counts as abandoned, the finished create's (this live process's) too.
        found = driver.reap(dry_run=True, grace_s=0)
        assert {(f.kind, f.ref) for f in found} == {("disk", orphan), ("instance", unfinished)}
        assert all(f.token == token and f.reason for f in found)
        assert next(f for f in found if f.kind == "instance").node == "DC0_C0"
        assert len(_files(sim, "_orphan_1")) >= 1  # a dry run removes nothing

        removed = driver.reap(grace_s=0)
        assert {(f.kind, f.ref) for f in removed} == {("disk", orphan), ("instance", unfinished)}
        assert _files(sim, "_orphan_1") == []  # descriptor and extent gone from the datastore
        assert len(_files(sim, "_held_1")) >= 1
        with pytest.raises(InstanceNotFound):
            driver.get_instance(unfinished)
        assert driver.get_instance(holder).name == "vd-holder"
        assert pet in {i.id for i in driver.list_unmanaged()}
        assert driver.get_instance(finished.id).disks == finished.disks
        assert driver.reap(dry_run=True, grace_s=0) == []
    finally:
        for vm_id in (holder, pet, finished.id):
            vm = vim.VirtualMachine(vm_id, admin.propertyCollector._stub)
            if vm.runtime.powerState != "poweredOff":
                _wait(admin, vm.PowerOffVM_Task())
            _wait(admin, vm.Destroy_Task())


def test_a_create_in_progress_in_a_live_process_is_never_reaped(driver: VSphereDriver, admin: Any) -> None:
    """A VM carrying the token of a live process's create within the grace period is left alone."""
    live = CreateToken.new().encode()
    vm_id = _make_vm(admin, "vd-in-progress", {mapping.MANAGED_KEY: "true", mapping.CREATE_TOKEN_KEY: live})
    try:
        assert driver.reap(dry_run=True) == []
        assert driver.reap() == []
        assert driver.get_instance(vm_id).name == "vd-in-progress"
        assert [f.ref for f in driver.reap(dry_run=True, grace_s=0)] == [vm_id]  # once past its grace
    finally:
        _wait(admin, vim.VirtualMachine(vm_id, admin.propertyCollector._stub).Destroy_Task())


def test_create_writes_its_token_first_and_empties_it_last(sim: Vcsim, driver: VSphereDriver, admin: Any) -> None:
    seen: dict[str, Any] = {}

    def look(fraction: float, message: str) -> None:
        if message == "created" and "token" not in seen:  # after CreateVM_Task, before the create completes
            vm = next(v for v in _all_vms(admin) if v.name == "vd-tokened")
            extra = {o.key: o.value for o in vm.config.extraConfig}
            seen["token"] = extra.get(mapping.CREATE_TOKEN_KEY)
            seen["disks"] = [d.backing.fileName for d in vm.config.hardware.device if mapping.is_disk(d)]

    info = driver.create(
        InstanceSpec(name="vd-tokened", vcpus=1, memory_mb=64, disks=[DiskSpec(size_gib=1)]), progress=look
    )
    try:
        assert CreateToken.decode(seen["token"]) is not None
        assert [mapping.disk_token(d) for d in seen["disks"]] == [seen["token"]]
        vm = vim.VirtualMachine(info.id, admin.propertyCollector._stub)
        # vCenter drops a key set to ""; vcsim 0.24 appends the empty value after the old one.
        extra = mapping.extra_config({"config.extraConfig": vm.config.extraConfig})
        assert not extra.get(mapping.CREATE_TOKEN_KEY)  # complete
        assert extra[mapping.CREATED_BY_KEY] == seen["token"]
    finally:
        driver.destroy(info.id)


def _all_vms(admin: Any) -> list[Any]:
    view = admin.viewManager.CreateContainerView(admin.rootFolder, [vim.VirtualMachine], True)
    try:
        return list(view.view)
    finally:
        view.Destroy()


def test_kills_at_random_points_of_a_create_leave_nothing_after_reap(sim: Vcsim, driver: VSphereDriver) -> None:
    """The shared kill harness with a window wide enough that kills land inside creates.

    The harness's default window is twice a warm create (about 30 ms here); a fresh child's
    first create is slower than that, so by default few kills land inside one. A create
    killed after its last step (emptying the token) and before the child printed its id is
    finished as far as vSphere can tell: the harness counts it apart (``unacknowledged``).
    """
    before = {i.id for i in driver.list_instances()}
    # 20 kills: a create here is ~20 ms of reads and a few ms with a token on the server, so on a
    # loaded machine 10 kills all missed that window once in a dozen runs (found_before == 0).
    report = kill_trials("vmware", sim.settings(), trials=20, seed=11, window_s=0.5)
    print(report.line())
    assert report.found_before >= 1, report.line()  # the kills did interrupt creates
    assert (report.found_after, report.visible_after) == (0, 0), report.line()
    assert all(r.kind == "instance" and r.token for r in report.removed), report.removed
    assert {i.id for i in driver.list_instances()} == before
