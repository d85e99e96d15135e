"""The state machine's decisions: which primitive, what is refused, what is reverted, what is retried."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from virtdrivers.capabilities import Capability
from virtdrivers.errors import BackendUnavailable, Conflict, DriverError, InvalidSpec
from virtdrivers.fake import FakeDriver
from virtdrivers.migration import MigrationFailed, MigrationSpec, MigrationStore, Orchestrator
from virtdrivers.objects import InstanceInfo, InstanceSpec, PowerState


class FlakyFake(FakeDriver):
    """The fake, with the next call of chosen migration primitives failing."""

    failures: dict[str, DriverError]
    calls: list[str]

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.failures = {}
        self.calls = []

    def _maybe_fail(self, op: str) -> None:
        self.calls.append(op)
        error = self.failures.pop(op, None)
        if error is not None:
            raise error

    def cold_migrate(self, instance_id: str, node: str | None = None, *, progress: Any = None) -> InstanceInfo:
        self._maybe_fail("cold_migrate")
        return super().cold_migrate(instance_id, node, progress=progress)

    def live_migrate(self, instance_id: str, node: str | None = None, *, progress: Any = None) -> InstanceInfo:
        self._maybe_fail("live_migrate")
        return super().live_migrate(instance_id, node, progress=progress)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[FlakyFake, Orchestrator]]:
    store = MigrationStore(f"sqlite:///{tmp_path / 'm.db'}")
    with FlakyFake(state_file=str(tmp_path / "f.json")) as driver, Orchestrator(store, driver) as orch:
        yield driver, orch
    store.close()


def _vm(driver: FakeDriver, name: str = "vm", *, start: bool = True) -> InstanceInfo:
    return driver.create(InstanceSpec(name=name, vcpus=1, memory_mb=256, node="fake-node-1", start=start))


def _go(orch: Orchestrator, **spec: Any) -> Any:
    return orch.run(orch.start(MigrationSpec(**spec)).id)


def test_live_migration_is_refused_at_precheck_when_not_declared(env: tuple[FlakyFake, Orchestrator]) -> None:
    driver, orch = env
    driver.narrow_capabilities({Capability.LIVE_MIGRATE})
    vm = _vm(driver)
    final = _go(orch, kind="live", instance_id=vm.id)
    assert final.status == "rejected"
    assert final.error.startswith("precheck: not_supported:")
    assert driver.calls == []
    assert driver.get_instance(vm.id).node == "fake-node-1"


def test_live_migration_falls_back_to_a_cold_move_only_when_allowed(env: tuple[FlakyFake, Orchestrator]) -> None:
    driver, orch = env
    driver.narrow_capabilities({Capability.LIVE_MIGRATE})
    vm = _vm(driver)
    final = _go(orch, kind="live", instance_id=vm.id, allow_cold_fallback=True)
    assert (final.status, driver.calls) == ("done", ["cold_migrate"])
    got = driver.get_instance(vm.id)
    assert (got.node, got.power_state) == ("fake-node-2", PowerState.RUNNING)


def test_cold_migration_is_built_from_live_migrate_when_cold_is_not_declared(
    env: tuple[FlakyFake, Orchestrator],
) -> None:
    driver, orch = env
    driver.narrow_capabilities({Capability.COLD_MIGRATE})
    running, stopped = _vm(driver, "up"), _vm(driver, "down", start=False)
    assert _go(orch, kind="cold", instance_id=running.id).status == "done"
    assert driver.calls == ["live_migrate"]
    # A stopped instance cannot be carried live: refused up front, with the way out in the message.
    refused = _go(orch, kind="cold", instance_id=stopped.id)
    assert refused.status == "rejected"
    assert "start it first or migrate it live" in refused.error


def test_a_failing_transfer_is_reverted_to_where_the_instance_was(env: tuple[FlakyFake, Orchestrator]) -> None:
    driver, orch = env
    vm = _vm(driver)
    driver.failures["cold_migrate"] = Conflict("destination datastore full")
    final = _go(orch, kind="resize", instance_id=vm.id, node="fake-node-2", vcpus=4)
    assert final.status == "reverted"
    assert "destination datastore full" in final.error
    got = driver.get_instance(vm.id)
    assert (got.node, got.vcpus, got.power_state) == ("fake-node-1", 1, PowerState.RUNNING)


def test_a_transient_error_keeps_the_migration_for_a_resume(env: tuple[FlakyFake, Orchestrator]) -> None:
    driver, orch = env
    vm = _vm(driver)
    driver.failures["live_migrate"] = BackendUnavailable("connection reset")
    record = orch.start(MigrationSpec(kind="live", instance_id=vm.id))
    with pytest.raises(MigrationFailed, match="resume to retry"):
        orch.run(record.id)
    stuck = orch.store.get(record.id)
    assert (stuck.status, stuck.step, stuck.phase, stuck.owner) == ("running", "transfer", "started", None)
    assert orch.run(record.id).status == "done"
    assert driver.get_instance(vm.id).node == "fake-node-2"


def test_one_migration_per_instance_at_a_time(env: tuple[FlakyFake, Orchestrator]) -> None:
    driver, orch = env
    vm = _vm(driver)
    first = orch.start(MigrationSpec(kind="live", instance_id=vm.id))
    with pytest.raises(Conflict, match=first.id):
        orch.start(MigrationSpec(kind="cold", instance_id=vm.id))
    orch.run(first.id)
    assert orch.start(MigrationSpec(kind="live", instance_id=vm.id)).status == "pending"


def test_revert_before_anything_ran_touches_nothing(env: tuple[FlakyFake, Orchestrator]) -> None:
    driver, orch = env
    vm = _vm(driver)
    record = orch.start(MigrationSpec(kind="live", instance_id=vm.id))
    orch.revert(record.id)
    assert orch.run(record.id).status == "reverted"
    assert driver.calls == []
    with pytest.raises(Conflict, match="nothing to revert"):
        orch.revert(record.id)


def test_evacuation_needs_the_node_to_be_down(env: tuple[FlakyFake, Orchestrator]) -> None:
    driver, orch = env
    vm = _vm(driver)
    refused = _go(orch, kind="evacuate", instance_id=vm.id)
    assert refused.status == "rejected"
    assert "use a cold or live migration" in refused.error
    driver.fail_node("fake-node-1")
    assert _go(orch, kind="evacuate", instance_id=vm.id).status == "done"
    got = driver.get_instance(vm.id)
    assert (got.node, got.power_state) == ("fake-node-2", PowerState.RUNNING)


def test_precheck_refuses_a_destination_without_room(tmp_path: Path) -> None:
    store = MigrationStore(f"sqlite:///{tmp_path / 'm.db'}")
    with (
        FakeDriver(state_file=str(tmp_path / "f.json"), node_memory_mb=1024) as driver,
        Orchestrator(store, driver) as orch,
    ):
        big = driver.create(InstanceSpec(name="big", vcpus=1, memory_mb=768, node="fake-node-1"))
        driver.create(InstanceSpec(name="squatter", vcpus=1, memory_mb=512, node="fake-node-2"))
        final = _go(orch, kind="live", instance_id=big.id)
        assert final.status == "rejected"
        assert "fake-node-2 has 63 vCPUs and 512 MiB free" in final.error
    store.close()


def test_progress_is_reported_and_stored(env: tuple[FlakyFake, Orchestrator]) -> None:
    driver, orch = env
    seen: list[tuple[str, float]] = []
    orch.on_progress = lambda mid, step, fraction, message: seen.append((step, fraction))
    vm = _vm(driver)
    final = _go(orch, kind="live", instance_id=vm.id)
    assert ("transfer", 0.5) in seen  # the fake reports half-way; transfer is step 3 of 5
    assert final.progress == 1.0


def test_a_resize_must_say_what_to_change_and_other_kinds_cannot_resize(
    env: tuple[FlakyFake, Orchestrator],
) -> None:
    driver, orch = env
    vm = _vm(driver)
    assert "needs vcpus, memory_mb or both" in _go(orch, kind="resize", instance_id=vm.id).error
    assert "use resize" in _go(orch, kind="cold", instance_id=vm.id, vcpus=8).error
    with pytest.raises(InvalidSpec):
        MigrationSpec(kind="teleport", instance_id=vm.id)


def test_a_migration_belongs_to_its_endpoint(env: tuple[FlakyFake, Orchestrator], tmp_path: Path) -> None:
    driver, orch = env
    record = orch.start(MigrationSpec(kind="live", instance_id=_vm(driver).id))
    with FakeDriver(state_file=str(tmp_path / "other.json")) as other, Orchestrator(orch.store, other) as elsewhere:
        with pytest.raises(InvalidSpec, match="belongs to endpoint"):
            elsewhere.run(record.id)
        assert elsewhere.run_pending() == []
