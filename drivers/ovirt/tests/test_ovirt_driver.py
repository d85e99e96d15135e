"""The driver against the simulator over HTTPS, through the real SDK: pets, HA, placement, migration,
sessions, restarts and clean failure."""

from __future__ import annotations

import logging
import queue
import threading
import time

import pytest

from virtdrivers.errors import (
    AuthenticationFailed,
    BackendUnavailable,
    Conflict,
    InstanceNotFound,
    InvalidSpec,
    InvalidState,
    NotFound,
)
from virtdrivers.objects import DiskSpec, EventType, HAPriority, InstanceSpec, LifecycleEvent, PowerState
from virtdrivers_ovirt.driver import OvirtDriver
from virtdrivers_ovirt.simulator import Simulator


def _spec(name: str, **kw: object) -> InstanceSpec:
    fields: dict[str, object] = {"name": name, "vcpus": 1, "memory_mb": 256, "disks": [{"size_gib": 1}]}
    fields.update(kw)
    return InstanceSpec(**fields)  # type: ignore[arg-type]


# -- pets ------------------------------------------------------------------------------------------


def test_adopt_keeps_identity_disks_snapshots_and_settings_without_restart(sim: Simulator, driver: OvirtDriver) -> None:
    pets = {p.name: p for p in driver.list_unmanaged()}
    assert set(pets) == {"pet-1", "pet-2"}
    assert driver.list_instances() == []
    pet = pets["pet-1"]
    engine_vm = sim.engine.vms[pet.id]
    started, snapshots = engine_vm.start_time, [s.id for s in engine_vm.snapshots]
    with pytest.raises(InstanceNotFound):
        driver.get_instance(pet.id)  # not ours until adopted
    adopted = driver.adopt(pet.id)
    assert adopted.managed
    assert (adopted.id, adopted.name, adopted.power_state, adopted.node) == (pet.id, pet.name, "running", pet.node)
    assert (adopted.vcpus, adopted.memory_mb, adopted.disks) == (pet.vcpus, pet.memory_mb, pet.disks)
    # Nothing restarted, nothing lost: same run, same snapshots, HA and placement as the admin set them.
    assert engine_vm.start_time == started
    assert [s.id for s in engine_vm.snapshots] == snapshots
    assert [s.name for s in driver.list_snapshots(pet.id)] == ["before upgrade"]
    ha = driver.get_high_availability(pet.id)
    assert (ha.enabled, ha.priority, ha.owner_node, ha.state) == (True, HAPriority.MEDIUM, pet.node, "online")
    assert driver.get_placement(pet.id) == ("user_migratable", (pet.node,))
    assert engine_vm.comment.startswith("do not reboot without a ticket\n")
    assert engine_vm.description == "pet-1: database server, owned by ops"
    assert [i.id for i in driver.list_instances()] == [pet.id]
    assert pet.id not in {p.id for p in driver.list_unmanaged()}
    with pytest.raises(InvalidState):
        driver.adopt(pet.id)


# -- HA and placement ---------------------------------------------------------------------------


def test_high_availability_enable_priority_and_state(sim: Simulator, driver: OvirtDriver) -> None:
    info = driver.create(_spec("ha1"))
    assert not driver.get_high_availability(info.id).enabled
    for priority, wire in ((HAPriority.LOW, 1), (HAPriority.HIGH, 100), (HAPriority.MEDIUM, 50)):
        state = driver.set_high_availability(info.id, True, priority=priority)
        assert (state.enabled, state.priority, state.state, state.owner_node) == (True, priority, "online", info.node)
        assert sim.engine.vms[info.id].ha_priority == wire  # oVirt's UI values on the wire
    driver.power_off(info.id, force=True)
    assert driver.get_high_availability(info.id).state == "down"
    off = driver.set_high_availability(info.id, False)
    assert (off.enabled, off.state) == (False, None)
    assert not sim.engine.vms[info.id].ha_enabled


def test_placement_pinned_refuses_migration_and_preferred_host_is_used(driver: OvirtDriver) -> None:
    nodes = [n.name for n in driver.list_nodes()]
    info = driver.create(_spec("pinned", start=False))
    assert driver.set_placement(info.id, "pinned", [nodes[2]]) == ("pinned", (nodes[2],))
    assert driver.power_on(info.id).node == nodes[2]
    with pytest.raises(InvalidState, match="pinned"):
        driver.live_migrate(info.id, nodes[0])
    assert driver.get_instance(info.id).node == nodes[2]
    assert driver.set_placement(info.id, "user_migratable", [nodes[2]]) == ("user_migratable", (nodes[2],))
    assert driver.live_migrate(info.id, nodes[0]).node == nodes[0]
    with pytest.raises(InvalidSpec):
        driver.set_placement(info.id, "pinned", [])
    with pytest.raises(InvalidSpec):
        driver.set_placement(info.id, "sticky", [nodes[0]])
    with pytest.raises(NotFound):
        driver.set_placement(info.id, "migratable", ["no-such-host"])


def test_create_on_a_named_node(driver: OvirtDriver) -> None:
    assert driver.create(_spec("placed", node="host2")).node == "host2"
    with pytest.raises(NotFound):
        driver.create(_spec("nowhere", node="host99"))
    assert "nowhere" not in {i.name for i in driver.list_instances()}


# -- migration -----------------------------------------------------------------------------------


def test_live_migration_to_named_host_and_scheduler_choice(sim: Simulator, driver: OvirtDriver) -> None:
    info = driver.create(_spec("mig"))
    steps: list[float] = []
    moved = driver.live_migrate(
        info.id, "host3" if info.node != "host3" else "host1", progress=lambda f, m: steps.append(f)
    )
    assert moved.node in {"host1", "host3"}
    assert moved.node != info.node
    assert moved.power_state == PowerState.RUNNING
    assert steps[-1] == 1.0
    chosen = driver.live_migrate(info.id)
    assert chosen.node not in (None, moved.node)
    with pytest.raises(InvalidSpec):
        driver.live_migrate(info.id, chosen.node)
    # Each migration ran as an engine job under our correlation id, and finished.
    jobs = [j for j in sim.engine.jobs.values() if j.description.startswith("Migrating VM mig")]
    assert len(jobs) == 2
    assert all(
        j.correlation_id and j.correlation_id.startswith("virtdrivers-") and j.status == "finished" for j in jobs
    )
    driver.power_off(info.id, force=True)
    with pytest.raises(InvalidState):
        driver.live_migrate(info.id)


def test_failover_moves_a_running_ha_vm(driver: OvirtDriver) -> None:
    info = driver.create(_spec("fo"))
    with pytest.raises(InvalidState):
        driver.failover(info.id)
    before = driver.set_high_availability(info.id, True, priority=HAPriority.HIGH).owner_node
    after = driver.failover(info.id)
    assert after.enabled
    assert after.owner_node not in (None, before)


# -- power, snapshots, disks -------------------------------------------------------------------------


def test_graceful_shutdown_forces_a_guest_that_ignores_acpi(sim: Simulator, driver: OvirtDriver) -> None:
    info = driver.create(_spec("deaf"))
    sim.engine.vms[info.id].ignores_shutdown = True
    assert driver.power_off(info.id, timeout=2).power_state == PowerState.SHUTDOWN
    descriptions = [j.description for j in sim.engine.jobs.values()]
    assert "Shutting down VM deaf" in descriptions
    assert "Stopping VM deaf" in descriptions


def test_snapshots_with_and_without_memory(driver: OvirtDriver) -> None:
    info = driver.create(_spec("snap", disks=[{"size_gib": 2}]))
    live = driver.create_snapshot(info.id, "live", with_memory=True)
    cold_disk = driver.attach_disk(info.id, DiskSpec(size_gib=1))
    assert live.with_memory
    with pytest.raises(Conflict):
        driver.create_snapshot(info.id, "live")
    reverted = driver.revert_snapshot(info.id, live.id)
    assert reverted.power_state == PowerState.RUNNING  # memory state comes back running
    assert cold_disk.id not in {d.id for d in reverted.disks}  # the disk made after the snapshot is gone
    driver.power_off(info.id, force=True)
    plain = driver.create_snapshot(info.id, "plain")
    assert not plain.with_memory
    assert driver.revert_snapshot(info.id, plain.id).power_state == PowerState.SHUTDOWN
    assert [s.name for s in driver.list_snapshots(info.id)] == ["live", "plain"]
    driver.delete_snapshot(info.id, live.id)
    assert [s.name for s in driver.list_snapshots(info.id)] == ["plain"]
    with pytest.raises(NotFound):
        driver.delete_snapshot(info.id, live.id)


def test_disk_attachments_cow_raw_sparse(sim: Simulator, driver: OvirtDriver) -> None:
    info = driver.create(_spec("disks", start=False, disks=[]))
    cow = driver.attach_disk(info.id, DiskSpec(size_gib=2))
    raw = driver.attach_disk(info.id, DiskSpec(size_gib=1, format="raw", thin=False, label="data"))
    assert (cow.format, cow.thin, cow.size_gib) == ("qcow2", True, 2)
    assert (raw.format, raw.thin, raw.label) == ("raw", False, "data")
    assert (sim.engine.disks[cow.id].format, sim.engine.disks[raw.id].sparse) == ("cow", False)
    driver.detach_disk(info.id, raw.id, delete=False)
    assert raw.id in sim.engine.disks  # detached, kept
    driver.detach_disk(info.id, cow.id)
    assert cow.id not in sim.engine.disks
    assert driver.get_instance(info.id).disks == ()


def test_suspend_resume_and_invalid_state(driver: OvirtDriver) -> None:
    info = driver.create(_spec("sus"))
    assert driver.suspend(info.id).power_state == PowerState.SUSPENDED
    with pytest.raises(InvalidState):
        driver.suspend(info.id)
    assert driver.resume(info.id).power_state == PowerState.RUNNING
    with pytest.raises(InvalidState):
        driver.resume(info.id)


# -- failure leaves nothing behind ---------------------------------------------------------------


def test_failed_create_leaves_nothing_behind(sim: Simulator, driver: OvirtDriver) -> None:
    vms, disks = set(sim.engine.vms), set(sim.engine.disks)
    spec = _spec("too-big", disks=[{"size_gib": 1}, {"size_gib": 60_000}])
    with pytest.raises(Conflict, match="Low disk space"):
        driver.create(spec)
    assert set(sim.engine.vms) == vms
    assert set(sim.engine.disks) == disks
    assert sim.engine.storage_domains[next(iter(sim.engine.storage_domains))].committed == sum(
        d.provisioned_size for d in sim.engine.disks.values()
    )
    # The name is free again.
    assert driver.create(_spec("too-big")).name == "too-big"


def test_failed_start_removes_the_vm_and_its_disks(sim: Simulator, driver: OvirtDriver) -> None:
    vms, disks = set(sim.engine.vms), set(sim.engine.disks)
    for host in sim.engine.hosts.values():
        host.status = "maintenance"
    with pytest.raises(InvalidState, match="no hosts"):
        driver.create(_spec("homeless", disks=[{"size_gib": 1}, {"size_gib": 2}]))
    assert set(sim.engine.vms) == vms
    assert set(sim.engine.disks) == disks


def test_duplicate_name_is_invalid_spec(driver: OvirtDriver) -> None:
    driver.create(_spec("dup", start=False, disks=[]))
    with pytest.raises(InvalidSpec) as err:
        driver.create(_spec("dup", start=False, disks=[]))
    assert err.value.field == "name"


# -- sessions and restarts -------------------------------------------------------------------------


def test_expired_token_is_renewed(sim: Simulator, driver: OvirtDriver) -> None:
    driver.create(_spec("tok", start=False, disks=[]))
    logins = len(sim.tokens)
    sim.expire_tokens()
    assert [i.name for i in driver.list_instances()] == ["tok"]
    assert logins == 1
    assert len(sim.tokens) == 1


def test_refused_renewal_is_recovered_by_the_session_layer(sim: Simulator, driver: OvirtDriver) -> None:
    # The SDK renews a token once on 401; when that renewal itself is refused (invalid_grant),
    # it gives up with AuthError. Our session starts over with a new connection and retries.
    reconnects = driver.session.reconnects
    sim.expire_tokens()
    sim.refuse_logins = 1
    assert len(driver.list_nodes()) == 3
    assert driver.session.reconnects == reconnects + 1
    assert sim.refuse_logins == 0
    # A persistent refusal is an authentication failure, not an endless loop.
    sim.expire_tokens()
    sim.refuse_logins = 100
    with pytest.raises(AuthenticationFailed):
        driver.list_nodes()


def test_token_ttl_expiry_is_renewed() -> None:
    now = [1000.0]
    with Simulator(token_ttl=60, clock=lambda: now[0]) as sim, OvirtDriver(sim.settings()) as drv:
        first = set(sim.tokens)
        assert len(drv.list_nodes()) == 3
        now[0] += 61  # the SSO session times out
        assert len(drv.list_nodes()) == 3
        assert sim.tokens
        assert set(sim.tokens).isdisjoint(first)


def test_simulator_restart_keeps_inventory_and_driver_recovers(sim: Simulator, driver: OvirtDriver) -> None:
    info = driver.create(_spec("survivor"))
    sim.restart()
    assert sim.tokens == {}
    assert driver.get_instance(info.id).power_state == PowerState.RUNNING
    assert driver.power_off(info.id, force=True).power_state == PowerState.SHUTDOWN


def test_engine_down_is_backend_unavailable_then_recovers(sim: Simulator) -> None:
    with OvirtDriver(sim.settings(), reconnect_timeout=0.3) as drv:
        sim.stop()
        with pytest.raises(BackendUnavailable):
            drv.list_nodes()
        sim.start()
        assert len(drv.list_nodes()) == 3
        assert drv.session.reconnects >= 1


def test_wrong_password_fails_without_leaking_it(sim: Simulator) -> None:
    settings = {**sim.settings(), "password": "hunter2-secret"}
    drv = OvirtDriver(settings)
    with pytest.raises(AuthenticationFailed) as err:
        drv.connect()
    assert "hunter2-secret" not in str(err.value)
    assert "hunter2-secret" not in repr(drv)


def test_tls_is_verified_against_the_ca(sim: Simulator, tmp_path: pytest.TempPathFactory) -> None:
    other = Simulator()  # another CA: must not be trusted for this engine
    try:
        with pytest.raises(BackendUnavailable):
            OvirtDriver({**sim.settings(), "ca_file": str(other.ca_file)}).connect()
    finally:
        other.close()


def test_insecure_is_explicit_and_warned(sim: Simulator, caplog: pytest.LogCaptureFixture) -> None:
    settings = {**sim.settings(), "ca_file": None, "insecure": True}
    with caplog.at_level(logging.WARNING), OvirtDriver(settings) as drv:
        assert drv.list_nodes()
    assert any("TLS verification is OFF" in r.getMessage() for r in caplog.records)


# -- listing and events -----------------------------------------------------------------------------


def test_list_instances_is_paged_bulk(sim: Simulator) -> None:
    with OvirtDriver(sim.settings(), page_size=5) as drv:
        for n in range(10):
            drv.create(_spec(f"bulk-{n:02d}", start=False, disks=[]))
        sim.requests.clear()
        listed = drv.list_instances()
    assert [i.name for i in listed] == [f"bulk-{n:02d}" for n in range(10)]  # the two pets are not ours
    assert sim.requests["GET /vms"] == 3, sim.requests  # 12 VMs: pages of 5, 5 and 2
    assert sim.requests["GET /vms/{id}"] == 0


def test_events_for_own_and_outside_changes(sim: Simulator, driver: OvirtDriver) -> None:
    got: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
    pet = sim.engine.vms[driver.list_unmanaged()[0].id]
    with driver.subscribe(got.put):
        info = driver.create(_spec("ev"))
        driver.power_off(info.id, force=True)
        with sim.engine.lock:
            sim.engine.suspend(pet, None)  # someone else, in the engine's UI
        seen: list[tuple[str, EventType]] = []
        while ("pet", EventType.SUSPENDED) not in seen:
            event = got.get(timeout=30)
            seen.append(("pet" if event.instance_id == pet.id else event.instance_id, event.type))
    assert [t for i, t in seen if i == info.id] == [EventType.CREATED, EventType.STARTED, EventType.STOPPED]
    driver.close()
    assert "ovirt-events" not in {t.name for t in threading.enumerate()}


@pytest.mark.slow
def test_thousand_vms_with_nics_and_addresses_are_listed_in_constant_round_trips() -> None:
    with Simulator(pets=1000) as sim, OvirtDriver(sim.settings()) as drv:
        sim.requests.clear()
        pets = drv.list_unmanaged()
        assert len(pets) == 1000
        assert all(len(p.disks) == 1 for p in pets)
        assert all(len(p.nics) == 2 for p in pets), "NICs come inline in the same pages"
        assert dict(sim.requests) == {"GET /hosts": 1, "GET /vms": 3}  # pages of 500, 500 and an empty one
        time.sleep(0.3)  # the pets' agents report 0.3 s after they started
        sim.requests.clear()
        addresses = drv.all_guest_addresses(managed_only=False)
        assert sum(len(a) for a in addresses.values()) == 2000
        assert dict(sim.requests) == {"GET /vms": 3}  # NICs and reported devices inline, no call per VM


def test_close_logs_out_and_is_idempotent(sim: Simulator) -> None:
    drv = OvirtDriver(sim.settings())
    drv.connect()
    drv.connect()
    assert len(sim.tokens) == 1
    drv.close()
    assert sim.tokens == {}  # the SSO token was revoked
    drv.close()
    with pytest.raises(BackendUnavailable):
        drv.list_nodes()
