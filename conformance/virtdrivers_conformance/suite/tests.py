"""The conformance tests, written once against the public contract.

Each test names its feature; a feature with a capability is checked only
through the contract, so the same test serves every backend. Tests assert
observable behaviour (what ``get_instance`` and ``list_instances`` report
afterwards), not just that a call returned.
"""

from __future__ import annotations

import queue
import re
import time

import pytest

from virtdrivers import (
    Capability,
    DiskFormat,
    DiskSpec,
    Driver,
    EventType,
    HAPriority,
    InstanceInfo,
    InstanceNotFound,
    InstanceSpec,
    InvalidSpec,
    LifecycleEvent,
    NotFound,
    NotSupported,
    PowerState,
)
from virtdrivers_conformance.suite.fixtures import DriverFixtures, MakeInstance, feature, unique_name

__all__ = [
    "TestCluster",
    "TestEvents",
    "TestFormats",
    "TestLifecycle",
    "TestMigration",
    "TestPets",
    "TestPower",
    "TestResize",
    "TestSnapshots",
    "TestStorage",
]


def _other_node(driver: Driver, info: InstanceInfo) -> str:
    nodes = [n.name for n in driver.list_nodes() if n.state == "up" and n.name != info.node]
    if not nodes:
        pytest.fail(f"the endpoint needs a second node that is up (instance is on {info.node!r})")
    return nodes[0]


def _where(info: InstanceInfo) -> tuple[str | None, str | None]:
    return info.node, info.host


class TestLifecycle(DriverFixtures):
    @feature("connect")
    def test_connect_is_idempotent_and_reports_backend(self, driver: Driver) -> None:
        driver.connect()  # already connected: must be a no-op
        info = driver.backend_info()
        assert info.backend
        assert "password" not in info.endpoint.lower()
        for secret in driver.settings.secrets():
            assert secret not in info.model_dump_json()
            assert secret not in repr(driver)

    @feature("validation")
    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"vcpus": 0}, "vcpus"),
            ({"vcpus": -2}, "vcpus"),
            ({"memory_mb": 0}, "memory_mb"),
            ({"memory_mb": 10**12}, "memory_mb"),
            ({"name": ""}, "name"),
            ({"name": "x" * 300}, "name"),
            ({"name": "bad\x00name"}, "name"),
            ({"name": "tab\there"}, "name"),
            ({"disks": [{"size_gib": 1, "format": "vdi"}]}, "format"),
            ({"disks": [{"size_gib": 0}]}, "size_gib"),
        ],
    )
    def test_invalid_spec_is_refused_before_the_backend(
        self, driver: Driver, fields: dict[str, object], field: str
    ) -> None:
        before = {i.id for i in driver.list_instances()}
        spec = {"name": unique_name(), "vcpus": 1, "memory_mb": 128, **fields}
        with pytest.raises(InvalidSpec) as err:
            driver.create(spec)  # type: ignore[arg-type]  # a plain mapping is accepted and validated
        assert err.value.field is not None
        assert field in err.value.field
        assert {i.id for i in driver.list_instances()} == before

    @feature("create")
    def test_create_running(self, driver: Driver, make_instance: MakeInstance) -> None:
        info = make_instance(vcpus=1, memory_mb=self.instance_memory_mb)
        assert info.power_state == PowerState.RUNNING
        got = driver.get_instance(info.id)
        assert got.name == info.name
        assert got.vcpus == 1
        assert got.memory_mb == self.instance_memory_mb
        assert got.power_state == PowerState.RUNNING
        assert len(got.disks) == 1

    @feature("create")
    def test_create_stopped(self, driver: Driver, make_instance: MakeInstance) -> None:
        info = make_instance(start=False, disks=[])
        assert driver.get_instance(info.id).power_state == PowerState.SHUTDOWN

    @feature("create")
    def test_hostile_name_is_kept_verbatim_or_refused_up_front(
        self, driver: Driver, make_instance: MakeInstance
    ) -> None:
        """Quotes, markup and shell syntax must never change what reaches the backend."""
        name = f"vdc <a&b> 'q' \"d\" $(x) ;`y` é {unique_name('n')[-6:]}"
        if driver.name_pattern is not None and re.fullmatch(driver.name_pattern, name) is None:
            before = {i.id for i in driver.list_instances()}
            with pytest.raises(InvalidSpec) as err:
                make_instance(name=name, start=False, disks=[])
            assert err.value.field == "name"
            assert {i.id for i in driver.list_instances()} == before
            return
        info = make_instance(name=name, start=False, disks=[])
        assert driver.get_instance(info.id).name == name
        assert driver.find_instance(name).id == info.id

    @feature("unique_names")
    def test_duplicate_names(self, driver: Driver, make_instance: MakeInstance) -> None:
        first = make_instance(start=False, disks=[])
        if driver.unique_names:
            before = {i.id for i in driver.list_instances()}
            with pytest.raises(InvalidSpec) as err:
                make_instance(name=first.name, start=False, disks=[])
            assert err.value.field == "name"
            assert {i.id for i in driver.list_instances()} == before
        else:
            second = make_instance(name=first.name, start=False, disks=[])
            assert second.id != first.id
            assert [i.name for i in driver.list_instances()].count(first.name) == 2

    @feature("metadata")
    def test_metadata_round_trip(self, driver: Driver, make_instance: MakeInstance) -> None:
        meta = {"owner": "team-a", "purpose": "conformance <&>"}
        info = make_instance(start=False, disks=[], metadata=meta)
        got = driver.get_instance(info.id).metadata
        assert {k: got.get(k) for k in meta} == meta

    @feature("list")
    def test_list_reports_every_instance(self, driver: Driver, make_instance: MakeInstance) -> None:
        a = make_instance(disks=[])
        b = make_instance(start=False, disks=[], vcpus=2, memory_mb=256)
        listed = {i.id: i for i in driver.list_instances()}
        assert a.id in listed
        assert b.id in listed
        assert listed[a.id].power_state == PowerState.RUNNING
        assert (listed[b.id].name, listed[b.id].vcpus, listed[b.id].memory_mb) == (b.name, 2, 256)
        assert listed[b.id].power_state == PowerState.SHUTDOWN
        assert listed[a.id].node is not None

    @feature("get")
    def test_get_unknown_raises_instance_not_found(self, driver: Driver) -> None:
        with pytest.raises(InstanceNotFound):
            driver.get_instance("00000000-0000-4000-8000-00000000dead")

    @feature("destroy")
    def test_destroy_running(self, driver: Driver, instance: InstanceInfo) -> None:
        driver.destroy(instance.id)
        with pytest.raises(InstanceNotFound):
            driver.get_instance(instance.id)
        assert instance.id not in {i.id for i in driver.list_instances()}
        with pytest.raises(NotFound):
            driver.destroy(instance.id)


class TestPower(DriverFixtures):
    @feature("power")
    def test_power_off_and_on(self, driver: Driver, instance: InstanceInfo) -> None:
        assert driver.power_off(instance.id, force=True).power_state == PowerState.SHUTDOWN
        assert driver.get_instance(instance.id).power_state == PowerState.SHUTDOWN
        assert driver.power_on(instance.id).power_state == PowerState.RUNNING
        assert driver.get_instance(instance.id).power_state == PowerState.RUNNING

    @feature("graceful_shutdown")
    def test_graceful_shutdown_ends_off(self, driver: Driver, instance: InstanceInfo) -> None:
        # Guests in test endpoints often have no OS and ignore ACPI: the driver must force after the timeout.
        info = driver.power_off(instance.id, timeout=self.graceful_timeout)
        assert info.power_state == PowerState.SHUTDOWN
        assert driver.get_instance(instance.id).power_state == PowerState.SHUTDOWN

    @feature("reboot")
    def test_soft_and_hard_reboot(self, driver: Driver, instance: InstanceInfo) -> None:
        assert driver.reboot(instance.id, hard=True).power_state == PowerState.RUNNING
        assert driver.reboot(instance.id).power_state == PowerState.RUNNING
        assert driver.get_instance(instance.id).power_state == PowerState.RUNNING

    @feature("pause")
    def test_pause_unpause(self, driver: Driver, instance: InstanceInfo) -> None:
        assert driver.pause(instance.id).power_state == PowerState.PAUSED
        assert driver.get_instance(instance.id).power_state == PowerState.PAUSED
        assert driver.unpause(instance.id).power_state == PowerState.RUNNING
        assert driver.get_instance(instance.id).power_state == PowerState.RUNNING

    @feature("suspend")
    def test_suspend_resume(self, driver: Driver, instance: InstanceInfo) -> None:
        assert driver.suspend(instance.id).power_state == PowerState.SUSPENDED
        assert driver.get_instance(instance.id).power_state == PowerState.SUSPENDED
        assert driver.resume(instance.id).power_state == PowerState.RUNNING
        assert driver.get_instance(instance.id).power_state == PowerState.RUNNING


class TestResize(DriverFixtures):
    @feature("resize_cpu")
    def test_resize_vcpus(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        assert driver.resize(stopped_instance.id, vcpus=2).vcpus == 2
        assert driver.get_instance(stopped_instance.id).vcpus == 2

    @feature("resize_memory")
    def test_resize_memory(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        target = self.instance_memory_mb * 2
        assert driver.resize(stopped_instance.id, memory_mb=target).memory_mb == target
        assert driver.get_instance(stopped_instance.id).memory_mb == target

    @feature("validation")
    def test_resize_refuses_bad_values(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        with pytest.raises(InvalidSpec):
            driver.resize(stopped_instance.id, vcpus=0)
        with pytest.raises(InvalidSpec):
            driver.resize(stopped_instance.id)
        assert driver.get_instance(stopped_instance.id).vcpus == stopped_instance.vcpus


class TestStorage(DriverFixtures):
    @feature("attach_disk")
    def test_attach_disk(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        disk = driver.attach_disk(stopped_instance.id, DiskSpec(size_gib=self.disk_gib))
        disks = driver.get_instance(stopped_instance.id).disks
        assert len(disks) == len(stopped_instance.disks) + 1
        assert disk.id in {d.id for d in disks}

    @feature("detach_disk")
    def test_detach_disk(self, driver: Driver, make_instance: MakeInstance) -> None:
        info = make_instance(start=False, disks=[{"size_gib": self.disk_gib}, {"size_gib": self.disk_gib}])
        victim = info.disks[-1]
        driver.detach_disk(info.id, victim.id)
        left = driver.get_instance(info.id).disks
        assert victim.id not in {d.id for d in left}
        assert len(left) == len(info.disks) - 1


class TestFormats(DriverFixtures):
    @pytest.mark.parametrize(
        "fmt",
        [
            pytest.param(DiskFormat.RAW, marks=feature("disk_raw")),
            pytest.param(DiskFormat.QCOW2, marks=feature("disk_qcow2")),
            pytest.param(DiskFormat.VMDK, marks=feature("disk_vmdk")),
            pytest.param(DiskFormat.VHDX, marks=feature("disk_vhdx")),
        ],
    )
    def test_create_with_disk_format(self, driver: Driver, make_instance: MakeInstance, fmt: DiskFormat) -> None:
        info = make_instance(start=False, disks=[{"size_gib": self.disk_gib, "format": fmt}])
        disks = driver.get_instance(info.id).disks
        assert [d.format for d in disks] == [fmt]

    @feature("validation")
    def test_undeclared_format_is_refused_before_the_backend(self, driver: Driver) -> None:
        declared = driver.capabilities
        missing = [f for f in DiskFormat if not driver.supports(Capability.for_disk_format(f))]
        if not missing:  # declares every format: withdraw one for the length of this test
            missing = [DiskFormat.RAW]
            driver.narrow_capabilities({Capability.DISK_RAW})
        try:
            before = {i.id for i in driver.list_instances()}
            disk = DiskSpec(size_gib=1, format=missing[0])
            with pytest.raises(NotSupported) as err:
                driver.create(InstanceSpec(name=unique_name(), vcpus=1, memory_mb=128, disks=[disk]))
            assert err.value.capability == Capability.for_disk_format(missing[0])
            assert {i.id for i in driver.list_instances()} == before
        finally:
            driver.capabilities = declared


class TestSnapshots(DriverFixtures):
    @feature("snapshot")
    def test_snapshot_create_list_revert_delete(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        snap = driver.create_snapshot(stopped_instance.id, "before")
        assert snap.name == "before"
        assert snap.id in {s.id for s in driver.list_snapshots(stopped_instance.id)}
        reverted = driver.revert_snapshot(stopped_instance.id, snap.id)
        assert reverted.id == stopped_instance.id
        assert reverted.power_state == PowerState.SHUTDOWN
        driver.delete_snapshot(stopped_instance.id, snap.id)
        assert snap.id not in {s.id for s in driver.list_snapshots(stopped_instance.id)}

    @feature("snapshot_memory")
    def test_memory_snapshot_reverts_running(self, driver: Driver, instance: InstanceInfo) -> None:
        snap = driver.create_snapshot(instance.id, "live", with_memory=True)
        assert snap.with_memory
        driver.power_off(instance.id, force=True)
        assert driver.revert_snapshot(instance.id, snap.id).power_state == PowerState.RUNNING
        assert driver.get_instance(instance.id).power_state == PowerState.RUNNING


class TestMigration(DriverFixtures):
    @feature("live_migrate")
    def test_live_migrate(self, driver: Driver, instance: InstanceInfo) -> None:
        before = _where(driver.get_instance(instance.id))
        moved = driver.live_migrate(instance.id)
        assert moved.power_state == PowerState.RUNNING
        assert _where(moved) != before
        assert _where(driver.get_instance(instance.id)) == _where(moved)

    @feature("cold_migrate")
    def test_cold_migrate(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        before = _where(driver.get_instance(stopped_instance.id))
        moved = driver.cold_migrate(stopped_instance.id)
        assert _where(moved) != before
        assert driver.get_instance(stopped_instance.id).power_state == PowerState.SHUTDOWN

    @feature("evacuate")
    def test_evacuate_stopped_instance(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        target = _other_node(driver, stopped_instance)
        moved = driver.evacuate(stopped_instance.id, target)
        assert moved.node == target
        assert driver.get_instance(stopped_instance.id).node == target


class TestCluster(DriverFixtures):
    @feature("nodes")
    def test_nodes_are_listed(self, driver: Driver, instance: InstanceInfo) -> None:
        nodes = driver.list_nodes()
        assert nodes
        assert all(n.name and n.hypervisor_type for n in nodes)
        assert instance.node in {n.name for n in nodes}

    @feature("host_resources")
    def test_host_resources(self, driver: Driver) -> None:
        node = driver.list_nodes()[0].name
        res = driver.host_resources(node)
        assert res.node == node
        assert res.vcpus_total > 0
        assert res.memory_mb_total > 0
        assert res.hypervisor_type
        default = driver.host_resources()
        assert default.memory_mb_total > 0

    @feature("aggregates")
    def test_aggregates(self, driver: Driver) -> None:
        aggregates = driver.list_aggregates()
        assert aggregates
        assert all(a.name and a.hosts for a in aggregates)

    @feature("high_availability")
    def test_high_availability(self, driver: Driver, instance: InstanceInfo) -> None:
        state = driver.set_high_availability(instance.id, True, priority=HAPriority.HIGH)
        assert state.enabled
        assert state.priority == HAPriority.HIGH
        got = driver.get_high_availability(instance.id)
        assert (got.enabled, got.priority) == (True, HAPriority.HIGH)
        assert not driver.set_high_availability(instance.id, False).enabled
        assert not driver.get_high_availability(instance.id).enabled

    @feature("ha_failover")
    def test_failover_moves_owner(self, driver: Driver, instance: InstanceInfo) -> None:
        before = driver.set_high_availability(instance.id, True).owner_node
        after = driver.failover(instance.id)
        assert after.enabled
        assert after.owner_node
        assert after.owner_node != before


class TestPets(DriverFixtures):
    @feature("adopt")
    def test_adopt_existing_instance_intact(self, driver: Driver) -> None:
        pets = driver.list_unmanaged()
        assert pets, "the endpoint must offer at least one unmanaged instance to adopt"
        pet = pets[0]
        assert not pet.managed
        adopted = driver.adopt(pet.id)
        assert adopted.managed
        assert (adopted.id, adopted.name, adopted.power_state) == (pet.id, pet.name, pet.power_state)
        assert (adopted.vcpus, adopted.memory_mb, len(adopted.disks)) == (pet.vcpus, pet.memory_mb, len(pet.disks))
        assert pet.id in {i.id for i in driver.list_instances()}
        assert pet.id not in {i.id for i in driver.list_unmanaged()}


class TestEvents(DriverFixtures):
    @feature("events")
    def test_lifecycle_events_arrive(self, driver: Driver, make_instance: MakeInstance) -> None:
        got: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
        with driver.subscribe(got.put):
            info = make_instance(disks=[])
            driver.power_off(info.id, force=True)
            seen: set[EventType] = set()
            deadline = time.monotonic() + self.event_timeout
            while EventType.STOPPED not in seen and time.monotonic() < deadline:
                try:
                    event = got.get(timeout=0.2)
                except queue.Empty:
                    continue
                if event.instance_id == info.id:
                    seen.add(event.type)
        assert EventType.STOPPED in seen, f"no STOPPED event for {info.id} (saw {sorted(seen)})"
        assert EventType.STARTED in seen or EventType.CREATED in seen
