"""Integration tests on the real libvirt SDK: the test driver and real QEMU (qemu:///embed).

The conformance suite covers the contract; these cover what is particular to libvirt: cleanup
of a failed create down to the files, bulk listing in one call, live disk hot plug on a running
QEMU guest, events, graceful shutdown of a guest without an OS, adoption.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from virtdrivers.errors import DriverError, InstanceNotFound, InvalidSpec, InvalidState, NotFound
from virtdrivers.objects import EventType, LifecycleEvent, PowerState
from virtdrivers_libvirt.driver import LibvirtDriver
from virtdrivers_libvirt.session import Session

pytestmark = pytest.mark.timeout(180, method="thread")

SMALL: dict[str, Any] = {"vcpus": 1, "memory_mb": 64}


def _domains(driver: LibvirtDriver) -> set[str]:
    session = driver._primary.session
    return {d.name() for d in session.call(lambda c: c.listAllDomains(0))}


def test_create_reports_and_destroy_removes_disk_files(qemu: LibvirtDriver, qemu_settings: Mapping[str, Any]) -> None:
    info = qemu.create({"name": "files", **SMALL, "disks": [{"size_gib": 1}, {"size_gib": 1, "format": "raw"}]})
    files = sorted(os.listdir(qemu_settings["disk_dir"]))
    assert len(files) == 2
    assert {f.rsplit(".", 1)[1] for f in files} == {"qcow2", "raw"}
    assert [d.id for d in info.disks] == ["sda", "sdb"]
    qemu.destroy(info.id)
    assert os.listdir(qemu_settings["disk_dir"]) == []
    assert "files" not in _domains(qemu)


def test_failed_disk_leaves_no_domain_volume_or_file(qemu: LibvirtDriver, qemu_settings: Mapping[str, Any]) -> None:
    # The second disk is a raw file beyond ext4's 16 TiB file limit: qemu-img fails for real,
    # after creating an empty file, which must go too.
    spec = {"name": "nodisk", **SMALL, "disks": [{"size_gib": 1}, {"size_gib": 60000, "format": "raw"}]}
    probe = Path(qemu_settings["disk_dir"]) / "probe.raw"
    made = subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(probe), "60000G"], capture_output=True)
    probe.unlink(missing_ok=True)
    if made.returncode == 0:
        pytest.skip("this filesystem takes a 60000 GiB file: no way to make qemu-img fail here")
    with pytest.raises(DriverError, match="cannot create disk"):
        qemu.create(spec)
    assert os.listdir(qemu_settings["disk_dir"]) == []
    assert "nodisk" not in _domains(qemu)


def test_failed_start_leaves_no_domain_or_file(qemu: LibvirtDriver, qemu_settings: Mapping[str, Any]) -> None:
    # QEMU's pc machine allows at most 255 vCPUs: define succeeds, start fails.
    with pytest.raises(DriverError):
        qemu.create({"name": "nostart", "vcpus": 700, "memory_mb": 64, "disks": [{"size_gib": 1}]})
    assert os.listdir(qemu_settings["disk_dir"]) == []
    assert "nostart" not in _domains(qemu)


def test_failed_volume_in_pool_leaves_nothing(test_settings: Mapping[str, Any]) -> None:
    with LibvirtDriver(test_settings) as d:
        spec = {"name": "nopool", **SMALL, "disks": [{"size_gib": 1}, {"size_gib": 5000, "thin": False}]}
        with pytest.raises(DriverError):
            d.create(spec)
        assert "nopool" not in _domains(d)
        pool = d._primary.session.call(lambda c: c.storagePoolLookupByName("default"))
        assert pool.listVolumes() == []


def test_duplicate_name_makes_nothing(driver: LibvirtDriver) -> None:
    driver.create({"name": "dup", **SMALL, "start": False, "disks": [{"size_gib": 1}]})
    before = len(driver.list_instances())
    with pytest.raises(InvalidSpec) as err:
        driver.create({"name": "dup", **SMALL, "disks": [{"size_gib": 1}]})
    assert err.value.field == "name"
    assert len(driver.list_instances()) == before


def test_list_is_one_backend_call_once_definitions_are_known(
    driver: LibvirtDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
    with driver.subscribe(created.put):
        made = {driver.create({"name": f"bulk-{n}", **SMALL, "start": False}).id for n in range(5)}
        # libvirt's DEFINED events drop cached definitions; let ours arrive before counting.
        seen: set[str] = set()
        while seen != made:
            seen.add(created.get(timeout=30).instance_id)
    driver.list_instances()  # first sight of each definition
    calls: list[object] = []
    real = Session.call

    def counting(self: Session, fn: Any, **kw: Any) -> Any:
        calls.append(fn)
        return real(self, fn, **kw)

    monkeypatch.setattr(Session, "call", counting)
    listed = {i.id: i for i in driver.list_instances()}
    assert made <= set(listed)
    assert len(calls) == 1
    assert all(listed[i].power_state == PowerState.SHUTDOWN for i in made)


def test_resize_of_a_running_guest_applies_to_its_definition(driver: LibvirtDriver) -> None:
    info = driver.create({"name": "grow", **SMALL})
    resized = driver.resize(info.id, vcpus=2, memory_mb=96)
    assert (resized.vcpus, resized.memory_mb, resized.power_state) == (2, 96, PowerState.RUNNING)
    listed = {i.id: i for i in driver.list_instances()}[info.id]
    assert (listed.vcpus, listed.memory_mb) == (2, 96)


def test_hot_attach_and_detach_on_a_running_guest(qemu: LibvirtDriver, qemu_settings: Mapping[str, Any]) -> None:
    info = qemu.create({"name": "hotplug", **SMALL, "disks": [{"size_gib": 1}]})
    dom = qemu._primary.session.call(lambda c: c.lookupByUUIDString(info.id))
    disk = qemu.attach_disk(info.id, {"size_gib": 1, "format": "raw", "label": "data <1>"})
    assert disk.id == "sdb"
    assert "<target dev='sdb'" in dom.XMLDesc(0)  # live definition: QEMU has the device
    got = qemu.get_instance(info.id)
    assert [(d.id, d.label) for d in got.disks] == [("sda", None), ("sdb", "data <1>")]
    qemu.detach_disk(info.id, "sdb")
    assert "<target dev='sdb'" not in dom.XMLDesc(0)
    assert [d.id for d in qemu.get_instance(info.id).disks] == ["sda"]
    assert len(os.listdir(qemu_settings["disk_dir"])) == 1
    with pytest.raises(NotFound):
        qemu.detach_disk(info.id, "sdz")


def test_graceful_shutdown_of_a_guest_without_os_forces_after_timeout(qemu: LibvirtDriver) -> None:
    info = qemu.create({"name": "noacpi", **SMALL})
    assert qemu.power_off(info.id, timeout=0.5).power_state == PowerState.SHUTDOWN
    assert qemu.get_instance(info.id).power_state == PowerState.SHUTDOWN


def test_suspend_is_a_managed_save(driver: LibvirtDriver) -> None:
    info = driver.create({"name": "saved", **SMALL, "disks": [{"size_gib": 1}]})
    assert driver.suspend(info.id).power_state == PowerState.SUSPENDED
    dom = driver._primary.session.call(lambda c: c.lookupByUUIDString(info.id))
    assert dom.hasManagedSaveImage(0)
    with pytest.raises(InvalidState):
        driver.pause(info.id)
    assert driver.power_off(info.id).power_state == PowerState.SHUTDOWN  # discards the saved state
    assert not dom.hasManagedSaveImage(0)


def test_disk_only_snapshot_of_running_guest_reverts_powered_off(driver: LibvirtDriver) -> None:
    info = driver.create({"name": "snap", **SMALL, "disks": [{"size_gib": 1}]})
    snap = driver.create_snapshot(info.id, "disk <only>")
    assert not snap.with_memory
    assert driver.revert_snapshot(info.id, snap.id).power_state == PowerState.SHUTDOWN
    with pytest.raises(NotFound):
        driver.revert_snapshot(info.id, "missing")


def test_events_arrive_and_stop_on_close(driver: LibvirtDriver) -> None:
    got: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
    sub = driver.subscribe(got.put)
    info = driver.create({"name": "events", **SMALL})
    driver.pause(info.id)
    driver.unpause(info.id)
    driver.destroy(info.id)
    seen = []
    while not seen or seen[-1] != EventType.DESTROYED:
        event = got.get(timeout=30)
        if event.instance_id == info.id:
            seen.append(event.type)
    assert seen == [
        EventType.CREATED,
        EventType.STARTED,
        EventType.PAUSED,
        EventType.RESUMED,
        EventType.STOPPED,
        EventType.DESTROYED,
    ]
    sub.close()
    other = driver.create({"name": "silent", **SMALL, "start": False})
    driver.destroy(other.id)
    # The driver's event thread delivers in order: after close, nothing more for us.
    with pytest.raises(queue.Empty):
        got.get(timeout=0.5)
    driver.close()
    # No other driver is open in this test: the shared event loop and reaper stop too.
    left = [t.name for t in threading.enumerate() if t.name.startswith(("libvirt-", "qemu-reaper"))]
    assert left == []


def test_adopt_takes_a_pet_without_restarting_it(driver: LibvirtDriver) -> None:
    pets = {p.name: p for p in driver.list_unmanaged()}
    assert {"pet-1", "pet-2"} <= set(pets)
    pet = pets["pet-2"]
    with pytest.raises(InstanceNotFound):
        driver.get_instance(pet.id)  # unmanaged: not ours until adopted
    adopted = driver.adopt(pet.id)
    assert (adopted.managed, adopted.power_state, adopted.name) == (True, pet.power_state, "pet-2")
    assert pet.id in {i.id for i in driver.list_instances()}
    with pytest.raises(InvalidState):
        driver.adopt(pet.id)


def test_unknown_and_malformed_ids_are_not_found(driver: LibvirtDriver) -> None:
    for ref in ("not-a-uuid", "00000000-0000-4000-8000-000000000000", "'; <x>"):
        with pytest.raises(InstanceNotFound):
            driver.get_instance(ref)


def test_backend_info_names_versions(driver: LibvirtDriver) -> None:
    info = driver.backend_info()
    assert info.libraries["libvirt"].startswith("9.")
    assert "libvirt-python" in info.libraries
    assert info.backend in ("TEST", "QEMU")
    assert info.backend_version.count(".") == 2


def test_endpoint_leaves_nothing_behind() -> None:
    from virtdrivers_libvirt import endpoints

    with endpoints.libvirt_test_endpoint() as settings:
        node = Path(settings["uri"].removeprefix("test://"))
        assert node.exists()
    assert not node.parent.exists()


def test_concurrent_callers_share_one_driver(test_settings: Mapping[str, Any]) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for k in range(5):
                info = d.create({"name": f"t{n}-{k}", **SMALL})
                d.pause(info.id)
                assert d.get_instance(info.id).power_state == PowerState.PAUSED
                d.list_instances()
                if k % 2:
                    d.destroy(info.id)
        except BaseException as exc:
            errors.append(exc)

    with LibvirtDriver(test_settings) as d:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        names = sorted(i.name for i in d.list_instances())
        assert names == sorted(f"t{n}-{k}" for n in range(4) for k in (0, 2, 4))
