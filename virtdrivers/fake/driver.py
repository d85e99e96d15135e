"""The in-memory reference driver. See :mod:`virtdrivers.fake`."""

from __future__ import annotations

import contextlib
import datetime
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from pydantic import Field, SecretStr

import virtdrivers
from virtdrivers.capabilities import Capability, DiskFormat
from virtdrivers.driver import (
    Driver,
    DriverSettings,
    EmbeddedEndpoint,
    EndpointHooks,
    EventCallback,
    Evidence,
    ProgressCallback,
    Subscription,
)
from virtdrivers.errors import (
    AuthenticationFailed,
    BackendUnavailable,
    Conflict,
    InstanceNotFound,
    InvalidSpec,
    InvalidState,
    NotFound,
)
from virtdrivers.fake.model import _SHARED, _SHARED_LOCK, _Backend, _Disk, _Instance, _Snapshot
from virtdrivers.fake.workloads import Nic, networks, read_image_file, root_disk_gib
from virtdrivers.objects import (
    Aggregate,
    BackendInfo,
    ConsoleConnection,
    DiskInfo,
    DiskSpec,
    EventType,
    GuestAddress,
    HAPriority,
    HAState,
    HostResources,
    Image,
    ImageMode,
    InstanceInfo,
    InstanceMetrics,
    InstanceSpec,
    Leftover,
    Network,
    NicInfo,
    NicSpec,
    NodeInfo,
    PowerState,
    SnapshotInfo,
)
from virtdrivers.reaping import CreateToken

MANAGED_KEY = "virtdrivers.managed"


class FakeSettings(DriverSettings):
    backend: str | None = Field(default=None, max_length=128)
    """Name of a shared in-memory backend; None gives this driver a private one."""
    nodes: int = Field(default=2, ge=1, le=64)
    node_vcpus: int = Field(default=64, ge=1)
    node_memory_mb: int = Field(default=256 * 1024, ge=64)
    node_disk_gib: int = Field(default=10 * 1024, ge=1)
    unmanaged: int = Field(default=0, ge=0, le=10_000)
    """Pre-existing instances created "outside" virtdrivers, for adoption."""
    password: SecretStr | None = None
    """When set, the shared backend it names demands this password of every driver that
    connects to it (the first to connect sets it), so secret handling has something to hide."""
    guest_boot_delay_s: float = Field(default=0.2, ge=0, le=600)
    """Seconds a simulated guest takes after it starts before it reports its addresses."""
    state_file: str | None = Field(default=None, max_length=4096)
    """JSON file holding the whole hypervisor, shared by every process that names it.

    Each operation takes an ``fcntl`` lock on ``<state_file>.lock``, loads the file,
    mutates and saves it atomically, so the fake outlives the processes driving it:
    what multi-process agents and crash tests (an orchestrator SIGKILLed mid-migration)
    need. Events are still delivered only inside the process that caused them.
    """


@contextlib.contextmanager
def _memory_endpoint() -> Iterator[Mapping[str, Any]]:
    name = f"embedded-{uuid.uuid4()}"
    try:
        # Three nodes, so a move to a named node is not the only move there is; a password,
        # so the suite's secret checks have a secret to look for.
        yield {"backend": name, "nodes": 3, "unmanaged": 2, "password": f"fake-{uuid.uuid4().hex}"}
    finally:
        with _SHARED_LOCK:
            _SHARED.pop(name, None)


def _fail_next_create(settings: Mapping[str, Any], driver: Driver) -> None:
    if not isinstance(driver, FakeDriver):
        raise TypeError(f"the fake endpoint's hooks drive a FakeDriver, not {type(driver).__name__}")
    driver.inject_fault("create", BackendUnavailable("fake: the node lost its storage after the disks were made"))


def _ignore_acpi(settings: Mapping[str, Any], driver: Driver, instance_id: str) -> None:
    if not isinstance(driver, FakeDriver):
        raise TypeError(f"the fake endpoint's hooks drive a FakeDriver, not {type(driver).__name__}")
    driver.make_acpi_deaf(instance_id)


def _fail_node(settings: Mapping[str, Any], driver: Driver, node: str, down: bool) -> None:
    if not isinstance(driver, FakeDriver):
        raise TypeError(f"the fake endpoint's hooks drive a FakeDriver, not {type(driver).__name__}")
    driver.fail_node(node, down)


def _read_user_data(settings: Mapping[str, Any], driver: Driver, instance_id: str) -> str | None:
    if not isinstance(driver, FakeDriver):
        raise TypeError(f"the fake endpoint's hooks drive a FakeDriver, not {type(driver).__name__}")
    return driver.carrier_user_data(instance_id)


class FakeDriver(Driver):
    """A complete in-memory hypervisor with two nodes in one aggregate."""

    name = "fake"
    capabilities = frozenset(Capability)
    settings_model = FakeSettings
    default_disk_format: ClassVar[DiskFormat | None] = DiskFormat.QCOW2
    settings: FakeSettings

    @classmethod
    def embedded_endpoints(cls) -> Sequence[EmbeddedEndpoint]:
        return (
            EmbeddedEndpoint(
                "memory",
                "in-process memory backend: 3 nodes, 2 unmanaged instances",
                _memory_endpoint,
                evidence=Evidence.IN_MEMORY,
                guest_boot_timeout=10.0,  # its simulated guests "boot" in guest_boot_delay_s
                hooks=EndpointHooks(
                    fail_next_create=_fail_next_create,
                    ignore_acpi=_ignore_acpi,
                    fail_node=_fail_node,
                    read_user_data=_read_user_data,
                ),
            ),
        )

    def __init__(self, settings: Any = None, /, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._backend: _Backend | None = None
        self._faults: dict[str, BaseException] = {}
        self._subscriptions: set[Subscription] = set()

    # -- test knobs ----------------------------------------------------------------------------

    def inject_fault(self, op: str, error: BaseException) -> None:
        """Make the next call of ``op`` (for example "create") raise ``error``."""
        self._faults[op] = error

    def make_acpi_deaf(self, instance_id: str, deaf: bool = True) -> None:
        """Make an instance's guest ignore graceful shutdown, as a guest with no OS does."""
        with self._b.lock:
            self._get(instance_id, managed_only=False).acpi_deaf = deaf

    def carrier_user_data(self, instance_id: str) -> str | None:
        """What the simulated guest reads as its user data: the backend's record, not the driver's view."""
        with self._b.lock:
            return self._get(instance_id, managed_only=False).user_data

    def fail_node(self, node: str, down: bool = True) -> None:
        with self._b.lock:
            self._node(node)
            self._b.nodes[node] = not down

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def _b(self) -> _Backend:
        if self._backend is None:
            raise BackendUnavailable("fake: not connected")
        return self._backend

    def _fault(self, op: str) -> None:
        error = self._faults.pop(op, None)
        if error is not None:
            raise error

    def _get(self, instance_id: str, *, managed_only: bool = True) -> _Instance:
        inst = self._b.instances.get(instance_id)
        if inst is None or (managed_only and not inst.managed):
            raise InstanceNotFound(instance_id)
        return inst

    def _node(self, node: str) -> str:
        if node not in self._b.nodes:
            raise NotFound(f"node {node!r} not found")
        return node

    def _require(self, inst: _Instance, *states: PowerState) -> None:
        if inst.power_state not in states:
            wanted = " or ".join(s.value for s in states)
            raise InvalidState(f"instance {inst.name!r} is {inst.power_state.value}, needs {wanted}")

    def _guest_follows(self, inst: _Instance, state: PowerState) -> None:
        """The simulated guest boots, freezes, thaws or halts as its instance changes state."""
        old = inst.power_state
        if state == PowerState.RUNNING and old in (PowerState.PAUSED, PowerState.SUSPENDED):
            inst.guest.thaw()
        elif state == PowerState.RUNNING:
            inst.guest.halt()  # a reboot: the old boot ends first
            inst.guest.boot(inst.user_data, inst.hostname or inst.name)
        elif state in (PowerState.PAUSED, PowerState.SUSPENDED):
            inst.guest.freeze()
        else:
            inst.guest.halt()

    def _set_power(self, inst: _Instance, state: PowerState, event: EventType) -> InstanceInfo:
        self._guest_follows(inst, state)
        inst.power_state = state
        self._b.emit(inst, event)
        return inst.info()

    # -- connection -----------------------------------------------------------------------------

    def connect(self) -> None:
        if self._backend is not None:
            return
        name = self.settings.backend
        if name is None:
            self._backend = _Backend(self.settings)
            return
        with _SHARED_LOCK:
            backend = _SHARED.get(name)
            if backend is None:
                backend = _SHARED[name] = _Backend(self.settings)
        given = self.settings.password.get_secret_value() if self.settings.password else None
        if backend.password is not None and given != backend.password:
            raise AuthenticationFailed(f"fake: backend {name!r} refused the password")
        self._backend = backend

    def close(self) -> None:
        for sub in list(self._subscriptions):
            sub.close()
        self._backend = None

    def backend_info(self) -> BackendInfo:
        return BackendInfo(
            backend="fake",
            backend_version=virtdrivers.__version__,
            endpoint=f"memory:{self.settings.backend or 'private'}",
            libraries={},
        )

    # -- mandatory core ------------------------------------------------------------------------

    def list_instances(self) -> list[InstanceInfo]:
        with self._b.lock:
            return [i.info() for i in self._b.instances.values() if i.managed]

    def get_instance(self, instance_id: str) -> InstanceInfo:
        with self._b.lock:
            return self._get(instance_id).info()

    def create(self, spec: InstanceSpec, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        report = progress or (lambda fraction, message: None)
        with self._b.lock:
            if any(i.name == spec.name for i in self._b.instances.values()):
                raise InvalidSpec(f"an instance named {spec.name!r} exists already", field="name")
            return self._build(spec, report)

    def _build(self, spec: InstanceSpec, report: ProgressCallback) -> InstanceInfo:
        """Everything create does after its name check; the caller holds the backend's lock."""
        with self._b.lock:
            node = self._node(spec.node) if spec.node else self._least_loaded()
            image = self._image(spec.image, "image") if spec.image is not None else None
            nics = [self._new_nic(nic, f"nics.{n}") for n, nic in enumerate(spec.nics)]
            inst = _Instance(
                id=str(uuid.uuid4()),
                name=spec.name,
                vcpus=spec.vcpus,
                memory_mb=spec.memory_mb,
                node=node,
                metadata=dict(spec.metadata),
                create_token=CreateToken.new().encode(),  # before the first change: a crash leaves a trail
                nics=nics,
                user_data=spec.user_data.user_data if spec.user_data else None,
                hostname=spec.user_data.hostname if spec.user_data else None,
            )
            if image is not None:
                inst.image_id = image.id
                inst.image_cow = spec.image_mode == ImageMode.COW or (
                    spec.image_mode is None and Capability.IMAGE_COW in self.capabilities
                )
                fmt = DiskFormat.QCOW2 if inst.image_cow else image.disk_format or DiskFormat.RAW
                inst.disks.append(_Disk(str(uuid.uuid4()), root_disk_gib(image), fmt, True, "root"))
            self._b.instances[inst.id] = inst
            try:
                for n, disk in enumerate(spec.disks):
                    report(n / max(len(spec.disks), 1) * 0.8, f"creating disk {n + 1} of {len(spec.disks)}")
                    self._fault("create_disk")
                    inst.disks.append(self._new_disk(disk))
                self._fault("create")
                inst.create_token = None  # complete
                self._b.emit(inst, EventType.CREATED)
                if spec.start:
                    self._set_power(inst, PowerState.RUNNING, EventType.STARTED)
            except BaseException:
                self._discard(inst)
                raise
            report(1.0, "created")
            return inst.info()

    def _discard(self, inst: _Instance) -> None:
        """Nothing half-made: a failed create's instance goes, and the disks it got with it."""
        del self._b.instances[inst.id]

    def _image(self, ref: str, field: str) -> Image:
        for image in self._b.images.values():
            if ref in (image.id, image.name):
                return image
        raise InvalidSpec(f"no image {ref!r}", field=field)

    def _network(self, ref: str, field: str) -> Network:
        for net in networks():
            if ref in (net.id, net.name):
                return net
        raise InvalidSpec(f"no network {ref!r}", field=field)

    def _new_nic(self, nic: NicSpec, field: str) -> Nic:
        net = self._network(nic.network, f"{field}.network")
        used = {n.mac for i in self._b.instances.values() for n in i.nics}
        if nic.mac is not None and nic.mac in used:
            raise InvalidSpec(f"MAC {nic.mac} is in use by another NIC", field=f"{field}.mac")
        mac = nic.mac
        while mac is None or mac in used:
            mac = "52:54:00:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:3])
        return Nic(str(uuid.uuid4()), net.id, mac, nic.model or "virtio")

    def _new_disk(self, disk: DiskSpec) -> _Disk:
        fmt = disk.format or self.default_disk_format or DiskFormat.QCOW2
        return _Disk(str(uuid.uuid4()), disk.size_gib, fmt, disk.thin, disk.label)

    def _least_loaded(self) -> str:
        up = [n for n, ok in self._b.nodes.items() if ok]
        if not up:
            raise InvalidState("no node is up")
        load = {n: 0 for n in up}
        for inst in self._b.instances.values():
            if inst.node in load:
                load[inst.node] += inst.memory_mb
        return min(up, key=lambda n: (load[n], n))

    def destroy(self, instance_id: str) -> None:
        with self._b.lock:
            inst = self._get(instance_id)
            self._fault("destroy")
            del self._b.instances[instance_id]
            self._b.emit(inst, EventType.DESTROYED)

    def power_on(self, instance_id: str) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            if inst.power_state == PowerState.RUNNING:
                return inst.info()
            self._require(inst, PowerState.SHUTDOWN, PowerState.CRASHED)
            return self._set_power(inst, PowerState.RUNNING, EventType.STARTED)

    def power_off(self, instance_id: str, *, timeout: float = 60.0, force: bool = False) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            if inst.power_state == PowerState.SHUTDOWN:
                return inst.info()
            ignores_acpi = inst.acpi_deaf or inst.metadata.get("fake.ignore_acpi") == "true"
            graceful = not force and timeout > 0 and inst.power_state == PowerState.RUNNING
        if graceful and ignores_acpi:
            time.sleep(timeout)  # the guest ignores the request: wait it out, then force
        with self._b.lock:
            inst = self._get(instance_id)
            return self._set_power(inst, PowerState.SHUTDOWN, EventType.STOPPED)

    def reboot(self, instance_id: str, *, hard: bool = False) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            if hard:
                self._require(inst, PowerState.RUNNING, PowerState.PAUSED, PowerState.CRASHED)
            else:
                self._require(inst, PowerState.RUNNING)
            self._b.emit(inst, EventType.STOPPED)
            return self._set_power(inst, PowerState.RUNNING, EventType.STARTED)

    def list_nodes(self) -> list[NodeInfo]:
        with self._b.lock:
            return [
                NodeInfo(name=n, hypervisor_type="fake", state="up" if ok else "down")
                for n, ok in self._b.nodes.items()
            ]

    def host_resources(self, node: str | None = None) -> HostResources:
        with self._b.lock:
            node = self._node(node) if node else next(iter(self._b.nodes))
            on_node = [i for i in self._b.instances.values() if i.node == node]
            running = [i for i in on_node if i.power_state in (PowerState.RUNNING, PowerState.PAUSED)]
            s = self.settings
            return HostResources(
                node=node,
                vcpus_total=s.node_vcpus,
                vcpus_used=sum(i.vcpus for i in running),
                memory_mb_total=s.node_memory_mb,
                memory_mb_used=sum(i.memory_mb for i in running),
                disk_gib_total=s.node_disk_gib,
                disk_gib_used=sum(d.size_gib for i in on_node for d in i.disks),
                hypervisor_type="fake",
                hypervisor_version=virtdrivers.__version__,
            )

    # -- power extras ---------------------------------------------------------------------------

    def pause(self, instance_id: str) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            self._require(inst, PowerState.RUNNING)
            return self._set_power(inst, PowerState.PAUSED, EventType.PAUSED)

    def unpause(self, instance_id: str) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            self._require(inst, PowerState.PAUSED)
            return self._set_power(inst, PowerState.RUNNING, EventType.RESUMED)

    def suspend(self, instance_id: str) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            self._require(inst, PowerState.RUNNING)
            return self._set_power(inst, PowerState.SUSPENDED, EventType.SUSPENDED)

    def resume(self, instance_id: str) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            self._require(inst, PowerState.SUSPENDED)
            return self._set_power(inst, PowerState.RUNNING, EventType.RESUMED)

    def resize(self, instance_id: str, *, vcpus: int | None = None, memory_mb: int | None = None) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            inst.vcpus = vcpus if vcpus is not None else inst.vcpus
            inst.memory_mb = memory_mb if memory_mb is not None else inst.memory_mb
            return inst.info()

    # -- storage ----------------------------------------------------------------------------------

    def attach_disk(self, instance_id: str, disk: DiskSpec) -> DiskInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            if len(inst.disks) >= 16:
                raise Conflict(f"instance {inst.name!r} has no free disk slot")
            new = self._new_disk(disk)
            inst.disks.append(new)
            return new.info()

    def detach_disk(self, instance_id: str, disk_id: str, *, delete: bool = True) -> None:
        with self._b.lock:
            inst = self._get(instance_id)
            for d in inst.disks:
                if d.id == disk_id:
                    inst.disks.remove(d)
                    return
            raise NotFound(f"disk {disk_id!r} not attached to {inst.name!r}")

    # -- snapshots --------------------------------------------------------------------------------

    def create_snapshot(self, instance_id: str, name: str, *, with_memory: bool = False) -> SnapshotInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            if any(s.name == name for s in inst.snapshots.values()):
                raise Conflict(f"snapshot {name!r} exists already")
            snap = _Snapshot(str(uuid.uuid4()), name, datetime.datetime.now(datetime.UTC), with_memory, inst.image())
            inst.snapshots[snap.id] = snap
            return self._snap_info(inst, snap)

    def _snap_info(self, inst: _Instance, snap: _Snapshot) -> SnapshotInfo:
        return SnapshotInfo(
            id=snap.id, name=snap.name, instance_id=inst.id, created_at=snap.created_at, with_memory=snap.with_memory
        )

    def list_snapshots(self, instance_id: str) -> list[SnapshotInfo]:
        with self._b.lock:
            inst = self._get(instance_id)
            return [self._snap_info(inst, s) for s in inst.snapshots.values()]

    def _snapshot(self, inst: _Instance, snapshot_id: str) -> _Snapshot:
        snap = inst.snapshots.get(snapshot_id)
        if snap is None:
            raise NotFound(f"snapshot {snapshot_id!r} of {inst.name!r} not found")
        return snap

    def revert_snapshot(self, instance_id: str, snapshot_id: str) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            image = self._snapshot(inst, snapshot_id).image
            inst.vcpus, inst.memory_mb, inst.metadata = image.vcpus, image.memory_mb, dict(image.metadata)
            inst.disks = [replace(d) for d in image.disks]
            snap = inst.snapshots[snapshot_id]
            # A disk-only snapshot comes back powered off, a memory snapshot as it was.
            state = image.power_state if snap.with_memory else PowerState.SHUTDOWN
            self._guest_follows(inst, state)
            inst.power_state = state
            return inst.info()

    def delete_snapshot(self, instance_id: str, snapshot_id: str) -> None:
        with self._b.lock:
            inst = self._get(instance_id)
            self._snapshot(inst, snapshot_id)
            del inst.snapshots[snapshot_id]

    # -- migration --------------------------------------------------------------------------------

    def _move(
        self, instance_id: str, node: str | None, progress: ProgressCallback | None, *states: PowerState
    ) -> tuple[_Instance, str]:
        inst = self._get(instance_id)
        self._require(inst, *states)
        if node is None:
            candidates = [n for n, ok in self._b.nodes.items() if ok and n != inst.node]
            if not candidates:
                raise InvalidState("no other node is up")
            node = candidates[0]
        self._node(node)
        if node == inst.node:
            raise InvalidSpec(f"instance is on {node!r} already", field="node")
        if not self._b.nodes[node]:
            raise InvalidState(f"node {node!r} is down")
        if progress:
            progress(0.5, f"moving to {node}")
        return inst, node

    def live_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        with self._b.lock:
            inst, target = self._move(instance_id, node, progress, PowerState.RUNNING)
            inst.node = target
            self._b.emit(inst, EventType.MIGRATED)
            return inst.info()

    def cold_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        with self._b.lock:
            inst, target = self._move(instance_id, node, progress, PowerState.SHUTDOWN)
            inst.node = target
            self._b.emit(inst, EventType.MIGRATED)
            return inst.info()

    def evacuate(self, instance_id: str, node: str, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            if self._b.nodes.get(inst.node) and inst.power_state != PowerState.SHUTDOWN:
                raise InvalidState(f"node {inst.node!r} is up and {inst.name!r} is running: migrate it instead")
            inst, target = self._move(instance_id, node, progress, *PowerState)
            self._guest_follows(inst, PowerState.SHUTDOWN)
            inst.node, inst.power_state = target, PowerState.SHUTDOWN
            self._b.emit(inst, EventType.MIGRATED)
            return inst.info()

    # -- cluster ----------------------------------------------------------------------------------

    def list_aggregates(self) -> list[Aggregate]:
        with self._b.lock:
            return [Aggregate(name="fake-cluster", hosts=tuple(self._b.nodes), metadata={"ha": "true"})]

    def _ha(self, inst: _Instance) -> HAState:
        return HAState(
            instance_id=inst.id,
            enabled=inst.ha_enabled,
            priority=inst.ha_priority,
            owner_node=inst.node,
            state=("online" if inst.power_state == PowerState.RUNNING else "offline") if inst.ha_enabled else None,
        )

    def set_high_availability(
        self, instance_id: str, enabled: bool, *, priority: HAPriority = HAPriority.MEDIUM
    ) -> HAState:
        with self._b.lock:
            inst = self._get(instance_id)
            inst.ha_enabled, inst.ha_priority = enabled, HAPriority(priority)
            return self._ha(inst)

    def get_high_availability(self, instance_id: str) -> HAState:
        with self._b.lock:
            return self._ha(self._get(instance_id))

    def failover(self, instance_id: str, node: str | None = None) -> HAState:
        with self._b.lock:
            inst = self._get(instance_id)
            if not inst.ha_enabled:
                raise InvalidState(f"{inst.name!r} is not highly available")
            inst, target = self._move(instance_id, node, None, *PowerState)
            inst.node = target
            self._b.emit(inst, EventType.MIGRATED)
            return self._ha(inst)

    # -- pets -------------------------------------------------------------------------------------

    def list_unmanaged(self) -> list[InstanceInfo]:
        with self._b.lock:
            return [i.info() for i in self._b.instances.values() if not i.managed]

    def adopt(self, instance_id: str) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id, managed_only=False)
            if inst.managed:
                raise InvalidState(f"{inst.name!r} is managed already")
            inst.managed = True
            return inst.info()

    # -- crash safety -----------------------------------------------------------------------------

    def reap(self, *, dry_run: bool = False, grace_s: float = 3600.0) -> list[Leftover]:
        with self._b.lock:
            found = []
            for inst in list(self._b.instances.values()):
                token = CreateToken.decode(inst.create_token)
                if token is None or not token.abandoned(grace_s):
                    continue
                found.append(
                    Leftover(
                        kind="instance",
                        ref=inst.id,
                        name=inst.name,
                        node=inst.node,
                        token=inst.create_token,
                        reason="its create never completed and its process is gone",
                    )
                )
                if not dry_run:
                    del self._b.instances[inst.id]
            return found

    # -- events -----------------------------------------------------------------------------------

    def subscribe(self, callback: EventCallback) -> Subscription:
        backend = self._b
        sid = backend.add_subscriber(callback)

        def unsubscribe() -> None:
            backend.remove_subscriber(sid)
            self._subscriptions.discard(sub)

        sub = Subscription(unsubscribe)
        self._subscriptions.add(sub)
        return sub

    # -- workloads --------------------------------------------------------------------------------

    def list_images(self) -> list[Image]:
        with self._b.lock:
            return list(self._b.images.values())

    def register_image(self, path: str, name: str, *, disk_format: DiskFormat | None = None) -> Image:
        with self._b.lock:
            if any(i.name == name for i in self._b.images.values()):
                raise InvalidSpec(f"an image named {name!r} exists already", field="name")
            image = read_image_file(path, name, disk_format, f"img-{uuid.uuid4()}")
            self._b.images[image.id] = image
            return image

    def delete_image(self, image_id: str) -> None:
        with self._b.lock:
            image = self._b.images.get(image_id)
            if image is None:
                raise NotFound(f"image {image_id!r} not found")
            users = [i.name for i in self._b.instances.values() if i.image_id == image_id and i.image_cow]
            if users:
                raise Conflict(f"image {image.name!r} backs the disks of {', '.join(sorted(users))}")
            del self._b.images[image_id]

    def list_networks(self) -> list[Network]:
        return list(networks())

    def attach_nic(self, instance_id: str, nic: NicSpec) -> NicInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            if len(inst.nics) >= 8:
                raise Conflict(f"instance {inst.name!r} has no free NIC slot")
            new = self._new_nic(nic, "nic")
            inst.nics.append(new)
            return new.info()

    def detach_nic(self, instance_id: str, nic_id: str) -> None:
        with self._b.lock:
            inst = self._get(instance_id)
            for nic in inst.nics:
                if nic.id == nic_id:
                    inst.nics.remove(nic)
                    return
            raise NotFound(f"NIC {nic_id!r} not attached to {inst.name!r}")

    def guest_addresses(self, instance_id: str) -> list[GuestAddress]:
        with self._b.lock:
            inst = self._get(instance_id)
            return inst.guest.addresses(inst.nics, self.settings.guest_boot_delay_s)

    def console_output(self, instance_id: str, *, max_bytes: int = 64 * 1024) -> str:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise InvalidSpec("must be a positive number of bytes", field="max_bytes")
        with self._b.lock:
            text = "".join(line + "\n" for line in self._get(instance_id).guest.console)
        return text.encode()[-max_bytes:].decode(errors="replace")

    def console_connection(self, instance_id: str) -> ConsoleConnection:
        with self._b.lock:
            inst = self._get(instance_id)
            self._require(inst, PowerState.RUNNING, PowerState.PAUSED)
            port = 5900 + list(self._b.instances).index(inst.id) % 1000
            return ConsoleConnection(
                kind="vnc",
                host="127.0.0.1",
                port=port,
                ticket=SecretStr(uuid.uuid4().hex),
                expires_at=datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5),
            )

    def instance_metrics(self, instance_id: str) -> InstanceMetrics:
        with self._b.lock:
            inst = self._get(instance_id)
            return inst.guest.metrics(inst.id, inst.vcpus, inst.memory_mb, len(inst.disks), len(inst.nics))
