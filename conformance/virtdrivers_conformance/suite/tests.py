"""The conformance tests, written once against the public contract.

Each test names its feature; a feature with a capability is checked only
through the contract, so the same test serves every backend. A green cell is a
claim, so tests pin behaviour rather than success: after every operation they
read the state back through every read path (``get_instance`` and the bulk
``list_instances`` must agree field by field), round-trip every field of what
they asked for, move instances to a node that is not the scheduler's obvious
choice, and exercise the error paths (unknown ids, wrong states, a create that
fails half-way, concurrent callers, a guest that ignores ACPI, secrets) through
the endpoint's hooks (:class:`virtdrivers.EndpointHooks`).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from virtdrivers import (
    AuthenticationFailed,
    Capability,
    DiskFormat,
    DiskInfo,
    DiskSpec,
    Driver,
    DriverError,
    EventType,
    HAPriority,
    Image,
    ImageMode,
    InstanceInfo,
    InstanceNotFound,
    InstanceSpec,
    InvalidSpec,
    InvalidState,
    LifecycleEvent,
    NicSpec,
    NotFound,
    NotSupported,
    PowerState,
)
from virtdrivers_conformance.suite.fixtures import (
    DriverFixtures,
    EndpointUnderTest,
    MakeInstance,
    feature,
    unique_name,
)

__all__ = [
    "TestCluster",
    "TestEvents",
    "TestFormats",
    "TestHostileInput",
    "TestLifecycle",
    "TestMigration",
    "TestPets",
    "TestPower",
    "TestReap",
    "TestResize",
    "TestSecrets",
    "TestSnapshots",
    "TestStorage",
    "TestUnknownInstances",
    "TestWorkloads",
]


# -- read-back helpers ---------------------------------------------------------------------------


def agreed(driver: Driver, instance_id: str) -> InstanceInfo:
    """The instance as ``get_instance`` reports it, after checking the bulk listing says the same."""
    got = driver.get_instance(instance_id)
    listed = [i for i in driver.list_instances() if i.id == instance_id]
    assert len(listed) == 1, f"list_instances shows {instance_id} {len(listed)} times"
    assert listed[0].model_dump() == got.model_dump(), "list_instances and get_instance disagree"
    return got


def up_nodes(driver: Driver) -> list[str]:
    return [n.name for n in driver.list_nodes() if n.state == "up"]


def _other_nodes(driver: Driver, info: InstanceInfo) -> list[str]:
    return [n for n in up_nodes(driver) if n not in (info.node, info.host)]


def _pick_target(driver: Driver, info: InstanceInfo) -> str:
    """A node to move to that is not the scheduler's obvious choice: the last other node, not the first."""
    others = _other_nodes(driver, info)
    if not others:
        pytest.fail(f"the endpoint needs a second node that is up (instance is on {info.node!r})")
    return others[-1]


def _where(info: InstanceInfo) -> tuple[str | None, str | None]:
    return info.node, info.host


def _disk_shape(d: DiskInfo) -> tuple[int, DiskFormat | None, bool | None, str | None]:
    return d.size_gib, d.format, d.thin, d.label


def _error_texts(exc: BaseException) -> Iterable[str]:
    """Every text an exception chain can show a person: messages, reprs and arguments."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield from (repr(a) for a in current.args)
        yield from (str(v) for v in vars(current).values()) if hasattr(current, "__dict__") else ()
        current = current.__cause__ or current.__context__


def _next_event(
    events: queue.SimpleQueue[LifecycleEvent], instance_id: str, wanted: set[EventType], timeout: float
) -> LifecycleEvent | None:
    """The first event of ``instance_id`` whose type is in ``wanted``, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = events.get(timeout=0.1)
        except queue.Empty:
            continue
        if event.instance_id == instance_id and event.type in wanted:
            return event
    return None


def _in_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads released together; each result or the exception it raised."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results


class TestLifecycle(DriverFixtures):
    @feature("connect")
    def test_connect_is_idempotent_and_reports_backend(self, driver: Driver) -> None:
        driver.connect()  # already connected: must be a no-op
        info = driver.backend_info()
        assert info.backend
        assert driver.list_nodes(), "still usable after a second connect"

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
        got = agreed(driver, info.id)
        assert (got.name, got.vcpus, got.memory_mb) == (info.name, 1, self.instance_memory_mb)
        assert (got.power_state, got.managed) == (PowerState.RUNNING, True)
        assert len(got.disks) == 1
        assert [_disk_shape(d) for d in got.disks] == [_disk_shape(d) for d in info.disks]
        assert got.node in up_nodes(driver), f"instance names node {got.node!r}, which list_nodes does not show up"

    @feature("create")
    def test_create_stopped(self, driver: Driver, make_instance: MakeInstance) -> None:
        info = make_instance(start=False, disks=[])
        assert agreed(driver, info.id).power_state == PowerState.SHUTDOWN

    @feature("create")
    def test_create_keeps_every_field(self, driver: Driver, make_instance: MakeInstance) -> None:
        meta = {"role": "db", "note": "two words"}
        size = self.disk_gib
        info = make_instance(
            vcpus=2,
            memory_mb=self.instance_memory_mb * 2,
            start=False,
            metadata=meta,
            disks=[
                {"size_gib": size + 1, "thin": False, "label": "root"},
                {"size_gib": size + 2, "thin": True, "label": "data"},
            ],
        )
        got = agreed(driver, info.id)
        assert (got.vcpus, got.memory_mb, got.power_state) == (2, self.instance_memory_mb * 2, PowerState.SHUTDOWN)
        assert {k: got.metadata.get(k) for k in meta} == meta
        fmt = driver.default_disk_format
        shapes = [_disk_shape(d) for d in got.disks]
        want = [(size + 1, fmt, False, "root"), (size + 2, fmt, True, "data")]
        if fmt is None:  # the driver chooses: any one format, but the same for both
            shapes = [(s, None, t, label) for s, _f, t, label in shapes]
        assert shapes == want, "disks do not round-trip (size, format, thin, label)"
        assert [_disk_shape(d) for d in info.disks] == [_disk_shape(d) for d in got.disks], (
            "create returned other disks"
        )

    @feature("create")
    def test_create_on_the_named_node(self, driver: Driver, make_instance: MakeInstance) -> None:
        # Where the scheduler puts an instance when asked nothing, then every other node by name:
        # a driver that ignores spec.node cannot land on all of them by chance.
        chosen = make_instance(disks=[]).node
        for target in [n for n in up_nodes(driver) if n != chosen] or up_nodes(driver):
            info = make_instance(node=target, disks=[])
            assert info.node == target, f"asked for node {target!r}, create reports {info.node!r}"
            assert agreed(driver, info.id).node == target

    @feature("create")
    def test_failed_create_leaves_nothing(
        self, driver: Driver, endpoint: EndpointUnderTest, make_instance: MakeInstance
    ) -> None:
        name = unique_name()
        before = {i.id for i in driver.list_instances()}
        pets = {i.id for i in driver.list_unmanaged()} if driver.supports(Capability.ADOPT) else set()
        disks = {n: driver.host_resources(n).disk_gib_used for n in up_nodes(driver)}
        endpoint.fail_next_create(driver)
        with pytest.raises(DriverError):
            make_instance(name=name, disks=[{"size_gib": self.disk_gib + 1}])
        assert {i.id for i in driver.list_instances()} == before, "a failed create left an instance behind"
        if driver.supports(Capability.ADOPT):
            assert {i.id for i in driver.list_unmanaged()} == pets, "a failed create left an unmanaged VM behind"
        with pytest.raises(InstanceNotFound):
            driver.find_instance(name)
        assert {n: driver.host_resources(n).disk_gib_used for n in up_nodes(driver)} == disks, "disks left behind"
        if driver.supports(Capability.REAP):
            # Thin disks may not move a usage figure; the create's own token finds what it left.
            left = driver.reap(dry_run=True, grace_s=0)
            assert not left, f"a failed create left {[(f.kind, f.ref) for f in left]}"
        info = make_instance(name=name)  # nothing of the failed attempt holds the name
        assert agreed(driver, info.id).name == name

    @feature("create")
    def test_parallel_creates_of_distinct_instances(self, driver: Driver, make_instance: MakeInstance) -> None:
        names = [unique_name() for _ in range(4)]

        def shape(i: int) -> tuple[str, int, int]:
            return names[i], 1 + i % 2, self.instance_memory_mb * (1 + i // 2)

        def create(i: int) -> InstanceInfo:
            name, vcpus, memory = shape(i)
            return make_instance(name=name, vcpus=vcpus, memory_mb=memory, start=False, disks=[])

        results = _in_threads(4, create)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, f"parallel creates failed: {errors}"
        assert len({r.id for r in results}) == 4
        for i, made in enumerate(results):
            got = agreed(driver, made.id)
            assert (got.name, got.vcpus, got.memory_mb) == shape(i)

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
        assert agreed(driver, info.id).name == name
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

    @feature("unique_names")
    def test_concurrent_creates_of_one_name(self, driver: Driver, make_instance: MakeInstance) -> None:
        name = unique_name()
        results = _in_threads(4, lambda i: make_instance(name=name, start=False, disks=[]))
        made = [r for r in results if isinstance(r, InstanceInfo)]
        errors = [r for r in results if isinstance(r, BaseException)]
        listed = [i.id for i in driver.list_instances() if i.name == name]
        if driver.unique_names:
            assert len(made) == 1, f"{len(made)} of 4 concurrent creates of one name succeeded"
            assert all(isinstance(e, InvalidSpec) and e.field == "name" for e in errors), errors
            assert listed == [made[0].id]
        else:
            assert not errors, errors
            assert sorted(listed) == sorted(i.id for i in made)

    @feature("metadata")
    def test_metadata_round_trip(self, driver: Driver, make_instance: MakeInstance) -> None:
        meta = {"owner": "team-a", "purpose": "conformance <&>", "quote": 'it\'s "q"'}
        info = make_instance(start=False, disks=[], metadata=meta)
        got = agreed(driver, info.id).metadata
        assert {k: got.get(k) for k in meta} == meta

    @feature("list")
    def test_list_reports_every_instance(self, driver: Driver, make_instance: MakeInstance) -> None:
        a = make_instance(disks=[])
        b = make_instance(start=False, vcpus=2, memory_mb=self.instance_memory_mb * 2, metadata={"k": "v"})
        listed = {i.id: i for i in driver.list_instances()}
        assert a.id in listed
        assert b.id in listed
        assert listed[a.id].power_state == PowerState.RUNNING
        assert (listed[b.id].name, listed[b.id].vcpus, listed[b.id].memory_mb) == (
            b.name,
            2,
            self.instance_memory_mb * 2,
        )
        assert listed[b.id].power_state == PowerState.SHUTDOWN
        assert listed[a.id].node is not None
        for info in (a, b):
            assert listed[info.id].model_dump() == driver.get_instance(info.id).model_dump(), (
                f"list_instances and get_instance disagree about {info.name}"
            )
        driver.power_off(a.id, force=True)  # the listing follows a change, not just a create
        assert agreed(driver, a.id).power_state == PowerState.SHUTDOWN

    @feature("get")
    def test_get_unknown_raises_instance_not_found(self, driver: Driver) -> None:
        with pytest.raises(InstanceNotFound):
            driver.get_instance("00000000-0000-4000-8000-00000000dead")
        with pytest.raises(InstanceNotFound):
            driver.find_instance(unique_name("absent"))

    @feature("get")
    def test_every_operation_on_a_destroyed_instance_is_instance_not_found(
        self, driver: Driver, make_instance: MakeInstance
    ) -> None:
        info = make_instance(disks=[])
        driver.destroy(info.id)
        operations: dict[str, Callable[[], object]] = {
            "get_instance": lambda: driver.get_instance(info.id),
            "destroy": lambda: driver.destroy(info.id),
            "power_on": lambda: driver.power_on(info.id),
            "power_off": lambda: driver.power_off(info.id, force=True),
            "reboot": lambda: driver.reboot(info.id, hard=True),
        }
        wrong = {}
        for op, call in operations.items():
            try:
                call()
            except InstanceNotFound:
                continue
            except BaseException as exc:
                wrong[op] = f"{type(exc).__name__}: {exc}"
            else:
                wrong[op] = "returned"
        assert not wrong, f"not InstanceNotFound: {wrong}"

    @feature("destroy")
    def test_destroy_running(self, driver: Driver, make_instance: MakeInstance) -> None:
        node = up_nodes(driver)[-1]
        before = driver.host_resources(node).disk_gib_used
        info = make_instance(node=node, disks=[{"size_gib": self.disk_gib + 1}])
        driver.destroy(info.id)
        with pytest.raises(InstanceNotFound):
            driver.get_instance(info.id)
        assert info.id not in {i.id for i in driver.list_instances()}
        assert driver.host_resources(node).disk_gib_used == before, "destroy left its disks counted on the node"
        with pytest.raises(NotFound):
            driver.destroy(info.id)


#: Optional operations called with a destroyed instance's id, each the evidence of its capability.
_OPTIONAL_OPERATIONS: list[tuple[str, Callable[[Driver, str], object]]] = [
    ("pause", lambda d, i: d.pause(i)),
    ("suspend", lambda d, i: d.suspend(i)),
    ("resize_cpu", lambda d, i: d.resize(i, vcpus=2)),
    ("resize_memory", lambda d, i: d.resize(i, memory_mb=256)),
    ("attach_disk", lambda d, i: d.attach_disk(i, DiskSpec(size_gib=1))),
    ("detach_disk", lambda d, i: d.detach_disk(i, "0")),
    ("snapshot", lambda d, i: d.list_snapshots(i)),
    ("live_migrate", lambda d, i: d.live_migrate(i)),
    ("cold_migrate", lambda d, i: d.cold_migrate(i)),
    ("high_availability", lambda d, i: d.get_high_availability(i)),
    ("ha_failover", lambda d, i: d.failover(i)),
    ("nic_hotplug", lambda d, i: d.attach_nic(i, NicSpec(network="default"))),
    ("guest_addresses", lambda d, i: d.guest_addresses(i)),
    ("console_output", lambda d, i: d.console_output(i)),
    ("console_connect", lambda d, i: d.console_connection(i)),
    ("metrics", lambda d, i: d.instance_metrics(i)),
]


class TestUnknownInstances(DriverFixtures):
    """Every optional operation refuses an id that no longer exists with InstanceNotFound."""

    @pytest.fixture(scope="class")
    @classmethod
    def gone_id(cls, driver: Driver) -> str:
        info = driver.create(InstanceSpec(name=unique_name("gone"), vcpus=1, memory_mb=128, start=False))
        driver.destroy(info.id)
        return info.id

    @pytest.mark.parametrize(
        "operation", [pytest.param(call, marks=feature(cap), id=cap) for cap, call in _OPTIONAL_OPERATIONS]
    )
    def test_unknown_instance(self, driver: Driver, gone_id: str, operation: Callable[[Driver, str], object]) -> None:
        with pytest.raises(InstanceNotFound):
            operation(driver, gone_id)


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
    def test_graceful_shutdown_ends_off(self, driver: Driver, instance: InstanceInfo) -> None:
        info = driver.power_off(instance.id, timeout=self.graceful_timeout)
        assert info.power_state == PowerState.SHUTDOWN
        assert agreed(driver, instance.id).power_state == PowerState.SHUTDOWN

    @feature("graceful_shutdown")
    def test_graceful_shutdown_forces_a_guest_that_ignores_it(
        self, driver: Driver, endpoint: EndpointUnderTest, instance: InstanceInfo
    ) -> None:
        endpoint.ignore_acpi(driver, instance.id)
        started = time.monotonic()
        info = driver.power_off(instance.id, timeout=self.forced_shutdown_timeout)
        elapsed = time.monotonic() - started
        assert info.power_state == PowerState.SHUTDOWN, "a guest that ignores ACPI was not forced off"
        # A contract bound, not a speed claim: the caller's timeout, not the driver's own, decides.
        assert elapsed < self.forced_shutdown_timeout + 20, f"forced only after {elapsed:.0f}s"
        assert agreed(driver, instance.id).power_state == PowerState.SHUTDOWN

    @feature("reboot")
    def test_soft_and_hard_reboot(self, driver: Driver, instance: InstanceInfo) -> None:
        assert driver.reboot(instance.id, hard=True).power_state == PowerState.RUNNING
        assert driver.reboot(instance.id).power_state == PowerState.RUNNING
        assert agreed(driver, instance.id).power_state == PowerState.RUNNING

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


def _expected_shape(driver: Driver, spec: DiskSpec) -> tuple[int, DiskFormat | None, bool | None, str | None]:
    return spec.size_gib, spec.format or driver.default_disk_format, spec.thin, spec.label


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
            want = _expected_shape(driver, spec)
            shape = _disk_shape(disk)
            if want[1] is None:
                shape = (shape[0], None, shape[2], shape[3])
            assert shape == want, f"attached {want}, got {shape}"
            attached.append(disk)
        got = agreed(driver, stopped_instance.id)
        assert len(got.disks) == len(stopped_instance.disks) + len(formats)
        by_id = {d.id: d for d in got.disks}
        for disk in attached:
            assert disk.id in by_id
            assert _disk_shape(by_id[disk.id]) == _disk_shape(disk)

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
        assert _disk_shape(left[0]) == _disk_shape(keep)
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


def _config(driver: Driver, instance_id: str) -> tuple[int, int, tuple[int, ...]]:
    got = agreed(driver, instance_id)
    return got.vcpus, got.memory_mb, tuple(sorted(d.size_gib for d in got.disks))


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
        state_first = _config(driver, iid)
        self._change(driver, iid, 1)
        second = driver.create_snapshot(iid, "second")
        state_second = _config(driver, iid)
        self._change(driver, iid, 2)
        listed = driver.list_snapshots(iid)
        assert {s.id for s in listed} == {first.id, second.id}
        assert {s.name for s in listed} == {"first", "second"}
        assert all(s.instance_id == iid for s in listed)
        reverted = driver.revert_snapshot(iid, first.id)
        assert reverted.id == iid
        assert reverted.power_state == PowerState.SHUTDOWN
        assert _config(driver, iid) == state_first, "revert to the older snapshot did not restore its configuration"
        driver.revert_snapshot(iid, second.id)
        assert _config(driver, iid) == state_second, "revert to the newer snapshot did not restore its configuration"
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


class TestMigration(DriverFixtures):
    @feature("live_migrate")
    def test_live_migrate_to_the_named_node(self, driver: Driver, instance: InstanceInfo) -> None:
        target = _pick_target(driver, agreed(driver, instance.id))
        moved = driver.live_migrate(instance.id, target)
        assert (moved.node, moved.power_state) == (target, PowerState.RUNNING), f"asked for {target!r}"
        got = agreed(driver, instance.id)
        assert (got.node, got.power_state) == (target, PowerState.RUNNING)

    @feature("live_migrate")
    def test_live_migrate_anywhere(self, driver: Driver, instance: InstanceInfo) -> None:
        before = _where(agreed(driver, instance.id))
        moved = driver.live_migrate(instance.id)
        assert moved.power_state == PowerState.RUNNING
        assert _where(moved) != before
        assert _where(agreed(driver, instance.id)) == _where(moved)

    @feature("live_migrate")
    def test_live_migrate_to_a_failed_node_is_refused(
        self, driver: Driver, endpoint: EndpointUnderTest, instance: InstanceInfo
    ) -> None:
        before = agreed(driver, instance.id)
        target = _pick_target(driver, before)
        endpoint.fail_node(driver, target, True)
        try:
            with pytest.raises(DriverError):
                driver.live_migrate(instance.id, target)
            after = agreed(driver, instance.id)
            assert (_where(after), after.power_state) == (_where(before), PowerState.RUNNING)
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
        target = _pick_target(driver, agreed(driver, stopped_instance.id))
        moved = driver.cold_migrate(stopped_instance.id, target)
        assert moved.node == target, f"asked for {target!r}"
        got = agreed(driver, stopped_instance.id)
        assert (got.node, got.power_state) == (target, PowerState.SHUTDOWN)

    @feature("cold_migrate")
    def test_cold_migrate_anywhere(self, driver: Driver, stopped_instance: InstanceInfo) -> None:
        before = _where(agreed(driver, stopped_instance.id))
        moved = driver.cold_migrate(stopped_instance.id)
        assert _where(moved) != before
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
        target = _pick_target(driver, before)
        with pytest.raises(InvalidState):
            driver.evacuate(instance.id, target)  # split brain: the instance still runs where it is
        after = agreed(driver, instance.id)
        assert (_where(after), after.power_state) == (_where(before), PowerState.RUNNING)


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
        assert after.owner_node in (got.node, got.host), f"owner {after.owner_node!r} but instance on {_where(got)}"
        assert driver.get_high_availability(instance.id).owner_node == after.owner_node

    @feature("ha_failover")
    def test_failover_to_the_named_node(self, driver: Driver, instance: InstanceInfo) -> None:
        driver.set_high_availability(instance.id, True)
        target = _pick_target(driver, agreed(driver, instance.id))
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
        assert [(d.id, _disk_shape(d)) for d in adopted.disks] == [(d.id, _disk_shape(d)) for d in pet.disks]
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
                event = _next_event(events, info.id, set(wanted), self.event_timeout)
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
            if driver.supports(Capability.LIVE_MIGRATE) and _other_nodes(driver, agreed(driver, info.id)):
                target = _pick_target(driver, agreed(driver, info.id))
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
            assert _next_event(still_open, info.id, {EventType.STOPPED}, self.event_timeout) is not None, (
                "the subscription left open stopped receiving events when another was closed"
            )
        late = []
        while not closed.empty():
            event = closed.get()
            if event.instance_id == info.id:
                late.append(event.type.value)
        assert not late, f"a closed subscription still received {late}"


class TestSecrets(DriverFixtures):
    @staticmethod
    def _secrets(driver: Driver) -> dict[str, str]:
        return {
            k: v.get_secret_value() for k, v in driver.settings if isinstance(v, SecretStr) and v.get_secret_value()
        }

    @staticmethod
    def _leaks(texts: Iterable[str], secrets: Iterable[str]) -> list[int]:
        """Indexes of the texts that show a secret (never the texts: the report must not show it either)."""
        secrets = [s for s in secrets if s]
        return [n for n, text in enumerate(texts) if any(s in text for s in secrets)]

    @feature("secrets")
    def test_wrong_password_is_authentication_failed_without_secrets(
        self, driver: Driver, endpoint: EndpointUnderTest, caplog: pytest.LogCaptureFixture
    ) -> None:
        right = self._secrets(driver)
        if not right:
            pytest.skip("the endpoint's settings hold no secret (SecretStr) to check")
        wrong = {k: f"wrong-{uuid.uuid4().hex}" for k in right}
        other = type(driver)(driver.settings.model_copy(update={k: SecretStr(v) for k, v in wrong.items()}))
        caplog.set_level("DEBUG")
        error: BaseException | None = None
        try:
            other.connect()
            other.list_instances()
        except BaseException as exc:
            error = exc
        finally:
            other.close()
        if error is None:
            if not endpoint.authenticates:
                pytest.skip("the endpoint has nothing to authenticate (a local peer)")
            pytest.fail("a wrong password was accepted")
        assert isinstance(error, AuthenticationFailed), f"a wrong password gave {type(error).__name__}"
        texts = [*_error_texts(error), caplog.text, repr(other)]
        assert not self._leaks(texts, [*right.values(), *wrong.values()]), "a password appears in the error or logs"

    @feature("secrets")
    def test_no_secret_in_errors_reprs_logs_or_backend_info(
        self, driver: Driver, make_instance: MakeInstance, caplog: pytest.LogCaptureFixture
    ) -> None:
        secrets = [*self._secrets(driver).values(), *driver.settings.secrets()]
        if not secrets:
            pytest.skip("the endpoint's settings hold no secret (SecretStr) to check")
        caplog.set_level("DEBUG")
        texts = [repr(driver), str(driver), repr(driver.settings), str(driver.settings)]
        texts.append(driver.backend_info().model_dump_json())
        taken = make_instance(start=False, disks=[])
        gone = make_instance(start=False, disks=[])
        driver.destroy(gone.id)
        attempts: list[Callable[[], object]] = [
            lambda: driver.get_instance(gone.id),
            lambda: driver.destroy(gone.id),
            lambda: driver.power_on(gone.id),
            lambda: driver.power_off(gone.id, force=True),
            lambda: driver.host_resources(unique_name("no-such-node")),
            lambda: driver.create(InstanceSpec(name=taken.name, vcpus=1, memory_mb=128, start=False)),
            lambda: driver.create({"name": unique_name(), "vcpus": 0, "memory_mb": 128}),  # type: ignore[arg-type]
        ]
        raised = 0
        for attempt in attempts:
            try:
                attempt()
            except BaseException as exc:
                raised += 1
                texts.extend(_error_texts(exc))
        assert raised >= 4, "the failing calls did not fail"
        texts.append(caplog.text)
        leaks = self._leaks(texts, secrets)
        assert not leaks, f"a secret appears in {len(leaks)} error text(s), repr(s) or log lines"


class TestReap(DriverFixtures):
    @feature("reap")
    def test_reap_never_touches_finished_instances_or_pets(self, driver: Driver, make_instance: MakeInstance) -> None:
        """With no grace at all, reap may take only creates still in progress (none here) and leftovers.

        ``grace_s=0`` also removes creates in progress elsewhere on the endpoint, so run the
        suite against an endpoint of its own, as every other test here already requires.
        """
        running = make_instance(disks=[{"size_gib": self.disk_gib}])
        stopped = make_instance(start=False)
        pets = {i.id for i in driver.list_unmanaged()} if driver.supports(Capability.ADOPT) else set()
        before = {i: agreed(driver, i).model_dump() for i in (running.id, stopped.id)}
        found = driver.reap(dry_run=True, grace_s=0)
        assert all(f.kind in ("instance", "disk") for f in found)
        refs = {f.ref for f in found}
        assert not refs & {running.id, stopped.id, *pets}, "reap would remove a finished instance or a pet"
        driver.reap(grace_s=0)
        assert {i: agreed(driver, i).model_dump() for i in (running.id, stopped.id)} == before
        if pets:
            assert pets <= {i.id for i in driver.list_unmanaged()}


#: Ids no backend issues: path tricks, query and fragment syntax, markup, shell and PowerShell syntax,
#: control and non-ASCII characters. Each must be refused as not found (or as an invalid id), never
#: reach a URL, a SOAP body, XML or a script as syntax, and never surface as a library exception.
HOSTILE_IDS = [
    "",
    ".",
    "..",
    "../hosts",
    "?x=1",
    "#frag",
    "a<b>&c",
    "a/b\\c",
    "nul\x00byte",
    "line\r\nbreak",
    "é日本😀",
    "%2e%2e%2f",
    " ",
    "x" * 300,
    "00000000-0000-4000-8000-000000000000\n",
    "vm-1'; Remove-VM -Name * -Force; '",
    "$(reboot)`reboot`",
    '"quoted"',
]

#: Names the contract accepts. A backend keeps each exactly or refuses it up front (field ``name``).
HOSTILE_NAMES = [
    ".",
    "..",
    "😀" * 64,
    "日本" * 32,
    "a%25b%2f",
    "a%b",
    "<script>x</script>",
    "-rf",
    "*",
    "a:b;c|d",
    "CON",
    "a  b",
    "ümlaut-ß",
    "'\"`$(x)",
]

#: Metadata values the contract accepts. Kept exactly, or refused up front naming ``metadata.<key>``.
HOSTILE_METADATA = {
    "nul": "a\x00b",
    "esc": "\x1b[31mred",
    "crlf": "a\r\nb",
    "tab": "a\tb",
    "unicode": "é日本😀",
    "markup": "<>&'\"",
    "shell": "${x}$(y)`z`",
    "lead": " lead",
    "trail": "trail ",
    "empty": "",
    "long": "x" * 1024,
}


def _typed(exc: BaseException) -> str | None:
    """Why ``exc`` is not an acceptable answer to hostile input, or None when it is."""
    if not isinstance(exc, DriverError):
        return f"untyped {type(exc).__name__}: {exc!r}"[:300]
    return None


class TestHostileInput(DriverFixtures):
    @feature("get")
    def test_hostile_ids_are_not_found(self, driver: Driver) -> None:
        wrong = {}
        for ref in HOSTILE_IDS:
            for op, call in (("get_instance", driver.get_instance), ("destroy", driver.destroy)):
                try:
                    call(ref)
                except InstanceNotFound:
                    continue
                except InvalidSpec as exc:
                    if exc.field != "instance_id":
                        wrong[f"{op}({ref!r})"] = f"InvalidSpec(field={exc.field!r})"
                except BaseException as exc:
                    wrong[f"{op}({ref!r})"] = _typed(exc) or f"{type(exc).__name__}: {exc}"[:300]
                else:
                    wrong[f"{op}({ref!r})"] = "returned"
        assert not wrong, f"hostile ids not refused as InstanceNotFound: {wrong}"

    @feature("create")
    def test_hostile_names_round_trip_or_are_refused_up_front(
        self, driver: Driver, make_instance: MakeInstance
    ) -> None:
        wrong = {}
        for name in HOSTILE_NAMES:
            if driver.unique_names:
                with contextlib.suppress(InstanceNotFound):  # another run's leftover would make it a duplicate
                    driver.destroy(driver.find_instance(name).id)
            before = {i.id for i in driver.list_instances()}
            try:
                info = make_instance(name=name, start=False, disks=[])
            except InvalidSpec as exc:
                if exc.field not in ("name", "InstanceSpec.name"):
                    wrong[name] = f"InvalidSpec(field={exc.field!r})"
                elif {i.id for i in driver.list_instances()} != before:
                    wrong[name] = "refused, but left an instance behind"
                continue
            except BaseException as exc:
                wrong[name] = _typed(exc) or f"{type(exc).__name__} instead of InvalidSpec(field='name'): {exc}"[:300]
                continue
            got = agreed(driver, info.id)
            if got.name != name or info.name != name:
                wrong[name] = f"kept as {got.name!r}"
            elif driver.find_instance(name).id != info.id:
                wrong[name] = "not found by its own name"
        assert not wrong, f"names neither kept exactly nor refused up front: {wrong}"

    @feature("metadata")
    def test_hostile_metadata_round_trips_or_is_refused_up_front(
        self, driver: Driver, make_instance: MakeInstance
    ) -> None:
        meta = dict(HOSTILE_METADATA)
        refused: list[str] = []
        for _ in range(len(HOSTILE_METADATA) + 1):
            before = {i.id for i in driver.list_instances()}
            try:
                info = make_instance(start=False, disks=[], metadata=meta)
                break
            except InvalidSpec as exc:
                key = (exc.field or "").removeprefix("InstanceSpec.").removeprefix("metadata.")
                assert key in meta, f"metadata refused without naming the key: InvalidSpec(field={exc.field!r})"
                assert {i.id for i in driver.list_instances()} == before, "refused metadata left an instance"
                refused.append(key)
                del meta[key]
        got = agreed(driver, info.id).metadata
        changed = {k: got.get(k) for k, v in meta.items() if got.get(k) != v}
        assert not changed, f"metadata values not kept exactly (refused up front: {refused}): {changed}"


def _wait_for(what: str, timeout: float, probe: Callable[[], Any]) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(0.2)


def _image_for(driver: Driver) -> Image:
    images = driver.list_images()
    if not images:
        pytest.fail("the endpoint offers no image to boot from")
    return images[0]


class TestWorkloads(DriverFixtures):
    """Instances that run workloads: images, NICs, user data, addresses, console, metrics (contract 1.2)."""

    def _nics(self, driver: Driver) -> list[dict[str, Any]]:
        if not driver.supports(Capability.NETWORKS):
            return []
        return [{"network": driver.list_networks()[0].id}]

    @pytest.mark.parametrize(
        "mode",
        [
            pytest.param(ImageMode.COW, marks=feature("image_cow"), id="cow"),
            pytest.param(ImageMode.COPY, marks=feature("image_copy"), id="copy"),
        ],
    )
    def test_create_from_an_image_leaves_the_image_unchanged(
        self, driver: Driver, endpoint: EndpointUnderTest, make_instance: MakeInstance, mode: ImageMode
    ) -> None:
        image = _image_for(driver)
        info = make_instance(image=image.id, image_mode=mode, disks=[{"size_gib": self.disk_gib}])
        got = agreed(driver, info.id)
        assert got.image == image.id
        root = got.disks[0]
        assert root.size_gib * 1024**3 >= image.virtual_size_bytes, "the root disk is smaller than its image"
        assert len(got.disks) == 2, "the image's root disk comes first, then the spec's disks"
        if driver.supports(Capability.METRICS):  # let the guest run (and write) a little before looking
            _wait_for(
                "the guest running", endpoint.guest_boot_timeout, lambda: driver.instance_metrics(info.id).cpu_time_ns
            )
        after = {i.id: i for i in driver.list_images()}[image.id]
        assert after.model_dump() == image.model_dump(), "the image changed while an instance ran from it"

    @feature("images")
    def test_images_are_listed_and_unknown_ones_refused_up_front(self, driver: Driver) -> None:
        images = driver.list_images()
        assert images
        assert all(i.id and i.name for i in images)
        assert len({i.id for i in images}) == len(images)
        before = {i.id for i in driver.list_instances()}
        with pytest.raises(InvalidSpec) as err:
            driver.create(InstanceSpec(name=unique_name(), vcpus=1, memory_mb=128, image=unique_name("no-image")))
        assert err.value.field == "image"
        assert {i.id for i in driver.list_instances()} == before

    @feature("image_upload")
    def test_register_boot_and_delete_an_image(
        self, driver: Driver, make_instance: MakeInstance, tmp_path: Path
    ) -> None:
        path = tmp_path / "disk.raw"
        with path.open("wb") as f:
            f.truncate(16 * 1024 * 1024)
        name = unique_name("img")
        image = driver.register_image(str(path), name, disk_format=DiskFormat.RAW)
        assert (image.name, image.disk_format, image.virtual_size_bytes) == (name, DiskFormat.RAW, 16 * 1024 * 1024)
        assert image.id in {i.id for i in driver.list_images()}
        driver.delete_image(image.id)
        assert image.id not in {i.id for i in driver.list_images()}
        with pytest.raises(NotFound):
            driver.delete_image(image.id)

    @feature("networks")
    def test_nics_round_trip_through_every_read_path(self, driver: Driver, make_instance: MakeInstance) -> None:
        networks = driver.list_networks()
        assert networks
        assert all(n.id and n.name for n in networks)
        net = networks[-1]
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:3])
        info = make_instance(start=False, disks=[], nics=[{"network": net.id, "mac": mac}, {"network": net.name}])
        got = agreed(driver, info.id)
        assert len(got.nics) == 2
        assert got.nics[0].mac == mac, f"asked for MAC {mac}, got {got.nics[0].mac}"
        assert {n.network for n in got.nics} <= {net.id, net.name}
        assert len({n.mac for n in got.nics}) == 2
        assert [n.model_dump() for n in info.nics] == [n.model_dump() for n in got.nics]

    @feature("networks")
    def test_bad_nics_are_refused_up_front(self, driver: Driver) -> None:
        before = {i.id for i in driver.list_instances()}
        spec = {"name": unique_name(), "vcpus": 1, "memory_mb": 128}
        with pytest.raises(InvalidSpec) as err:
            driver.create({**spec, "nics": [{"network": unique_name("no-net")}]})  # type: ignore[arg-type]
        assert err.value.field is not None
        assert "nics.0.network" in err.value.field
        with pytest.raises(InvalidSpec) as err:
            driver.create({**spec, "nics": [{"network": "x", "mac": "not-a-mac"}]})  # type: ignore[arg-type]
        assert err.value.field is not None
        assert "mac" in err.value.field
        assert {i.id for i in driver.list_instances()} == before

    @feature("nic_hotplug")
    def test_attach_and_detach_a_nic_on_a_running_instance(self, driver: Driver, make_instance: MakeInstance) -> None:
        info = make_instance(disks=[], nics=self._nics(driver))
        net = driver.list_networks()[0]
        nic = driver.attach_nic(info.id, NicSpec(network=net.id))
        got = agreed(driver, info.id)
        assert nic.id in {n.id for n in got.nics}
        assert got.power_state == PowerState.RUNNING
        driver.detach_nic(info.id, nic.id)
        assert nic.id not in {n.id for n in agreed(driver, info.id).nics}
        with pytest.raises(NotFound):
            driver.detach_nic(info.id, nic.id)

    @feature("user_data")
    def test_the_guest_reads_its_user_data(
        self, driver: Driver, endpoint: EndpointUnderTest, make_instance: MakeInstance
    ) -> None:
        if not driver.supports(Capability.CONSOLE_OUTPUT):
            pytest.skip("needs console_output to see what the guest read")
        marker = f"#vd-marker {uuid.uuid4().hex}"
        user_data = f"#cloud-config\n{marker}\n"
        digest = hashlib.sha256(user_data.encode()).hexdigest()
        image = {"image": _image_for(driver).id} if driver.supports(Capability.IMAGES) else {}
        info = make_instance(disks=[], nics=self._nics(driver), user_data={"user_data": user_data}, **image)

        def read() -> str:
            out = driver.console_output(info.id)
            return out if f"VIRTDRIVERS-USERDATA {digest}" in out else ""

        console = _wait_for("the user-data marker on the console", endpoint.guest_boot_timeout, read)
        assert marker in console, "the guest echoed the digest but not the marker line"

    @feature("user_data")
    def test_oversized_user_data_is_refused_up_front(self, driver: Driver) -> None:
        before = {i.id for i in driver.list_instances()}
        spec = {"name": unique_name(), "vcpus": 1, "memory_mb": 128, "user_data": {"user_data": "x" * (64 * 1024 + 1)}}
        with pytest.raises(InvalidSpec) as err:
            driver.create(spec)  # type: ignore[arg-type]
        assert err.value.field is not None
        assert "user_data" in err.value.field
        assert {i.id for i in driver.list_instances()} == before

    @feature("guest_addresses")
    def test_addresses_appear_after_boot_for_the_instances_nics(
        self, driver: Driver, endpoint: EndpointUnderTest, make_instance: MakeInstance
    ) -> None:
        image = {"image": _image_for(driver).id} if driver.supports(Capability.IMAGES) else {}
        stopped = make_instance(start=False, disks=[], nics=self._nics(driver), **image)
        assert driver.guest_addresses(stopped.id) == [], "a stopped guest reports no address (and no error)"
        info = make_instance(disks=[], nics=self._nics(driver), **image)
        found = _wait_for("a guest address", endpoint.guest_boot_timeout, lambda: driver.guest_addresses(info.id))
        macs = {n.mac for n in agreed(driver, info.id).nics}
        for entry in found:
            assert not macs or entry.mac in macs, f"address on {entry.mac}, not one of the instance's NICs {macs}"
            assert entry.source
            for address in entry.addresses:
                ipaddress.ip_interface(address)  # CIDR notation, or this raises

    @feature("console_output")
    def test_console_output_is_the_tail_of_the_log(
        self, driver: Driver, endpoint: EndpointUnderTest, make_instance: MakeInstance
    ) -> None:
        image = {"image": _image_for(driver).id} if driver.supports(Capability.IMAGES) else {}
        info = make_instance(disks=[], **image)
        text = _wait_for("console output", endpoint.guest_boot_timeout, lambda: driver.console_output(info.id))
        tail = driver.console_output(info.id, max_bytes=16)
        assert 0 < len(tail.encode()) <= 16
        assert text.endswith(tail) or driver.console_output(info.id).endswith(tail)

    @feature("console_connect")
    def test_console_connection_says_where_and_hides_its_ticket(
        self, driver: Driver, make_instance: MakeInstance
    ) -> None:
        info = make_instance(disks=[])
        conn = driver.console_connection(info.id)
        assert conn.kind
        assert conn.url or (conn.host and conn.port)
        if conn.ticket is not None:
            secret = conn.ticket.get_secret_value()
            assert secret not in repr(conn)
            assert secret not in str(conn)

    @feature("metrics")
    def test_counters_grow_while_the_guest_runs(self, driver: Driver, make_instance: MakeInstance) -> None:
        info = make_instance(disks=[{"size_gib": self.disk_gib}], nics=self._nics(driver))
        first = driver.instance_metrics(info.id)
        assert first.instance_id == info.id

        def grown() -> Any:
            now = driver.instance_metrics(info.id)
            return now if (now.cpu_time_ns or 0) > (first.cpu_time_ns or 0) else None

        second = _wait_for("CPU time growing", 60, grown)
        assert second.timestamp > first.timestamp
        for counter in ("cpu_time_ns", "disk_read_bytes", "disk_write_bytes", "net_rx_bytes", "net_tx_bytes"):
            a, b = getattr(first, counter), getattr(second, counter)
            if a is not None and b is not None:
                assert b >= a, f"{counter} went down from {a} to {b}"
