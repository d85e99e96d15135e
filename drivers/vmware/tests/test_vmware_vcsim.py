"""The driver against govmomi's vcsim over HTTPS on 127.0.0.1, through the real pyVmomi.

vcsim processes are started and stopped here (by PID). Each test makes what it
needs and removes it, so one simulator serves the module.
"""

from __future__ import annotations

import logging
import math
import queue
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from virtdrivers import (
    AuthenticationFailed,
    BackendUnavailable,
    DiskSpec,
    DriverError,
    EventType,
    HAPriority,
    InstanceNotFound,
    InstanceSpec,
    InvalidSpec,
    InvalidState,
    LifecycleEvent,
    NotFound,
    PowerState,
)
from virtdrivers_vmware import VSphereDriver, mapping
from virtdrivers_vmware.simulator import Vcsim
from virtdrivers_vmware.simulator.vcsim import set_fault
from virtdrivers_vmware.simulator.wire import count_round_trips

CLUSTERS = ("DC0_C0", "DC0_C1")


@pytest.fixture(scope="module")
def sim() -> Iterator[Vcsim]:
    with Vcsim(clusters=2, hosts=2, vms=1) as sim:
        yield sim


@pytest.fixture
def driver(sim: Vcsim) -> Iterator[VSphereDriver]:
    with VSphereDriver(sim.settings()) as d:
        yield d


@pytest.fixture
def admin(sim: Vcsim) -> Iterator[Any]:
    """A separate pyVmomi connection, to look at (and interfere with) the server directly."""
    with sim.admin() as si:
        yield si.RetrieveContent()


def _spec(name: str, **kw: Any) -> InstanceSpec:
    return InstanceSpec(name=name, vcpus=kw.pop("vcpus", 1), memory_mb=kw.pop("memory_mb", 256), **kw)


def _vm_names(admin: Any) -> set[str]:
    """Names of every VM, read with one property retrieval (vcsim 0.24 views can list a VM just destroyed)."""
    pc = vmodl.query.PropertyCollector
    view = admin.viewManager.CreateContainerView(admin.rootFolder, [vim.VirtualMachine], True)
    try:
        spec = pc.FilterSpec(
            objectSet=[
                pc.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[pc.TraversalSpec(name="v", path="view", skip=False, type=vim.view.ContainerView)],
                )
            ],
            propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=["name"])],
        )
        result = admin.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
        return {p.val for o in (result.objects if result else []) for p in o.propSet}
    finally:
        view.Destroy()


# -- clusters as nodes and aggregates -----------------------------------------------------------


def test_two_clusters_are_two_nodes_and_two_aggregates(driver: VSphereDriver) -> None:
    assert [n.name for n in driver.list_nodes()] == list(CLUSTERS)
    assert all(n.hypervisor_type == "vmware" and n.state == "up" for n in driver.list_nodes())
    aggregates = {a.name: a for a in driver.list_aggregates()}
    assert set(aggregates) == set(CLUSTERS)
    for name, agg in aggregates.items():
        assert agg.hosts == (f"{name}_H0", f"{name}_H1")
        assert agg.metadata["datacenter"] == "DC0"
        assert agg.metadata["drs_enabled"] in ("true", "false")
        assert agg.metadata["ha_enabled"] in ("true", "false")


def test_cluster_resources_are_the_sum_of_its_hosts(driver: VSphereDriver, admin: Any) -> None:
    view = admin.viewManager.CreateContainerView(admin.rootFolder, [vim.ClusterComputeResource], True)
    clusters = {c.name: c for c in view.view}
    view.Destroy()
    for name in CLUSTERS:
        hosts = clusters[name].host
        res = driver.host_resources(name)
        assert res.node == name
        assert res.vcpus_total == sum(h.summary.hardware.numCpuThreads for h in hosts)
        assert res.memory_mb_total == sum(h.summary.hardware.memorySize // 2**20 for h in hosts)
        assert res.disk_gib_total > 0
    before = driver.host_resources("DC0_C1")
    info = driver.create(_spec("vmw-res", vcpus=2, memory_mb=384, node="DC0_C1"))
    try:
        assert info.node == "DC0_C1"
        after = driver.host_resources("DC0_C1")
        assert after.vcpus_used - before.vcpus_used == 2
        assert after.memory_mb_used - before.memory_mb_used == 384
        assert driver.host_resources("DC0_C0").memory_mb_used == driver.host_resources().memory_mb_used
    finally:
        driver.destroy(info.id)


def test_driver_scoped_to_one_cluster(sim: Vcsim, driver: VSphereDriver) -> None:
    with VSphereDriver(sim.settings(), cluster="DC0_C1") as scoped:
        assert [n.name for n in scoped.list_nodes()] == ["DC0_C1"]
        assert [a.name for a in scoped.list_aggregates()] == ["DC0_C1"]
        info = scoped.create(_spec("vmw-scoped"))
        try:
            assert info.node == "DC0_C1"
            assert {i.id for i in scoped.list_instances()} == {info.id}
            assert all(p.node == "DC0_C1" for p in scoped.list_unmanaged())
            with pytest.raises(NotFound):
                scoped.host_resources("DC0_C0")
        finally:
            scoped.destroy(info.id)
    with pytest.raises(NotFound):
        VSphereDriver(sim.settings(), cluster="nope").connect()


# -- inventory in one round trip per page -----------------------------------------------------


def test_list_instances_costs_one_round_trip_per_page(sim: Vcsim, driver: VSphereDriver) -> None:
    made = [
        driver.create(_spec(f"vmw-page-{i}", start=False, disks=[DiskSpec(size_gib=2, label="boot")])) for i in range(5)
    ]
    try:
        driver.list_instances()  # creates the session's container view once
        with count_round_trips() as rt:
            listed = driver.list_instances()
        assert {m.id for m in made} <= {i.id for i in listed}
        assert rt.by_method == {"RetrievePropertiesEx": 1}
        # The same retrieval carries the devices: a listed instance is the instance, disks and all.
        by_id = {i.id: i for i in listed}
        for m in made:
            assert by_id[m.id].model_dump() == driver.get_instance(m.id).model_dump()
            assert [(d.size_gib, d.label) for d in by_id[m.id].disks] == [(2, "boot")]
        page = 3
        with VSphereDriver(sim.settings(), page_size=page) as paged:
            paged.list_instances()
            with count_round_trips() as rt:
                again = paged.list_instances()
            # The inventory has 1 datacenter, 2 clusters, 4 hosts, 1 datastore and the VMs.
            objects = 1 + 2 + 4 + 1 + len(driver.list_instances()) + len(driver.list_unmanaged())
            assert rt.total == math.ceil(objects / page)
            assert set(rt.by_method) == {"RetrievePropertiesEx", "ContinueRetrievePropertiesEx"}
            assert [i.model_dump() for i in again] == [i.model_dump() for i in listed]
    finally:
        for m in made:
            driver.destroy(m.id)


# -- operations ---------------------------------------------------------------------------------


def test_lifecycle_on_the_wire(driver: VSphereDriver, admin: Any) -> None:
    info = driver.create(
        _spec("vmw <life> & 'co'", disks=[DiskSpec(size_gib=1, label="root")], metadata={"team": "a b"})
    )
    try:
        assert info.power_state == PowerState.RUNNING
        assert info.node in CLUSTERS
        assert info.host is not None
        assert info.host.startswith(info.node)
        assert [(d.size_gib, d.thin, d.label) for d in info.disks] == [(1, True, "root")]
        assert info.metadata == {"team": "a b"}
        assert "vmw <life> & 'co'" in _vm_names(admin)
        assert driver.find_instance("vmw <life> & 'co'").id == info.id
        assert driver.suspend(info.id).power_state == PowerState.SUSPENDED
        with pytest.raises(InvalidState):
            driver.suspend(info.id)
        assert driver.resume(info.id).power_state == PowerState.RUNNING
        assert driver.reboot(info.id).power_state == PowerState.RUNNING
        assert driver.power_off(info.id, timeout=5).power_state == PowerState.SHUTDOWN
        resized = driver.resize(info.id, vcpus=3, memory_mb=1024)
        assert (resized.vcpus, resized.memory_mb) == (3, 1024)
        thick = driver.attach_disk(info.id, DiskSpec(size_gib=2, thin=False, label="data"))
        assert (thick.size_gib, thick.thin, thick.label) == (2, False, "data")
        assert len(driver.get_instance(info.id).disks) == 2
        driver.detach_disk(info.id, thick.id)
        assert [d.label for d in driver.get_instance(info.id).disks] == ["root"]
        with pytest.raises(NotFound):
            driver.detach_disk(info.id, thick.id)
    finally:
        driver.destroy(info.id)
    assert "vmw <life> & 'co'" not in _vm_names(admin)
    with pytest.raises(InstanceNotFound):
        driver.get_instance(info.id)


def test_vsphere_faults_arrive_as_contract_errors(driver: VSphereDriver) -> None:
    info = driver.create(_spec("vmw-fault"))
    try:
        session = driver._s

        def power_on_again(content: Any) -> Any:
            vm = vim.VirtualMachine(info.id, content.propertyCollector._stub)
            return session.wait_for_task(content, vm.PowerOnVM_Task(), what="power on twice")

        with pytest.raises(InvalidState, match="InvalidPowerState") as err:
            session.call("power on twice", power_on_again)
        assert isinstance(err.value.__cause__, vim.fault.InvalidPowerState)
    finally:
        driver.destroy(info.id)
    with pytest.raises(InstanceNotFound) as gone:
        driver.power_on(info.id)
    assert "ManagedObjectNotFound" in str(gone.value)


def test_snapshot_revert_restores_hardware_and_power(driver: VSphereDriver) -> None:
    info = driver.create(_spec("vmw-snap", vcpus=1))
    try:
        disk_only = driver.create_snapshot(info.id, "disk")
        memory = driver.create_snapshot(info.id, "mem", with_memory=True)
        assert (disk_only.with_memory, memory.with_memory) == (False, True)
        driver.power_off(info.id, force=True)
        driver.resize(info.id, vcpus=4)
        reverted = driver.revert_snapshot(info.id, disk_only.id)
        assert (reverted.vcpus, reverted.power_state) == (1, PowerState.SHUTDOWN)
        assert driver.revert_snapshot(info.id, memory.id).power_state == PowerState.RUNNING
        driver.delete_snapshot(info.id, disk_only.id)
        assert [s.name for s in driver.list_snapshots(info.id)] == ["mem"]
        with pytest.raises(NotFound):
            driver.revert_snapshot(info.id, disk_only.id)
    finally:
        driver.destroy(info.id)


def test_migration_between_hosts_and_clusters(driver: VSphereDriver) -> None:
    info = driver.create(_spec("vmw-move", node="DC0_C0"))
    try:
        moved = driver.live_migrate(info.id)  # vMotion inside its cluster
        assert (moved.node, moved.power_state) == ("DC0_C0", PowerState.RUNNING)
        assert moved.host != info.host
        across = driver.live_migrate(info.id, "DC0_C1")
        assert across.node == "DC0_C1"
        with pytest.raises(InvalidState):
            driver.cold_migrate(info.id)
        driver.power_off(info.id, force=True)
        cold = driver.cold_migrate(info.id)
        assert (cold.node, cold.power_state) == ("DC0_C1", PowerState.SHUTDOWN)
        assert cold.host != across.host
        with pytest.raises(InvalidState):
            driver.live_migrate(info.id)
        with pytest.raises(NotFound):
            driver.cold_migrate(info.id, "no-such-cluster")
    finally:
        driver.destroy(info.id)


def test_failed_create_leaves_nothing_behind(sim: Vcsim, driver: VSphereDriver, admin: Any) -> None:
    name = "vmw-half-made"

    def fail_after_the_vm_exists(fraction: float, message: str) -> None:
        if message == "created":
            assert name in _vm_names(admin)  # the VM and its disks really exist at this point
            raise RuntimeError("agent gave up")

    with pytest.raises(RuntimeError, match="agent gave up"):
        driver.create(
            _spec(name, disks=[DiskSpec(size_gib=1), DiskSpec(size_gib=1, thin=False)]),
            progress=fail_after_the_vm_exists,
        )
    assert name not in _vm_names(admin)
    assert name not in {i.name for i in driver.list_instances() + driver.list_unmanaged()}
    leftovers = [p for p in Path(sim.dir).rglob("*") if name in p.name]
    assert leftovers == []


def test_create_whose_task_fails_after_making_the_vm_leaves_nothing(
    sim: Vcsim, driver: VSphereDriver, admin: Any
) -> None:
    """The launcher's knob fails the CreateVM_Task after vcsim made the VM and its vmdk."""
    name = "vmw-task-failed"
    sim.faults(fail_next="CreateVM_Task", message="storage went away")
    with pytest.raises(DriverError, match="storage went away") as err:
        driver.create(_spec(name, disks=[DiskSpec(size_gib=1)]))
    assert not isinstance(err.value, InvalidSpec)
    assert name not in _vm_names(admin)
    assert [p for p in Path(sim.dir).rglob("*") if name in p.name] == []
    assert driver.create(_spec(name, start=False)).name == name  # the name is free again
    driver.destroy(driver.find_instance(name).id)


def test_fault_knobs_deaf_guest_and_dead_cluster(sim: Vcsim, driver: VSphereDriver) -> None:
    info = driver.create(_spec("vmw-deaf"))
    try:
        sim.faults(ignore_acpi=info.id)
        started = time.monotonic()
        assert driver.power_off(info.id, timeout=1.5).power_state == PowerState.SHUTDOWN
        assert time.monotonic() - started >= 1.5  # it waited for the guest, then forced
        driver.power_on(info.id)
        started = time.monotonic()
        assert driver.power_off(info.id, timeout=30, force=True).power_state == PowerState.SHUTDOWN
        assert time.monotonic() - started < 1.5  # force never waits
        driver.power_on(info.id)
        sim.faults(hear_acpi=info.id)
        started = time.monotonic()
        assert driver.power_off(info.id, timeout=30).power_state == PowerState.SHUTDOWN
        assert time.monotonic() - started < 1.5  # a listening guest goes at once
    finally:
        driver.destroy(info.id)
    sim.faults(cluster="DC0_C1", host_state="notResponding")
    try:
        assert {n.name: n.state for n in driver.list_nodes()} == {"DC0_C0": "up", "DC0_C1": "down"}
        assert driver.host_resources("DC0_C1").vcpus_total == 0
    finally:
        sim.faults(cluster="DC0_C1", host_state="connected")
    assert {n.state for n in driver.list_nodes()} == {"up"}
    with pytest.raises(BackendUnavailable, match="400"):
        sim.faults(cluster="no-such-cluster", host_state="notResponding")
    wrong = {**sim.settings(), "password": "not-it"}
    with pytest.raises(BackendUnavailable, match="401"):
        set_fault(wrong, ignore_acpi="vm-1")


# -- hostile input --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["a<b>&c", "", "vm-1 ", "../vm-1", "vm-1\x00", "x" * 200])
def test_malformed_ids_name_no_instance_and_never_reach_the_wire(driver: VSphereDriver, bad_id: str) -> None:
    with count_round_trips() as rt:
        for op in (driver.get_instance, driver.destroy, driver.power_on, driver.list_snapshots, driver.adopt):
            with pytest.raises(InstanceNotFound) as err:
                op(bad_id)
            assert err.value.ref == bad_id
        with pytest.raises(InstanceNotFound):
            driver.resize(bad_id, vcpus=2)
    assert rt.total == 0


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("..", "directory"),  # its vmdk would land outside the VM's directory
        (".", "directory"),
        ("\N{GRINNING FACE}" * 64, "255 bytes"),  # 256 bytes of UTF-8: no file can be named after it
        ("%" * 30, "80 characters"),  # 90 characters once escaped
    ],
)
def test_names_vsphere_would_mangle_are_refused_up_front(driver: VSphereDriver, name: str, why: str) -> None:
    with count_round_trips() as rt, pytest.raises(InvalidSpec, match=why) as err:
        driver.create(_spec(name, start=False, disks=[DiskSpec(size_gib=1)]))
    assert err.value.field == "name"
    assert rt.total == 0


@pytest.mark.parametrize("name", ["a%25b%2f", "100%", "%5c %2F%", "\N{GRINNING FACE}" * 40])
def test_names_with_escapes_round_trip_exactly(sim: Vcsim, driver: VSphereDriver, admin: Any, name: str) -> None:
    info = driver.create(_spec(name, start=False, disks=[DiskSpec(size_gib=1)]))
    try:
        assert info.name == name
        assert driver.find_instance(name).id == info.id
        assert [i.name for i in driver.list_instances() if i.id == info.id] == [name]
        with pytest.raises(InvalidSpec) as err:
            driver.create(_spec(name, start=False))
        assert err.value.field == "name"
    finally:
        driver.destroy(info.id)
    assert [p for p in Path(sim.dir).rglob("*") if p.name.startswith(mapping.escaped_name(name))] == []


@pytest.mark.parametrize("value", ["line\r\nbreak", "bell\x07", "nul\x00", "ff\x0c"])
def test_metadata_the_wire_would_alter_is_refused_with_its_field(driver: VSphereDriver, value: str) -> None:
    with count_round_trips() as rt, pytest.raises(InvalidSpec) as err:
        driver.create(_spec("vmw-meta-bad", start=False, metadata={"note": value}))
    assert err.value.field == "metadata.note"
    assert rt.total == 0


def test_metadata_tabs_newlines_and_markup_round_trip(driver: VSphereDriver) -> None:
    meta = {"note": "two\nlines\tand a tab", "xml": "<a href='x'>&amp;</a>", "c1": "next\x85line"}
    info = driver.create(_spec("vmw-meta-ok", start=False, metadata=meta))
    try:
        assert driver.get_instance(info.id).metadata == meta
    finally:
        driver.destroy(info.id)


def test_unmanaged_vms_are_left_alone_until_adopted(driver: VSphereDriver) -> None:
    pets = driver.list_unmanaged()
    assert {p.name for p in pets} >= {"DC0_C0_RP0_VM0", "DC0_C1_RP0_VM0"}
    pet = pets[0]
    assert pet.id not in {i.id for i in driver.list_instances()}
    with pytest.raises(InstanceNotFound):
        driver.destroy(pet.id)
    with pytest.raises(InstanceNotFound):
        driver.get_instance(pet.id)
    assert pet.id in {p.id for p in driver.list_unmanaged()}


# -- events -------------------------------------------------------------------------------------


def _next(events: queue.SimpleQueue[LifecycleEvent], instance_id: str, wanted: EventType) -> LifecycleEvent:
    while True:
        event = events.get(timeout=30)
        if event.instance_id == instance_id and event.type == wanted:
            return event


def test_lifecycle_events_from_the_property_collector(driver: VSphereDriver) -> None:
    events: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
    with driver.subscribe(events.put):
        info = driver.create(_spec("vmw-events", node="DC0_C0"))
        started = _next(events, info.id, EventType.STARTED)
        assert (started.name, started.node) == ("vmw-events", "DC0_C0")
        driver.power_off(info.id, force=True)
        _next(events, info.id, EventType.STOPPED)
        driver.destroy(info.id)
        _next(events, info.id, EventType.DESTROYED)
    assert not [t for t in threading.enumerate() if t.name == "vsphere-events"]


def test_close_stops_event_threads(sim: Vcsim) -> None:
    d = VSphereDriver(sim.settings())
    d.connect()
    d.subscribe(lambda e: None)
    d.subscribe(lambda e: None)
    assert len([t for t in threading.enumerate() if t.name == "vsphere-events"]) == 2
    d.close()
    assert not [t for t in threading.enumerate() if t.name == "vsphere-events"]


# -- TLS and credentials ------------------------------------------------------------------------


def test_certificate_is_verified_by_default(sim: Vcsim) -> None:
    settings = {k: v for k, v in sim.settings().items() if k != "ca_file"}
    with pytest.raises(BackendUnavailable, match="not trusted"):
        VSphereDriver(settings).connect()


def test_thumbprint_pinning(sim: Vcsim) -> None:
    settings = {k: v for k, v in sim.settings().items() if k != "ca_file"}
    with VSphereDriver(settings, thumbprint=sim.info["thumbprint"]) as d:
        assert [n.name for n in d.list_nodes()] == list(CLUSTERS)
    with pytest.raises(BackendUnavailable, match="does not match the pinned thumbprint"):
        VSphereDriver(settings, thumbprint="00" * 32).connect()


def test_insecure_is_an_explicit_logged_opt_in(sim: Vcsim, caplog: pytest.LogCaptureFixture) -> None:
    settings = {k: v for k, v in sim.settings().items() if k != "ca_file"}
    with caplog.at_level(logging.WARNING), VSphereDriver(settings, insecure=True) as d:
        assert d.list_nodes()
    assert any("verification is OFF" in r.getMessage() for r in caplog.records)


def test_bad_password_is_refused_without_echoing_it(sim: Vcsim) -> None:
    d = VSphereDriver(sim.settings(), password="wrong-Secret-123")
    with pytest.raises(AuthenticationFailed) as err:
        d.connect()
    assert "wrong-Secret-123" not in str(err.value)
    assert "wrong-Secret-123" not in repr(d)


# -- session recovery ---------------------------------------------------------------------------


def test_terminated_session_is_survived(driver: VSphereDriver, admin: Any) -> None:
    driver.list_instances()
    first = driver._s.generation
    mine = admin.sessionManager.currentSession.key
    victims = [s.key for s in admin.sessionManager.sessionList if s.key != mine]
    assert victims
    admin.sessionManager.TerminateSession(victims)
    info = driver.create(_spec("vmw-relogin", start=False))  # a write, after the session died
    try:
        assert driver._s.generation == first + 1
        assert driver.get_instance(info.id).name == "vmw-relogin"
    finally:
        driver.destroy(info.id)


def test_restarted_simulator_is_survived() -> None:
    with Vcsim(clusters=2, hosts=2) as own, VSphereDriver(own.settings()) as d:
        info = d.create(_spec("vmw-before-restart"))
        own.restart()  # same port and certificate, a fresh inventory
        assert info.id not in {i.id for i in d.list_instances()}  # a read reconnects transparently
        after = d.create(_spec("vmw-after-restart"))
        assert d.get_instance(after.id).power_state == PowerState.RUNNING


def test_task_awaited_across_a_restart_ends_in_a_typed_error() -> None:
    with Vcsim(clusters=1, hosts=2) as own, VSphereDriver(own.settings()) as d:
        info = d.create(_spec("vmw-task", start=False))
        session = d._s
        content = session.content
        task = vim.VirtualMachine(info.id, content.propertyCollector._stub).PowerOnVM_Task()
        own.restart()
        with pytest.raises(BackendUnavailable):
            session.call("power on", lambda c: session.wait_for_task(content, task, what="power on"), idempotent=True)
        # ... and the driver is usable again on the next call.
        assert [n.name for n in d.list_nodes()] == ["DC0_C0"]


def test_a_write_on_a_dead_server_is_a_typed_error() -> None:
    with Vcsim(clusters=1, hosts=1) as own, VSphereDriver(own.settings()) as d:
        info = d.create(_spec("vmw-dead", start=False))
        own.kill()
        with pytest.raises(BackendUnavailable):
            d.power_on(info.id)
        with pytest.raises(BackendUnavailable):
            d.list_instances()


def test_idle_session_expiry_is_survived() -> None:
    """vcsim expires the driver's idle session (as vCenter does after 30 minutes); the next call logs in again."""
    with Vcsim(clusters=1, hosts=1, session_idle_timeout=1) as own, VSphereDriver(own.settings()) as d:
        d.list_nodes()
        key = d._s.content.sessionManager.currentSession.key
        first = d._s.generation
        si = SmartConnect(
            host="127.0.0.1",
            port=own.port,
            user=own.settings()["user"],
            pwd=own.password,
            sslContext=ssl.create_default_context(cafile=str(own.cert_file)),
        )
        try:
            watcher = si.RetrieveContent().sessionManager
            # Wait (bounded) for the server to drop the idle session; our own polling keeps ours alive.
            gone = threading.Event()
            for _ in range(300):
                if key not in {s.key for s in watcher.sessionList}:
                    gone.set()
                    break
                gone.wait(0.1)
            assert gone.is_set(), "vcsim never expired the idle session"
        finally:
            Disconnect(si)
        assert [n.name for n in d.list_nodes()] == ["DC0_C0"]
        assert d._s.generation == first + 1


def test_high_availability_overrides_per_vm(driver: VSphereDriver, admin: Any) -> None:
    info = driver.create(_spec("vmw-ha", node="DC0_C1"))
    try:
        assert not driver.get_high_availability(info.id).enabled
        state = driver.set_high_availability(info.id, True, priority=HAPriority.HIGH)
        assert (state.enabled, state.priority, state.owner_node) == (True, HAPriority.HIGH, "DC0_C1")
        view = admin.viewManager.CreateContainerView(admin.rootFolder, [vim.ClusterComputeResource], True)
        cluster = next(c for c in view.view if c.name == "DC0_C1")
        view.Destroy()
        overrides = {o.key._moId: o.dasSettings.restartPriority for o in cluster.configurationEx.dasVmConfig}
        assert overrides[info.id] == "high"  # really stored in the cluster's HA configuration
        assert driver.set_high_availability(info.id, True, priority=HAPriority.LOW).priority == HAPriority.LOW
        assert not driver.set_high_availability(info.id, False).enabled
        assert not driver.get_high_availability(info.id).enabled
    finally:
        driver.destroy(info.id)


def test_call_in_flight_when_the_server_dies_ends_in_a_typed_error() -> None:
    """vcsim holds PowerOnVM_Task for 5 s; the simulator is killed while our request waits in it."""
    with (
        Vcsim(clusters=1, hosts=1, method_delay={"PowerOnVM_Task": 5000}) as own,
        VSphereDriver(own.settings()) as d,
    ):
        info = d.create(_spec("vmw-in-flight", start=False))
        key = d._s.content.sessionManager.currentSession.key
        si = SmartConnect(
            host="127.0.0.1",
            port=own.port,
            user=own.settings()["user"],
            pwd=own.password,
            sslContext=ssl.create_default_context(cafile=str(own.cert_file)),
        )
        sessions = si.RetrieveContent().sessionManager

        def calls() -> int:
            return int(next(s.callCount for s in sessions.sessionList if s.key == key))

        before = calls()
        outcome: list[BaseException | None] = []

        def power_on() -> None:
            try:
                d.power_on(info.id)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=power_on)
        worker.start()
        # power_on reads the VM (1 call), then sends PowerOnVM_Task (held by vcsim): wait for both to arrive.
        arrived = threading.Event()
        for _ in range(300):
            if calls() >= before + 2:
                arrived.set()
                break
            arrived.wait(0.05)
        assert arrived.is_set()
        assert worker.is_alive()  # still waiting for the held call
        own.kill()
        worker.join(timeout=30)
        assert len(outcome) == 1
        assert isinstance(outcome[0], BackendUnavailable)
        assert "power on" in str(outcome[0])
        own.start()  # same port and certificate, a fresh inventory
        assert [n.name for n in d.list_nodes()] == ["DC0_C0"]


def test_a_hung_server_ends_calls_within_http_timeout_and_the_driver_recovers() -> None:
    """vcsim is stopped (SIGSTOP on our child's PID): it accepts connections and answers nothing.

    Every call, a read and a create whose cleanup also meets the hung server, ends as
    BackendUnavailable within the driver's own timeouts; once vcsim runs again (SIGCONT)
    the same driver object works, and what the failed create may have left is reaped.
    """
    import os
    import signal

    timeout = 1.5
    with (
        Vcsim(clusters=1, hosts=1) as own,
        VSphereDriver(own.settings(), http_timeout=timeout, task_timeout=5) as d,
    ):
        d.list_nodes()
        assert own.proc is not None
        pid = own.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                d.list_instances()  # a read: tried twice, each bounded by http_timeout
            assert time.monotonic() - started < 3 * timeout + 2
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                d.create(_spec("vmw-hung", start=False))
            # plan (2 attempts), then the cleanup's look-up (2 attempts): each one socket timeout
            assert time.monotonic() - started < 6 * timeout + 3
        finally:
            os.kill(pid, signal.SIGCONT)
        assert [n.name for n in d.list_nodes()] == ["DC0_C0"]
        info = d.create(_spec("vmw-after-hang", start=False))
        assert d.get_instance(info.id).name == "vmw-after-hang"
        d.destroy(info.id)
