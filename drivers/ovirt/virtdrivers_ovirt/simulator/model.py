"""The engine's inventory and its state machine, with no HTTP in it.

Everything the engine does asynchronously (locking images, powering up, saving
state, migrating) is a real transition here: an operation moves an object into
its transient status at once and a scheduler thread finishes it a little later,
so clients must wait on state or jobs exactly as they would against an engine.
Invalid requests raise :class:`EngineFault` carrying the engine's own wording.
"""

from __future__ import annotations

import datetime
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtdrivers_ovirt.simulator.identity import ENGINE_FULL_VERSION as ENGINE_FULL_VERSION
from virtdrivers_ovirt.simulator.identity import ENGINE_NAME as ENGINE_NAME
from virtdrivers_ovirt.simulator.identity import ENGINE_VERSION as ENGINE_VERSION
from virtdrivers_ovirt.simulator.identity import SIMULATOR_NAME as SIMULATOR_NAME
from virtdrivers_ovirt.simulator.identity import SIMULATOR_VERSION as SIMULATOR_VERSION
from virtdrivers_ovirt.simulator.scheduler import Scheduler as Scheduler

if TYPE_CHECKING:
    from virtdrivers_ovirt.simulator.workloads import Network, Nic, Template, VnicProfile

#: Ended jobs the engine still shows (older ones are cleared, as the engine's job cleanup does).
KEPT_JOBS = 100
#: Names the engine accepts for VMs: letters, digits, '_', '-' and '.' (the driver checks the same up front).
VM_NAME_PATTERN = r"[\w.-]+"
GIB = 1024**3
MIB = 1024**2
BLANK_TEMPLATE_ID = "00000000-0000-0000-0000-000000000000"
#: The engine's ``VmGracefulShutdownTimeout``: how long it waits for a guest to act on a
#: shutdown before it gives up and reports the VM up again.
GRACEFUL_SHUTDOWN_TIMEOUT = 30.0


class EngineFault(Exception):
    """A request the engine refuses: HTTP status, fault reason and the bracketed detail."""

    def __init__(self, status: int, detail: str, reason: str = "Operation Failed") -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


def conflict(action: str, why: str) -> EngineFault:
    """The engine's validation failures read "[Cannot <action> <object>. <why>]" with HTTP 409."""
    return EngineFault(409, f"[Cannot {action}. {why}]")


def not_found(kind: str, ref: str) -> EngineFault:
    return EngineFault(404, f"Entity not found: {kind} {ref}", reason="Not Found")


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class Host:
    id: str
    name: str
    cluster_id: str
    address: str
    cores: int = 16
    sockets: int = 2
    threads: int = 2
    memory: int = 256 * GIB
    status: str = "up"


@dataclass
class Cluster:
    id: str
    name: str
    description: str = ""


@dataclass
class StorageDomain:
    id: str
    name: str
    available: int = 4096 * GIB
    used: int = 0
    committed: int = 0
    storage_type: str = "nfs"


@dataclass
class Disk:
    id: str
    name: str
    provisioned_size: int
    format: str
    sparse: bool
    storage_domain_id: str
    status: str = "locked"
    actual_size: int = 0
    description: str = ""
    #: The template disk a thin VM disk is a copy-on-write child of (not shown by the API).
    parent_id: str | None = None


@dataclass
class Attachment:
    disk_id: str
    interface: str = "virtio_scsi"
    bootable: bool = False
    active: bool = True


@dataclass
class Snapshot:
    id: str
    description: str
    date: datetime.datetime
    persist_memorystate: bool
    status: str = "locked"
    snapshot_type: str = "regular"
    #: The VM's configuration, disks and run state when it was taken.
    image: Vm | None = None


@dataclass
class Vm:
    id: str
    name: str
    cluster_id: str
    memory: int
    sockets: int = 1
    cores: int = 1
    threads: int = 1
    description: str = ""
    comment: str = ""
    status: str = "down"
    host_id: str | None = None
    ha_enabled: bool = False
    ha_priority: int = 1
    affinity: str = "migratable"
    preferred_host_ids: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    creation_time: datetime.datetime = field(default_factory=now)
    start_time: datetime.datetime | None = None
    stop_time: datetime.datetime | None = None
    origin: str = "ovirt"
    #: Guest has no agent and ignores ACPI shutdown (a pet that needs a forced stop).
    ignores_shutdown: bool = False
    #: A fault armed by :meth:`Engine.fail_next_create`: this VM's first disk goes illegal, or
    #: (when it gets no disk) its first run fails, as storage or a host failing mid-build would.
    build_fails: bool = False
    #: Counts shutdown requests, so a late "guest ignored it" transition only ends its own request.
    shutdowns: int = 0
    #: The template it was made from (its lineage: thin disks are children of the template's).
    template_id: str = BLANK_TEMPLATE_ID
    nics: list[Nic] = field(default_factory=list)
    #: The VM's own ``Initialization`` (cloud-init fields), kept as the engine keeps it.
    initialization: dict[str, Any] | None = None
    #: The engine's ``initialized``: false until the first run, which attaches the initialization.
    initialized: bool = False
    #: The cloud-init payload attached to the last run that had one (:func:`.workloads.payload_at_start`).
    payload: dict[str, Any] | None = None
    #: Console tickets set on the running display (the newest few).
    tickets: list[str] = field(default_factory=list)

    @property
    def vcpus(self) -> int:
        return self.sockets * self.cores * self.threads


@dataclass
class Job:
    id: str
    description: str
    correlation_id: str | None
    status: str = "started"
    start_time: datetime.datetime = field(default_factory=now)
    end_time: datetime.datetime | None = None
    last_updated: datetime.datetime = field(default_factory=now)


class Engine:
    """An oVirt engine's inventory: one data center, one cluster of hosts, one NFS storage domain."""

    def __init__(
        self,
        *,
        hosts: int = 3,
        pets: int = 0,
        delay: float = 0.02,
        shutdown_timeout: float = GRACEFUL_SHUTDOWN_TIMEOUT,
    ) -> None:
        self.lock = threading.RLock()
        #: Where the inventory is kept across restarts of the process (:mod:`.persist`); None: memory only.
        self.state_file: Path | None = None
        self.delay = delay
        self.shutdown_timeout = shutdown_timeout
        #: Creates still to fail half-way (:meth:`fail_next_create`).
        self.failing_creates = 0
        self.scheduler = Scheduler(self.lock, self.changed)
        self.clusters: dict[str, Cluster] = {}
        self.hosts: dict[str, Host] = {}
        self.storage_domains: dict[str, StorageDomain] = {}
        self.vms: dict[str, Vm] = {}
        self.disks: dict[str, Disk] = {}
        self.jobs: dict[str, Job] = {}
        cluster = Cluster(str(uuid.uuid4()), "Default", "The default server cluster")
        self.clusters[cluster.id] = cluster
        for i in range(hosts):
            host = Host(str(uuid.uuid4()), f"host{i + 1}", cluster.id, f"192.0.2.{i + 11}")
            self.hosts[host.id] = host
        sd = StorageDomain(str(uuid.uuid4()), "nfs-data")
        self.storage_domains[sd.id] = sd
        self.templates: dict[str, Template] = {}
        self.networks: dict[str, Network] = {}
        self.vnic_profiles: dict[str, VnicProfile] = {}
        from virtdrivers_ovirt.simulator import workloads

        workloads.seed(self)
        for i in range(pets):
            self.add_pet(f"pet-{i + 1}")

    def close(self) -> None:
        self.scheduler.stop()

    def changed(self) -> None:
        """Save the inventory after a change, when it has a state file; the caller holds the lock."""
        if self.state_file is not None:
            from virtdrivers_ovirt.simulator import persist

            persist.save(self, self.state_file)

    # -- lookups ------------------------------------------------------------------------------

    def vm(self, vm_id: str) -> Vm:
        vm = self.vms.get(vm_id)
        if vm is None:
            raise not_found("vm", vm_id)
        return vm

    def disk(self, disk_id: str) -> Disk:
        disk = self.disks.get(disk_id)
        if disk is None:
            raise not_found("disk", disk_id)
        return disk

    def snapshot(self, vm: Vm, snapshot_id: str) -> Snapshot:
        for snap in vm.snapshots:
            if snap.id == snapshot_id:
                return snap
        raise not_found("snapshot", snapshot_id)

    def host_by(self, ref_id: str | None, ref_name: str | None) -> Host:
        for host in self.hosts.values():
            if (ref_id and host.id == ref_id) or (ref_name and host.name == ref_name):
                return host
        raise EngineFault(400, f"Entity not found: host {ref_id or ref_name}", reason="Operation Failed")

    def cluster_by(self, ref_id: str | None, ref_name: str | None) -> Cluster:
        for cluster in self.clusters.values():
            if (ref_id and cluster.id == ref_id) or (ref_name and cluster.name == ref_name):
                return cluster
        raise EngineFault(400, f"Entity not found: Cluster: {ref_id or ref_name}")

    def storage_domain_by(self, ref_id: str | None, ref_name: str | None) -> StorageDomain:
        for sd in self.storage_domains.values():
            if (ref_id and sd.id == ref_id) or (ref_name and sd.name == ref_name):
                return sd
        raise EngineFault(400, f"Entity not found: Storage domain: {ref_id or ref_name}")

    # -- jobs -----------------------------------------------------------------------------------

    def begin_job(self, description: str, correlation_id: str | None) -> Job:
        job = Job(str(uuid.uuid4()), description, correlation_id)
        self.jobs[job.id] = job
        return job

    def end_job(self, job: Job, status: str = "finished") -> None:
        job.status, job.end_time, job.last_updated = status, now(), now()
        # The engine clears ended jobs after a while (its job cleanup): keep the newest ones only,
        # so the jobs table (and the state file written on every change) stays small.
        ended = [j for j in self.jobs.values() if j.status != "started"]
        for old in ended[: max(0, len(ended) - KEPT_JOBS)]:
            del self.jobs[old.id]

    def _then(self, job: Job, func: Callable[[], str | None], delay: float | None = None) -> None:
        """Finish ``func`` after the engine's delay (or ``delay``) and close the job with it.

        ``func`` returns the job's final status when it is not "finished" (a transition the
        engine gave up on ends its job "failed"). A bug in ``func`` fails the job and is
        swallowed: it must not kill the scheduler thread every later transition runs on.
        """

        def run() -> None:
            try:
                status = func() or "finished"
            except Exception:
                status = "failed"
            self.end_job(job, status)

        self.scheduler.later(self.delay if delay is None else delay, run)

    # -- fault knobs ------------------------------------------------------------------------------

    def fail_next_create(self, count: int = 1) -> None:
        """Make the next ``count`` VM creations fail after the engine has begun them.

        The VM record is made as usual; then its first disk ends ``illegal`` (its job
        failed), or, for a VM that gets no disk, its first run ends ``down`` (the launch
        failed). What a client that made the VM does next (clean up) is up to it.
        """
        with self.lock:
            self.failing_creates += count

    def set_acpi_deaf(self, vm_id: str, deaf: bool = True) -> None:
        """Make a VM's guest ignore ``shutdown``: it stays ``powering_down`` until the engine's
        graceful-shutdown timeout, then ``up`` again; only ``stop`` turns it off."""
        with self.lock:
            self.vm(vm_id).ignores_shutdown = deaf

    def set_host_down(self, name: str, down: bool = True) -> Host:
        """A host stops answering (``non_responsive``) or comes back (``up``).

        While it is down its VMs are ``unknown`` (the engine cannot see them) and the
        scheduler places nothing there. When it comes back it has been rebooted, as a
        dead host is: the VMs that were still unknown on it are ``down``.
        """
        with self.lock:
            host = next((h for h in self.hosts.values() if h.name == name), None)
            if host is None:
                raise not_found("host", name)
            if down and host.status != "non_responsive":
                host.status = "non_responsive"
                for vm in self.vms.values():
                    if vm.host_id == host.id and vm.status not in ("down", "suspended"):
                        vm.status = "unknown"
            elif not down and host.status != "up":
                host.status = "up"
                for vm in self.vms.values():
                    if vm.host_id == host.id and vm.status == "unknown":
                        vm.status, vm.host_id, vm.stop_time = "down", None, now()
            return host

    # -- inventory made "outside" virtdrivers --------------------------------------------------

    def add_pet(self, name: str) -> Vm:
        """A long-lived VM as an administrator made it (:func:`.pets.add_pet`)."""
        from virtdrivers_ovirt.simulator import pets

        return pets.add_pet(self, name)

    @staticmethod
    def _active_snapshot() -> Snapshot:
        return Snapshot(str(uuid.uuid4()), "Active VM", now(), False, "ok", "active")

    @staticmethod
    def _image(vm: Vm) -> Vm:
        return replace(
            vm,
            attachments=[replace(a) for a in vm.attachments],
            nics=[replace(n) for n in vm.nics],
            snapshots=[],
            preferred_host_ids=list(vm.preferred_host_ids),
        )

    # -- VMs --------------------------------------------------------------------------------

    def add_vm(
        self,
        vm: Vm,
        correlation_id: str | None,
        *,
        template: Template | None = None,
        clone: bool = False,
        overrides: dict[str, dict[str, str]] | None = None,
    ) -> Vm:
        """Make a VM (from ``template``: its disks made as thin children, or copies with ``clone``)."""
        with self.lock:
            if re.fullmatch(VM_NAME_PATTERN, vm.name) is None:
                # The engine's own wording (seen in its UI and in imports), attribute vm.vmStatic.name.
                raise EngineFault(
                    400,
                    "[Can not add VM. The given name contains special characters. Only lower-case and upper-case "
                    "letters, numbers, '_', '-', '.' are allowed.]",
                )
            if any(v.name == vm.name for v in self.vms.values()):
                raise conflict("add VM", "The VM name is already in use, please choose a unique name and try again.")
            for host_id in vm.preferred_host_ids:
                if host_id not in self.hosts:
                    raise not_found("host", host_id)
            vm.status = "image_locked"
            vm.snapshots = [self._active_snapshot()]
            made: list[Disk] = []
            if template is not None:
                from virtdrivers_ovirt.simulator import workloads

                vm.template_id = template.id
                made = workloads.disks_from_template(self, vm, template, clone=clone, overrides=overrides or {})
            if self.failing_creates > 0:
                self.failing_creates -= 1
                vm.build_fails = True
            self.vms[vm.id] = vm
            source = template.name if template is not None else "Blank"
            job = self.begin_job(f"Creating VM {vm.name} from Template {source} in Cluster Default", correlation_id)
            if made and vm.build_fails:
                # An armed create fault on a VM from a template: copying the template's first disk
                # fails (a storage error); the VM ends down with that disk illegal, its job failed.
                vm.build_fails = False

                def failed() -> str:
                    made[0].status = "illegal"
                    for disk in made[1:]:
                        disk.status = "ok"
                    if vm.status == "image_locked":
                        vm.status = "down"
                    return "failed"

                self._then(job, failed)
                return vm

            def done() -> None:
                for disk in made:
                    if disk.status == "locked":
                        disk.status = "ok"
                if vm.status == "image_locked":
                    vm.status = "down"

            self._then(job, done)
            return vm

    def update_vm(self, vm: Vm, changes: dict[str, object]) -> Vm:
        with self.lock:
            self._unlocked(vm, "update VM")
            name = changes.get("name")
            if isinstance(name, str) and name != vm.name and any(v.name == name for v in self.vms.values()):
                raise conflict("update VM", "The VM name is already in use.")
            hosts = changes.get("preferred_host_ids")
            if isinstance(hosts, list):
                for host_id in hosts:
                    if host_id not in self.hosts:
                        raise not_found("host", str(host_id))
            for key, value in changes.items():
                setattr(vm, key, value)
            return vm

    def remove_vm(self, vm: Vm, correlation_id: str | None, *, detach_only: bool = False) -> None:
        with self.lock:
            self._unlocked(vm, "remove VM")
            if vm.status != "down":
                raise conflict("remove VM", "VM is running.")
            job = self.begin_job(f"Removing VM {vm.name} from system", correlation_id)
            vm.status = "image_locked"
            for att in vm.attachments:
                self.disks[att.disk_id].status = "locked"

            def done() -> None:
                for att in vm.attachments:
                    disk = self.disks.pop(att.disk_id, None)
                    if disk is not None and detach_only:
                        disk.status = "ok"
                        self.disks[disk.id] = disk
                    elif disk is not None:
                        self._release(disk)
                # Images only its snapshots still held go with the VM, whatever detach_only says.
                attached = {a.disk_id for a in vm.attachments}
                in_snapshots = {a.disk_id for s in vm.snapshots if s.image is not None for a in s.image.attachments}
                self._drop_orphans(replace(vm, attachments=[], snapshots=[]), in_snapshots - attached)
                self.vms.pop(vm.id, None)

            self._then(job, done)

    def _release(self, disk: Disk) -> None:
        sd = self.storage_domains.get(disk.storage_domain_id)
        if sd is not None:
            sd.committed -= disk.provisioned_size
            sd.used -= disk.actual_size

    def _unlocked(self, vm: Vm, action: str) -> None:
        if vm.status == "image_locked" or any(s.status == "locked" for s in vm.snapshots):
            raise conflict(action, "VM is locked. Please try again in a few minutes.")
        if any(self.disks[a.disk_id].status == "locked" for a in vm.attachments if a.disk_id in self.disks):
            raise conflict(action, "Disk is locked. Please try again later.")

    def _schedule_host(self, vm: Vm, exclude: str | None = None) -> Host:
        """The engine's scheduler: a preferred host if one is up, else the up host with the least memory in use."""
        up = [h for h in self.hosts.values() if h.status == "up" and h.cluster_id == vm.cluster_id and h.id != exclude]
        preferred = [h for h in up if h.id in vm.preferred_host_ids]
        if preferred and exclude is None:
            return preferred[0]
        if vm.affinity == "pinned" and vm.preferred_host_ids and exclude is None:
            raise conflict("run VM", "The host the VM is pinned to is not available.")
        if not up:
            raise conflict(
                "run VM", "There are no hosts to use. Check that the cluster contains at least one host in Up state."
            )

        def load(host: Host) -> int:
            return sum(v.memory for v in self.vms.values() if v.host_id == host.id)

        return min(up, key=lambda h: (load(h), h.name))

    def start(
        self,
        vm: Vm,
        correlation_id: str | None,
        *,
        run_once: dict[str, Any] | None = None,
        use_cloud_init: bool | None = None,
    ) -> None:
        with self.lock:
            self._unlocked(vm, "run VM")
            if vm.status in ("up", "powering_up", "wait_for_launch", "reboot_in_progress", "migrating"):
                raise conflict("run VM", "VM is running.")
            if vm.status not in ("down", "suspended"):
                raise conflict("run VM", f"VM status is {vm.status}.")
            resuming = vm.status == "suspended"
            host = self.hosts[vm.host_id] if resuming and vm.host_id in self.hosts else self._schedule_host(vm)
            if not resuming:
                from virtdrivers_ovirt.simulator import workloads

                workloads.payload_at_start(vm, run_once, use_cloud_init)
            vm.host_id = host.id
            vm.status = "restoring_state" if resuming else "powering_up"
            job = self.begin_job(f"Launching VM {vm.name}", correlation_id)
            if vm.build_fails:
                # An armed create fault on a VM without disks: the launch fails on the host.
                vm.build_fails = False

                def failed() -> str:
                    if vm.status in ("powering_up", "restoring_state"):
                        vm.status, vm.host_id, vm.stop_time = "down", None, now()
                    return "failed"

                self._then(job, failed)
                return

            def done() -> None:
                if vm.status in ("powering_up", "restoring_state"):
                    vm.status, vm.start_time = "up", now()

            self._then(job, done)

    def stop(self, vm: Vm, correlation_id: str | None) -> None:
        with self.lock:
            if vm.status == "image_locked":
                raise conflict("stop VM", "VM is locked. Please try again in a few minutes.")
            if vm.status == "down":
                raise conflict("stop VM", "VM is not running.")
            job = self.begin_job(f"Stopping VM {vm.name}", correlation_id)
            vm.status = "powering_down"

            def done() -> None:
                vm.status, vm.host_id, vm.stop_time = "down", None, now()

            self._then(job, done)

    def shutdown(self, vm: Vm, correlation_id: str | None) -> None:
        with self.lock:
            if vm.status not in ("up", "powering_up", "reboot_in_progress"):
                raise conflict("shutdown VM", "VM is not running.")
            job = self.begin_job(f"Shutting down VM {vm.name}", correlation_id)
            vm.status = "powering_down"
            vm.shutdowns += 1
            if vm.ignores_shutdown:
                # The guest never answers ACPI: it stays powering down until the engine's graceful
                # shutdown timeout, then the engine gives up (the job fails) and reports it up again.
                request = vm.shutdowns

                def ignored() -> str:
                    if vm.status == "powering_down" and vm.shutdowns == request:
                        vm.status = "up"
                    return "failed"

                self._then(job, ignored, self.shutdown_timeout)
                return

            def done() -> None:
                if vm.status == "powering_down":
                    vm.status, vm.host_id, vm.stop_time = "down", None, now()

            self._then(job, done)

    def reboot(self, vm: Vm, correlation_id: str | None) -> None:
        with self.lock:
            if vm.status != "up":
                raise conflict("reboot VM", "VM is not running.")
            job = self.begin_job(f"Rebooting VM {vm.name}", correlation_id)
            vm.status = "reboot_in_progress"

            def done() -> None:
                if vm.status == "reboot_in_progress":
                    vm.status, vm.start_time = "up", now()

            self._then(job, done)

    def suspend(self, vm: Vm, correlation_id: str | None) -> None:
        with self.lock:
            if vm.status != "up":
                raise conflict("hibernate VM", "VM is not running.")
            job = self.begin_job(f"Suspending VM {vm.name}", correlation_id)
            vm.status = "saving_state"

            def done() -> None:
                if vm.status == "saving_state":
                    vm.status = "suspended"

            self._then(job, done)

    def migrate(self, vm: Vm, host: Host | None, correlation_id: str | None, *, force: bool = False) -> Host:
        with self.lock:
            if vm.status != "up":
                raise conflict("migrate VM", "VM is not running.")
            if vm.affinity == "pinned" and not force:
                raise conflict("migrate VM", "VM is pinned to a specific Host.")
            if host is not None and host.id == vm.host_id:
                raise conflict("migrate VM", "Migrating a VM to the same Host it is running on is not allowed.")
            if host is not None and host.status != "up":
                raise conflict("migrate VM", f"Host {host.name} is not in Up status.")
            target = host or self._schedule_host(vm, exclude=vm.host_id)
            job = self.begin_job(f"Migrating VM {vm.name} to Host {target.name}", correlation_id)
            vm.status = "migrating"

            def done() -> None:
                if vm.status == "migrating":
                    vm.status, vm.host_id = "up", target.id

            self._then(job, done)
            return target

    # -- disks ----------------------------------------------------------------------------------

    def add_disk(self, vm: Vm | None, disk: Disk, attachment: Attachment | None, correlation_id: str | None) -> Disk:
        with self.lock:
            if vm is not None:
                self._unlocked(vm, "add Virtual Disk")
            if (
                disk.format == "raw"
                and disk.sparse
                and self.storage_domains[disk.storage_domain_id].storage_type != "nfs"
            ):
                raise conflict(
                    "add Virtual Disk", "Disk configuration (RAW Sparse) is incompatible with the storage domain type."
                )
            sd = self.storage_domains[disk.storage_domain_id]
            need = disk.provisioned_size if not disk.sparse else GIB
            if sd.available - sd.used < need or disk.provisioned_size > sd.available:
                raise conflict("add Virtual Disk", f"Low disk space on Storage Domain {sd.name}.")
            disk.status = "locked"
            disk.actual_size = 0 if disk.sparse else disk.provisioned_size
            sd.committed += disk.provisioned_size
            sd.used += disk.actual_size
            self.disks[disk.id] = disk
            if vm is not None and attachment is not None:
                vm.attachments.append(attachment)
            job = self.begin_job(f"Adding Disk {disk.name}", correlation_id)
            if vm is not None and vm.build_fails:
                # An armed create fault: the disk exists (attached, space committed) and then the
                # storage fails to make its volume, as a full or lost storage domain would.
                vm.build_fails = False

                def failed() -> str:
                    if disk.status == "locked":
                        disk.status = "illegal"
                    return "failed"

                self._then(job, failed)
                return disk

            def done() -> None:
                if disk.status == "locked":
                    disk.status = "ok"

            self._then(job, done)
            return disk

    def detach_disk(self, vm: Vm, disk_id: str, *, delete: bool, correlation_id: str | None) -> None:
        with self.lock:
            att = next((a for a in vm.attachments if a.disk_id == disk_id), None)
            if att is None:
                raise not_found("disk attachment", disk_id)
            disk = self.disk(disk_id)
            if disk.status == "locked":
                raise conflict("remove Virtual Disk", "Disk is locked. Please try again later.")
            if att.active and vm.status not in ("down",) and att.bootable:
                raise conflict("detach Virtual Disk", "Disk is in use by a running VM.")
            vm.attachments.remove(att)
            if delete:
                job = self.begin_job(f"Removing Disk {disk.name}", correlation_id)
                disk.status = "locked"

                def done() -> None:
                    removed = self.disks.pop(disk_id, None)
                    if removed is not None:
                        self._release(removed)

                self._then(job, done)

    def vms_holding(self, disk_id: str) -> int:
        """How many VMs refer to a disk: attached, or held by one of their snapshots."""
        return sum(
            1
            for vm in self.vms.values()
            if any(a.disk_id == disk_id for a in vm.attachments)
            or any(a.disk_id == disk_id for s in vm.snapshots if s.image is not None for a in s.image.attachments)
        )

    def update_disk(self, disk: Disk, changes: dict[str, str]) -> Disk:
        """Change a disk's alias or description (allowed while its VM runs, not while it is locked)."""
        with self.lock:
            if disk.status == "locked":
                raise conflict("edit Virtual Disk", "Disk is locked. Please try again later.")
            for key, value in changes.items():
                setattr(disk, key, value)
            return disk

    def remove_disk(self, disk: Disk, correlation_id: str | None) -> None:
        with self.lock:
            for tpl in self.templates.values():
                if any(a.disk_id == disk.id for a in tpl.attachments):
                    raise conflict("remove Virtual Disk", f"Disk belongs to template {tpl.name}.")
            for vm in self.vms.values():
                if any(a.disk_id == disk.id for a in vm.attachments):
                    raise conflict("remove Virtual Disk", f"Disk is attached to VM {vm.name}.")
            if disk.status == "locked":
                raise conflict("remove Virtual Disk", "Disk is locked. Please try again later.")
            job = self.begin_job(f"Removing Disk {disk.name}", correlation_id)
            disk.status = "locked"

            def done() -> None:
                removed = self.disks.pop(disk.id, None)
                if removed is not None:
                    self._release(removed)

            self._then(job, done)

    # -- snapshots -----------------------------------------------------------------------------

    def add_snapshot(self, vm: Vm, description: str, memory: bool, correlation_id: str | None) -> Snapshot:
        with self.lock:
            self._unlocked(vm, "create Snapshot")
            if vm.status not in ("up", "down", "suspended"):
                raise conflict("create Snapshot", f"VM status is {vm.status}.")
            memory = memory and vm.status == "up"
            snap = Snapshot(str(uuid.uuid4()), description, now(), memory, "locked", image=self._image(vm))
            vm.snapshots.append(snap)
            job = self.begin_job(f"Creating VM Snapshot {description} for VM {vm.name}", correlation_id)

            def done() -> None:
                snap.status = "ok"

            self._then(job, done)
            return snap

    def restore_snapshot(self, vm: Vm, snap: Snapshot, restore_memory: bool, correlation_id: str | None) -> None:
        with self.lock:
            self._unlocked(vm, "revert to Snapshot")
            if snap.snapshot_type != "regular":
                raise conflict("revert to Snapshot", "The snapshot is the active VM configuration.")
            if vm.status != "down":
                raise conflict("revert to Snapshot", "VM is running.")
            image = snap.image
            assert image is not None
            job = self.begin_job(f"Restoring VM Snapshot {snap.description} of VM {vm.name}", correlation_id)
            vm.status = "image_locked"
            snap.status = "locked"

            def done() -> None:
                vm.sockets, vm.cores, vm.threads, vm.memory = image.sockets, image.cores, image.threads, image.memory
                vm.description, vm.ha_enabled, vm.ha_priority = image.description, image.ha_enabled, image.ha_priority
                # The disks go back to the set the snapshot holds. A disk made after it leaves the VM;
                # its images stay while a newer snapshot still holds them (the engine keeps newer
                # regular snapshots on a commit), so reverting to that snapshot brings the disk back.
                dropped = {a.disk_id for a in vm.attachments} - {a.disk_id for a in image.attachments}
                vm.attachments = [replace(a) for a in image.attachments if a.disk_id in self.disks]
                self._drop_orphans(vm, dropped)
                snap.status = "ok"
                vm.status = "down"
                if restore_memory and snap.persist_memorystate:
                    # The engine resumes the saved memory on the next run.
                    vm.status = "suspended"
                    vm.host_id = image.host_id if image.host_id in self.hosts else None

            self._then(job, done)

    def remove_snapshot(self, vm: Vm, snap: Snapshot, correlation_id: str | None) -> None:
        with self.lock:
            if snap.snapshot_type == "active":
                raise conflict("remove Snapshot", "Cannot remove the active snapshot.")
            if snap.status == "locked":
                raise conflict("remove Snapshot", "Snapshot is currently being created.")
            job = self.begin_job(f"Removing Snapshot {snap.description} of VM {vm.name}", correlation_id)
            snap.status = "locked"

            def done() -> None:
                if snap in vm.snapshots:
                    vm.snapshots.remove(snap)
                    self._drop_orphans(vm, {a.disk_id for a in snap.image.attachments} if snap.image else set())

            self._then(job, done)

    def _drop_orphans(self, vm: Vm, disk_ids: set[str]) -> None:
        """Remove those of ``disk_ids`` that neither the VM nor any of its snapshots holds any more."""
        held = {a.disk_id for a in vm.attachments}
        for snap in vm.snapshots:
            if snap.image is not None:
                held.update(a.disk_id for a in snap.image.attachments)
        for disk_id in disk_ids - held:
            removed = self.disks.pop(disk_id, None)
            if removed is not None:
                self._release(removed)
