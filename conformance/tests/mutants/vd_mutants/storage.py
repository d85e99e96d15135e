"""Mutants of resize, disks and disk formats."""

from __future__ import annotations

import uuid

from vd_mutants._support import _Disk, leak_storage, with_leaked_storage
from virtdrivers.capabilities import DiskFormat
from virtdrivers.errors import NotFound
from virtdrivers.fake import FakeDriver
from virtdrivers.objects import DiskInfo, DiskSpec, HostResources, InstanceInfo

# -- resize -------------------------------------------------------------------------------------


class ResizeOnlyOneField(FakeDriver):
    """resize with both vcpus and memory applies only the vcpus (an if/elif). Feature: resize_memory."""

    name = "mut-resize-only-one-field"

    def resize(self, instance_id: str, *, vcpus: int | None = None, memory_mb: int | None = None) -> InstanceInfo:
        if vcpus is not None:
            return super().resize(instance_id, vcpus=vcpus)
        return super().resize(instance_id, memory_mb=memory_mb)


class ResizeResetsMemory(FakeDriver):
    """A vcpus-only resize builds its reconfigure spec from a template whose memory is 1024 MB. Feature: resize_cpu."""

    name = "mut-resize-resets-memory"

    def resize(self, instance_id: str, *, vcpus: int | None = None, memory_mb: int | None = None) -> InstanceInfo:
        return super().resize(instance_id, vcpus=vcpus, memory_mb=1024 if memory_mb is None else memory_mb)


class ResizeNotPersisted(FakeDriver):
    """resize returns the new sizes but the reconfigure is never committed. Feature: resize_cpu."""

    name = "mut-resize-not-persisted"

    def resize(self, instance_id: str, *, vcpus: int | None = None, memory_mb: int | None = None) -> InstanceInfo:
        info = self.get_instance(instance_id)
        return info.model_copy(update={"vcpus": vcpus or info.vcpus, "memory_mb": memory_mb or info.memory_mb})


class ResizeMemoryRounded(FakeDriver):
    """resize sends memory in whole GiB, rounding 256 MB up to 1024. Feature: resize_memory."""

    name = "mut-resize-memory-rounded"

    def resize(self, instance_id: str, *, vcpus: int | None = None, memory_mb: int | None = None) -> InstanceInfo:
        rounded = None if memory_mb is None else -(-memory_mb // 1024) * 1024
        return super().resize(instance_id, vcpus=vcpus, memory_mb=rounded)


# -- attach and detach --------------------------------------------------------------------------


class AttachWrongFormat(FakeDriver):
    """attach_disk ignores the asked format and makes the backend's default (qcow2). Feature: attach_disk."""

    name = "mut-attach-wrong-format"

    def attach_disk(self, instance_id: str, disk: DiskSpec) -> DiskInfo:
        return super().attach_disk(instance_id, disk.model_copy(update={"format": None}))


class AttachWrongId(FakeDriver):
    """attach_disk returns the id of its request, not of the device the backend made. Feature: attach_disk."""

    name = "mut-attach-wrong-id"

    def attach_disk(self, instance_id: str, disk: DiskSpec) -> DiskInfo:
        request_id = str(uuid.uuid4())
        return super().attach_disk(instance_id, disk).model_copy(update={"id": request_id})


class AttachSizeIgnored(FakeDriver):
    """attach_disk forgets the size and gets the backend's default 10 GiB volume. Feature: attach_disk."""

    name = "mut-attach-size-ignored"

    def attach_disk(self, instance_id: str, disk: DiskSpec) -> DiskInfo:
        return super().attach_disk(instance_id, disk.model_copy(update={"size_gib": 10}))


class DetachWrongDisk(FakeDriver):
    """detach_disk counts the slot index from the wrong end and detaches another disk. Feature: detach_disk."""

    name = "mut-detach-wrong-disk"

    def detach_disk(self, instance_id: str, disk_id: str, *, delete: bool = True) -> None:
        with self._b.lock:
            disks = self._get(instance_id).disks
            slots = [d.id for d in disks]
            if disk_id not in slots:
                raise NotFound(f"disk {disk_id!r} not attached")
            del disks[len(disks) - 1 - slots.index(disk_id)]


class DetachUnknownSilent(FakeDriver):
    """detach_disk of a disk that is not attached returns quietly instead of NotFound. Feature: detach_disk."""

    name = "mut-detach-unknown-silent"

    def detach_disk(self, instance_id: str, disk_id: str, *, delete: bool = True) -> None:
        try:
            super().detach_disk(instance_id, disk_id, delete=delete)
        except NotFound:
            self.get_instance(instance_id)  # the instance must exist; a missing disk is 'already detached'


class DetachKeepsStorage(FakeDriver):
    """detach_disk(delete=True) detaches but never deletes the volume, still counted. Feature: detach_disk."""

    name = "mut-detach-keeps-storage"

    def detach_disk(self, instance_id: str, disk_id: str, *, delete: bool = True) -> None:
        with self._b.lock:
            inst = self._get(instance_id)
            sizes = {d.id: d.size_gib for d in inst.disks}
            super().detach_disk(instance_id, disk_id, delete=delete)
            leak_storage(self._b, inst.node, sizes[disk_id])

    def host_resources(self, node: str | None = None) -> HostResources:
        return with_leaked_storage(self._b, super().host_resources(node))


# -- formats ------------------------------------------------------------------------------------


class VhdxAsVmdk(FakeDriver):
    """The format table maps vhdx to the vmdk disk type (a copy-paste slip). Feature: disk_vhdx."""

    name = "mut-vhdx-as-vmdk"

    def _new_disk(self, disk: DiskSpec) -> _Disk:
        made = super()._new_disk(disk)
        if made.format == DiskFormat.VHDX:
            made.format = DiskFormat.VMDK
        return made


class RawReportedQcow2(FakeDriver):
    """A raw disk's format is read from its file extension; raw has none, so it reads as qcow2. Feature: disk_raw."""

    name = "mut-raw-reported-qcow2"

    def _new_disk(self, disk: DiskSpec) -> _Disk:
        made = super()._new_disk(disk)
        if made.format == DiskFormat.RAW:
            made.format = DiskFormat.QCOW2
        return made
