"""The oVirt driver: pet VMs on an oVirt / RHV engine through ``ovirtsdk4``.

Thin on purpose: session handling lives in :mod:`virtdrivers_ovirt.session`, the
translation of objects in :mod:`virtdrivers_ovirt.mapping`. Every asynchronous
engine operation is sent with a correlation id and awaited by state (and job) with
the configured timeout.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from virtdrivers.capabilities import Capability, DiskFormat
from virtdrivers.driver import Driver, EmbeddedEndpoint, EventCallback, ProgressCallback, Subscription
from virtdrivers.errors import (
    BackendUnavailable,
    DriverError,
    InstanceNotFound,
    InvalidSpec,
    InvalidState,
    NotFound,
    Timeout,
)
from virtdrivers.objects import (
    Aggregate,
    BackendInfo,
    ConsoleConnection,
    DiskInfo,
    DiskSpec,
    GuestAddress,
    HAPriority,
    HAState,
    HostResources,
    Image,
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
from virtdrivers_ovirt import guest_io, images, mapping, network, placement, reaping, snapshots, storage
from virtdrivers_ovirt.endpoint import endpoints
from virtdrivers_ovirt.events import StatusPoller
from virtdrivers_ovirt.session import OvirtSettings, Session, wait_until

log = logging.getLogger(__name__)

#: What every read of an instance follows, so the bulk listing and a single read agree: its
#: disks and its NICs inline, in the same round trip.
INFO_FOLLOW = "disk_attachments.disk,nics"

#: Placement affinities the engine knows, for :meth:`OvirtDriver.set_placement`.
AFFINITIES = placement.AFFINITIES


class OvirtDriver(Driver):
    """Pet VMs on oVirt: adopt, HA, placement, live migration, snapshots with memory, disks."""

    name = "ovirt"
    capabilities = frozenset(
        {
            Capability.SUSPEND,
            Capability.RESIZE_CPU,
            Capability.RESIZE_MEMORY,
            Capability.ATTACH_DISK,
            Capability.DETACH_DISK,
            Capability.SNAPSHOT,
            Capability.SNAPSHOT_MEMORY,
            Capability.LIVE_MIGRATE,
            Capability.AGGREGATES,
            Capability.HIGH_AVAILABILITY,
            Capability.HA_FAILOVER,
            Capability.ADOPT,
            Capability.EVENTS,
            Capability.DISK_QCOW2,
            Capability.DISK_RAW,
            Capability.REAP,
            Capability.IMAGES,
            Capability.IMAGE_COW,
            Capability.IMAGE_COPY,
            Capability.NETWORKS,
            Capability.NIC_HOTPLUG,
            Capability.USER_DATA,
            Capability.GUEST_ADDRESSES,
            Capability.CONSOLE_CONNECT,
        }
    )
    settings_model = OvirtSettings
    default_disk_format: ClassVar[DiskFormat | None] = DiskFormat.QCOW2
    # The engine refuses other characters in VM names ("Only lower-case and upper-case letters,
    # numbers, '_', '-', '.' are allowed"); \w also admits non-ASCII letters, as the engine does.
    name_pattern = r"[\w.-]+"
    name_rule = "may contain only letters, numbers, '_', '-' and '.'"
    settings: OvirtSettings

    @classmethod
    def embedded_endpoints(cls) -> Sequence[EmbeddedEndpoint]:
        return endpoints()

    def __init__(self, settings: Any = None, /, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._session = Session(self.settings)
        self._hosts: dict[str, str] = {}
        self._cluster: str | None = None
        self._storage_domain: str | None = None
        self._poller = StatusPoller(self._look, self.settings.event_interval)

    # -- plumbing --------------------------------------------------------------------------------

    @property
    def session(self) -> Session:
        return self._session

    def _call(self, func: Callable[[Any], Any], *, idempotent: bool = True) -> Any:
        return self._session.call(func, idempotent=idempotent)

    @staticmethod
    def _types() -> Any:
        import ovirtsdk4.types as types

        return types

    def _cid(self) -> dict[str, str]:
        return {"correlation_id": f"virtdrivers-{uuid.uuid4()}"}

    def _vm(self, instance_id: str, *, managed_only: bool = True, follow: str | None = None) -> Any:
        """The engine's VM; every operation on an instance starts here, so a malformed id stops here."""
        if not mapping.is_engine_id(instance_id):
            raise InstanceNotFound(instance_id)
        try:
            vm = self._call(lambda s: s.vms_service().vm_service(instance_id).get(follow=follow))
        except NotFound as exc:
            raise InstanceNotFound(instance_id) from exc
        if managed_only and not mapping.parse_marker(vm.comment)[0]:
            raise InstanceNotFound(instance_id)
        return vm

    def _observed(self, vm: Any) -> Any:
        """Tell the event poller about a state this driver waited for, so no transition goes unreported."""
        self._poller.observe(vm.id, mapping.seen(vm))
        return vm

    def _wait_status(self, instance_id: str, *wanted: str, what: str, failed_if: tuple[str, ...] = ()) -> Any:
        """Wait for one of ``wanted``; a status in ``failed_if`` means the engine gave up (InvalidState)."""
        return self._observed(
            wait_until(
                lambda: self._vm(instance_id, managed_only=False),
                lambda vm: mapping.value(vm.status) in wanted,
                timeout=self.settings.operation_timeout,
                what=what,
                failed=lambda vm: (
                    f"it is {mapping.value(vm.status)}" if mapping.value(vm.status) in failed_if else None
                ),
            )
        )

    def _wait_settled(self, instance_id: str) -> Any:
        return self._observed(
            wait_until(
                lambda: self._vm(instance_id, managed_only=False),
                lambda vm: mapping.value(vm.status) not in mapping.TRANSIENT,
                timeout=self.settings.operation_timeout,
                what=f"settling of {instance_id}",
            )
        )

    def _wait_job(self, correlation: dict[str, str], what: str) -> None:
        """Wait until every engine job of this correlation id has ended; InvalidState if one failed."""
        search = f"correlation_id={correlation['correlation_id']}"

        def failed(jobs: list[Any]) -> str | None:
            bad = [j.description for j in jobs if mapping.value(j.status) in ("failed", "aborted")]
            return "; ".join(bad) if bad else None

        wait_until(
            lambda: list(self._call(lambda s: s.jobs_service().list(search=search))),
            # The engine records a command's jobs before it answers the request; once none is
            # running any more, the work is done (finished jobs may also have been cleared already).
            lambda jobs: all(mapping.value(j.status) == "finished" for j in jobs),
            timeout=self.settings.operation_timeout,
            what=what,
            failed=failed,
        )

    def _host_names(self, refresh: bool = False) -> dict[str, str]:
        if refresh or not self._hosts:
            hosts = self._call(lambda s: s.hosts_service().list())
            self._hosts = {h.id: h.name for h in hosts}
        return self._hosts

    def _host_id(self, node: str) -> str:
        for attempt in (False, True):
            for host_id, name in self._host_names(refresh=attempt).items():
                if name == node:
                    return host_id
        raise NotFound(f"node {node!r} not found")

    def _info(self, vm: Any) -> InstanceInfo:
        """Our view of a VM read with :data:`INFO_FOLLOW`."""
        host = getattr(vm, "host", None)
        if host is not None and host.id not in self._hosts:
            self._host_names(refresh=True)
        return mapping.instance_info(vm, self._hosts, nics=network.nic_infos(vm), image=images.instance_image(vm))

    def _get_info(self, instance_id: str, *, managed_only: bool = True) -> InstanceInfo:
        return self._info(self._vm(instance_id, managed_only=managed_only, follow=INFO_FOLLOW))

    def _vm_service(self, s: Any, instance_id: str) -> Any:
        return s.vms_service().vm_service(instance_id)

    # -- connection -----------------------------------------------------------------------------

    def connect(self) -> None:
        if self._session.connected:
            return
        self._session.connect()
        try:
            clusters = self._call(lambda s: s.clusters_service().list())
            wanted = self.settings.cluster
            names = [c.name for c in clusters]
            if wanted is not None and wanted not in names:
                raise NotFound(f"ovirt: cluster {wanted!r} not found (have {', '.join(names)})")
            if not names:
                raise NotFound("ovirt: the engine has no cluster")
            self._cluster = wanted or names[0]
            domains = self._call(lambda s: s.storage_domains_service().list())
            data = [d.name for d in domains if mapping.value(d.type) == "data"]
            wanted = self.settings.storage_domain
            if wanted is not None and wanted not in data:
                raise NotFound(f"ovirt: data storage domain {wanted!r} not found")
            self._storage_domain = wanted or (data[0] if data else None)
            self._host_names(refresh=True)
        except BaseException:
            self._session.close()
            raise

    def close(self) -> None:
        self._poller.stop()
        self._session.close()

    def backend_info(self) -> BackendInfo:
        import ovirtsdk4

        api = self._call(lambda s: s.get())
        version = api.product_info.version.full_version if api.product_info and api.product_info.version else ""
        return BackendInfo(
            backend=(api.product_info.name if api.product_info else None) or "oVirt Engine",
            backend_version=version or "",
            endpoint=self.settings.url,
            libraries={"ovirt-engine-sdk-python": ovirtsdk4.version.VERSION},
        )

    # -- listing -------------------------------------------------------------------------------------

    def _pages(self, follow: str | None) -> list[Any]:
        """Every VM, in pages of ``page_size``: one search call per page, nothing per VM."""
        size = self.settings.page_size
        vms: list[Any] = []
        page = 1
        while True:
            search = f"sortby name asc page {page}"
            batch: list[Any] = self._call(
                lambda s, search=search: s.vms_service().list(search=search, max=size, follow=follow)  # type: ignore[misc]
            )
            vms.extend(batch)
            if len(batch) < size:
                return vms
            page += 1

    def _all_vms(self) -> list[InstanceInfo]:
        self._host_names(refresh=True)
        return [self._info(vm) for vm in self._pages(INFO_FOLLOW)]

    def _look(self) -> tuple[dict[str, mapping.Seen], dict[str, str]]:
        vms = self._pages(None)
        if any(vm.host is not None and vm.host.id not in self._hosts for vm in vms):
            self._host_names(refresh=True)
        return {vm.id: mapping.seen(vm) for vm in vms}, dict(self._hosts)

    def list_instances(self) -> list[InstanceInfo]:
        return [i for i in self._all_vms() if i.managed]

    def get_instance(self, instance_id: str) -> InstanceInfo:
        return self._get_info(instance_id)

    def find_instance(self, name: str) -> InstanceInfo:
        """One search by name; names the search language cannot quote fall back to the bulk list."""
        if '"' not in name and not any(c in name for c in "*?[]"):
            try:
                vms = self._call(lambda s: s.vms_service().list(search=f'name="{name}"', follow=INFO_FOLLOW))
            except InvalidSpec:
                vms = []
            for vm in vms:
                info = self._info(vm)
                if info.name == name and info.managed:
                    return info
            raise InstanceNotFound(name)
        return super().find_instance(name)

    # -- create and destroy --------------------------------------------------------------------------

    def create(self, spec: InstanceSpec, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        """Make the VM (from a template, with its cloud-init ``Initialization``), its NICs and
        disks, start it; crash-safe (REAP).

        A template, vNIC profile, NIC model or user data the engine would refuse is refused
        first, with only reads made. The create token goes into the VM's marker in the very
        ``add`` request that makes the VM, and into each disk's description in the request that
        makes the disk (for a template's disks, that same ``add``): a create killed at any point
        leaves nothing without a token. Clearing the tokens (disks first, the VM last) is the
        last backend change; the returned view is read before it, so a kill after the create is
        complete is as unlikely as it can be.
        """
        report = progress or (lambda fraction, message: None)
        types = self._types()
        if self._cluster is None:
            raise BackendUnavailable("ovirt: not connected")
        # Everything the engine would refuse is refused here, before the VM exists.
        if spec.user_data is not None:
            guest_io.check(spec.user_data)
        host_id = self._host_id(spec.node) if spec.node else None
        if spec.disks and self._storage_domain is None:
            raise InvalidSpec("the engine has no data storage domain for disks", field="disks")
        template = images.resolve(self._templates(), spec.image) if spec.image is not None else None
        plans = network.resolve(self._profiles(), spec.nics, "nics") if spec.nics else []
        token = CreateToken.new().encode()
        cid = self._cid()
        new_vm = mapping.vm_for_spec(
            types,
            spec,
            self._cluster,
            host_id,
            token=token,
            template=types.Template(id=template.id) if template is not None else None,
            initialization=(
                guest_io.initialization(types, spec.user_data, spec.name) if spec.user_data is not None else None
            ),
        )
        if template is not None:
            new_vm.disk_attachments = images.template_disk_attachments(types, template, mapping.disk_description(token))
        clone = images.clone_for(spec.image_mode) if template is not None else None
        vm = self._call(lambda s: s.vms_service().add(new_vm, clone=clone, query=cid), idempotent=False)
        try:
            report(0.1, "waiting for the engine to create the VM")
            self._wait_status(vm.id, "down", what=f"creation of {spec.name}")
            # A template's disks are made in the add itself: a copy that failed leaves its disk illegal.
            root_ids = self._template_disk_ids(vm.id) if template is not None else []
            for n, plan in enumerate(plans):
                self._add_nic(vm.id, plan, f"nic{n + 1}", field=f"nics.{n}")
            disk_ids = list(root_ids)
            for n, disk in enumerate(spec.disks):
                report(0.1 + 0.7 * n / len(spec.disks), f"creating disk {n + 1} of {len(spec.disks)}")
                slot = n + len(root_ids)
                disk_ids.append(
                    storage.add_disk(self, vm.id, spec.name, disk, slot, bootable=slot == 0, token=token).id
                )
            if spec.start:
                report(0.85, "starting")
                self._start(vm.id, use_cloud_init=True if spec.user_data is not None else None)
            info = self._get_info(vm.id)
            self._complete(vm.id, spec.metadata, disk_ids)
        except BaseException as exc:
            # Nothing half-made: the VM goes, and the engine removes the disks attached to it.
            # When the engine is unreachable the clean-up gives up at once (the session's outage
            # budget is spent), and the caller learns which VM is left instead of waiting again;
            # its token stays, so ``reap`` removes it once this process is gone (or after the grace).
            try:
                self._remove(vm.id)
            except DriverError as cleanup:
                log.warning("ovirt: could not remove the half-made VM %s (%s): %s", vm.id, spec.name, cleanup)
                exc.add_note(f"ovirt: the half-made VM {vm.id} ({spec.name}) could not be removed: {cleanup}")
            raise
        report(1.0, "created")
        return info

    def _complete(self, instance_id: str, metadata: Mapping[str, str], disk_ids: Sequence[str]) -> None:
        """Clear the create token: from each disk first, then from the VM's marker (the last change)."""
        types = self._types()
        for disk_id in disk_ids:
            self._call(
                lambda s, disk_id=disk_id: s.disks_service().disk_service(disk_id).update(types.Disk(description="")),  # type: ignore[misc]
                idempotent=True,
            )
        comment = mapping.with_marker("", metadata)
        self._call(lambda s: self._vm_service(s, instance_id).update(types.Vm(comment=comment)), idempotent=True)

    def _remove(self, instance_id: str) -> None:
        """Stop and remove a VM with its disks, and wait until it is gone.

        The engine refuses to remove a VM while it or one of its disks is locked (a create
        killed mid-disk leaves one locked until the engine finishes it), so wait for both.
        """
        vm = self._observed(
            wait_until(
                lambda: self._vm(instance_id, managed_only=False, follow="disk_attachments.disk"),
                lambda vm: mapping.value(vm.status) not in mapping.TRANSIENT and not mapping.locked_disks(vm),
                timeout=self.settings.operation_timeout,
                what=f"settling of {instance_id}",
            )
        )
        if mapping.value(vm.status) != "down":
            self._stop(instance_id)
        cid = self._cid()
        self._call(lambda s: self._vm_service(s, instance_id).remove(detach_only=False, query=cid), idempotent=False)

        def gone() -> bool:
            try:
                self._vm(instance_id, managed_only=False)
            except InstanceNotFound:
                return True
            return False

        wait_until(gone, bool, timeout=self.settings.operation_timeout, what=f"removal of {instance_id}")
        self._poller.observe(instance_id, None)

    def destroy(self, instance_id: str) -> None:
        self._vm(instance_id)
        self._remove(instance_id)

    # -- power --------------------------------------------------------------------------------------

    def _start(self, instance_id: str, *, use_cloud_init: bool | None = None) -> Any:
        """Run the VM; ``use_cloud_init`` attaches its ``Initialization`` (the engine also does on a first run)."""
        cid = self._cid()
        self._call(
            lambda s: self._vm_service(s, instance_id).start(use_cloud_init=use_cloud_init, query=cid),
            idempotent=False,
        )
        # The engine marks the VM launching before it answers: back to down means the run failed.
        return self._wait_status(instance_id, "up", what=f"start of {instance_id}", failed_if=("down",))

    def _stop(self, instance_id: str) -> Any:
        """A stop converges on ``down``: when the engine dies before its reply arrives, it may
        have taken the request. An idempotent read (waiting within the same reconnect budget)
        tells; the stop is sent again only if the VM is still running."""
        cid = self._cid()
        try:
            self._call(lambda s: self._vm_service(s, instance_id).stop(query=cid), idempotent=False)
        except BackendUnavailable:
            status = mapping.value(self._vm(instance_id, managed_only=False).status)
            if status not in ("down", "powering_down"):
                self._call(lambda s: self._vm_service(s, instance_id).stop(query=self._cid()), idempotent=False)
        return self._wait_status(instance_id, "down", what=f"stop of {instance_id}")

    def power_on(self, instance_id: str) -> InstanceInfo:
        self._vm(instance_id)
        status = mapping.value(self._wait_settled(instance_id).status)
        if status != "up":
            self._start(instance_id)
        return self._get_info(instance_id)

    def power_off(self, instance_id: str, *, timeout: float = 60.0, force: bool = False) -> InstanceInfo:
        self._vm(instance_id)
        status = mapping.value(self._wait_settled(instance_id).status)
        if status == "down":
            return self._get_info(instance_id)
        if force or timeout <= 0 or status != "up":
            self._stop(instance_id)
            return self._get_info(instance_id)
        cid = self._cid()
        self._call(lambda s: self._vm_service(s, instance_id).shutdown(query=cid), idempotent=False)
        try:
            self._observed(
                wait_until(
                    lambda: self._vm(instance_id, managed_only=False),
                    lambda vm: mapping.value(vm.status) == "down",
                    timeout=timeout,
                    what=f"graceful shutdown of {instance_id}",
                    # The engine gives up on a guest that ignores ACPI and reports it up again.
                    failed=lambda vm: "guest ignored the shutdown" if mapping.value(vm.status) == "up" else None,
                )
            )
        except (Timeout, InvalidState):
            self._stop(instance_id)
        return self._get_info(instance_id)

    def reboot(self, instance_id: str, *, hard: bool = False) -> InstanceInfo:
        self._vm(instance_id)
        status = mapping.value(self._wait_settled(instance_id).status)
        if status != "up":
            raise InvalidState(f"ovirt: instance {instance_id} is {status}, needs up")
        if hard:
            self._stop(instance_id)
            self._start(instance_id)
        else:
            cid = self._cid()
            self._call(lambda s: self._vm_service(s, instance_id).reboot(query=cid), idempotent=False)
            self._wait_job(cid, f"reboot of {instance_id}")
            self._wait_status(instance_id, "up", what=f"reboot of {instance_id}")
        return self._get_info(instance_id)

    def suspend(self, instance_id: str) -> InstanceInfo:
        self._vm(instance_id)
        status = mapping.value(self._wait_settled(instance_id).status)
        if status != "up":
            raise InvalidState(f"ovirt: instance {instance_id} is {status}, needs up")
        cid = self._cid()
        self._call(lambda s: self._vm_service(s, instance_id).suspend(query=cid), idempotent=False)
        self._wait_status(instance_id, "suspended", what=f"suspend of {instance_id}")
        return self._get_info(instance_id)

    def resume(self, instance_id: str) -> InstanceInfo:
        self._vm(instance_id)
        status = mapping.value(self._wait_settled(instance_id).status)
        if status != "suspended":
            raise InvalidState(f"ovirt: instance {instance_id} is {status}, needs suspended")
        self._start(instance_id)
        return self._get_info(instance_id)

    def resize(self, instance_id: str, *, vcpus: int | None = None, memory_mb: int | None = None) -> InstanceInfo:
        types = self._types()
        vm = self._vm(instance_id)
        changes: dict[str, Any] = {}
        if vcpus is not None:
            topo = vm.cpu.topology
            sockets, cores, threads = mapping.topology(vcpus, (topo.sockets or 1, topo.cores or 1, topo.threads or 1))
            changes["cpu"] = types.Cpu(topology=types.CpuTopology(sockets=sockets, cores=cores, threads=threads))
        if memory_mb is not None:
            changes["memory"] = memory_mb * mapping.MIB
            changes["memory_policy"] = types.MemoryPolicy(
                guaranteed=memory_mb * mapping.MIB, max=memory_mb * mapping.MIB * 4
            )
        self._call(lambda s: self._vm_service(s, instance_id).update(types.Vm(**changes)), idempotent=False)
        return self._get_info(instance_id)

    # -- nodes --------------------------------------------------------------------------------------

    def list_nodes(self) -> list[NodeInfo]:
        hosts = self._call(lambda s: s.hosts_service().list())
        self._hosts = {h.id: h.name for h in hosts}
        return [NodeInfo(name=h.name, hypervisor_type="kvm", state=mapping.value(h.status)) for h in hosts]

    def host_resources(self, node: str | None = None) -> HostResources:
        hosts = self._call(lambda s: s.hosts_service().list())
        self._hosts = {h.id: h.name for h in hosts}
        if not hosts:
            raise NotFound("ovirt: the engine has no hosts")
        host = next((h for h in hosts if h.name == node), None) if node else hosts[0]
        if host is None:
            raise NotFound(f"node {node!r} not found")
        vms = [i for i in self._all_vms() if i.node == host.name]
        running = [i for i in vms if i.power_state in (PowerState.RUNNING, PowerState.PAUSED)]
        domains = self._call(lambda s: s.storage_domains_service().list())
        data = [d for d in domains if mapping.value(d.type) == "data"]
        used = sum((d.used or 0) for d in data)
        total = used + sum((d.available or 0) for d in data)
        version = host.version.full_version if host.version is not None else ""
        return HostResources(
            node=host.name,
            vcpus_total=mapping.vcpus_of(host.cpu),
            vcpus_used=sum(i.vcpus for i in running),
            memory_mb_total=(host.memory or 0) // mapping.MIB,
            memory_mb_used=sum(i.memory_mb for i in running),
            disk_gib_total=total // mapping.GIB,
            disk_gib_used=used // mapping.GIB,
            hypervisor_type="kvm",
            hypervisor_version=version or "",
        )

    # -- storage --------------------------------------------------------------------------------------

    def attach_disk(self, instance_id: str, disk: DiskSpec) -> DiskInfo:
        return storage.attach_disk(self, instance_id, disk)

    def detach_disk(self, instance_id: str, disk_id: str, *, delete: bool = True) -> None:
        storage.detach_disk(self, instance_id, disk_id, delete=delete)

    # -- snapshots -------------------------------------------------------------------------------------

    def create_snapshot(self, instance_id: str, name: str, *, with_memory: bool = False) -> SnapshotInfo:
        return snapshots.create_snapshot(self, instance_id, name, with_memory=with_memory)

    def list_snapshots(self, instance_id: str) -> list[SnapshotInfo]:
        return snapshots.list_snapshots(self, instance_id)

    def revert_snapshot(self, instance_id: str, snapshot_id: str) -> InstanceInfo:
        return snapshots.revert_snapshot(self, instance_id, snapshot_id)

    def delete_snapshot(self, instance_id: str, snapshot_id: str) -> None:
        snapshots.delete_snapshot(self, instance_id, snapshot_id)

    # -- migration ------------------------------------------------------------------------------------

    def live_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        types = self._types()
        vm = self._wait_settled(instance_id)
        if not mapping.parse_marker(vm.comment)[0]:
            raise InstanceNotFound(instance_id)
        if mapping.value(vm.status) != "up":
            raise InvalidState(f"ovirt: instance {vm.name!r} is {mapping.value(vm.status)}, needs up")
        source = vm.host.id if vm.host is not None else None
        target = None
        if node is not None:
            target = self._host_id(node)
            if target == source:
                raise InvalidSpec(f"instance is on {node!r} already", field="node")
        if progress:
            progress(0.1, f"migrating to {node or 'a host the scheduler picks'}")
        cid = self._cid()
        host = types.Host(id=target) if target else None
        self._call(lambda s: self._vm_service(s, instance_id).migrate(host=host, query=cid), idempotent=False)
        self._wait_job(cid, f"migration of {vm.name}")
        moved = self._wait_status(instance_id, "up", what=f"migration of {vm.name}")
        if moved.host is None or moved.host.id == source:
            raise InvalidState(f"ovirt: migration of {vm.name!r} ended on its source host")
        if progress:
            progress(1.0, "migrated")
        return self._get_info(instance_id)

    # -- cluster and HA -------------------------------------------------------------------------------

    def list_aggregates(self) -> list[Aggregate]:
        clusters = self._call(lambda s: s.clusters_service().list())
        hosts = self._call(lambda s: s.hosts_service().list())
        self._hosts = {h.id: h.name for h in hosts}
        return [
            Aggregate(
                name=c.name,
                hosts=tuple(h.name for h in hosts if h.cluster is not None and h.cluster.id == c.id),
                metadata={
                    "id": c.id,
                    "description": c.description or "",
                    "ha_reservation": str(bool(c.ha_reservation)).lower(),
                },
            )
            for c in clusters
        ]

    def _ha(self, vm: Any) -> HAState:
        ha = vm.high_availability
        enabled = bool(ha is not None and ha.enabled)
        status = mapping.value(vm.status)
        info = self._info(vm)
        return HAState(
            instance_id=vm.id,
            enabled=enabled,
            priority=mapping.ha_priority_from_ovirt(ha.priority if ha is not None else None),
            owner_node=info.node,
            state=("online" if status == "up" else status) if enabled else None,
        )

    def set_high_availability(
        self, instance_id: str, enabled: bool, *, priority: HAPriority = HAPriority.MEDIUM
    ) -> HAState:
        types = self._types()
        self._vm(instance_id)
        update = types.Vm(
            high_availability=types.HighAvailability(enabled=enabled, priority=mapping.ha_priority_to_ovirt(priority))
        )
        self._call(lambda s: self._vm_service(s, instance_id).update(update), idempotent=False)
        return self._ha(self._vm(instance_id))

    def get_high_availability(self, instance_id: str) -> HAState:
        return self._ha(self._vm(instance_id))

    def failover(self, instance_id: str, node: str | None = None) -> HAState:
        """Move a running HA VM to another host now: a live migration (the engine restarts HA VMs itself
        when their host fails)."""
        vm = self._vm(instance_id)
        if vm.high_availability is None or not vm.high_availability.enabled:
            raise InvalidState(f"ovirt: {vm.name!r} is not highly available")
        self.live_migrate(instance_id, node)
        return self._ha(self._vm(instance_id))

    # -- events -------------------------------------------------------------------------------------

    def subscribe(self, callback: EventCallback) -> Subscription:
        poller = self._poller
        sid = poller.add(callback)
        return Subscription(lambda: poller.remove(sid))

    # -- placement (oVirt specific, beyond the contract) -------------------------------------------

    def get_placement(self, instance_id: str) -> tuple[str, tuple[str, ...]]:
        """The VM's affinity (migratable, pinned, user_migratable) and its preferred hosts by name."""
        return placement.get_placement(self, instance_id)

    def set_placement(self, instance_id: str, affinity: str, hosts: Sequence[str] = ()) -> tuple[str, tuple[str, ...]]:
        """Set how the engine may move the VM: ``pinned`` needs at least one host."""
        return placement.set_placement(self, instance_id, affinity, hosts)

    # -- workloads (contract 1.2) ------------------------------------------------------------------

    def _templates(self) -> list[Any]:
        return list(self._call(lambda s: s.templates_service().list(follow=images.FOLLOW)))

    def _profiles(self) -> list[Any]:
        return list(self._call(lambda s: s.vnic_profiles_service().list(follow=network.PROFILE_FOLLOW)))

    def _template_disk_ids(self, instance_id: str) -> list[str]:
        """The disks the engine made from the template; InvalidState if copying one failed."""
        atts = self._call(lambda s: self._vm_service(s, instance_id).disk_attachments_service().list(follow="disk"))
        if any(mapping.value(a.disk.status) == "illegal" for a in atts if a.disk is not None):
            raise InvalidState(f"ovirt: the engine could not make the disks of {instance_id} from its template")
        return [mapping.attachment_disk_id(a) for a in atts]

    def _add_nic(self, instance_id: str, plan: network.NicPlan, name: str, *, field: str) -> NicInfo:
        """Add one NIC (hot-plugged on a running VM); a MAC another VM holds is the caller's error."""
        nic = network.nic_for_plan(self._types(), plan, name)
        try:
            added = self._call(lambda s: self._vm_service(s, instance_id).nics_service().add(nic), idempotent=False)
        except InvalidState as exc:
            if "MAC Address is already in use" in str(exc):
                raise InvalidSpec(f"MAC {plan.mac} is in use", field=f"{field}.mac") from exc
            raise
        return network.nic_info(added)

    def list_images(self) -> list[Image]:
        return images.images(self._templates())

    def list_networks(self) -> list[Network]:
        return network.networks(self._profiles())

    def attach_nic(self, instance_id: str, nic: NicSpec) -> NicInfo:
        vm = self._vm(instance_id, follow="nics")
        plan = network.resolve(self._profiles(), [nic], "nic")[0]
        return self._add_nic(instance_id, plan, network.next_nic_name(vm), field="nic")

    def detach_nic(self, instance_id: str, nic_id: str) -> None:
        """Unplug the NIC first where the VM runs: the engine refuses to remove a plugged one then."""
        vm = self._vm(instance_id, follow="nics")
        found = next((n for n in vm.nics or () if n.id == nic_id), None) if mapping.is_engine_id(nic_id) else None
        if found is None:
            raise NotFound(f"NIC {nic_id!r} not on {instance_id!r}")
        try:
            if found.plugged and mapping.value(vm.status) != "down":
                self._call(
                    lambda s: self._vm_service(s, instance_id).nics_service().nic_service(nic_id).deactivate(),
                    idempotent=True,
                )
            self._call(
                lambda s: self._vm_service(s, instance_id).nics_service().nic_service(nic_id).remove(),
                idempotent=False,
            )
        except NotFound as exc:
            raise NotFound(f"NIC {nic_id!r} not on {instance_id!r}") from exc

    def guest_addresses(self, instance_id: str) -> list[GuestAddress]:
        """One read: the VM with its NICs and its agent's reported devices."""
        vm = self._vm(instance_id, follow="nics,reported_devices")
        return network.addresses(vm, datetime.datetime.now(datetime.UTC))

    def all_guest_addresses(self, *, managed_only: bool = True) -> dict[str, list[GuestAddress]]:
        """Every (managed) instance's addresses by id, in the pages of the bulk listing (oVirt specific).

        A constant number of round trips whatever the number of VMs: each page of the VM
        search carries every VM's NICs and reported devices inline.
        """
        now = datetime.datetime.now(datetime.UTC)
        return {
            vm.id: network.addresses(vm, now)
            for vm in self._pages("nics,reported_devices")
            if not managed_only or mapping.parse_marker(vm.comment)[0]
        }

    def console_connection(self, instance_id: str) -> ConsoleConnection:
        """A graphics console of the running VM and a one-time ticket the engine sets on its display."""
        vm = self._vm(instance_id)
        if mapping.value(vm.status) != "up":
            raise InvalidState(f"ovirt: instance {vm.name!r} is {mapping.value(vm.status)}, needs up")

        def consoles(s: Any) -> Any:
            return self._vm_service(s, instance_id).graphics_consoles_service()

        console = guest_io.choose_console(self._call(lambda s: consoles(s).list(current=True)))
        if console is None:
            raise InvalidState(f"ovirt: instance {vm.name!r} has no graphics console listening")
        ask = self._types().Ticket(expiry=guest_io.TICKET_SECONDS)
        ticket = self._call(lambda s: consoles(s).console_service(console.id).ticket(ticket=ask), idempotent=False)
        return guest_io.connection(console, ticket, datetime.datetime.now(datetime.UTC))

    def instance_statistics(self, instance_id: str) -> InstanceMetrics:
        """The engine's counters for an instance in one read (oVirt specific, beyond the contract).

        Not the contract's ``instance_metrics`` (METRICS): the engine reports CPU only as a
        percentage gauge, never the cumulative CPU time that operation promises; memory in use
        and the NICs' byte counters are here.
        """
        vm = self._vm(instance_id, follow="statistics,nics.statistics")
        return guest_io.metrics(instance_id, vm, datetime.datetime.now(datetime.UTC))

    # -- crash safety ----------------------------------------------------------------------------

    def reap(self, *, dry_run: bool = False, grace_s: float = 3600.0) -> list[Leftover]:
        return reaping.reap(self, dry_run=dry_run, grace_s=grace_s)

    # -- pets ---------------------------------------------------------------------------------------

    def list_unmanaged(self) -> list[InstanceInfo]:
        return [i for i in self._all_vms() if not i.managed]

    def adopt(self, instance_id: str) -> InstanceInfo:
        """Mark the VM managed by adding a line to its comment; nothing else changes, nothing restarts."""
        types = self._types()
        vm = self._vm(instance_id, managed_only=False)
        if mapping.parse_marker(vm.comment)[0]:
            raise InvalidState(f"ovirt: {vm.name!r} is managed already")
        comment = mapping.with_marker(vm.comment, {})
        self._call(lambda s: self._vm_service(s, instance_id).update(types.Vm(comment=comment)), idempotent=False)
        return self._get_info(instance_id)
