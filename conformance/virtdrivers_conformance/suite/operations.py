"""Conformance of what is done to one instance: power, resize, disks and formats, snapshots."""

from __future__ import annotations

import time

import pytest

from virtdrivers import (
    Capability,
    DiskFormat,
    DiskSpec,
    Driver,
    InstanceInfo,
    InstanceSpec,
    InvalidSpec,
    InvalidState,
    NotFound,
    NotSupported,
    PowerState,
)
from virtdrivers_conformance.suite.checks import (
    agreed,
    config_of,
    disk_shape,
    expected_shape,
)
from virtdrivers_conformance.suite.fixtures import (
    DriverFixtures,
    EndpointUnderTest,
    MakeInstance,
    feature,
    unique_name,
)

__all__ = ["TestFormats", "TestPower", "TestResize", "TestSnapshots", "TestStorage"]


class TestPower(DriverFixtures):
    #: Seconds the suite gives a guest that ignores ACPI before the driver must force it off.
    forced_shutdown_timeout: float = 2.0

    @feature("power")
    def test_power_off_and_on(self, driver: Driver, instance: InstanceInfo) -> None:
        assert driver.power_off(instance.id, force=True).power_state == PowerState.SHUTDOWN
        assert agreed(driver, instance.id).power_state == PowerState.SHUTDOWN
        assert driver.power_on(instance.id).power_state == PowerState.RUNNING
        assert agreed(driver, instance.id).power_state == PowerState.RUNNING

    @feature("power")
    def test_force_never_waits_for_the_guest(
        self, driver: Driver, endpoint: EndpointUnderTest, instance: InstanceInfo
    ) -> None:
        if endpoint.hooks.ignore_acpi is not None:
            endpoint.ignore_acpi(driver, instance.id)
        timeout = 60.0
        started = time.monotonic()
        info = driver.power_off(instance.id, timeout=timeout, force=True)
        elapsed = time.monotonic() - started
        assert info.power_state == PowerState.SHUTDOWN
        # A contract bound, not a speed claim: force means "do not ask the guest".
        assert elapsed < timeout / 2, f"power_off(force=True) took {elapsed:.1f}s: it waited for the guest"

    @feature("graceful_shutdown")
    def test_graceful_shutdown_ends_off(self, driver: Driver, booted_instance: InstanceInfo) -> None:
        info = driver.power_off(booted_instance.id, timeout=self.graceful_timeout)
        assert info.power_state == PowerState.SHUTDOWN
        assert agreed(driver, booted_instance.id).power_state == PowerState.SHUTDOWN

    @feature("graceful_shutdown")
    def test_graceful_shutdown_forces_a_guest_that_ignores_it(
        self, driver: Driver, endpoint: EndpointUnderTest, booted_instance: InstanceInfo
    ) -> None:
        endpoint.ignore_acpi(driver, booted_instance.id)
        started = time.monotonic()
        info = driver.power_off(booted_instance.id, timeout=self.forced_shutdown_timeout)
        elapsed = time.monotonic() - started
        assert info.power_state == PowerState.SHUTDOWN, "a guest that ignores ACPI was not forced off"
        # A contract bound, not a speed claim: the caller's timeout, not the driver's own, decides.
        assert elapsed < self.forced_shutdown_timeout + 20, f"forced only after {elapsed:.0f}s"
        assert agreed(driver, booted_instance.id).power_state == PowerState.SHUTDOWN

    @feature("reboot")
    def test_soft_and_hard_reboot(self, driver: Driver, booted_instance: InstanceInfo) -> None:
        assert driver.reboot(booted_instance.id, hard=True).power_state == PowerState.RUNNING
        assert driver.reboot(booted_instance.id).power_state == PowerState.RUNNING
        assert agreed(driver, booted_instance.id).power_state == PowerState.RUNNING

    @feature("reboot")
    def test_reboot_of_a_stopped_instance_is_invalid_state(
        self, driver: Driver, stopped_instance: InstanceInfo
    ) -> None:
        with pytest.raises(InvalidState):
            driver.reboot(stopped_instance.id)
        assert agreed(driver, stopped_instance.id).power_state == PowerState.SHUTDOWN

    @feature("pause")
    def test_pause_unpause(self, driver: Driver, instance: InstanceInfo) -> None:
        assert driver.pause(instance.id).power_state == PowerState.PAUSED
        assert agreed(driver, instance.id).power_state == PowerState.PAUSED
        assert driver.unpause(instance.id).power_state == PowerState.RUNNING
        assert agreed(driver, instance.id).power_state == PowerState.RUNNING

    @feature("pause")
    def test_pause_in_the_wrong_state_is_invalid_state(self, driver: Driver, make_instance: MakeInstance) -> None:
        running = make_instance(disks=[])
        stopped = make_instance(start=False, disks=[])
        with pytest.raises(InvalidState):
            driver.unpause(running.id)
        with pytest.raises(InvalidState):
            driver.pause(stopped.id)
        assert agreed(driver, running.id).power_state == PowerState.RUNNING
        assert agreed(driver, stopped.id).power_state == PowerState.SHUTDOWN

    @feature("suspend")
    def test_suspend_resume(self, driver: Driver, instance: InstanceInfo) -> None:
        assert driver.suspend(instance.id).power_state == PowerState.SUSPENDED
        assert agreed(driver, instance.id).power_state == PowerState.SUSPENDED
        assert driver.resume(instance.id).power_state == PowerState.RUNNING
        assert agreed(driver, instance.id).power_state == PowerState.RUNNING

    @feature("suspend")
    def test_suspend_in_the_wrong_state_is_invalid_state(self, driver: Driver, make_instance: MakeInstance) -> None:
        running = make_instance(disks=[])
        stopped = make_instance(start=False, disks=[])
        with pytest.raises(InvalidState):
            driver.resume(running.id)
        with pytest.raises(InvalidState):
            driver.suspend(stopped.id)
        assert agreed(driver, running.id).power_state == PowerState.RUNNING
        assert agreed(driver, stopped.id).power_state == PowerState.SHUTDOWN


class TestResize(DriverFixtures):
    @feature("resize_cpu")
    def test_resize_vcpus(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        resized = driver.resize(stopped_instance.id, vcpus=2)
        assert (resized.vcpus, resized.memory_mb) == (2, stopped_instance.memory_mb)
        got = agreed(driver, stopped_instance.id)
        assert (got.vcpus, got.memory_mb) == (2, stopped_instance.memory_mb), "resizing vCPUs changed memory"

    @feature("resize_memory")
    def test_resize_memory(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        target = self.instance_memory_mb * 2
        resized = driver.resize(stopped_instance.id, memory_mb=target)
        assert (resized.vcpus, resized.memory_mb) == (stopped_instance.vcpus, target)
        got = agreed(driver, stopped_instance.id)
        assert (got.vcpus, got.memory_mb) == (stopped_instance.vcpus, target), "resizing memory changed vCPUs"

    @feature("resize_cpu")
    def test_resize_both_then_each_keeps_the_other(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        if not driver.supports(Capability.RESIZE_MEMORY):
            pytest.skip("needs resize_memory as well")
        m = self.instance_memory_mb
        both = driver.resize(stopped_instance.id, vcpus=2, memory_mb=m * 2)
        assert (both.vcpus, both.memory_mb) == (2, m * 2)
        assert (agreed(driver, stopped_instance.id).vcpus, agreed(driver, stopped_instance.id).memory_mb) == (2, m * 2)
        driver.resize(stopped_instance.id, vcpus=3)
        got = agreed(driver, stopped_instance.id)
        assert (got.vcpus, got.memory_mb) == (3, m * 2)
        driver.resize(stopped_instance.id, memory_mb=m * 3)
        got = agreed(driver, stopped_instance.id)
        assert (got.vcpus, got.memory_mb) == (3, m * 3)

    @feature("resize_memory")
    def test_resize_of_both_fields_applies_both(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        if not driver.supports(Capability.RESIZE_CPU):
            pytest.skip("needs resize_cpu as well")
        target = self.instance_memory_mb * 2
        resized = driver.resize(stopped_instance.id, vcpus=2, memory_mb=target)
        assert (resized.vcpus, resized.memory_mb) == (2, target)
        got = agreed(driver, stopped_instance.id)
        assert (got.vcpus, got.memory_mb) == (2, target)

    @feature("validation")
    def test_resize_refuses_bad_values(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        with pytest.raises(InvalidSpec):
            driver.resize(stopped_instance.id, vcpus=0)
        with pytest.raises(InvalidSpec):
            driver.resize(stopped_instance.id)
        assert driver.get_instance(stopped_instance.id).vcpus == stopped_instance.vcpus


class TestStorage(DriverFixtures):
    @feature("attach_disk")
    def test_attach_disk_keeps_size_format_thin_and_label(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        formats: list[DiskFormat | None] = [
            f for f in DiskFormat if driver.supports(Capability.for_disk_format(f))
        ] or [None]
        attached = []
        for n, fmt in enumerate(formats):
            spec = DiskSpec(size_gib=self.disk_gib + 1 + n, format=fmt, thin=n % 2 == 1, label=f"data{n}")
            disk = driver.attach_disk(stopped_instance.id, spec)
            want = expected_shape(driver, spec)
            shape = disk_shape(disk)
            if want[1] is None:
                shape = (shape[0], None, shape[2], shape[3])
            assert shape == want, f"attached {want}, got {shape}"
            attached.append(disk)
        got = agreed(driver, stopped_instance.id)
        assert len(got.disks) == len(stopped_instance.disks) + len(formats)
        by_id = {d.id: d for d in got.disks}
        for disk in attached:
            assert disk.id in by_id
            assert disk_shape(by_id[disk.id]) == disk_shape(disk)

    @feature("detach_disk")
    def test_detach_disk(self, driver: Driver, make_instance: MakeInstance) -> None:
        size = self.disk_gib
        info = make_instance(
            start=False, disks=[{"size_gib": size, "label": "keep"}, {"size_gib": size + 1, "label": "drop"}]
        )
        keep, victim = info.disks
        node = agreed(driver, info.id).node
        usage = driver.host_resources(node).disk_gib_used if node else None
        driver.detach_disk(info.id, victim.id)
        left = agreed(driver, info.id).disks
        assert [d.id for d in left] == [keep.id]
        assert disk_shape(left[0]) == disk_shape(keep)
        if node and usage is not None and usage >= victim.size_gib + keep.size_gib:
            # Where the node counts provisioned disk space, deleting the detached disk frees it.
            freed = usage - driver.host_resources(node).disk_gib_used
            assert freed == victim.size_gib, f"detach with delete freed {freed} GiB of a {victim.size_gib} GiB disk"
        with pytest.raises(NotFound):
            driver.detach_disk(info.id, victim.id)


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
        disks = agreed(driver, info.id).disks
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
    def _change(self, driver: Driver, instance_id: str, step: int) -> None:
        """Change the configuration with whatever the driver declares, so a revert has something to restore."""
        vcpus = 1 + step if driver.supports(Capability.RESIZE_CPU) else None
        memory = self.instance_memory_mb * (1 + step) if driver.supports(Capability.RESIZE_MEMORY) else None
        if vcpus or memory:
            driver.resize(instance_id, vcpus=vcpus, memory_mb=memory)
        if driver.supports(Capability.ATTACH_DISK):
            driver.attach_disk(instance_id, DiskSpec(size_gib=self.disk_gib + step))

    @feature("snapshot")
    def test_snapshot_create_list_revert_delete(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        iid = stopped_instance.id
        first = driver.create_snapshot(iid, "first")
        assert (first.name, first.instance_id) == ("first", iid)
        state_first = config_of(driver, iid)
        self._change(driver, iid, 1)
        second = driver.create_snapshot(iid, "second")
        state_second = config_of(driver, iid)
        self._change(driver, iid, 2)
        listed = driver.list_snapshots(iid)
        assert {s.id for s in listed} == {first.id, second.id}
        assert {s.name for s in listed} == {"first", "second"}
        assert all(s.instance_id == iid for s in listed)
        reverted = driver.revert_snapshot(iid, first.id)
        assert reverted.id == iid
        assert reverted.power_state == PowerState.SHUTDOWN
        assert config_of(driver, iid) == state_first, "revert to the older snapshot did not restore its configuration"
        driver.revert_snapshot(iid, second.id)
        assert config_of(driver, iid) == state_second, "revert to the newer snapshot did not restore its configuration"
        driver.delete_snapshot(iid, first.id)
        assert {s.id for s in driver.list_snapshots(iid)} == {second.id}
        with pytest.raises(NotFound):
            driver.revert_snapshot(iid, first.id)

    @feature("snapshot")
    def test_disk_only_snapshot_of_a_running_instance_reverts_powered_off(
        self, driver: Driver, instance: InstanceInfo
    ) -> None:
        snap = driver.create_snapshot(instance.id, "disks")
        assert not snap.with_memory
        reverted = driver.revert_snapshot(instance.id, snap.id)
        assert reverted.power_state == PowerState.SHUTDOWN, "no memory was saved, so nothing can be running"
        assert agreed(driver, instance.id).power_state == PowerState.SHUTDOWN

    @feature("snapshot")
    def test_snapshots_belong_to_their_instance(self, driver: Driver, make_instance: MakeInstance) -> None:
        x = make_instance(start=False)
        y = make_instance(start=False)
        sx = driver.create_snapshot(x.id, "same")
        sy = driver.create_snapshot(y.id, "same")
        assert [(s.id, s.instance_id) for s in driver.list_snapshots(x.id)] == [(sx.id, x.id)]
        assert [(s.id, s.instance_id) for s in driver.list_snapshots(y.id)] == [(sy.id, y.id)]
        with pytest.raises(NotFound):
            driver.revert_snapshot(x.id, sy.id)
        with pytest.raises(NotFound):
            driver.delete_snapshot(x.id, sy.id)
        assert [s.id for s in driver.list_snapshots(y.id)] == [sy.id]

    @feature("snapshot_memory")
    def test_memory_snapshot_reverts_running(self, driver: Driver, instance: InstanceInfo) -> None:
        snap = driver.create_snapshot(instance.id, "live", with_memory=True)
        assert snap.with_memory
        driver.power_off(instance.id, force=True)
        assert driver.revert_snapshot(instance.id, snap.id).power_state == PowerState.RUNNING
        assert agreed(driver, instance.id).power_state == PowerState.RUNNING
