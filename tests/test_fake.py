"""The reference fake driver: thread safety, fault injection, cleanup, events, the vendor-style suite."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from virtdrivers import BackendUnavailable, EventType, InstanceSpec, LifecycleEvent, PowerState
from virtdrivers.driver import Driver
from virtdrivers.fake import FakeDriver
from virtdrivers_conformance.suite import ConformanceSuite
from virtdrivers_conformance.suite.fixtures import EndpointUnderTest


class TestFakeConformance(ConformanceSuite):
    """The fake passes the whole suite, wired the way a vendor wires theirs: its endpoint and hooks."""

    @pytest.fixture(scope="class")
    @classmethod
    def endpoint_settings(cls) -> Iterator[Mapping[str, Any]]:
        with FakeDriver.embedded_endpoints()[0].start() as settings:
            yield settings

    @pytest.fixture(scope="class")
    @classmethod
    def driver(cls, endpoint_settings: Mapping[str, Any]) -> Iterator[Driver]:
        with FakeDriver(**endpoint_settings) as driver:
            yield driver

    @pytest.fixture(scope="class")
    @classmethod
    def endpoint(cls, endpoint_settings: Mapping[str, Any]) -> EndpointUnderTest:
        embedded = FakeDriver.embedded_endpoints()[0]
        return EndpointUnderTest(
            hooks=embedded.hooks, settings=endpoint_settings, guest_boot_timeout=embedded.guest_boot_timeout
        )


def test_concurrent_creates_are_all_kept_and_names_stay_unique() -> None:
    with FakeDriver() as driver:
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                for i in range(25):
                    info = driver.create(InstanceSpec(name=f"w{n}-{i}", vcpus=1, memory_mb=64))
                    driver.pause(info.id)
                    driver.unpause(info.id)
                # Every worker also races for one shared name: exactly one may win.
                driver.create(InstanceSpec(name="contended", vcpus=1, memory_mb=64))
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        names = [i.name for i in driver.list_instances()]
        assert len(names) == 8 * 25 + 1
        assert names.count("contended") == 1
        assert len(errors) == 7
        assert all(type(e).__name__ == "InvalidSpec" for e in errors)


def test_failed_create_leaves_nothing_behind() -> None:
    with FakeDriver() as driver:
        driver.inject_fault("create_disk", OSError("disk full"))
        spec = InstanceSpec(name="doomed", vcpus=1, memory_mb=64, disks=[{"size_gib": 1}, {"size_gib": 2}])
        with pytest.raises(OSError, match="disk full"):
            driver.create(spec)
        assert driver.list_instances() == []
        assert driver.host_resources().disk_gib_used == 0
        assert driver.create(spec).name == "doomed"


def test_shared_backend_is_seen_by_two_drivers() -> None:
    with FakeDriver(backend="shared-test") as a, FakeDriver(backend="shared-test") as b:
        info = a.create(InstanceSpec(name="x", vcpus=1, memory_mb=64))
        assert b.get_instance(info.id).name == "x"
        a.destroy(info.id)
        assert b.list_instances() == []


def test_graceful_shutdown_falls_back_to_force_when_guest_ignores_it() -> None:
    with FakeDriver() as driver:
        info = driver.create(InstanceSpec(name="deaf", vcpus=1, memory_mb=64, metadata={"fake.ignore_acpi": "true"}))
        assert driver.power_off(info.id, timeout=0.01).power_state == PowerState.SHUTDOWN


def test_events_stop_after_close_and_calls_after_close_fail() -> None:
    driver = FakeDriver()
    driver.connect()
    got: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
    sub = driver.subscribe(got.put)
    info = driver.create(InstanceSpec(name="e", vcpus=1, memory_mb=64))
    assert got.get(timeout=5).type == EventType.CREATED
    assert got.get(timeout=5).type == EventType.STARTED
    driver.close()
    assert sub.closed
    with pytest.raises(BackendUnavailable):
        driver.get_instance(info.id)


def test_evacuate_refuses_a_running_instance_on_a_live_node() -> None:
    with FakeDriver() as driver:
        info = driver.create(InstanceSpec(name="e", vcpus=1, memory_mb=64, node="fake-node-1"))
        with pytest.raises(Exception, match="migrate it instead"):
            driver.evacuate(info.id, "fake-node-2")
        driver.fail_node("fake-node-1")
        moved = driver.evacuate(info.id, "fake-node-2")
        assert (moved.node, moved.power_state) == ("fake-node-2", PowerState.SHUTDOWN)
