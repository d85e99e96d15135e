"""The fake's hypervisor: instances, disks and snapshots in memory, optionally kept in a state file.

Separate from the driver so the driver reads as the contract's table of contents;
several driver objects share one :class:`_Backend` when they name the same
backend, the way connections to one real endpoint share its state.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import itertools
import json
import os
import queue
import threading
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from virtdrivers.capabilities import DiskFormat
from virtdrivers.driver import EventCallback
from virtdrivers.fake.workloads import Guest, Nic, seed_images
from virtdrivers.objects import (
    DiskInfo,
    EventType,
    HAPriority,
    Image,
    InstanceInfo,
    LifecycleEvent,
    PowerState,
)

if TYPE_CHECKING:
    from virtdrivers.fake.driver import FakeSettings

__all__ = ["_SHARED", "_SHARED_LOCK", "_Backend", "_Disk", "_FileLock", "_Instance", "_Snapshot"]


@dataclass
class _Disk:
    id: str
    size_gib: int
    format: DiskFormat
    thin: bool
    label: str | None

    def info(self) -> DiskInfo:
        return DiskInfo(id=self.id, size_gib=self.size_gib, format=self.format, thin=self.thin, label=self.label)


@dataclass
class _Snapshot:
    id: str
    name: str
    created_at: datetime.datetime
    with_memory: bool
    image: _Instance


@dataclass
class _Instance:
    id: str
    name: str
    vcpus: int
    memory_mb: int
    node: str
    power_state: PowerState = PowerState.SHUTDOWN
    disks: list[_Disk] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    managed: bool = True
    ha_enabled: bool = False
    ha_priority: HAPriority = HAPriority.MEDIUM
    snapshots: dict[str, _Snapshot] = field(default_factory=dict)
    #: The guest ignores graceful shutdown (set by the endpoint's ``ignore_acpi`` hook).
    acpi_deaf: bool = False
    #: The operation token of the create that made it, until that create completes.
    create_token: str | None = None
    #: The image its root disk was made from, and whether as a copy-on-write child.
    image_id: str | None = None
    image_cow: bool = False
    nics: list[Nic] = field(default_factory=list)
    user_data: str | None = None
    hostname: str | None = None
    guest: Guest = field(default_factory=Guest)

    def info(self) -> InstanceInfo:
        return InstanceInfo(
            id=self.id,
            name=self.name,
            power_state=self.power_state,
            vcpus=self.vcpus,
            memory_mb=self.memory_mb,
            node=self.node,
            host=self.node,
            disks=tuple(d.info() for d in self.disks),
            metadata=dict(self.metadata),
            managed=self.managed,
            image=self.image_id,
            nics=tuple(n.info() for n in self.nics),
        )

    def image(self) -> _Instance:
        """A deep enough copy for a snapshot: disks and settings, not the snapshot tree."""
        return replace(
            self, disks=[replace(d) for d in self.disks], metadata=dict(self.metadata), snapshots={}, guest=Guest()
        )


def _disk_to_json(d: _Disk) -> dict[str, Any]:
    return {"id": d.id, "size_gib": d.size_gib, "format": d.format.value, "thin": d.thin, "label": d.label}


def _disk_from_json(d: dict[str, Any]) -> _Disk:
    return _Disk(d["id"], d["size_gib"], DiskFormat(d["format"]), d["thin"], d["label"])


def _instance_to_json(inst: _Instance) -> dict[str, Any]:
    return {
        "id": inst.id,
        "name": inst.name,
        "vcpus": inst.vcpus,
        "memory_mb": inst.memory_mb,
        "node": inst.node,
        "power_state": inst.power_state.value,
        "disks": [_disk_to_json(d) for d in inst.disks],
        "metadata": inst.metadata,
        "managed": inst.managed,
        "ha_enabled": inst.ha_enabled,
        "ha_priority": inst.ha_priority.value,
        "acpi_deaf": inst.acpi_deaf,
        "create_token": inst.create_token,
        "image": inst.image_id,
        "image_cow": inst.image_cow,
        "nics": [n.to_json() for n in inst.nics],
        "user_data": inst.user_data,
        "hostname": inst.hostname,
        "guest": inst.guest.to_json(),
        "snapshots": [
            {
                "id": s.id,
                "name": s.name,
                "created_at": s.created_at.isoformat(),
                "with_memory": s.with_memory,
                "image": _instance_to_json(s.image),
            }
            for s in inst.snapshots.values()
        ],
    }


def _instance_from_json(d: dict[str, Any]) -> _Instance:
    snapshots = {
        s["id"]: _Snapshot(
            s["id"],
            s["name"],
            datetime.datetime.fromisoformat(s["created_at"]),
            s["with_memory"],
            _instance_from_json(s["image"]),
        )
        for s in d["snapshots"]
    }
    return _Instance(
        id=d["id"],
        name=d["name"],
        vcpus=d["vcpus"],
        memory_mb=d["memory_mb"],
        node=d["node"],
        power_state=PowerState(d["power_state"]),
        disks=[_disk_from_json(x) for x in d["disks"]],
        metadata=dict(d["metadata"]),
        managed=d["managed"],
        ha_enabled=d["ha_enabled"],
        ha_priority=HAPriority(d["ha_priority"]),
        snapshots=snapshots,
        acpi_deaf=d.get("acpi_deaf", False),
        create_token=d.get("create_token"),
        image_id=d.get("image"),
        image_cow=d.get("image_cow", False),
        nics=[Nic.from_json(n) for n in d.get("nics", [])],
        user_data=d.get("user_data"),
        hostname=d.get("hostname"),
        guest=Guest.from_json(d.get("guest")),
    )


class _FileLock:
    """Re-entrant lock that makes a state file the truth for the outermost critical section.

    Entering (outermost) takes the thread lock, then an exclusive ``flock`` on a side
    file, and loads the state; leaving saves it with write-and-rename, so a process
    killed at any instant leaves either the old or the new state, never half of one.
    """

    def __init__(self, backend: _Backend, path: str) -> None:
        self._backend = backend
        self._path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        self._depth += 1
        if self._depth > 1:
            return
        try:
            fd = os.open(self._path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._load()
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        except BaseException:
            self._depth -= 1
            self._thread_lock.release()
            raise

    def __exit__(self, *exc: object) -> Literal[False]:
        try:
            if self._depth == 1 and self._fd is not None:
                fd, self._fd = self._fd, None
                try:
                    self._save()
                finally:
                    os.close(fd)  # closing the only descriptor releases the flock
        finally:
            self._depth -= 1
            self._thread_lock.release()
        return False

    def _load(self) -> None:
        try:
            with open(self._path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return  # first user: the freshly seeded in-memory state becomes the file's
        self._backend.nodes = {str(k): bool(v) for k, v in data["nodes"].items()}
        if "images" in data:
            self._backend.images = {i["id"]: Image.model_validate(i) for i in data["images"]}
        self._backend.instances = {i["id"]: _instance_from_json(i) for i in data["instances"]}

    def _save(self) -> None:
        data = {
            "nodes": self._backend.nodes,
            "instances": [_instance_to_json(i) for i in self._backend.instances.values()],
            "images": [i.model_dump(mode="json") for i in self._backend.images.values()],
        }
        tmp = f"{self._path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)  # no fsync: this survives process death, which is all it is for
        os.replace(tmp, self._path)


class _Backend:
    """One in-memory hypervisor: nodes, instances and an event dispatcher."""

    def __init__(self, settings: FakeSettings) -> None:
        self.lock: contextlib.AbstractContextManager[Any] = (
            _FileLock(self, settings.state_file) if settings.state_file else threading.RLock()
        )
        self.nodes = {f"fake-node-{i + 1}": True for i in range(settings.nodes)}
        self.settings = settings
        self.password = settings.password.get_secret_value() if settings.password else None
        self.instances: dict[str, _Instance] = {}
        self.images: dict[str, Image] = seed_images()
        self.subscribers: dict[int, EventCallback] = {}
        self._sub_ids = itertools.count(1)
        self._events: queue.SimpleQueue[LifecycleEvent | None] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None
        nodes = list(self.nodes)
        for i in range(settings.unmanaged):
            inst = _Instance(
                id=str(uuid.uuid4()),
                name=f"pet-{i + 1}",
                vcpus=2,
                memory_mb=2048,
                node=nodes[i % len(nodes)],
                power_state=PowerState.RUNNING,
                disks=[_Disk(str(uuid.uuid4()), 20, DiskFormat.QCOW2, True, "root")],
                metadata={"owner": "ops"},
                managed=False,
            )
            self.instances[inst.id] = inst

    def emit(self, inst: _Instance, type_: EventType) -> None:
        if not self.subscribers:
            return
        self._events.put(
            LifecycleEvent(
                instance_id=inst.id,
                type=type_,
                timestamp=datetime.datetime.now(datetime.UTC),
                name=inst.name,
                node=inst.node,
            )
        )

    def add_subscriber(self, callback: EventCallback) -> int:
        with self.lock:
            sid = next(self._sub_ids)
            self.subscribers[sid] = callback
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(target=self._dispatch, name="fake-events", daemon=True)
                self._dispatcher.start()
            return sid

    def remove_subscriber(self, sid: int) -> None:
        with self.lock:
            self.subscribers.pop(sid, None)

    def _dispatch(self) -> None:
        while (event := self._events.get()) is not None:
            with self.lock:
                callbacks = list(self.subscribers.values())
            for callback in callbacks:
                with contextlib.suppress(Exception):  # a subscriber's bug must not stop the others
                    callback(event)


_SHARED: dict[str, _Backend] = {}
_SHARED_LOCK = threading.Lock()
