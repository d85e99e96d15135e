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
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from virtdrivers.capabilities import Capability, DiskFormat
from virtdrivers.driver import (
    EmbeddedEndpoint,
    ProgressCallback,
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
)
from virtdrivers.objects import (
    DiskInfo,
    DiskSpec,
    HostResources,
    InstanceInfo,
    InstanceSpec,
    Leftover,
    NodeInfo,
    PowerState,
    SnapshotInfo,
)
from virtdrivers.reaping import CreateToken
from virtdrivers_libvirt import guest_io, mapping
from virtdrivers_libvirt.base import LibvirtSettings, _Node, _version
from virtdrivers_libvirt.images import StoredImage
from virtdrivers_libvirt.storage import MADE_PREFIX, DirStore
from virtdrivers_libvirt.workload_ops import LibvirtWorkloads

log = logging.getLogger(__name__)

# libvirt constants used here, so the module imports without the SDK.
_AFFECT_LIVE, _AFFECT_CONFIG = 1, 2
_XML_INACTIVE = 2
_METADATA_ELEMENT = 2
_UNDEFINE_FLAGS = 1 | 2  # managed save image and snapshot metadata go with the domain
_MIGRATE_LIVE, _MIGRATE_PERSIST_DEST, _MIGRATE_UNDEFINE_SOURCE, _MIGRATE_UNSAFE = 1, 8, 16, 512
_MIGRATE_OFFLINE = 1024
#: An ACPI power-button press sent before the guest listens (while its kernel boots) is lost:
#: a graceful shutdown presses again at this interval until its deadline.
ACPI_REPEAT_S = 3.0


class LibvirtDriver(LibvirtWorkloads):
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
            Capability.NIC_HOTPLUG,
            Capability.USER_DATA,
            Capability.GUEST_ADDRESSES,
            Capability.CONSOLE_OUTPUT,
            Capability.METRICS,
            # NIC_HOTPLUG: PCI hot-unplug of a NIC from a running guest waits for its OS to eject
            # the device (a blank guest never does: detach then times out, typed).
            # Not CONSOLE_CONNECT: the guests have no graphics or TCP console.
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
