"""Mutants of the lifecycle core: connect, list, get, create, metadata, names, destroy."""

from __future__ import annotations

import html
import re
import time
from typing import Any

from vd_mutants._support import _Backend, _Disk, _Instance, leak_storage, with_leaked_storage
from virtdrivers.driver import ProgressCallback
from virtdrivers.errors import Conflict, InstanceNotFound, InvalidSpec, InvalidState
from virtdrivers.fake import FakeDriver
from virtdrivers.fake.driver import _SHARED, _SHARED_LOCK
from virtdrivers.objects import (
    BackendInfo,
    DiskInfo,
    DiskSpec,
    HostResources,
    InstanceInfo,
    InstanceSpec,
    PowerState,
)

# -- connect and secrets ------------------------------------------------------------------------


def _uri(driver: FakeDriver) -> str:
    """The connection URI such a driver builds once, credentials inline (the root of the leaks below)."""
    password = driver.settings.password.get_secret_value() if driver.settings.password else ""
    return f"memory://admin:{password}@{driver.settings.backend or 'private'}"


class ConnectIgnoresPassword(FakeDriver):
    """A reused pooled session skips authentication, so a wrong password connects. Feature: secrets."""

    name = "mut-connect-ignores-password"

    def connect(self) -> None:
        if self._backend is not None:
            return
        if self.settings.backend is None:
            self._backend = _Backend(self.settings)
            return
        with _SHARED_LOCK:
            backend = _SHARED.get(self.settings.backend)
            if backend is None:
                backend = _SHARED[self.settings.backend] = _Backend(self.settings)
        self._backend = backend  # the pool had a session for this endpoint: no password check


class ConnectNotIdempotent(FakeDriver):
    """A second connect() logs in again and the endpoint refuses a second session. Feature: connect."""

    name = "mut-connect-not-idempotent"

    def connect(self) -> None:
        if self._backend is not None:
            raise Conflict("fake: this client already holds a session")
        super().connect()


class BackendInfoLeaksPassword(FakeDriver):
    """backend_info() reports the connection URI with the password inline. Feature: secrets."""

    name = "mut-backend-info-leaks-password"

    def backend_info(self) -> BackendInfo:
        return super().backend_info().model_copy(update={"endpoint": _uri(self)})


class ReprLeaksPassword(FakeDriver):
    """repr(driver) shows the connection URI it built, password included. Feature: secrets."""

    name = "mut-repr-leaks-password"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {_uri(self)}>"


class SecretInErrorText(FakeDriver):
    """InstanceNotFound quotes the connection URI, password included. Feature: secrets."""

    name = "mut-secret-in-error"

    def get_instance(self, instance_id: str) -> InstanceInfo:
        try:
            return super().get_instance(instance_id)
        except InstanceNotFound as exc:
            raise InstanceNotFound(instance_id, f"instance {instance_id!r} not found at {_uri(self)}") from exc


# -- list and get -------------------------------------------------------------------------------


class ListWrongNode(FakeDriver):
    """list_instances takes the node from the cluster's first host, not each VM's own. Feature: list."""

    name = "mut-list-wrong-node"

    def list_instances(self) -> list[InstanceInfo]:
        first = next(iter(self._b.nodes))
        return [i.model_copy(update={"node": first, "host": first}) for i in super().list_instances()]


class ListNoDisks(FakeDriver):
    """list_instances' bulk property fetch leaves out the disk devices. Feature: list."""

    name = "mut-list-no-disks"

    def list_instances(self) -> list[InstanceInfo]:
        return [i.model_copy(update={"disks": ()}) for i in super().list_instances()]


class ListNoMetadata(FakeDriver):
    """list_instances' bulk property fetch leaves out the metadata. Feature: list."""

    name = "mut-list-no-metadata"

    def list_instances(self) -> list[InstanceInfo]:
        return [i.model_copy(update={"metadata": {}}) for i in super().list_instances()]


class ListStalePower(FakeDriver):
    """list_instances serves power states from a cache filled at create and never refreshed. Feature: list."""

    name = "mut-list-stale-power"

    def __init__(self, settings: Any = None, /, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._power_cache: dict[str, PowerState] = {}

    def create(self, spec: InstanceSpec, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        info = super().create(spec, progress=progress)
        self._power_cache[info.id] = info.power_state
        return info

    def list_instances(self) -> list[InstanceInfo]:
        listed = super().list_instances()
        return [i.model_copy(update={"power_state": self._power_cache.get(i.id, i.power_state)}) for i in listed]


class GetKeyError(FakeDriver):
    """get_instance indexes the inventory directly, so an unknown id raises KeyError. Feature: get."""

    name = "mut-get-keyerror"

    def get_instance(self, instance_id: str) -> InstanceInfo:
        with self._b.lock:
            inst = self._b.instances[instance_id]
            if not inst.managed:
                raise InstanceNotFound(instance_id)
            return inst.info()


# -- create -------------------------------------------------------------------------------------


class CreateLeaksOnFailure(FakeDriver):
    """A create that fails after its VM record and disks exist leaves them behind. Feature: create."""

    name = "mut-create-leaks-on-failure"

    def _discard(self, inst: _Instance) -> None:
        pass  # the rollback was never written


class CreateRace(FakeDriver):
    """Name check and insert are two round trips: concurrent creates of one name both win. Feature: unique_names."""

    name = "mut-create-race"

    def create(self, spec: InstanceSpec, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        with self._b.lock:
            taken = any(i.name == spec.name for i in self._b.instances.values())
        if taken:
            raise InvalidSpec(f"an instance named {spec.name!r} exists already", field="name")
        time.sleep(0.1)  # the backend round trip between the lookup and the create call
        with self._b.lock:
            return self._build(spec, progress or (lambda fraction, message: None))


class CreateIgnoresNode(FakeDriver):
    """create drops spec.node when translating the spec and lets the scheduler place it. Feature: create."""

    name = "mut-create-ignores-node"

    def create(self, spec: InstanceSpec, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        return super().create(spec.model_copy(update={"node": None}), progress=progress)


class CreateAlwaysStarts(FakeDriver):
    """create powers the VM on whatever spec.start says (the backend's power-on default). Feature: create."""

    name = "mut-create-always-starts"

    def create(self, spec: InstanceSpec, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        return super().create(spec.model_copy(update={"start": True}), progress=progress)


class CreateMemoryRounded(FakeDriver):
    """create sends memory in whole GiB, rounding 128 MB up to 1024. Feature: create."""

    name = "mut-create-memory-rounded"

    def create(self, spec: InstanceSpec, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        gib = -(-spec.memory_mb // 1024)
        return super().create(spec.model_copy(update={"memory_mb": gib * 1024}), progress=progress)


class DiskSizeUnits(FakeDriver):
    """Disk sizes go out as GB (10**9 bytes) and come back read as GiB, so 1 GiB reads as 0. Feature: create."""

    name = "mut-disk-size-units"

    def _new_disk(self, disk: DiskSpec) -> _Disk:
        made = super()._new_disk(disk)
        made.size_gib = disk.size_gib * 10**9 // 2**30
        return made


class DiskThinIgnored(FakeDriver):
    """Disks are always made thick: the provisioning type is never passed to the backend. Feature: create."""

    name = "mut-disk-thin-ignored"

    def _new_disk(self, disk: DiskSpec) -> _Disk:
        made = super()._new_disk(disk)
        made.thin = False
        return made


class DiskLabelLost(FakeDriver):
    """Disk labels are not written to the device, so they never come back. Feature: create."""

    name = "mut-disk-label-lost"

    def _new_disk(self, disk: DiskSpec) -> _Disk:
        made = super()._new_disk(disk)
        made.label = None
        return made


class NameMangled(FakeDriver):
    """Names are 'sanitized' (all but word characters, '.' and '-' become '-') on the way in. Feature: create."""

    name = "mut-name-mangled"

    def create(self, spec: InstanceSpec, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        safe = re.sub(r"[^\w.-]", "-", spec.name)
        return super().create(spec.model_copy(update={"name": safe}), progress=progress)


class MetadataEscaped(FakeDriver):
    """Metadata values are XML-escaped on write and never unescaped on read. Feature: metadata."""

    name = "mut-metadata-escaped"

    def create(self, spec: InstanceSpec, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        escaped = {k: html.escape(v, quote=False) for k, v in spec.metadata.items()}
        return super().create(spec.model_copy(update={"metadata": escaped}), progress=progress)


class DuplicateNameConflict(FakeDriver):
    """A duplicate name raises the backend's Conflict, untranslated, instead of InvalidSpec. Feature: unique_names."""

    name = "mut-duplicate-conflict"

    def create(self, spec: InstanceSpec, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        try:
            return super().create(spec, progress=progress)
        except InvalidSpec as exc:
            if exc.field != "name":
                raise
            raise Conflict(f"the name {spec.name!r} is in use") from exc


# -- destroy ------------------------------------------------------------------------------------


class DestroyTwiceSilent(FakeDriver):
    """destroy of an unknown id returns quietly ('already gone') instead of InstanceNotFound. Feature: destroy."""

    name = "mut-destroy-twice-silent"

    def destroy(self, instance_id: str) -> None:
        try:
            super().destroy(instance_id)
        except InstanceNotFound:
            return


class DestroyRunningRefused(FakeDriver):
    """destroy refuses a running VM (InvalidState) instead of stopping it first. Feature: destroy."""

    name = "mut-destroy-running-refused"

    def destroy(self, instance_id: str) -> None:
        with self._b.lock:
            inst = self._get(instance_id)
            if inst.power_state != PowerState.SHUTDOWN:
                raise InvalidState(f"instance {inst.name!r} is {inst.power_state.value}: power it off first")
            super().destroy(instance_id)


class DestroyKeepsDisks(FakeDriver):
    """destroy unregisters the VM but leaves its disks on the datastore, still counted. Feature: destroy."""

    name = "mut-destroy-keeps-disks"

    def destroy(self, instance_id: str) -> None:
        with self._b.lock:
            inst = self._get(instance_id)
            disks: tuple[DiskInfo, ...] = inst.info().disks
            super().destroy(instance_id)
            leak_storage(self._b, inst.node, sum(d.size_gib for d in disks))

    def host_resources(self, node: str | None = None) -> HostResources:
        return with_leaked_storage(self._b, super().host_resources(node))
