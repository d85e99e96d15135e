"""The libvirt driver's foundation: settings, nodes and their connections, events, and reading domains.

:class:`LibvirtBase` holds what every operation stands on: one :class:`_Node` (session and disk
store) per libvirt connection, the event thread that keeps the caches of domain definitions
fresh, and the lookups that find a domain on whichever node holds it. The operations are in
:mod:`.driver` and :mod:`.workload_ops`; this split is by layer, not by feature, so a reader
of an operation meets only the helpers it uses.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import queue
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, SecretStr

from virtdrivers.driver import (
    Driver,
    DriverSettings,
    EventCallback,
    Subscription,
)
from virtdrivers.errors import (
    BackendUnavailable,
    DriverError,
    InstanceNotFound,
    InvalidSpec,
    NotFound,
    redact,
)
from virtdrivers.objects import (
    BackendInfo,
    EventType,
    InstanceInfo,
    LifecycleEvent,
    PowerState,
)
from virtdrivers_libvirt import mapping
from virtdrivers_libvirt.images import ImageStore
from virtdrivers_libvirt.session import Session
from virtdrivers_libvirt.storage import DirStore, DiskStore, PoolStore

log = logging.getLogger(__name__)

# libvirt constants used here, so the module imports without the SDK.
_XML_INACTIVE = 2
_EVENT_DEFINED, _EVENT_UNDEFINED = 0, 1
_STATE_SHUTOFF = 5


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


class LibvirtBase(Driver):
    """Nodes, connections, events and lookups: the layer every libvirt operation stands on."""

    settings_model = LibvirtSettings
    settings: LibvirtSettings

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

    def _snapshot_disks(self, node: _Node, dom: Any, uid: str) -> list[mapping.DiskRecord]:
        """Disks the domain's snapshots refer to: a revert brings them back, so they are in use."""
        snaps = node.session.call(lambda _c: dom.listAllSnapshots(0), ref=uid)
        return [d for snap in snaps for d in mapping.snapshot_disks(self._snapshot_xml(node, snap))]

    @staticmethod
    def _snapshot_xml(node: _Node, snap: Any) -> str:
        return str(node.session.call(lambda _c: snap.getXMLDesc(0)))

    @property
    def _files(self) -> DirStore | None:
        """The local directory seeds, console logs and image-made disks live in (``disk_dir``)."""
        store = self._primary.store if self._nodes else None
        return store if isinstance(store, DirStore) else None
