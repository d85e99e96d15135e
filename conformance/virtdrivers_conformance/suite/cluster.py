"""Conformance across nodes: migration and evacuation, nodes and resources, HA, pets, events."""

from __future__ import annotations

import queue
import time

import pytest

from virtdrivers import (
    Capability,
    Driver,
    DriverError,
    EventType,
    HAPriority,
    InstanceInfo,
    InvalidState,
    LifecycleEvent,
    PowerState,
)
from virtdrivers_conformance.suite.checks import (
    agreed,
    disk_shape,
    next_event,
    other_nodes,
    pick_target,
    up_nodes,
    where,
)
from virtdrivers_conformance.suite.fixtures import (
    DriverFixtures,
    EndpointUnderTest,
    MakeInstance,
    feature,
)

__all__ = ["TestCluster", "TestEvents", "TestMigration", "TestPets"]


class TestMigration(DriverFixtures):
    @feature("live_migrate")
    def test_live_migrate_to_the_named_node(self, driver: Driver, instance: InstanceInfo) -> None:
        target = pick_target(driver, agreed(driver, instance.id))
        moved = driver.live_migrate(instance.id, target)
        assert (moved.node, moved.power_state) == (target, PowerState.RUNNING), f"asked for {target!r}"
        got = agreed(driver, instance.id)
        assert (got.node, got.power_state) == (target, PowerState.RUNNING)

    @feature("live_migrate")
    def test_live_migrate_anywhere(self, driver: Driver, instance: InstanceInfo) -> None:
        before = where(agreed(driver, instance.id))
        moved = driver.live_migrate(instance.id)
        assert moved.power_state == PowerState.RUNNING
        assert where(moved) != before
        assert where(agreed(driver, instance.id)) == where(moved)

    @feature("live_migrate")
    def test_live_migrate_to_a_failed_node_is_refused(
        self, driver: Driver, endpoint: EndpointUnderTest, instance: InstanceInfo
    ) -> None:
        before = agreed(driver, instance.id)
        target = pick_target(driver, before)
        endpoint.fail_node(driver, target, True)
        try:
            with pytest.raises(DriverError):
                driver.live_migrate(instance.id, target)
            after = agreed(driver, instance.id)
            assert (where(after), after.power_state) == (where(before), PowerState.RUNNING)
        finally:
            endpoint.fail_node(driver, target, False)

    @feature("live_migrate")
    def test_live_migrate_of_a_stopped_instance_is_invalid_state(
        self, driver: Driver, stopped_instance: InstanceInfo
    ) -> None:
        with pytest.raises(InvalidState):
            driver.live_migrate(stopped_instance.id)

    @feature("cold_migrate")
    def test_cold_migrate_to_the_named_node(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        target = pick_target(driver, agreed(driver, stopped_instance.id))
        moved = driver.cold_migrate(stopped_instance.id, target)
        assert moved.node == target, f"asked for {target!r}"
        got = agreed(driver, stopped_instance.id)
        assert (got.node, got.power_state) == (target, PowerState.SHUTDOWN)

    @feature("cold_migrate")
    def test_cold_migrate_anywhere(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        before = where(agreed(driver, stopped_instance.id))
        moved = driver.cold_migrate(stopped_instance.id)
        assert where(moved) != before
        assert agreed(driver, stopped_instance.id).power_state == PowerState.SHUTDOWN

    @feature("evacuate")
    def test_evacuate_from_a_failed_node(
        self, driver: Driver, endpoint: EndpointUnderTest, make_instance: MakeInstance
    ) -> None:
        nodes = up_nodes(driver)
        if len(nodes) < 2:
            pytest.fail("the endpoint needs a second node that is up")
        source, target = nodes[0], nodes[-1]
        info = make_instance(node=source, disks=[])
        failing = endpoint.has_fail_node()
        if failing:
            endpoint.fail_node(driver, source, True)
        else:  # without a way to fail a node, evacuate a stopped instance off an up node
            driver.power_off(info.id, force=True)
        try:
            moved = driver.evacuate(info.id, target)
            assert moved.node == target, f"asked for {target!r}"
            assert agreed(driver, info.id).node == target
        finally:
            if failing:
                endpoint.fail_node(driver, source, False)

    @feature("evacuate")
    def test_evacuate_refuses_a_running_instance_on_an_up_node(self, driver: Driver, instance: InstanceInfo) -> None:
        before = agreed(driver, instance.id)
        target = pick_target(driver, before)
        with pytest.raises(InvalidState):
            driver.evacuate(instance.id, target)  # split brain: the instance still runs where it is
        after = agreed(driver, instance.id)
        assert (where(after), after.power_state) == (where(before), PowerState.RUNNING)


class TestCluster(DriverFixtures):
    @feature("nodes")
    def test_nodes_are_listed(self, driver: Driver, instance: InstanceInfo) -> None:
        nodes = driver.list_nodes()
        assert nodes
        assert all(n.name and n.hypervisor_type for n in nodes)
        assert len({n.name for n in nodes}) == len(nodes)
        assert instance.node in {n.name for n in nodes}

    @feature("host_resources")
    def test_host_resources(self, driver: Driver) -> None:
        node = driver.list_nodes()[-1].name
        res = driver.host_resources(node)
        assert res.node == node
        assert res.vcpus_total > 0
        assert res.memory_mb_total > 0
        assert res.hypervisor_type
        default = driver.host_resources()
        assert default.memory_mb_total > 0

    @feature("host_resources")
    def test_host_resources_count_running_instances_on_their_node(
        self, driver: Driver, make_instance: MakeInstance
    ) -> None:
        nodes = up_nodes(driver)
        target, others = nodes[-1], nodes[:-1]
        before = driver.host_resources(target)
        assert before.node == target
        others_before = {n: driver.host_resources(n) for n in others}
        vcpus, memory = 2, self.instance_memory_mb * 2
        info = make_instance(node=target, vcpus=vcpus, memory_mb=memory, disks=[])
        assert agreed(driver, info.id).node == target
        after = driver.host_resources(target)
        assert (after.vcpus_used - before.vcpus_used, after.memory_mb_used - before.memory_mb_used) == (
            vcpus,
            memory,
        ), f"a running {vcpus} vCPU / {memory} MiB instance on {target!r} is not counted there"
        for node, was in others_before.items():
            now = driver.host_resources(node)
            assert (now.node, now.vcpus_used, now.memory_mb_used) == (node, was.vcpus_used, was.memory_mb_used), (
                f"node {node!r} changed although the instance runs on {target!r}"
            )
        driver.power_off(info.id, force=True)
        off = driver.host_resources(target)
        assert (off.vcpus_used, off.memory_mb_used) == (before.vcpus_used, before.memory_mb_used)

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
        low = driver.set_high_availability(instance.id, True, priority=HAPriority.LOW)
        assert (low.priority, driver.get_high_availability(instance.id).priority) == (HAPriority.LOW, HAPriority.LOW)
        assert not driver.set_high_availability(instance.id, False).enabled
        assert not driver.get_high_availability(instance.id).enabled
        assert agreed(driver, instance.id).power_state == PowerState.RUNNING

    @feature("ha_failover")
    def test_failover_moves_the_instance(self, driver: Driver, instance: InstanceInfo) -> None:
        before = driver.set_high_availability(instance.id, True).owner_node
        after = driver.failover(instance.id)
        assert after.enabled
        assert after.owner_node
        assert after.owner_node != before
        got = agreed(driver, instance.id)
        assert after.owner_node in (got.node, got.host), f"owner {after.owner_node!r} but instance on {where(got)}"
        assert driver.get_high_availability(instance.id).owner_node == after.owner_node

    @feature("ha_failover")
    def test_failover_to_the_named_node(self, driver: Driver, instance: InstanceInfo) -> None:
        driver.set_high_availability(instance.id, True)
        target = pick_target(driver, agreed(driver, instance.id))
        after = driver.failover(instance.id, target)
        assert after.owner_node == target, f"asked for {target!r}"
        got = agreed(driver, instance.id)
        assert target in (got.node, got.host)
        assert got.power_state == PowerState.RUNNING


class TestPets(DriverFixtures):
    @feature("adopt")
    def test_adopt_existing_instance_intact(self, driver: Driver, make_instance: MakeInstance) -> None:
        pets = driver.list_unmanaged()
        assert pets, "the endpoint must offer at least one unmanaged instance to adopt"
        pet = pets[0]
        assert not pet.managed
        events: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
        watching = driver.supports(Capability.EVENTS)
        sub = driver.subscribe(events.put) if watching else None
        try:
            adopted = driver.adopt(pet.id)
            if watching:
                # A new instance's event proves the events of the adoption have been delivered by now.
                marker = make_instance(disks=[])
                seen: list[LifecycleEvent] = []
                deadline = time.monotonic() + self.event_timeout
                while time.monotonic() < deadline:
                    try:
                        event = events.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    seen.append(event)
                    if event.instance_id == marker.id:
                        break
                restarts = [e.type.value for e in seen if e.instance_id == pet.id]
                assert not restarts, f"adopting {pet.name!r} caused events {restarts}: it was restarted"
        finally:
            if sub is not None:
                sub.close()
        assert adopted.managed
        assert (adopted.id, adopted.name, adopted.power_state) == (pet.id, pet.name, pet.power_state)
        assert (adopted.vcpus, adopted.memory_mb, adopted.node) == (pet.vcpus, pet.memory_mb, pet.node)
        assert [(d.id, disk_shape(d)) for d in adopted.disks] == [(d.id, disk_shape(d)) for d in pet.disks]
        assert {k: adopted.metadata.get(k) for k in pet.metadata} == pet.metadata
        assert agreed(driver, pet.id).model_dump() == adopted.model_dump()
        assert pet.id not in {i.id for i in driver.list_unmanaged()}


class TestEvents(DriverFixtures):
    @feature("events")
    def test_every_transition_is_an_event(self, driver: Driver, make_instance: MakeInstance) -> None:
        events: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
        with driver.subscribe(events.put):
            info = make_instance(disks=[])

            def expect(after: str, *wanted: EventType) -> LifecycleEvent:
                event = next_event(events, info.id, set(wanted), self.event_timeout)
                names = "/".join(sorted(w.value for w in wanted))
                assert event is not None, f"no {names} event for {info.id} within {self.event_timeout}s of {after}"
                assert event.name in (None, info.name), f"the {after} event names {event.name!r}"
                return event

            expect("create", EventType.CREATED, EventType.STARTED)
            driver.power_off(info.id, timeout=self.graceful_timeout)  # graceful, forced after the timeout
            expect("power_off", EventType.STOPPED)
            driver.power_on(info.id)
            expect("power_on", EventType.STARTED)
            if driver.supports(Capability.PAUSE):
                driver.pause(info.id)
                expect("pause", EventType.PAUSED)
                driver.unpause(info.id)
                expect("unpause", EventType.RESUMED)
            if driver.supports(Capability.SUSPEND):
                driver.suspend(info.id)
                expect("suspend", EventType.SUSPENDED)
                driver.resume(info.id)
                expect("resume", EventType.RESUMED, EventType.STARTED)
            if driver.supports(Capability.LIVE_MIGRATE) and other_nodes(driver, agreed(driver, info.id)):
                target = pick_target(driver, agreed(driver, info.id))
                driver.live_migrate(info.id, target)
                moved = expect("live_migrate", EventType.MIGRATED)
                assert moved.node in (None, target), f"the migrated event names {moved.node!r}, not {target!r}"
            driver.destroy(info.id)
            expect("destroy", EventType.DESTROYED)

    @feature("events")
    def test_no_callback_after_close(self, driver: Driver, make_instance: MakeInstance) -> None:
        closed: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
        still_open: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
        first = driver.subscribe(closed.put)
        with driver.subscribe(still_open.put):
            first.close()
            first.close()  # closing twice is harmless
            assert first.closed
            info = make_instance(disks=[])
            driver.power_off(info.id, force=True)
            assert next_event(still_open, info.id, {EventType.STOPPED}, self.event_timeout) is not None, (
                "the subscription left open stopped receiving events when another was closed"
            )
        late = []
        while not closed.empty():
            event = closed.get()
            if event.instance_id == info.id:
                late.append(event.type.value)
        assert not late, f"a closed subscription still received {late}"
