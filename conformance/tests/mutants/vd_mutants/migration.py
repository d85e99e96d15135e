"""Mutants of migration: live, cold, evacuate."""

from __future__ import annotations

from virtdrivers.driver import ProgressCallback
from virtdrivers.errors import InstanceNotFound, InvalidSpec, InvalidState
from virtdrivers.fake import FakeDriver
from virtdrivers.objects import EventType, InstanceInfo, PowerState


def _first_other_up(driver: FakeDriver, current: str) -> str:
    """What a backend 'chooses' when the driver forgets to pass the node: the first other host that is up."""
    for node, up in driver._b.nodes.items():
        if up and node != current:
            return node
    raise InvalidState("no other node is up")


class LiveMigrateIgnoresNode(FakeDriver):
    """live_migrate never passes the asked node, so the backend picks one. Feature: live_migrate."""

    name = "mut-live-migrate-ignores-node"

    def live_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        return super().live_migrate(instance_id, None, progress=progress)


class LiveMigrateStops(FakeDriver):
    """live_migrate is a cold migration underneath: the VM arrives powered off. Feature: live_migrate."""

    name = "mut-live-migrate-stops"

    def live_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        with self._b.lock:
            inst, target = self._move(instance_id, node, progress, PowerState.RUNNING)
            self._set_power(inst, PowerState.SHUTDOWN, EventType.STOPPED)
            inst.node = target
            self._b.emit(inst, EventType.MIGRATED)
            return inst.info()


class LiveMigrateUnknownValueError(FakeDriver):
    """live_migrate reports an unknown id as the scheduler's 'bad request' ValueError. Feature: live_migrate."""

    name = "mut-live-migrate-unknown-valueerror"

    def live_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        try:
            return super().live_migrate(instance_id, node, progress=progress)
        except InstanceNotFound as exc:
            raise ValueError(f"migration request names no VM: {instance_id!r}") from exc


class LiveMigrateToDownNode(FakeDriver):
    """live_migrate to a node that is down is accepted (the host's state is never checked). Feature: live_migrate."""

    name = "mut-live-migrate-to-down-node"

    def live_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            self._require(inst, PowerState.RUNNING)
            target = node or _first_other_up(self, inst.node)
            self._node(target)
            if target == inst.node:
                raise InvalidSpec(f"instance is on {target!r} already", field="node")
            inst.node = target
            self._b.emit(inst, EventType.MIGRATED)
            return inst.info()


class ColdMigrateIgnoresNode(FakeDriver):
    """cold_migrate never passes the asked node, so the backend picks one. Feature: cold_migrate."""

    name = "mut-cold-migrate-ignores-node"

    def cold_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        return super().cold_migrate(instance_id, None, progress=progress)


class ColdMigrateNotPersisted(FakeDriver):
    """cold_migrate reports the task's target node but the VM is never re-registered there. Feature: cold_migrate."""

    name = "mut-cold-migrate-not-persisted"

    def cold_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        with self._b.lock:
            inst, target = self._move(instance_id, node, progress, PowerState.SHUTDOWN)
            return inst.info().model_copy(update={"node": target, "host": target})


class EvacuateIgnoresNode(FakeDriver):
    """evacuate rebuilds on the first other node that is up, not on the node asked. Feature: evacuate."""

    name = "mut-evacuate-ignores-node"

    def evacuate(self, instance_id: str, node: str, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        with self._b.lock:
            current = self._get(instance_id).node
            return super().evacuate(instance_id, _first_other_up(self, current), progress=progress)


class EvacuateSplitBrain(FakeDriver):
    """evacuate rebuilds a running VM whose node is up, so two copies run (split brain). Feature: evacuate."""

    name = "mut-evacuate-split-brain"

    def evacuate(self, instance_id: str, node: str, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        with self._b.lock:
            inst, target = self._move(instance_id, node, progress, *PowerState)
            inst.node, inst.power_state = target, PowerState.SHUTDOWN
            self._b.emit(inst, EventType.MIGRATED)
            return inst.info()
