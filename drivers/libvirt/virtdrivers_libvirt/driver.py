"""The libvirt driver: the contract on top of libvirt's API.

The SDK is imported lazily (in :mod:`.session` and in methods), so listing the driver and its
capabilities never loads libvirt.

One driver manages one or more *nodes*: the connection in ``uri`` is the node ``node_name``
(the host's name when unset), and ``peers`` names further nodes by URI. Instances are found on
whichever node holds them; ``live_migrate(id, node)`` moves a running guest to the peer of that
name with libvirt's managed migration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr

from virtdrivers.capabilities import Capability, DiskFormat
from virtdrivers.driver import (
    Driver,
    DriverSettings,
    EmbeddedEndpoint,
    EventCallback,
    ProgressCallback,
    Subscription,
)
from virtdrivers.errors import (
    BackendUnavailable,
    Conflict,
    DriverError,
    InstanceNotFound,
    InvalidSpec,
    InvalidState,
    NotFound,
    NotSupported,
    Timeout,
    redact,
)
from virtdrivers.objects import (
    BackendInfo,
    DiskInfo,
    DiskSpec,
    EventType,
    GuestAddress,
    HostResources,
    Image,
    ImageMode,
    InstanceInfo,
    InstanceMetrics,
    InstanceSpec,
    Leftover,
    LifecycleEvent,
    Network,
    NodeInfo,
    PowerState,
    SnapshotInfo,
)
from virtdrivers.reaping import CreateToken
from virtdrivers_libvirt import guest_io, mapping, network
from virtdrivers_libvirt.images import ImageStore, StoredImage, root_disk_gib
from virtdrivers_libvirt.session import Session
from virtdrivers_libvirt.storage import MADE_PREFIX, DirStore, DiskStore, PoolStore

log = logging.getLogger(__name__)

# libvirt constants used here, so the module imports without the SDK.
_AFFECT_LIVE, _AFFECT_CONFIG = 1, 2
_XML_INACTIVE = 2
_METADATA_ELEMENT = 2
_UNDEFINE_FLAGS = 1 | 2  # managed save image and snapshot metadata go with the domain
_MIGRATE_LIVE, _MIGRATE_PERSIST_DEST, _MIGRATE_UNDEFINE_SOURCE, _MIGRATE_UNSAFE = 1, 8, 16, 512
_MIGRATE_OFFLINE = 1024
_EVENT_DEFINED, _EVENT_UNDEFINED = 0, 1
_STATE_SHUTOFF = 5
#: sun_path holds 108 bytes with the terminating NUL.
_SUN_PATH_MAX = 107
#: An ACPI power-button press sent before the guest listens (while its kernel boots) is lost:
#: a graceful shutdown presses again at this interval until its deadline.
ACPI_REPEAT_S = 3.0


class LibvirtSettings(DriverSettings):
    """How to reach libvirt. Every field has a default that works on a local host."""

    uri: str = Field(default="qemu:///system", min_length=1, max_length=2048)
    """libvirt connection URI of this node (``qemu:///system``, ``qemu+tls://host/system``, ...)."""
    node_name: str | None = Field(default=None, max_length=64)
    """Name this node is reported under; the host's name when unset."""
    peers: dict[str, str] = Field(default_factory=dict)
    """Further nodes: node name -> libvirt URI. ``live_migrate(id, node)`` moves guests between them."""
    migration_uri: str | None = None
    """Where destinations receive migration data (``tcp://127.0.0.1`` for daemons on one host)."""
    migrate_unsafe: bool = False
    """Allow migrating disks libvirt cannot prove are shared (a directory both nodes see)."""
    domain_type: Literal["auto", "kvm", "qemu", "test"] = "auto"
    """``auto``: test on the test driver, KVM where the host offers it, otherwise QEMU's TCG."""
    machine: str = "pc"
    disk_dir: str | None = None
    """Make disks with qemu-img in this local directory instead of a storage pool."""
    storage_pool: str = "default"
    image_dir: str | None = None
    """The image store: a directory every node sees at this path (like Nova's image cache).
    Images, seeds and console logs need ``disk_dir`` too: they are files QEMU opens."""
    tcg_cache_mib: int = Field(default=64, ge=1)
    """TCG's translation cache for ``qemu`` (emulated) guests: QEMU's 1 GiB default makes every
    guest reset seconds slower and the process larger."""
    username: str | None = None
    password: SecretStr | None = None
    """For SASL authentication on remote URIs."""
    keepalive_interval: int = Field(default=5, ge=1)
    keepalive_count: int = Field(default=3, ge=1)
    reconnect: bool = True
    """Reopen a connection whose daemon went away, in the background and on the next call."""
    insecure: bool = False
    """Allow TLS URIs with ``no_verify=1``. Off by default; on, it logs a warning."""


def _version(v: int) -> str:
    return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"


@dataclass
class _Node:
    name: str
    session: Session
    store: DiskStore
    primary: bool


@dataclass
class _DomainEvent:
    node: str
    uuid: str
    name: str
    event: int
    detail: int


class LibvirtDriver(Driver):
    """libvirt: KVM/QEMU hosts through libvirtd, the embedded QEMU driver, or libvirt's test driver."""

    name = "libvirt"
    capabilities = frozenset(
        {
            Capability.PAUSE,
            Capability.SUSPEND,
            Capability.RESIZE_CPU,
            Capability.RESIZE_MEMORY,
            Capability.ATTACH_DISK,
            Capability.DETACH_DISK,
            Capability.SNAPSHOT,
            Capability.SNAPSHOT_MEMORY,
            Capability.LIVE_MIGRATE,
            Capability.COLD_MIGRATE,
            Capability.ADOPT,
            Capability.EVENTS,
            Capability.REAP,
            Capability.DISK_RAW,
            Capability.DISK_QCOW2,
            Capability.DISK_VMDK,
            # Not DISK_VHDX: qemu-img makes vhdx, but libvirt's disk XML has no such format.
            Capability.IMAGES,
            Capability.IMAGE_COW,
            Capability.IMAGE_COPY,
            Capability.IMAGE_UPLOAD,
            Capability.NETWORKS,
            Capability.USER_DATA,
            Capability.GUEST_ADDRESSES,
            Capability.CONSOLE_OUTPUT,
            Capability.METRICS,
            # Not NIC_HOTPLUG: PCI hot-unplug of a NIC waits for the guest OS, and blank guests
            # have none. Not CONSOLE_CONNECT: the guests have no graphics or TCP console.
        }
    )
    settings_model = LibvirtSettings
    default_disk_format: ClassVar[DiskFormat | None] = DiskFormat.QCOW2
    settings: LibvirtSettings

    #: Upper bound on waiting for a domain to reach a state after a request the guest must honour.
    state_timeout: ClassVar[float] = 30.0

    @classmethod
    def embedded_endpoints(cls) -> Sequence[EmbeddedEndpoint]:
        from virtdrivers_libvirt import endpoints

        return endpoints.ENDPOINTS

    def __init__(self, settings: Any = None, /, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        #: Serialises connect and close; held across libvirt calls.
        self._connect_lock = threading.Lock()
        #: Guards caches and subscribers only: libvirt's event thread takes it, so it is never
        #: held across a libvirt call.
        self._lock = threading.RLock()
        self._nodes: dict[str, _Node] = {}
        self._records: dict[str, mapping.DomainRecord] = {}
        self._where: dict[str, str] = {}
        self._changed = threading.Condition()
        self._change_count = 0
        self._subscribers: dict[int, EventCallback] = {}
        self._next_sub = 0
        self._events: queue.SimpleQueue[_DomainEvent | None] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None
        self._domain_type: dict[str, str] = {}
        #: One-shot fault for the conformance suite's failed-create check (see arm_create_fault).
        self._create_fault = threading.Event()
        #: Names of creates in flight through this driver.
        self._creating: set[str] = set()
        self._images = ImageStore(self.settings.image_dir) if self.settings.image_dir else None

    # -- connection ----------------------------------------------------------------------------

    def _open_node(self, uri: str, name: str | None, *, primary: bool) -> _Node:
        """Connect one node. A peer that is down does not stop the driver: its session keeps
        trying in the background and the node reports "down" until it answers."""
        s = self.settings
        if "no_verify=1" in uri.replace(" ", ""):
            if not s.insecure:
                raise InvalidSpec("no_verify=1 turns off TLS verification; set insecure=true to allow it", field="uri")
            log.warning("libvirt: TLS certificate verification is OFF for %s (insecure=true)", redact(uri))
        creds = (s.username or "", s.password.get_secret_value()) if s.password is not None else None
        label = [name or redact(uri)]  # the node name events carry; known once connected
        session = Session(
            uri,
            on_lifecycle=lambda uid, dom_name, event, detail: self._on_lifecycle(
                label[0], uid, dom_name, event, detail
            ),
            on_reconnect=self._forget,
            keepalive=(s.keepalive_interval, s.keepalive_count),
            reconnect=s.reconnect,
            credentials=creds,
            embedded="/embed" in uri,
        )
        session.open(required=primary)
        try:
            if name is None:
                label[0] = session.call(lambda c: str(c.getHostname()))
        except BaseException:
            session.close()
            raise
        return _Node(label[0], session, self._store(session), primary)

    def connect(self) -> None:
        with self._connect_lock:
            if self._nodes:
                return
            s = self.settings
            nodes: list[_Node] = []
            try:
                nodes.append(self._open_node(s.uri, s.node_name, primary=True))
                for peer, uri in s.peers.items():
                    if peer == nodes[0].name:
                        raise InvalidSpec(f"peer {peer!r} has this node's name", field="peers")
                    nodes.append(self._open_node(uri, peer, primary=False))
            except BaseException:
                for node in nodes:
                    node.session.close()
                raise
            self._nodes = {n.name: n for n in nodes}

    def _store(self, session: Session) -> DiskStore:
        if self.settings.disk_dir:
            return DirStore(self.settings.disk_dir)
        return PoolStore(session, self.settings.storage_pool)

    def _close_nodes(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            node.session.close()

    def close(self) -> None:
        with self._connect_lock:
            self._close_nodes()
        with self._lock:
            self._subscribers.clear()
            dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            self._events.put(None)
            dispatcher.join(timeout=5)
        self._forget()

    def _forget(self) -> None:
        with self._lock:
            self._records.clear()
            self._where.clear()

    @property
    def _primary(self) -> _Node:
        for node in self._nodes.values():
            if node.primary:
                return node
        raise BackendUnavailable("libvirt: not connected")

    def backend_info(self) -> BackendInfo:
        import importlib.metadata

        node = self._primary
        hv_type, hv_version, lib_version = node.session.call(
            lambda c: (str(c.getType()), int(c.getVersion()), int(c.getLibVersion()))
        )
        return BackendInfo(
            # The hypervisor is the backend (QEMU, or libvirt's TEST driver); libvirt is a library.
            backend=hv_type,
            backend_version=_version(hv_version),
            endpoint=redact(node.session.uri),
            libraries={
                "libvirt": _version(lib_version),
                "libvirt-python": importlib.metadata.version("libvirt-python"),
            },
        )

    # -- events and caches (called on libvirt's event-loop thread) ---------------------------------

    def _on_lifecycle(self, node: str, uid: str, name: str, event: int, detail: int) -> None:
        if event in (_EVENT_DEFINED, _EVENT_UNDEFINED):
            with self._lock:
                self._records.pop(uid, None)
        with self._changed:
            self._change_count += 1
            self._changed.notify_all()
        if self._subscribers:
            self._events.put(_DomainEvent(node, uid, name, event, detail))

    def _dispatch(self) -> None:
        last: dict[str, EventType] = {}
        while (raw := self._events.get()) is not None:
            type_ = mapping.event_type(raw.event, raw.detail)
            if type_ is None or self._is_migration_echo(raw, type_):
                continue
            previous, last[raw.uuid] = last.get(raw.uuid), type_
            if not mapping.reportable(type_, previous):
                continue
            event = LifecycleEvent(
                instance_id=raw.uuid,
                type=type_,
                timestamp=datetime.datetime.now(datetime.UTC),
                name=raw.name,
                node=raw.node,
            )
            with self._lock:
                callbacks = list(self._subscribers.values())
            for callback in callbacks:
                try:
                    callback(event)
                except Exception:  # one subscriber's bug must not starve the others
                    log.exception("event subscriber failed")

    def _is_migration_echo(self, raw: _DomainEvent, type_: EventType) -> bool:
        """A migration defines the guest on one node and undefines it on the other: that is one
        MIGRATED event, not a CREATED and a DESTROYED."""
        if type_ not in (EventType.CREATED, EventType.DESTROYED) or len(self._nodes) < 2:
            return False
        for node in list(self._nodes.values()):
            if node.name == raw.node:
                continue
            with contextlib.suppress(DriverError):
                node.session.call(lambda c: c.lookupByUUIDString(raw.uuid))
                return True
        return False

    def subscribe(self, callback: EventCallback) -> Subscription:
        self._primary  # noqa: B018  (raises when not connected)
        with self._lock:
            self._next_sub += 1
            sid = self._next_sub
            self._subscribers[sid] = callback
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(target=self._dispatch, name="libvirt-events", daemon=True)
                self._dispatcher.start()

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.pop(sid, None)

        return Subscription(unsubscribe)

    # -- finding domains ---------------------------------------------------------------------------

    def _lookup(self, instance_id: str) -> tuple[_Node, Any]:
        try:
            uuid.UUID(instance_id)
        except (ValueError, TypeError, AttributeError):
            raise InstanceNotFound(instance_id) from None
        with self._lock:
            where = self._where.get(instance_id)
            nodes = sorted(self._nodes.values(), key=lambda n: n.name != where)
        if not nodes:
            self._primary  # noqa: B018
        unreachable: BackendUnavailable | None = None
        for node in nodes:
            try:
                dom = node.session.call(lambda c: c.lookupByUUIDString(instance_id), ref=instance_id)
            except InstanceNotFound:
                continue
            except BackendUnavailable as exc:
                unreachable = exc
                continue
            with self._lock:
                self._where[instance_id] = node.name
            return node, dom
        if unreachable is not None:
            # It may be on the node we cannot reach: not found would be a guess.
            raise unreachable
        raise InstanceNotFound(instance_id)

    def _record(self, node: _Node, dom: Any, *, fresh: bool = False) -> mapping.DomainRecord:
        uid = dom.UUIDString()
        with self._lock:
            cached = None if fresh else self._records.get(uid)
        if cached is not None:
            return cached
        xml = node.session.call(lambda _c: dom.XMLDesc(_XML_INACTIVE), ref=uid)
        record = mapping.parse_domain_xml(xml)
        with self._lock:
            self._records[uid] = record
        return record

    @staticmethod
    def _active(node: _Node, dom: Any) -> bool:
        return bool(node.session.call(lambda _c: dom.isActive(), ref=dom.UUIDString()))

    def _state(self, node: _Node, dom: Any) -> PowerState:
        state, reason = node.session.call(lambda _c: dom.state(0), ref=dom.UUIDString())
        return self._confirm(node, dom, mapping.power_state(state, reason), state)

    def _confirm(self, node: _Node, dom: Any, power: PowerState, state: int) -> PowerState:
        """libvirt keeps the shut-off reason "saved" after the saved image is discarded: ask."""
        saved = power == PowerState.SUSPENDED and state == _STATE_SHUTOFF
        if saved and not node.session.call(lambda _c: dom.hasManagedSaveImage(0), ref=dom.UUIDString()):
            return PowerState.SHUTDOWN
        return power

    def _managed(self, instance_id: str) -> tuple[_Node, Any, mapping.DomainRecord]:
        node, dom = self._lookup(instance_id)
        record = self._record(node, dom)
        if not record.managed:
            raise InstanceNotFound(instance_id)
        return node, dom, record

    def _info(self, node: _Node, dom: Any, *, fresh: bool = True) -> InstanceInfo:
        record = self._record(node, dom, fresh=fresh)
        return record.info(self._state(node, dom), node.name)

    def _domain_type_for(self, node: _Node) -> str:
        if self.settings.domain_type != "auto":
            return self.settings.domain_type
        with self._lock:
            known = self._domain_type.get(node.name)
        if known:
            return known
        hv, caps = node.session.call(lambda c: (str(c.getType()), str(c.getCapabilities())))
        # The capabilities list KVM only where the daemon's host can use /dev/kvm.
        found = "test" if hv == "TEST" else "kvm" if "<domain type='kvm'" in caps else "qemu"
        with self._lock:
            self._domain_type[node.name] = found
        return found

    # -- mandatory core ---------------------------------------------------------------------------

    def _stats(self, node: _Node) -> list[tuple[Any, dict[str, Any]]]:
        import libvirt

        return node.session.call(lambda c: c.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0))  # type: ignore[no-any-return]

    def _all(self) -> list[InstanceInfo]:
        """Every domain of every node: one getAllDomainStats per node, plus one XMLDesc for a
        domain seen for the first time (definitions are cached and dropped on DEFINED events)."""
        out = []
        for node in list(self._nodes.values()):
            try:
                stats_list = self._stats(node)
            except BackendUnavailable:
                if node.primary:
                    raise
                log.warning("libvirt: node %s is unreachable; its instances are not listed", node.name)
                continue
            for dom, stats in stats_list:
                try:
                    record = self._record(node, dom)
                except InstanceNotFound:
                    continue  # undefined between the two calls
                raw_state = int(stats.get("state.state", 0))
                state = mapping.power_state(raw_state, int(stats.get("state.reason", 0)))
                state = self._confirm(node, dom, state, raw_state)
                out.append(record.info(state, node.name))
                with self._lock:
                    self._where[record.uuid] = node.name
        return out

    def list_instances(self) -> list[InstanceInfo]:
        return [i for i in self._all() if i.managed]

    def get_instance(self, instance_id: str) -> InstanceInfo:
        node, dom, _ = self._managed(instance_id)
        return self._info(node, dom, fresh=False)

    def find_instance(self, name: str) -> InstanceInfo:
        for node in list(self._nodes.values()):
            try:
                dom = node.session.call(lambda c: c.lookupByName(name), ref=name)
            except InstanceNotFound:
                continue
            info = self._info(node, dom, fresh=False)
            if info.managed:
                return info
        raise InstanceNotFound(name)

    def _node(self, name: str | None) -> _Node:
        if name is None:
            return self._primary
        node = self._nodes.get(name)
        if node is None:
            raise NotFound(f"node {name!r} not found")
        return node

    def _check_spec(self, spec: InstanceSpec) -> None:
        """Refuse what libvirt or QEMU would refuse late (or store changed), before any call.

        The name is checked against every node, so that the instance can move to any of them.
        """
        for node in self._nodes.values():
            problem = mapping.name_problem(spec.name, node.session.uri)
            if problem:
                raise InvalidSpec(f"{problem} (node {node.name!r})", field="name")
        for key, value in spec.metadata.items():
            if mapping.unstorable(key) or mapping.unstorable(value):
                raise InvalidSpec(
                    "metadata holds a character libvirt's XML cannot store (NUL or another control"
                    " character, U+FFFE, U+FFFF)",
                    field=f"metadata.{key}",
                )
        for n, disk in enumerate(spec.disks):
            self._check_disk(disk, f"disks.{n}.label")
        if (spec.image is not None or spec.user_data is not None) and self._files is None:
            raise NotSupported("images and user data need disk_dir: QEMU opens them as local files")

    @staticmethod
    def _check_disk(disk: DiskSpec, field: str) -> None:
        if disk.label is not None and mapping.unstorable(disk.label):
            raise InvalidSpec("label holds a character libvirt's XML cannot store", field=field)

    def create(self, spec: InstanceSpec, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        node = self._node(spec.node)
        self._check_spec(spec)
        # libvirt refuses a second domain of one name on one node, but not on two: creates of
        # one name through this driver are serialised here, so exactly one can win anywhere.
        with self._lock:
            if spec.name in self._creating:
                raise InvalidSpec(f"an instance named {spec.name!r} is being created already", field="name")
            self._creating.add(spec.name)
        try:
            # Refused up front, before anything is made: unknown image, unknown network, taken MAC.
            image = self._image(spec.image, "image") if spec.image is not None else None
            nics = self._resolve_nics(node, spec.nics, "nics") if spec.nics else []
            return self._create(node, spec, image, nics, progress or (lambda fraction, message: None))
        finally:
            with self._lock:
                self._creating.discard(spec.name)

    def _create(
        self,
        node: _Node,
        spec: InstanceSpec,
        image: StoredImage | None,
        nics: list[mapping.NicRecord],
        report: ProgressCallback,
    ) -> InstanceInfo:
        for other in list(self._nodes.values()):
            # Names are unique across the nodes we can reach; libvirt enforces it per node.
            skip = (InstanceNotFound,) if other is node else (InstanceNotFound, BackendUnavailable)
            with contextlib.suppress(*skip):
                other.session.call(lambda c: c.lookupByName(spec.name), ref=spec.name)
                raise InvalidSpec(f"an instance named {spec.name!r} exists already", field="name")
        domain_type = self._domain_type_for(node)
        uid = str(uuid.uuid4())
        # Before the first change on the peer: every disk file's name and the domain carry it,
        # so what a create killed midway leaves can be found by reap (virtdrivers.reaping).
        token = CreateToken.new().encode()
        made: list[mapping.DiskRecord] = []
        files: list[str] = []
        dom: Any = None
        store = self._files
        qemu = domain_type != "test" and store is not None
        try:
            if image is not None and store is not None:
                report(0.0, f"making the root disk from image {image.image.name}")
                made.append(self._root_disk(store, uid, image, spec.image_mode, token))
            for n, disk in enumerate(spec.disks):
                report(n / max(len(spec.disks), 1) * 0.8, f"creating disk {n + 1} of {len(spec.disks)}")
                made.append(self._make_disk(node, uid, mapping.next_disk_dev({d.dev for d in made}), disk, token))
            seed = console = socket = None
            if spec.user_data is not None and store is not None:
                name = f"{MADE_PREFIX}{uid}-{mapping.SEED_ROLE}-{token}.img"
                seed = guest_io.write_seed(spec, uid, store.directory, name)
                files.append(seed)
            if qemu and store is not None:
                # QEMU makes the log when it starts; named with the token so reap knows it. Its
                # directory must exist by then, even for an instance with no disk of its own.
                os.makedirs(store.directory, exist_ok=True)
                console = os.path.join(store.directory, f"{MADE_PREFIX}{uid}-{mapping.CONSOLE_ROLE}-{token}.log")
                files.append(console)
                socket = self._agent_socket(store, uid) if image is not None else None
                if socket is not None:
                    files.append(socket)
            xml = mapping.domain_xml(
                uuid=uid,
                name=spec.name,
                vcpus=spec.vcpus,
                memory_mb=spec.memory_mb,
                domain_type=domain_type,
                disks=tuple(made),
                metadata=dict(spec.metadata),
                machine=None if domain_type == "test" else self.settings.machine,
                create_token=token,
                nics=tuple(nics),
                seed=seed,
                console=console,
                # An agent lives only in an operating system: blank guests get no channel.
                agent=qemu and image is not None,
                agent_socket=socket,
                tcg_cache_mib=self.settings.tcg_cache_mib,
            )
            dom = node.session.call(lambda c: c.defineXML(xml), ref=spec.name)
            if spec.start:
                report(0.9, "starting")
                node.session.call(lambda _c: dom.create(), ref=uid)
            if self._create_fault.is_set():
                self._create_fault.clear()
                raise DriverError(f"injected fault: creating {spec.name!r} failed after the domain was defined")
            # The last step: the create is complete, nothing of it is left over any more.
            self._write_metadata(node, dom, uid, dict(spec.metadata), tuple(made))
        except BaseException as exc:
            # Nothing half-made: the domain and the disks and files it got go away together.
            self._undo_create(node, dom, made)
            self._delete_files(files)
            if isinstance(exc, DriverError) and "already exists" in str(exc):
                raise InvalidSpec(f"an instance named {spec.name!r} exists already", field="name") from exc
            raise
        with self._lock:
            self._where[uid] = node.name
        report(1.0, "created")
        return self._info(node, dom)

    def arm_create_fault(self) -> None:
        """Make the next :meth:`create` fail once libvirt has defined (and, if asked, started)
        the domain on its new disks: a testing seam for the endpoints' ``fail_next_create``
        hook, since libvirt has no fault knob of its own. Everything after the fault is the
        driver's real clean-up against the real peer."""
        self._create_fault.set()

    @property
    def _files(self) -> DirStore | None:
        """The local directory seeds, console logs and image-made disks live in (``disk_dir``)."""
        store = self._primary.store if self._nodes else None
        return store if isinstance(store, DirStore) else None

    def _image(self, ref: str, field: str) -> StoredImage:
        found = self._images.find(ref) if self._images is not None else None
        if found is None:
            raise InvalidSpec(f"no image {ref!r}", field=field)
        return found

    def _root_disk(
        self, store: DirStore, uid: str, image: StoredImage, mode: ImageMode | None, token: str
    ) -> mapping.DiskRecord:
        """The root disk, first on the bus and first to boot: a copy-on-write child of the image
        unless a copy is asked for."""
        cow = mode != ImageMode.COPY
        size = root_disk_gib(image.image)
        dev = mapping.ROOT_DEV
        path = store.create_from_image(f"{MADE_PREFIX}{uid}-{dev}-{token}", image.path, image.format, size, cow=cow)
        return mapping.DiskRecord(
            dev=dev, path=path, size_gib=size, format=DiskFormat.QCOW2, thin=True, image=image.image.id, cow=cow
        )

    @staticmethod
    def _agent_socket(store: DirStore, uid: str) -> str | None:
        """Our own path for the agent's socket where it fits sun_path; None lets libvirt choose
        (under its state directory, which an embedded root deep in /tmp can push past 108 bytes)."""
        path = os.path.join(os.path.abspath(store.directory), f"{MADE_PREFIX}{uid}.agent")
        return path if len(path.encode()) <= _SUN_PATH_MAX else None

    @staticmethod
    def _delete_files(paths: Sequence[str]) -> None:
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                log.exception("could not remove %s", path)

    def _resolve_nics(
        self, node: _Node, nics: Sequence[Any], field: str, used: set[str] | None = None
    ) -> list[mapping.NicRecord]:
        return network.resolve(self._networks(node), nics, used or set(), field)

    def _networks(self, node: _Node) -> list[Network]:
        return network.list_networks(node.session, self._domain_type_for(node))

    def _make_disk(self, node: _Node, uid: str, dev: str, disk: DiskSpec, token: str) -> mapping.DiskRecord:
        """A new disk for instance ``uid``, named with the operation's token so that reap can
        tell a file an interrupted create or attach left from one in use or in the making."""
        fmt = disk.format or self.default_disk_format or DiskFormat.QCOW2
        path = node.store.create(f"{MADE_PREFIX}{uid}-{dev}-{token}", disk.size_gib, fmt, disk.thin)
        return mapping.DiskRecord(
            dev=dev, path=path, size_gib=disk.size_gib, format=fmt, thin=disk.thin, label=disk.label
        )

    def _undo_create(self, node: _Node, dom: Any, made: list[mapping.DiskRecord]) -> None:
        if dom is not None:
            with contextlib.suppress(Exception):
                if dom.isActive():
                    dom.destroy()
            with contextlib.suppress(Exception):
                dom.undefineFlags(_UNDEFINE_FLAGS)
        for disk in made:
            try:
                node.store.delete(disk.path)
            except Exception:
                log.exception("could not remove disk %s of a failed create", disk.path)

    def destroy(self, instance_id: str) -> None:
        node, dom, record = self._managed(instance_id)
        self._remove(node, dom, record)

    def _snapshot_disks(self, node: _Node, dom: Any, uid: str) -> list[mapping.DiskRecord]:
        """Disks the domain's snapshots refer to: a revert brings them back, so they are in use."""
        snaps = node.session.call(lambda _c: dom.listAllSnapshots(0), ref=uid)
        return [d for snap in snaps for d in mapping.snapshot_disks(self._snapshot_xml(node, snap))]

    def _drop_unreferenced(self, node: _Node, dom: Any, uid: str, candidates: tuple[mapping.DiskRecord, ...]) -> None:
        """Delete the disks among ``candidates`` that this driver made and that neither the
        domain's definition nor any of its snapshots refers to any more (after a revert to a
        snapshot older than the disk, or deleting the last snapshot that held it)."""
        record = self._record(node, dom, fresh=True)
        used = {d.path for d in record.disks} | {d.path for d in self._snapshot_disks(node, dom, uid)}
        for disk in candidates:
            if disk.owned and disk.path not in used:
                try:
                    node.store.delete(disk.path)
                except DriverError:
                    log.warning("could not remove disk %s no longer used by %s", disk.path, uid)

    def _remove(self, node: _Node, dom: Any, record: mapping.DomainRecord) -> None:
        """Stop and undefine a domain and delete the disks this driver made for it, including
        those only its snapshots still refer to (undefine takes the snapshots along)."""
        instance_id = record.uuid
        owned = {d.path: d for d in (*record.disks, *self._snapshot_disks(node, dom, instance_id)) if d.owned}
        record = dataclasses.replace(record, disks=tuple(owned.values()))
        if self._active(node, dom):
            # "domain is not running": QEMU died between the two calls. Stopped is what we want.
            with contextlib.suppress(InvalidState):
                node.session.call(lambda _c: dom.destroy(), ref=instance_id)
        node.session.call(lambda _c: dom.undefineFlags(_UNDEFINE_FLAGS), ref=instance_id)
        with self._lock:
            self._records.pop(instance_id, None)
            self._where.pop(instance_id, None)
        for disk in record.disks:
            if disk.owned:
                try:
                    node.store.delete(disk.path)
                except DriverError:
                    log.warning("could not remove disk %s of %s", disk.path, instance_id)
        if record.managed:
            self._delete_files(self._own_files(node, record))

    @staticmethod
    def _own_files(node: _Node, record: mapping.DomainRecord) -> list[str]:
        """The seed, console log and agent socket of a domain, where this driver made them (named
        ``vd-<its uuid>...`` in the disk directory): never a file someone else configured."""
        if not isinstance(node.store, DirStore):
            return []
        directory = os.path.abspath(node.store.directory)
        return [
            p
            for p in record.files
            if os.path.dirname(os.path.abspath(p)) == directory
            and os.path.basename(p).startswith(f"{MADE_PREFIX}{record.uuid}")
        ]

    def _require(self, state: PowerState, name: str, *allowed: PowerState) -> None:
        if state not in allowed:
            wanted = " or ".join(s.value for s in allowed)
            raise InvalidState(f"instance {name!r} is {state.value}, needs {wanted}")

    def power_on(self, instance_id: str) -> InstanceInfo:
        node, dom, record = self._managed(instance_id)
        state = self._state(node, dom)
        if state == PowerState.RUNNING:
            return record.info(state, node.name)
        self._require(state, record.name, PowerState.SHUTDOWN, PowerState.CRASHED)
        node.session.call(lambda _c: dom.create(), ref=instance_id)
        return self._info(node, dom, fresh=False)

    def _wait_for(self, node: _Node, dom: Any, done: Callable[[PowerState], bool], timeout: float) -> bool:
        """Wait for a state up to ``timeout``: each lifecycle event wakes us to read it again.

        The state is read outside the condition, so libvirt's event thread never waits on a
        caller that is itself waiting on libvirt.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                seen = self._change_count
            if done(self._state(node, dom)):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                if self._change_count == seen:
                    self._changed.wait(min(remaining, 1.0))

    def power_off(self, instance_id: str, *, timeout: float = 60.0, force: bool = False) -> InstanceInfo:
        node, dom, record = self._managed(instance_id)
        state = self._state(node, dom)
        if state == PowerState.SHUTDOWN:
            return record.info(state, node.name)
        if state == PowerState.SUSPENDED:
            node.session.call(lambda _c: dom.managedSaveRemove(0), ref=instance_id)
            return self._info(node, dom, fresh=False)
        if not force and timeout > 0 and state == PowerState.RUNNING:
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                # A press before the guest's ACPI daemon runs is lost: press again until the deadline.
                with contextlib.suppress(InvalidState):  # stopped between the check and the press
                    node.session.call(lambda _c: dom.shutdown(), ref=instance_id)
                if self._wait_for(node, dom, lambda s: s == PowerState.SHUTDOWN, min(left, ACPI_REPEAT_S)):
                    return self._info(node, dom, fresh=False)
            log.info("instance %s did not shut down in %.1f s: forcing it off", instance_id, timeout)
        with contextlib.suppress(InvalidState):  # it may have stopped by itself meanwhile
            node.session.call(lambda _c: dom.destroy(), ref=instance_id)
        return self._info(node, dom, fresh=False)

    def reboot(self, instance_id: str, *, hard: bool = False) -> InstanceInfo:
        node, dom, record = self._managed(instance_id)
        state = self._state(node, dom)
        if hard:
            self._require(state, record.name, PowerState.RUNNING, PowerState.PAUSED, PowerState.CRASHED)
            try:
                node.session.call(lambda _c: dom.reset(0), ref=instance_id)
            except NotSupported:
                node.session.call(lambda _c: dom.destroy(), ref=instance_id)
                node.session.call(lambda _c: dom.create(), ref=instance_id)
            if self._state(node, dom) == PowerState.PAUSED:
                node.session.call(lambda _c: dom.resume(), ref=instance_id)
        else:
            self._require(state, record.name, PowerState.RUNNING)
            node.session.call(lambda _c: dom.reboot(0), ref=instance_id)
        return self._info(node, dom, fresh=False)

    def list_nodes(self) -> list[NodeInfo]:
        out = []
        for node in list(self._nodes.values()):
            try:
                hv = node.session.call(lambda c: str(c.getType()))
                out.append(NodeInfo(name=node.name, hypervisor_type=hv.lower(), state="up"))
            except DriverError:
                out.append(NodeInfo(name=node.name, hypervisor_type="unknown", state="down"))
        return out

    def host_resources(self, node: str | None = None) -> HostResources:
        n = self._node(node)
        info, hv, hv_version = n.session.call(lambda c: (c.getInfo(), str(c.getType()), int(c.getVersion())))
        vcpus_used = memory_used = 0
        disk_used = 0
        for dom, stats in self._stats(n):
            try:
                record = self._record(n, dom)
            except InstanceNotFound:
                continue
            disk_used += sum(d.size_gib for d in record.disks)
            if mapping.power_state(int(stats.get("state.state", 0)), 0) in (PowerState.RUNNING, PowerState.PAUSED):
                vcpus_used += record.vcpus
                memory_used += record.memory_mb
        try:
            disk_total, _ = n.store.usage_gib()
        except DriverError:
            disk_total = 0
        return HostResources(
            node=n.name,
            vcpus_total=int(info[2]),
            vcpus_used=vcpus_used,
            memory_mb_total=int(info[1]),
            memory_mb_used=memory_used,
            disk_gib_total=max(disk_total, disk_used),
            disk_gib_used=disk_used,
            hypervisor_type=hv.lower(),
            hypervisor_version=_version(hv_version),
        )

    # -- power extras -------------------------------------------------------------------------

    def _transition(
        self, instance_id: str, allowed: tuple[PowerState, ...], action: Callable[[Any], object]
    ) -> InstanceInfo:
        node, dom, record = self._managed(instance_id)
        self._require(self._state(node, dom), record.name, *allowed)
        node.session.call(lambda _c: action(dom), ref=instance_id)
        return self._info(node, dom, fresh=False)

    def pause(self, instance_id: str) -> InstanceInfo:
        return self._transition(instance_id, (PowerState.RUNNING,), lambda d: d.suspend())

    def unpause(self, instance_id: str) -> InstanceInfo:
        return self._transition(instance_id, (PowerState.PAUSED,), lambda d: d.resume())

    def suspend(self, instance_id: str) -> InstanceInfo:
        return self._transition(instance_id, (PowerState.RUNNING, PowerState.PAUSED), lambda d: d.managedSave(0))

    def resume(self, instance_id: str) -> InstanceInfo:
        return self._transition(instance_id, (PowerState.SUSPENDED,), lambda d: d.create())

    def resize(self, instance_id: str, *, vcpus: int | None = None, memory_mb: int | None = None) -> InstanceInfo:
        """Changes the persistent definition: a running guest gets the new size at its next boot."""
        node, dom, _ = self._managed(instance_id)
        xml = node.session.call(lambda _c: dom.XMLDesc(_XML_INACTIVE), ref=instance_id)
        new = mapping.resized_xml(xml, vcpus=vcpus, memory_mb=memory_mb)
        node.session.call(lambda c: c.defineXML(new), ref=instance_id)
        with self._lock:
            self._records.pop(instance_id, None)
        return self._info(node, dom)

    # -- storage ---------------------------------------------------------------------------------

    def _set_disks(
        self, node: _Node, dom: Any, record: mapping.DomainRecord, disks: tuple[mapping.DiskRecord, ...]
    ) -> None:
        self._write_metadata(node, dom, record.uuid, record.metadata, disks)

    def _write_metadata(
        self, node: _Node, dom: Any, uid: str, metadata: dict[str, str], disks: tuple[mapping.DiskRecord, ...]
    ) -> None:
        """Rewrite our metadata element (without a create token) in the live and persistent definition."""
        flags = _AFFECT_CONFIG | (_AFFECT_LIVE if self._active(node, dom) else 0)
        meta = mapping.metadata_xml(metadata, disks)
        node.session.call(
            lambda _c: dom.setMetadata(_METADATA_ELEMENT, meta, mapping.PREFIX, mapping.NAMESPACE, flags),
            ref=uid,
        )
        with self._lock:
            self._records.pop(uid, None)

    def _redefine_disks(
        self, node: _Node, dom: Any, record: mapping.DomainRecord, disks: tuple[mapping.DiskRecord, ...]
    ) -> None:
        xml = node.session.call(lambda _c: dom.XMLDesc(_XML_INACTIVE), ref=record.uuid)
        new = mapping.redefined_disks_xml(xml, record.metadata, disks)
        node.session.call(lambda c: c.defineXML(new), ref=record.uuid)
        with self._lock:
            self._records.pop(record.uuid, None)

    def attach_disk(self, instance_id: str, disk: DiskSpec) -> DiskInfo:
        """Hot-plugs into a running guest (SCSI, no guest help needed); redefines a stopped one."""
        self._check_disk(disk, "label")
        node, dom, record = self._managed(instance_id)
        record = self._record(node, dom, fresh=True)
        dev = mapping.next_disk_dev({d.dev for d in record.disks})
        new = self._make_disk(node, instance_id, dev, disk, CreateToken.new().encode())
        try:
            if self._active(node, dom):
                flags = _AFFECT_CONFIG | _AFFECT_LIVE
                node.session.call(lambda _c: dom.attachDeviceFlags(mapping.disk_xml(new), flags), ref=instance_id)
                try:
                    self._set_disks(node, dom, record, (*record.disks, new))
                except BaseException:
                    with contextlib.suppress(DriverError):
                        node.session.call(lambda _c: dom.detachDeviceFlags(mapping.disk_xml(new), flags))
                    raise
            else:
                self._redefine_disks(node, dom, record, (*record.disks, new))
        except BaseException:
            node.store.delete(new.path)
            raise
        return new.info()

    def detach_disk(self, instance_id: str, disk_id: str, *, delete: bool = True) -> None:
        node, dom, record = self._managed(instance_id)
        record = self._record(node, dom, fresh=True)
        found = [d for d in record.disks if d.dev == disk_id]
        if not found:
            raise NotFound(f"disk {disk_id!r} not attached to {record.name!r}")
        disk = found[0]
        left = tuple(d for d in record.disks if d.dev != disk_id)
        if self._active(node, dom):
            flags = _AFFECT_CONFIG | _AFFECT_LIVE
            node.session.call(lambda _c: dom.detachDeviceFlags(mapping.disk_xml(disk), flags), ref=instance_id)
            self._set_disks(node, dom, record, left)
        else:
            self._redefine_disks(node, dom, record, left)
        if delete and disk.owned:
            node.store.delete(disk.path)
        elif disk.owned:
            # Kept on purpose: without its token's trail reap will never take it for a leftover.
            node.store.settle(disk.path)

    # -- snapshots -------------------------------------------------------------------------------

    def create_snapshot(self, instance_id: str, name: str, *, with_memory: bool = False) -> SnapshotInfo:
        node, dom, _ = self._managed(instance_id)
        with contextlib.suppress(NotFound):
            node.session.call(lambda _c: dom.snapshotLookupByName(name, 0), ref=instance_id)
            raise Conflict(f"snapshot {name!r} exists already")
        xml = mapping.snapshot_xml(name, with_memory=with_memory)
        snap = node.session.call(lambda _c: dom.snapshotCreateXML(xml, 0), ref=instance_id)
        return mapping.parse_snapshot_xml(node.session.call(lambda _c: snap.getXMLDesc(0))).info(instance_id)

    def list_snapshots(self, instance_id: str) -> list[SnapshotInfo]:
        node, dom, _ = self._managed(instance_id)
        snaps = node.session.call(lambda _c: dom.listAllSnapshots(0), ref=instance_id)
        out = [mapping.parse_snapshot_xml(self._snapshot_xml(node, s)) for s in snaps]
        return [r.info(instance_id) for r in sorted(out, key=lambda r: (r.created_at is None, r.created_at, r.name))]

    @staticmethod
    def _snapshot_xml(node: _Node, snap: Any) -> str:
        return str(node.session.call(lambda _c: snap.getXMLDesc(0)))

    def _snapshot(self, node: _Node, dom: Any, snapshot_id: str, record: mapping.DomainRecord) -> Any:
        name = mapping.snapshot_name(record.uuid, snapshot_id)
        if name is None:  # another instance's snapshot, or no snapshot id at all
            raise NotFound(f"snapshot {snapshot_id!r} of {record.name!r} not found")
        try:
            return node.session.call(lambda _c: dom.snapshotLookupByName(name, 0))
        except NotFound:
            raise NotFound(f"snapshot {snapshot_id!r} of {record.name!r} not found") from None

    def revert_snapshot(self, instance_id: str, snapshot_id: str) -> InstanceInfo:
        node, dom, record = self._managed(instance_id)
        record = self._record(node, dom, fresh=True)
        snap = self._snapshot(node, dom, snapshot_id, record)
        parsed = mapping.parse_snapshot_xml(node.session.call(lambda _c: snap.getXMLDesc(0)))
        node.session.call(lambda _c: dom.revertToSnapshot(snap, 0), ref=instance_id)
        if not parsed.with_memory and self._active(node, dom):
            # A snapshot taken without memory comes back powered off, whatever libvirt kept.
            node.session.call(lambda _c: dom.destroy(), ref=instance_id)
        with self._lock:
            self._records.pop(instance_id, None)
        self._drop_unreferenced(node, dom, instance_id, record.disks)
        return self._info(node, dom)

    def delete_snapshot(self, instance_id: str, snapshot_id: str) -> None:
        node, dom, record = self._managed(instance_id)
        snap = self._snapshot(node, dom, snapshot_id, record)
        held = mapping.snapshot_disks(self._snapshot_xml(node, snap))
        node.session.call(lambda _c: snap.delete(0), ref=instance_id)
        self._drop_unreferenced(node, dom, instance_id, held)

    # -- migration -------------------------------------------------------------------------------

    def _migrate(
        self,
        instance_id: str,
        node: str | None,
        progress: ProgressCallback | None,
        allowed: tuple[PowerState, ...],
        flags: int,
    ) -> InstanceInfo:
        import libvirt

        src, dom, record = self._managed(instance_id)
        self._require(self._state(src, dom), record.name, *allowed)
        if node is None:
            others = [n for n in self._nodes.values() if n.name != src.name]
            if not others:
                raise InvalidState("no other node to migrate to: configure peers")
            dest = others[0]
        else:
            dest = self._node(node)
        if dest.name == src.name:
            raise InvalidSpec(f"instance is on {dest.name!r} already", field="node")
        flags |= _MIGRATE_PERSIST_DEST | _MIGRATE_UNDEFINE_SOURCE
        if self.settings.migrate_unsafe:
            flags |= _MIGRATE_UNSAFE
        params: dict[str, Any] = {}
        if self.settings.migration_uri and not flags & _MIGRATE_OFFLINE:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = self.settings.migration_uri
        if progress:
            progress(0.0, f"migrating to {dest.name}")
        dconn = dest.session.connection()
        new = src.session.call(lambda _c: dom.migrate3(dconn, params, flags), ref=instance_id)
        with self._lock:
            self._where[instance_id] = dest.name
            self._records.pop(instance_id, None)
        if progress:
            progress(1.0, f"on {dest.name}")
        return self._info(dest, new)

    def live_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        """libvirt's managed migration to the peer named ``node`` (the first other node when None)."""
        return self._migrate(instance_id, node, progress, (PowerState.RUNNING, PowerState.PAUSED), _MIGRATE_LIVE)

    def cold_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        """Offline migration: moves the definition; the disks must be where the peer sees them."""
        return self._migrate(instance_id, node, progress, (PowerState.SHUTDOWN,), _MIGRATE_OFFLINE)

    # -- crash safety ------------------------------------------------------------------------------

    def reap(self, *, dry_run: bool = False, grace_s: float = 3600.0) -> list[Leftover]:
        """Domains whose create never completed, and disk files no domain refers to that an
        interrupted create or attach made, when their operation is over (see virtdrivers.reaping).

        Every node is searched; a disk any domain on any node refers to is never touched.
        """
        found: list[Leftover] = []
        referenced: set[str] = set()
        doomed: list[tuple[_Node, Any, mapping.DomainRecord]] = []
        for node in list(self._nodes.values()):
            for dom in node.session.call(lambda c: c.listAllDomains(0)):
                try:
                    record = self._record(node, dom, fresh=True)
                except InstanceNotFound:
                    continue
                referenced.update(d.path for d in record.disks)
                referenced.update(record.files)
                referenced.update(d.path for d in self._snapshot_disks(node, dom, record.uuid))
                token = CreateToken.decode(record.create_token)
                if not record.managed or token is None or not token.abandoned(grace_s):
                    continue
                found.append(
                    Leftover(
                        kind="instance",
                        ref=record.uuid,
                        name=record.name,
                        node=node.name,
                        token=record.create_token,
                        reason="its create never completed and that create is over",
                    )
                )
                doomed.append((node, dom, record))
        seen: set[str] = set()
        for node in list(self._nodes.values()):
            for path in node.store.made():
                # The token ends the name before the format's extension (a host name may hold dots).
                token = CreateToken.decode(os.path.splitext(os.path.basename(path))[0])
                if path in referenced or path in seen or token is None or not token.abandoned(grace_s):
                    continue
                seen.add(path)
                found.append(
                    Leftover(
                        kind="disk",
                        ref=path,
                        node=node.name,
                        token=token.encode(),
                        reason="no instance refers to it and the create or attach that made it is over",
                    )
                )
                if not dry_run:
                    node.store.delete(path)
        if not dry_run:
            failed = [exc for node, dom, record in doomed if (exc := self._reap_one(node, dom, record))]
            if failed:
                raise failed[0]
        return found

    def _reap_one(self, node: _Node, dom: Any, record: mapping.DomainRecord) -> DriverError | None:
        """Remove one leftover domain; the error, if it could not be, after the others had their turn.

        A create killed while QEMU was starting leaves a guest whose monitor libvirt reconnects
        to when the root is next opened; until that gives up, the domain's job lock is held and
        calls fail with Timeout (libvirt waits 30 s for it). So a Timeout is tried again.
        """
        error: DriverError | None = None
        for _ in range(3):
            try:
                self._remove(node, dom, record)
                return None
            except InstanceNotFound:
                return None
            except Timeout as exc:
                error = exc
            except DriverError as exc:
                return exc
        return error

    # -- existing VMs ------------------------------------------------------------------------------

    def list_unmanaged(self) -> list[InstanceInfo]:
        return [i for i in self._all() if not i.managed]

    def adopt(self, instance_id: str) -> InstanceInfo:
        node, dom = self._lookup(instance_id)
        record = self._record(node, dom, fresh=True)
        if record.managed:
            raise InvalidState(f"{record.name!r} is managed already")
        # Its disks stay the owner's: destroy will not delete storage we did not make.
        self._set_disks(node, dom, record, record.disks)
        return self._info(node, dom)

    # -- workloads (contract 1.2) -----------------------------------------------------------------

    def _image_store(self) -> ImageStore:
        if self._images is None:
            raise NotSupported("no image store: set image_dir")
        return self._images

    def list_images(self) -> list[Image]:
        return [i.image for i in self._images.list()] if self._images is not None else []

    def register_image(self, path: str, name: str, *, disk_format: DiskFormat | None = None) -> Image:
        if not name or len(name) > 255 or mapping.unstorable(name):
            raise InvalidSpec("an image name is 1-255 characters XML can hold", field="name")
        return self._image_store().add(path, name, disk_format=disk_format)

    def delete_image(self, image_id: str) -> None:
        """Conflict while any domain on any node (or any of its snapshots) has a copy-on-write
        child of it: deleting the backing file would corrupt those disks."""
        store = self._image_store()
        if not any(i.image.id == image_id for i in store.list()):
            raise NotFound(f"image {image_id!r} not found")
        users = []
        for node in list(self._nodes.values()):
            for dom in node.session.call(lambda c: c.listAllDomains(0)):
                try:
                    record = self._record(node, dom, fresh=True)
                    disks = (*record.disks, *self._snapshot_disks(node, dom, record.uuid))
                except InstanceNotFound:
                    continue
                if any(d.image == image_id and d.cow for d in disks):
                    users.append(record.name)
        if users:
            raise Conflict(f"image {image_id!r} backs the disks of {', '.join(sorted(users))}")
        store.remove(image_id)

    def list_networks(self) -> list[Network]:
        return self._networks(self._primary)

    def _guest_side(self, instance_id: str, what: str) -> tuple[_Node, Any]:
        """The domain, where it runs a real guest to ask: libvirt's test driver runs none, so
        whatever it answered would be made up."""
        node, dom, _ = self._managed(instance_id)
        if self._domain_type_for(node) == "test":
            raise NotSupported(f"libvirt's test driver runs no guest: no {what}")
        return node, dom

    def guest_addresses(self, instance_id: str) -> list[GuestAddress]:
        node, dom = self._guest_side(instance_id, "guest addresses")
        if self._state(node, dom) != PowerState.RUNNING:
            return []
        return network.guest_addresses(node.session, dom, self._record(node, dom))

    def console_output(self, instance_id: str, *, max_bytes: int = 64 * 1024) -> str:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise InvalidSpec("must be a positive number of bytes", field="max_bytes")
        node, dom = self._guest_side(instance_id, "console")
        console = self._record(node, dom).console
        if console is None:
            raise NotSupported("this instance has no serial console log (it needs disk_dir)")
        return guest_io.console_tail(console, max_bytes)

    def instance_metrics(self, instance_id: str) -> InstanceMetrics:
        node, dom = self._guest_side(instance_id, "counters")
        return guest_io.metrics(node.session, dom, instance_id)
