"""Lifecycle events: the driver's own changes at once, changes made elsewhere by polling."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import pytest

from virtdrivers.objects import EventType, InstanceInfo, LifecycleEvent, PowerState
from virtdrivers_hyperv.driver import HypervDriver
from virtdrivers_hyperv.events import transitions
from virtdrivers_hyperv.simulator import Simulator
from virtdrivers_hyperv.simulator.model import OFF


def _info(state: PowerState, node: str = "N1") -> InstanceInfo:
    return InstanceInfo(id="i", name="n", power_state=state, vcpus=1, memory_mb=128, node=node)


@pytest.mark.parametrize(
    ("old", "new", "events"),
    [
        (None, _info(PowerState.RUNNING), [EventType.CREATED, EventType.STARTED]),
        (None, _info(PowerState.SHUTDOWN), [EventType.CREATED]),
        (_info(PowerState.RUNNING), None, [EventType.DESTROYED]),
        (_info(PowerState.RUNNING), _info(PowerState.SHUTDOWN), [EventType.STOPPED]),
        (_info(PowerState.SHUTDOWN), _info(PowerState.RUNNING), [EventType.STARTED]),
        (_info(PowerState.PAUSED), _info(PowerState.RUNNING), [EventType.RESUMED]),
        (_info(PowerState.SUSPENDED), _info(PowerState.RUNNING), [EventType.RESUMED]),
        (_info(PowerState.RUNNING), _info(PowerState.SUSPENDED), [EventType.SUSPENDED]),
        (_info(PowerState.RUNNING), _info(PowerState.RUNNING, "N2"), [EventType.MIGRATED]),
        (_info(PowerState.RUNNING), _info(PowerState.RUNNING), []),
    ],
)
def test_transitions(old: InstanceInfo | None, new: InstanceInfo | None, events: list[EventType]) -> None:
    assert transitions(old, new) == events


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(user="admin", password="pw-ev", https=True, inventory={"vms": []}) as s:
        yield s


def _driver(sim: Simulator) -> HypervDriver:
    return HypervDriver(
        host="127.0.0.1",
        port=sim.port,
        user="admin",
        password="pw-ev",
        transport="basic",
        ca_file=str(sim.ca_file),
        event_poll_interval=0.2,
    )


def _wait_for(got: queue.SimpleQueue[LifecycleEvent], instance_id: str, wanted: EventType) -> list[EventType]:
    seen: list[EventType] = []
    while wanted not in seen:
        event = got.get(timeout=30)  # raises queue.Empty (test fails) if it never comes
        if event.instance_id == instance_id:
            seen.append(event.type)
    return seen


def test_own_and_external_changes_arrive_once(sim: Simulator) -> None:
    got: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
    with _driver(sim) as d:
        sub = d.subscribe(got.put)
        info = d.create({"name": "ev", "vcpus": 1, "memory_mb": 128})
        assert _wait_for(got, info.id, EventType.STARTED) == [EventType.CREATED, EventType.STARTED]
        # The guest shuts itself down: only the poller can see that.
        with sim.model.lock:
            vm = sim.model.vm(info.id)
            assert vm is not None
            vm.state = OFF
        assert _wait_for(got, info.id, EventType.STOPPED) == [EventType.STOPPED]
        d.power_on(info.id)
        assert _wait_for(got, info.id, EventType.STARTED) == [EventType.STARTED]
        d.live_migrate(info.id)
        assert _wait_for(got, info.id, EventType.MIGRATED) == [EventType.MIGRATED]
        d.destroy(info.id)
        assert _wait_for(got, info.id, EventType.DESTROYED) == [EventType.DESTROYED]
        sub.close()
        assert sub.closed


def test_close_stops_the_event_threads(sim: Simulator) -> None:
    d = _driver(sim)
    d.connect()
    d.subscribe(lambda e: None)
    names = {t.name for t in threading.enumerate()}
    assert {"hyperv-events", "hyperv-poller"} <= names
    d.close()
    names = {t.name for t in threading.enumerate()}
    assert "hyperv-events" not in names
    assert "hyperv-poller" not in names


def test_adopting_a_pet_is_no_event_and_pets_are_silent() -> None:
    """Adoption changes who manages a VM, not its life: no created/started; a pet's own changes are no one's."""
    pets = {"vms": [{"name": "pet-a", "state": 2}, {"name": "pet-b", "state": 2}]}
    with Simulator(user="admin", password="pw-ev", https=True, inventory=pets) as sim, _driver(sim) as d:
        got: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
        with d.subscribe(got.put):
            by_name = {p.name: p for p in d.list_unmanaged()}
            adopted = d.adopt(by_name["pet-a"].id)
            assert adopted.power_state == PowerState.RUNNING
            with sim.model.lock:  # the other pet stops by itself: not ours to report
                vm = sim.model.vm(by_name["pet-b"].id)
                assert vm is not None
                vm.state = OFF
            time.sleep(1.0)  # several polls: the poller has seen pet-b stop
            marker = d.create({"name": "marker", "vcpus": 1, "memory_mb": 128, "start": False})
            d.power_off(adopted.id, force=True)
            seen = []
            while (event := got.get(timeout=30)).instance_id != adopted.id:
                seen.append((event.instance_id, event.type))
            assert (event.type, seen) == (EventType.STOPPED, [(marker.id, EventType.CREATED)])
            assert got.empty()
