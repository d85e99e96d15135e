"""Mutants of snapshots: create, list, revert, delete, memory snapshots."""

from __future__ import annotations

from virtdrivers.errors import NotFound
from virtdrivers.fake import FakeDriver
from virtdrivers.objects import InstanceInfo, PowerState, SnapshotInfo


class RevertPowerOnly(FakeDriver):
    """revert_snapshot restores the power state but not the settings and disks. Feature: snapshot."""

    name = "mut-revert-power-only"

    def revert_snapshot(self, instance_id: str, snapshot_id: str) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            snap = self._snapshot(inst, snapshot_id)
            inst.power_state = snap.image.power_state if snap.with_memory else PowerState.SHUTDOWN
            return inst.info()


class RevertNewest(FakeDriver):
    """revert_snapshot reverts to the current (newest) snapshot whatever id was asked. Feature: snapshot."""

    name = "mut-revert-newest"

    def revert_snapshot(self, instance_id: str, snapshot_id: str) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            self._snapshot(inst, snapshot_id)  # the id is checked, then not used
            newest = list(inst.snapshots)[-1]
        return super().revert_snapshot(instance_id, newest)


class RevertDiskOnlyKeepsPower(FakeDriver):
    """Reverting a disk-only snapshot leaves the VM in its current power state, not powered off. Feature: snapshot."""

    name = "mut-revert-disk-only-keeps-power"

    def revert_snapshot(self, instance_id: str, snapshot_id: str) -> InstanceInfo:
        with self._b.lock:
            current = self._get(instance_id).power_state
            super().revert_snapshot(instance_id, snapshot_id)
            inst = self._get(instance_id)
            if not inst.snapshots[snapshot_id].with_memory:
                inst.power_state = current
            return inst.info()


class ListSnapshotsAll(FakeDriver):
    """list_snapshots queries every snapshot on the endpoint, not only this instance's. Feature: snapshot."""

    name = "mut-list-snapshots-all"

    def list_snapshots(self, instance_id: str) -> list[SnapshotInfo]:
        with self._b.lock:
            self._get(instance_id)
            return [self._snap_info(i, s) for i in self._b.instances.values() for s in i.snapshots.values()]


class DeleteSnapshotUnknownSilent(FakeDriver):
    """delete_snapshot of an unknown snapshot id returns quietly instead of NotFound. Feature: snapshot."""

    name = "mut-delete-snapshot-unknown-silent"

    def delete_snapshot(self, instance_id: str, snapshot_id: str) -> None:
        try:
            super().delete_snapshot(instance_id, snapshot_id)
        except NotFound:
            self.get_instance(instance_id)  # a missing instance still raises; a missing snapshot is 'gone'


class MemorySnapshotIgnored(FakeDriver):
    """with_memory is reported but the snapshot is disk-only, so revert comes back off. Feature: snapshot_memory."""

    name = "mut-memory-snapshot-ignored"

    def create_snapshot(self, instance_id: str, name: str, *, with_memory: bool = False) -> SnapshotInfo:
        info = super().create_snapshot(instance_id, name, with_memory=False)
        return info.model_copy(update={"with_memory": with_memory})
