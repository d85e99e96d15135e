"""The vSphere driver: a vCenter's clusters as compute nodes, driven through pyVmomi.

A node is a cluster, as a compute agent sees a vCenter: its resources are the sum
of its hosts, and the instance's ``host`` field names the ESXi host it runs on.
Live and cold migration without a node move an instance to another host of its
own cluster (vMotion inside the cluster); naming another cluster relocates it
there. pyVmomi is imported only once a session connects.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from virtdrivers.capabilities import Capability, DiskFormat
from virtdrivers.driver import Driver, EventCallback, ProgressCallback, Subscription
from virtdrivers.endpoint import EmbeddedEndpoint, Evidence
from virtdrivers.errors import Conflict, DriverError, InstanceNotFound, InvalidSpec, InvalidState, NotFound
from virtdrivers.objects import (
    Aggregate,
    BackendInfo,
    DiskInfo,
    DiskSpec,
    HAPriority,
    HAState,
    HostResources,
    InstanceInfo,
    InstanceSpec,
    Leftover,
    NodeInfo,
    PowerState,
    SnapshotInfo,
)
from virtdrivers_vmware import mapping
from virtdrivers_vmware._sdk import sdk
from virtdrivers_vmware.settings import VSphereSettings

if TYPE_CHECKING:
    from virtdrivers.reaping import CreateToken

    # The session brings TLS and HTTP (ssl, http.client): imported when a driver connects,
    # so that listing plugins, which imports this module, stays cheap.
    from virtdrivers_vmware.session import Session

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Every inventory object type the driver reads, with exactly the properties it needs.
_TOPOLOGY = {
    "Datacenter": mapping.DATACENTER_PROPERTIES,
    "ClusterComputeResource": mapping.CLUSTER_PROPERTIES,
    "HostSystem": mapping.HOST_PROPERTIES,
    "Datastore": mapping.DATASTORE_PROPERTIES,
}
_INVENTORY = {**_TOPOLOGY, "VirtualMachine": mapping.VM_LIST_PROPERTIES}
#: The inventory with everything InstanceInfo shows per VM (devices too), for the listings.
_LISTING = {**_TOPOLOGY, "VirtualMachine": mapping.VM_INFO_PROPERTIES}


def _vcsim_endpoint() -> Any:
    from virtdrivers_vmware.simulator import vcsim_endpoint

    # Three clusters, so a move to a named node is not the only other node there is.
    return vcsim_endpoint(clusters=3, hosts=2, vms=1)


def _duplicate(exc: DriverError) -> bool:
    """Whether a create failed because the name is taken.

    vCenter refuses a second VM of one name in a folder (DuplicateName); vcsim 0.24 does not,
    but the second create of one name finds the first one's .vmx in place (FileAlreadyExists).
    """
    return "DuplicateName" in str(exc) or "FileAlreadyExists" in str(exc)


def _why(token: CreateToken) -> str:
    """Why a token's create counts as over, for the operator reading a dry run."""
    if token.owner_alive() is False:
        return f"its create never completed and its process ({token.pid} on {token.host}) is gone"
    return f"its create never completed and started more than the grace period ago (on {token.host})"


class VSphereDriver(Driver):
    """vCenter clusters as nodes; VMs created in a cluster's root resource pool."""

    name = "vmware"
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
            Capability.COLD_MIGRATE,
            Capability.AGGREGATES,
            Capability.HIGH_AVAILABILITY,
            Capability.ADOPT,
            Capability.EVENTS,
            Capability.DISK_VMDK,
            Capability.REAP,
        }
    )
    settings_model = VSphereSettings
    default_disk_format: ClassVar[DiskFormat | None] = DiskFormat.VMDK
    unique_names = True
    settings: VSphereSettings

    @classmethod
    def embedded_endpoints(cls) -> Sequence[EmbeddedEndpoint]:
        # The simulator module imports no SDK: listing endpoints stays cheap.
        from virtdrivers_vmware.simulator.vcsim import VCSIM_HOOKS

        return (
            EmbeddedEndpoint(
                "vcsim",
                "govmomi's vCenter simulator over HTTPS on 127.0.0.1: 1 datacenter, "
                "3 clusters of 2 hosts, 1 unmanaged VM per cluster, a random password",
                _vcsim_endpoint,
                # vcsim is VMware's own simulator; it names itself and its govmomi version in
                # backend_info(), so the column needs no backend of ours.
                evidence=Evidence.VENDOR_SIMULATOR,
                hooks=VCSIM_HOOKS,
            ),
        )

    def __init__(self, settings: Any = None, /, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._session: Session | None = None
        self._subs_lock = threading.Lock()
        self._watchers: set[Any] = set()
        #: Per-name locks of creates in flight, with how many creates hold or wait for each.
        self._name_locks: dict[str, tuple[threading.Lock, int]] = {}

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def _s(self) -> Session:
        if self._session is None:
            self.connect()
        assert self._session is not None
        return self._session

    def _call(self, what: str, fn: Callable[[Any], T], *, idempotent: bool = False, ref: str | None = None) -> T:
        """Run ``fn`` in the session; ``ref`` is the instance it is about, checked before anything is sent.

        An id that cannot be a managed object id ("a<b>&c") would otherwise reach the server's
        XML parser and come back as a malformed request; it simply names no instance.
        """
        if ref is not None and not mapping.is_moid(ref):
            raise InstanceNotFound(ref, f"vsphere: {ref!r} is not a managed object id")
        return self._s.call(what, fn, idempotent=idempotent, ref=ref)

    def _ref(self, content: Any, kind: str, moid: str) -> Any:
        vim, _ = sdk()

        return getattr(vim, kind)(moid, content.propertyCollector._stub)

    def _inventory(self, content: Any, *, with_vms: bool = True, full: bool = False) -> mapping.Inventory:
        """Topology (and VMs) in one paged retrieval; ``full`` adds every VM's devices, for InstanceInfo."""
        props = _LISTING if full else _INVENTORY if with_vms else _TOPOLOGY
        view = self._s.view(content, tuple(props))
        return mapping.build_inventory(self._s.retrieve(content, view, dict(props)))

    def _with_topology(
        self, content: Any, vm_id: str, paths: Sequence[str]
    ) -> tuple[dict[str, Any], mapping.Inventory]:
        """One VM's properties plus the clusters and hosts, in one round trip."""
        vim, vmodl = sdk()

        pc = vmodl.query.PropertyCollector
        view = self._s.view(content, tuple(_TOPOLOGY))
        spec = pc.FilterSpec(
            objectSet=[
                pc.ObjectSpec(obj=self._ref(content, "VirtualMachine", vm_id), skip=False),
                pc.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[pc.TraversalSpec(name="view", path="view", skip=False, type=vim.view.ContainerView)],
                ),
            ],
            propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=list(paths))]
            + [pc.PropertySpec(type=getattr(vim, t), pathSet=list(p)) for t, p in _TOPOLOGY.items()],
        )
        objects = self._s.retrieve_specs(content, [spec], None)
        inv = mapping.build_inventory(objects)
        props = inv.vms.get(vm_id)
        if props is None:
            raise InstanceNotFound(vm_id)
        return props, inv

    def _scope(self, inv: mapping.Inventory) -> list[mapping.ClusterRow]:
        clusters = sorted(inv.clusters.values(), key=lambda c: c.name)
        if self.settings.cluster is None:
            return clusters
        scoped = [c for c in clusters if c.name == self.settings.cluster]
        if not scoped:
            raise NotFound(f"vsphere: cluster {self.settings.cluster!r} not found")
        return scoped

    def _in_scope(self, props: dict[str, Any], inv: mapping.Inventory) -> bool:
        if self.settings.cluster is None:
            return True
        cluster = inv.cluster_of_host(mapping.moid(props.get("runtime.host")))
        return cluster is not None and cluster.name == self.settings.cluster

    def _managed(
        self, content: Any, instance_id: str, paths: Sequence[str] = mapping.VM_DETAIL_PROPERTIES
    ) -> tuple[dict[str, Any], mapping.Inventory]:
        props, inv = self._with_topology(content, instance_id, paths)
        if not mapping.is_managed(props) or not self._in_scope(props, inv):
            raise InstanceNotFound(instance_id)
        return props, inv

    def _info(self, content: Any, instance_id: str) -> InstanceInfo:
        props, inv = self._managed(content, instance_id)
        return mapping.instance_info(instance_id, props, inv)

    def _task(self, content: Any, task: Any, what: str) -> Any:
        return self._s.wait_for_task(content, task, what=what)

    def _cluster_node(self, inv: mapping.Inventory, node: str) -> mapping.ClusterRow:
        for cluster in self._scope(inv):
            if cluster.name == node:
                return cluster
        raise NotFound(f"vsphere: node (cluster) {node!r} not found")

    # -- connection -----------------------------------------------------------------------------

    def connect(self) -> None:
        if self._session is not None:
            return
        from virtdrivers_vmware.session import Session

        session = Session(self.settings, name=self.name)
        session.connect()
        self._session = session
        if self.settings.cluster is not None:
            try:
                self._call("find cluster", lambda c: self._scope(self._inventory(c, with_vms=False)), idempotent=True)
            except BaseException:
                self._session = None
                session.close()
                raise

    def close(self) -> None:
        with self._subs_lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.stop()
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def backend_info(self) -> BackendInfo:
        from importlib.metadata import version

        def read(content: Any) -> BackendInfo:
            about = content.about
            settings = {o.key: str(o.value) for o in content.setting.setting or () if o.key.startswith("vcsim.")}
            simulated = "vcsim.server.url" in settings
            backend_version = f"{about.fullName}"
            if simulated:
                govmomi = settings.get("vcsim.virtdrivers.govmomi", "")
                backend_version = f"govmomi {govmomi} ({about.fullName})".strip()
            return BackendInfo(
                backend="vcsim" if simulated else "vsphere",
                backend_version=backend_version,
                endpoint=f"https://{self.settings.host}:{self.settings.port}/sdk",
                libraries={"pyvmomi": version("pyvmomi")},
            )

        return self._call("backend info", read, idempotent=True)

    # -- mandatory core ------------------------------------------------------------------------

    def list_instances(self) -> list[InstanceInfo]:
        """Every managed VM in scope from one paged RetrievePropertiesEx (one round trip per page).

        The devices come in the same retrieval, so each entry has its disks and equals what
        get_instance says of the same VM.
        """

        def read(content: Any) -> list[InstanceInfo]:
            inv = self._inventory(content, full=True)
            return [
                mapping.instance_info(oid, props, inv)
                for oid, props in inv.vms.items()
                if mapping.is_managed(props) and self._in_scope(props, inv)
            ]

        return self._call("list instances", read, idempotent=True)

    def get_instance(self, instance_id: str) -> InstanceInfo:
        return self._call("get instance", lambda c: self._info(c, instance_id), idempotent=True, ref=instance_id)

    def find_instance(self, name: str) -> InstanceInfo:
        for info in self.list_instances():
            if info.name == name:
                return info
        raise InstanceNotFound(name)

    def check_name(self, name: str) -> None:
        super().check_name(name)
        mapping.check_vm_name(name)

    def create(self, spec: InstanceSpec, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        report = progress or (lambda fraction, message: None)
        mapping.check_metadata(spec.metadata)

        def plan(content: Any) -> tuple[mapping.ClusterRow, str, mapping.DatacenterRow]:
            inv = self._inventory(content)
            if any(mapping.vm_name(props.get("name")) == spec.name for props in inv.vms.values()):
                raise InvalidSpec(f"an instance named {spec.name!r} exists already", field="name")
            if spec.node is not None:
                cluster = self._cluster_node(inv, spec.node)
            else:
                cluster = min(self._scope(inv), key=lambda c: (mapping.cluster_load(c, inv), c.name))
            stores = [inv.datastores[d] for d in cluster.datastores if d in inv.datastores]
            if self.settings.datastore is not None:
                stores = [d for d in stores if d.name == self.settings.datastore]
                if not stores:
                    raise NotFound(f"vsphere: datastore {self.settings.datastore!r} not reachable from {cluster.name}")
            if not stores:
                raise InvalidState(f"vsphere: cluster {cluster.name!r} has no datastore")
            store = max(stores, key=lambda d: (d.free, d.name))
            dc = inv.datacenters.get(cluster.datacenter or "")
            if dc is None or dc.vm_folder is None:
                raise InvalidState(f"vsphere: no datacenter VM folder found for {cluster.name!r}")
            return cluster, store.name, dc

        def make(content: Any) -> str:
            folder = self._ref(content, "Folder", dc.vm_folder or "")
            pool = self._ref(content, "ResourcePool", cluster.resource_pool or "")
            vm = self._task(content, folder.CreateVM_Task(config, pool), f"create {spec.name}")
            return str(vm._moId)

        # vCenter refuses a second VM of one name in a folder, but between our check and its
        # create another thread of this driver may create it: creates of one name take turns.
        with self._claim_name(spec.name):
            cluster, datastore, dc = self._call("plan create", plan, idempotent=True)
            report(0.1, f"creating {spec.name} in {cluster.name} on {datastore}")
            from virtdrivers.reaping import CreateToken

            # The operation token goes into the very spec that makes the VM and its disks (the
            # create's first backend change): killed at any later point, what this create made
            # carries it, and reap() finds it once this process is gone.
            token = CreateToken.new().encode()
            instance_uuid = str(uuid.uuid4())
            config = mapping.create_spec(spec, datastore=datastore, instance_uuid=instance_uuid, token=token)
            try:
                vm_id = self._call(f"create {spec.name}", make)
            except BaseException as exc:
                # A task can fail after it made the VM and its disks, and a lost answer leaves us
                # not knowing: whatever carries our instance UUID or our token is ours to remove.
                self._remove_made(instance_uuid, token)
                if isinstance(exc, DriverError) and _duplicate(exc):
                    raise InvalidSpec(f"an instance named {spec.name!r} exists already", field="name") from exc
                raise
        try:
            report(0.6, "created")
            if spec.start:
                self._call(
                    f"power on {spec.name}",
                    lambda c: self._task(c, self._ref(c, "VirtualMachine", vm_id).PowerOnVM_Task(), "power on"),
                )
                report(0.9, "powered on")
            info = self.get_instance(vm_id)
            # The last step: the create is complete once its token is gone. Nothing but the
            # reconfigure's own answer follows, so a kill after it leaves a finished instance
            # whose create the caller may not have heard of, never a leftover that looks finished.
            self._call(f"complete create of {spec.name}", lambda c: self._complete(c, vm_id), ref=vm_id)
        except BaseException:
            # Nothing half-made: the VM goes, and with it every disk it created.
            self._remove(vm_id)
            raise
        report(1.0, "created")
        return info

    def _complete(self, content: Any, vm_id: str) -> None:
        """Empty the VM's create token (vSphere drops an extraConfig key set to "")."""
        vim, _ = sdk()

        spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=mapping.CREATE_TOKEN_KEY, value="")])
        self._task(content, self._ref(content, "VirtualMachine", vm_id).ReconfigVM_Task(spec), "complete create")

    @contextlib.contextmanager
    def _claim_name(self, name: str) -> Iterator[None]:
        """Hold the per-name lock of this driver while checking a name is free and taking it."""
        with self._subs_lock:
            lock, users = self._name_locks.get(name, (threading.Lock(), 0))
            self._name_locks[name] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._subs_lock:
                lock, users = self._name_locks[name]
                if users == 1:
                    del self._name_locks[name]
                else:
                    self._name_locks[name] = (lock, users - 1)

    def _remove_made(self, instance_uuid: str, token: str) -> None:
        """Remove what a failed create may have left: the VM with our instance UUID, else disks with our token.

        Best effort within the driver's timeouts: when the endpoint is gone, what is left
        carries the token, and a later reap() removes it.
        """

        def find(content: Any) -> str | None:
            return mapping.moid(content.searchIndex.FindByUuid(None, instance_uuid, True, True))

        try:
            vm_id = self._call("find half-created VM", find, idempotent=True)
        except DriverError as exc:
            log.error("vsphere: could not look for a half-created VM (instance UUID %s): %s", instance_uuid, exc)
            return
        if vm_id is not None:
            log.info("vsphere: removing %s, left by a failed create", vm_id)
            self._remove(vm_id)
            return
        # No VM, but vCenter may have made some of the disks before the task failed.
        try:
            for item, datacenter in self._call(
                "find half-created disks", lambda c: self._leftover_disks(c, 0.0, only=token), idempotent=True
            ):
                self._call(
                    f"remove {item.ref}", functools.partial(self._delete_disk, path=item.ref, datacenter=datacenter)
                )
        except DriverError as exc:
            log.error("vsphere: could not look for disks of a failed create (token %s): %s", token, exc)

    def _remove(self, vm_id: str) -> None:
        """Best-effort removal of a VM we just made (power off, then Destroy_Task with its files)."""

        def remove(content: Any) -> None:
            vm = self._ref(content, "VirtualMachine", vm_id)
            objs = self._s.retrieve_objects(content, [vm], ["runtime.powerState"])
            if objs and mapping.props_of(objs[0]).get("runtime.powerState") != "poweredOff":
                self._task(content, vm.PowerOffVM_Task(), "power off for cleanup")
            self._task(content, vm.Destroy_Task(), "destroy for cleanup")

        try:
            self._call(f"clean up {vm_id}", remove, ref=vm_id)
        except DriverError as exc:
            log.error("vsphere: could not remove half-created VM %s: %s", vm_id, exc)

    def destroy(self, instance_id: str) -> None:
        def run(content: Any) -> None:
            props, _ = self._managed(content, instance_id, ("runtime.powerState", "config.extraConfig", "runtime.host"))
            vm = self._ref(content, "VirtualMachine", instance_id)
            if props.get("runtime.powerState") != "poweredOff":
                self._task(content, vm.PowerOffVM_Task(), "power off before destroy")
            self._task(content, vm.Destroy_Task(), "destroy")

        self._call("destroy", run, ref=instance_id)

    def _power_task(
        self, instance_id: str, what: str, allowed: set[PowerState], method: str, *, noop: PowerState | None = None
    ) -> InstanceInfo:
        def run(content: Any) -> InstanceInfo:
            props, inv = self._managed(content, instance_id)
            state = mapping.power_state(props.get("runtime.powerState"))
            if state == noop:
                return mapping.instance_info(instance_id, props, inv)
            if state not in allowed:
                wanted = " or ".join(sorted(s.value for s in allowed))
                raise InvalidState(f"vsphere: cannot {what} {props.get('name')!r}: it is {state.value}, needs {wanted}")
            vm = self._ref(content, "VirtualMachine", instance_id)
            self._task(content, getattr(vm, method)(), what)
            return self._info(content, instance_id)

        return self._call(what, run, ref=instance_id)

    def power_on(self, instance_id: str) -> InstanceInfo:
        return self._power_task(
            instance_id, "power on", {PowerState.SHUTDOWN}, "PowerOnVM_Task", noop=PowerState.RUNNING
        )

    def power_off(self, instance_id: str, *, timeout: float = 60.0, force: bool = False) -> InstanceInfo:
        """Ask the guest (ShutdownGuest, needs VMware Tools), wait for poweredOff, else power off hard."""
        vim, _ = sdk()

        def run(content: Any) -> InstanceInfo:
            props, inv = self._managed(content, instance_id)
            state = props.get("runtime.powerState")
            if state == "poweredOff":
                return mapping.instance_info(instance_id, props, inv)
            vm = self._ref(content, "VirtualMachine", instance_id)
            if not force and timeout > 0 and state == "poweredOn":
                try:
                    vm.ShutdownGuest()
                except (vim.fault.ToolsUnavailable, vim.fault.InvalidState) as exc:
                    log.info(
                        "vsphere: guest shutdown of %s refused (%s); powering off", instance_id, type(exc).__name__
                    )
                else:
                    if self._s.wait_for_power(content, vm, "poweredOff", timeout=timeout, what="guest shutdown"):
                        return self._info(content, instance_id)
                    log.info("vsphere: %s ignored the shutdown request for %.0f s; powering off", instance_id, timeout)
            # The guest may finish shutting down between our wait and the hard power-off.
            with contextlib.suppress(InvalidState):
                self._task(content, vm.PowerOffVM_Task(), "power off")
            return self._info(content, instance_id)

        return self._call("power off", run, ref=instance_id)

    def reboot(self, instance_id: str, *, hard: bool = False) -> InstanceInfo:
        """Soft: RebootGuest (needs Tools; vcsim lacks it), falling back to a reset. Hard: ResetVM_Task."""

        def run(content: Any) -> InstanceInfo:
            props, _ = self._managed(content, instance_id)
            if props.get("runtime.powerState") != "poweredOn":
                raise InvalidState(f"vsphere: cannot reboot {props.get('name')!r}: it is not running")
            vm = self._ref(content, "VirtualMachine", instance_id)
            if not hard:
                try:
                    vm.RebootGuest()
                    return self._info(content, instance_id)
                except Exception as exc:
                    log.info(
                        "vsphere: guest reboot of %s not possible (%s); resetting", instance_id, type(exc).__name__
                    )
            self._task(content, vm.ResetVM_Task(), "reset")
            return self._info(content, instance_id)

        return self._call("reboot", run, ref=instance_id)

    def list_nodes(self) -> list[NodeInfo]:
        def read(content: Any) -> list[NodeInfo]:
            inv = self._inventory(content, with_vms=False)
            return [
                NodeInfo(
                    name=c.name,
                    hypervisor_type=mapping.HYPERVISOR_TYPE,
                    state="up" if any(inv.hosts[h].up for h in c.hosts if h in inv.hosts) else "down",
                )
                for c in self._scope(inv)
            ]

        return self._call("list nodes", read, idempotent=True)

    def host_resources(self, node: str | None = None) -> HostResources:
        def read(content: Any) -> HostResources:
            inv = self._inventory(content)
            scope = self._scope(inv)
            cluster = self._cluster_node(inv, node) if node is not None else scope[0]
            return mapping.host_resources(cluster, inv, content.about.version)

        return self._call("host resources", read, idempotent=True)

    # -- power extras ---------------------------------------------------------------------------

    def suspend(self, instance_id: str) -> InstanceInfo:
        return self._power_task(instance_id, "suspend", {PowerState.RUNNING}, "SuspendVM_Task")

    def resume(self, instance_id: str) -> InstanceInfo:
        return self._power_task(instance_id, "resume", {PowerState.SUSPENDED}, "PowerOnVM_Task")

    def resize(self, instance_id: str, *, vcpus: int | None = None, memory_mb: int | None = None) -> InstanceInfo:
        vim, _ = sdk()

        def run(content: Any) -> InstanceInfo:
            self._managed(content, instance_id, ("config.extraConfig", "runtime.host"))
            vm = self._ref(content, "VirtualMachine", instance_id)
            spec = vim.vm.ConfigSpec()
            if vcpus is not None:
                spec.numCPUs = vcpus
            if memory_mb is not None:
                spec.memoryMB = memory_mb
            self._task(content, vm.ReconfigVM_Task(spec), "resize")
            return self._info(content, instance_id)

        return self._call("resize", run, ref=instance_id)

    # -- storage ----------------------------------------------------------------------------------

    def attach_disk(self, instance_id: str, disk: DiskSpec) -> DiskInfo:
        vim, _ = sdk()

        def run(content: Any) -> DiskInfo:
            props, _ = self._managed(content, instance_id)
            devices = props.get("config.hardware.device") or []
            controller, free = mapping.free_scsi_slots(devices)
            if controller is None or not free:
                raise InvalidState(f"vsphere: {props.get('name')!r} has no free SCSI slot")
            datastore, directory = mapping.vm_directory(str(props.get("config.files.vmPathName", "")))
            taken = {str(getattr(d.backing, "fileName", "")) for d in devices if mapping.is_disk(d)}
            index = 1
            while f"[{datastore}] {mapping.disk_file(directory, str(props.get('name')), index)}" in taken:
                index += 1
            path = mapping.disk_file(directory, str(props.get("name")), index)
            change = mapping.new_disk_change(
                disk, datastore=datastore, file_path=path, controller_key=controller, unit=free[0], key=-1
            )
            spec = vim.vm.ConfigSpec(deviceChange=[change])
            if disk.label:
                spec.extraConfig = mapping.label_options({path: disk.label})
            vm = self._ref(content, "VirtualMachine", instance_id)
            self._task(content, vm.ReconfigVM_Task(spec), "attach disk")
            after, _ = self._managed(content, instance_id)
            extra = mapping.extra_config(after)
            for dev in after.get("config.hardware.device") or []:
                if mapping.is_disk(dev) and str(dev.backing.fileName) == f"[{datastore}] {path}":
                    return mapping.disks_of([dev], extra)[0]
            raise InvalidState(f"vsphere: attached disk {path!r} did not appear on {props.get('name')!r}")

        return self._call("attach disk", run, ref=instance_id)

    def detach_disk(self, instance_id: str, disk_id: str, *, delete: bool = True) -> None:
        vim, _ = sdk()

        def run(content: Any) -> None:
            props, _ = self._managed(content, instance_id)
            for dev in props.get("config.hardware.device") or []:
                if mapping.is_disk(dev) and str(dev.key) == disk_id:
                    break
            else:
                raise NotFound(f"vsphere: disk {disk_id!r} not attached to {props.get('name')!r}")
            change = vim.vm.device.VirtualDeviceSpec(operation="remove", device=dev)
            if delete:
                change.fileOperation = "destroy"
            spec = vim.vm.ConfigSpec(deviceChange=[change])
            key = mapping.LABEL_PREFIX + mapping.label_key(str(dev.backing.fileName))
            if key in mapping.extra_config(props):
                spec.extraConfig = [vim.option.OptionValue(key=key, value="")]
            vm = self._ref(content, "VirtualMachine", instance_id)
            self._task(content, vm.ReconfigVM_Task(spec), "detach disk")

        self._call("detach disk", run, ref=instance_id)

    # -- snapshots --------------------------------------------------------------------------------

    def _snapshots(self, content: Any, instance_id: str) -> tuple[dict[str, Any], list[mapping.SnapshotRow]]:
        props, _ = self._managed(
            content,
            instance_id,
            (*mapping.VM_LIST_PROPERTIES, "snapshot.rootSnapshotList"),
        )
        return props, mapping.flatten_snapshots(props.get("snapshot.rootSnapshotList"))

    def _snap_info(self, instance_id: str, row: mapping.SnapshotRow) -> SnapshotInfo:
        created = row.created_at
        if isinstance(created, datetime.datetime) and created.tzinfo is not None:
            created = created.astimezone(datetime.UTC)
        return SnapshotInfo(
            id=row.moid, name=row.name, instance_id=instance_id, created_at=created, with_memory=row.with_memory
        )

    def create_snapshot(self, instance_id: str, name: str, *, with_memory: bool = False) -> SnapshotInfo:
        def run(content: Any) -> SnapshotInfo:
            props, rows = self._snapshots(content, instance_id)
            if any(r.name == name for r in rows):
                raise InvalidSpec(f"snapshot {name!r} of {props.get('name')!r} exists already", field="name")
            memory = with_memory and props.get("runtime.powerState") == "poweredOn"
            description = mapping.MEMORY_MARK if memory else ""
            vm = self._ref(content, "VirtualMachine", instance_id)
            snap = self._task(content, vm.CreateSnapshot_Task(name, description, memory, False), "snapshot")
            _, rows = self._snapshots(content, instance_id)
            for row in rows:
                if row.moid == snap._moId:
                    return self._snap_info(instance_id, row)
            raise InvalidState(f"vsphere: snapshot {name!r} did not appear")

        return self._call("create snapshot", run, ref=instance_id)

    def list_snapshots(self, instance_id: str) -> list[SnapshotInfo]:
        def read(content: Any) -> list[SnapshotInfo]:
            _, rows = self._snapshots(content, instance_id)
            return [self._snap_info(instance_id, r) for r in rows]

        return self._call("list snapshots", read, idempotent=True, ref=instance_id)

    def _snapshot_row(self, content: Any, instance_id: str, snapshot_id: str) -> mapping.SnapshotRow:
        props, rows = self._snapshots(content, instance_id)
        for row in rows:
            if row.moid == snapshot_id:
                return row
        raise NotFound(f"vsphere: snapshot {snapshot_id!r} of {props.get('name')!r} not found")

    def revert_snapshot(self, instance_id: str, snapshot_id: str) -> InstanceInfo:
        """RevertToSnapshot_Task, then make the outcome explicit.

        vSphere leaves a VM powered off after reverting to a disk-only snapshot and as it
        was after a memory snapshot; vcsim 0.24 changes neither power state nor hardware.
        So the snapshot's recorded size, disks and power state are checked and applied when
        the server did not (a no-op on a real vCenter).
        """
        vim, _ = sdk()

        def run(content: Any) -> InstanceInfo:
            row = self._snapshot_row(content, instance_id, snapshot_id)
            snap = vim.vm.Snapshot(snapshot_id, content.propertyCollector._stub)
            self._task(content, snap.RevertToSnapshot_Task(), "revert snapshot")
            vm = self._ref(content, "VirtualMachine", instance_id)
            saved = mapping.props_of(
                self._s.retrieve_objects(
                    content, [snap], ["config.hardware.numCPU", "config.hardware.memoryMB", "config.hardware.device"]
                )[0]
            )
            props, _ = self._managed(content, instance_id, mapping.VM_INFO_PROPERTIES)
            spec = vim.vm.ConfigSpec()
            changed = False
            if saved.get("config.hardware.numCPU") not in (None, props.get("config.hardware.numCPU")):
                spec.numCPUs, changed = saved["config.hardware.numCPU"], True
            if saved.get("config.hardware.memoryMB") not in (None, props.get("config.hardware.memoryMB")):
                spec.memoryMB, changed = saved["config.hardware.memoryMB"], True
            if "config.hardware.device" in saved:
                disks = mapping.restore_disk_changes(
                    saved["config.hardware.device"], props.get("config.hardware.device")
                )
                if disks:
                    spec.deviceChange, changed = disks, True
            state = props.get("runtime.powerState")
            wanted = (row.state or "poweredOn") if row.with_memory else "poweredOff"
            if changed and state != "poweredOff":
                self._task(content, vm.PowerOffVM_Task(), "power off to restore the snapshot's hardware")
                state = "poweredOff"
            if changed:
                self._task(content, vm.ReconfigVM_Task(spec), "restore the snapshot's hardware")
            if wanted == "poweredOff" and state != "poweredOff":
                self._task(content, vm.PowerOffVM_Task(), "power off after revert")
            elif wanted == "poweredOn" and state != "poweredOn":
                self._task(content, vm.PowerOnVM_Task(), "power on after revert")
            elif wanted == "suspended" and state != "suspended":
                if state != "poweredOn":
                    self._task(content, vm.PowerOnVM_Task(), "power on after revert")
                self._task(content, vm.SuspendVM_Task(), "suspend after revert")
            return self._info(content, instance_id)

        return self._call("revert snapshot", run, ref=instance_id)

    def delete_snapshot(self, instance_id: str, snapshot_id: str) -> None:
        vim, _ = sdk()

        def run(content: Any) -> None:
            self._snapshot_row(content, instance_id, snapshot_id)
            snap = vim.vm.Snapshot(snapshot_id, content.propertyCollector._stub)
            self._task(content, snap.RemoveSnapshot_Task(removeChildren=False), "delete snapshot")

        self._call("delete snapshot", run, ref=instance_id)

    # -- migration --------------------------------------------------------------------------------

    def _relocate(
        self, instance_id: str, node: str | None, progress: ProgressCallback | None, state: str, what: str
    ) -> InstanceInfo:
        """RelocateVM_Task to another host: of the same cluster when ``node`` is None or the VM's own."""
        vim, _ = sdk()

        def run(content: Any) -> InstanceInfo:
            props, inv = self._managed(content, instance_id)
            if props.get("runtime.powerState") != state:
                raise InvalidState(
                    f"vsphere: cannot {what} {props.get('name')!r}: it is "
                    f"{mapping.power_state(props.get('runtime.powerState')).value}"
                )
            # Load per host needs the VMs' placement: one more paged read.
            inv = self._inventory(content)
            current_host = mapping.moid(props.get("runtime.host"))
            current = inv.cluster_of_host(current_host)
            target = self._cluster_node(inv, node) if node is not None else current
            if target is None:
                raise InvalidState(f"vsphere: {props.get('name')!r} is not in a cluster")
            host = mapping.pick_host(target, inv, exclude=current_host)
            if host is None:
                raise InvalidState(f"vsphere: no other connected host in cluster {target.name!r}")
            if progress:
                progress(0.1, f"moving to {host.name} in {target.name}")
            spec = vim.vm.RelocateSpec(host=self._ref(content, "HostSystem", host.moid))
            if current is None or target.moid != current.moid:
                spec.pool = self._ref(content, "ResourcePool", target.resource_pool or "")
            vm = self._ref(content, "VirtualMachine", instance_id)
            self._task(content, vm.RelocateVM_Task(spec), what)
            if progress:
                progress(1.0, f"on {host.name}")
            return self._info(content, instance_id)

        return self._call(what, run, ref=instance_id)

    def live_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        """vMotion: to another host of the same cluster (node None or the VM's own), or into cluster ``node``."""
        return self._relocate(instance_id, node, progress, "poweredOn", "live migrate")

    def cold_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        return self._relocate(instance_id, node, progress, "poweredOff", "cold migrate")

    # -- cluster ----------------------------------------------------------------------------------

    def list_aggregates(self) -> list[Aggregate]:
        def read(content: Any) -> list[Aggregate]:
            inv = self._inventory(content, with_vms=False)
            return [mapping.aggregate(c, inv) for c in self._scope(inv)]

        return self._call("list aggregates", read, idempotent=True)

    def _ha_state(self, instance_id: str, props: dict[str, Any], inv: mapping.Inventory) -> HAState:
        cluster = inv.cluster_of_host(mapping.moid(props.get("runtime.host")))
        if cluster is None:
            raise InvalidState(f"vsphere: {props.get('name')!r} is not in a cluster")
        return mapping.ha_state(instance_id, props, cluster, inv.ha_overrides.get(cluster.moid, {}))

    def set_high_availability(
        self, instance_id: str, enabled: bool, *, priority: HAPriority = HAPriority.MEDIUM
    ) -> HAState:
        """A per-VM vSphere HA override (restart priority, or disabled) in the VM's cluster."""

        def run(content: Any) -> HAState:
            props, inv = self._managed(content, instance_id, mapping.VM_LIST_PROPERTIES)
            cluster = inv.cluster_of_host(mapping.moid(props.get("runtime.host")))
            if cluster is None:
                raise InvalidState(f"vsphere: {props.get('name')!r} is not in a cluster")
            exists = instance_id in inv.ha_overrides.get(cluster.moid, {})
            spec = mapping.ha_override_spec(
                self._ref(content, "VirtualMachine", instance_id), enabled, HAPriority(priority), exists=exists
            )
            ref = self._ref(content, "ClusterComputeResource", cluster.moid)
            self._task(content, ref.ReconfigureComputeResource_Task(spec, True), "set high availability")
            props, inv = self._managed(content, instance_id, mapping.VM_LIST_PROPERTIES)
            return self._ha_state(instance_id, props, inv)

        return self._call("set high availability", run, ref=instance_id)

    def get_high_availability(self, instance_id: str) -> HAState:
        def read(content: Any) -> HAState:
            props, inv = self._managed(content, instance_id, mapping.VM_LIST_PROPERTIES)
            return self._ha_state(instance_id, props, inv)

        return self._call("get high availability", read, idempotent=True, ref=instance_id)

    # -- pets -------------------------------------------------------------------------------------

    def list_unmanaged(self) -> list[InstanceInfo]:
        """VMs without our mark, with their disks: what adopting them would take over."""

        def read(content: Any) -> list[InstanceInfo]:
            inv = self._inventory(content, full=True)
            return [
                mapping.instance_info(oid, props, inv)
                for oid, props in inv.vms.items()
                if not mapping.is_managed(props) and self._in_scope(props, inv)
            ]

        return self._call("list unmanaged", read, idempotent=True)

    def adopt(self, instance_id: str) -> InstanceInfo:
        """Mark the VM as ours in its extraConfig: a reconfigure that leaves it running and intact."""
        vim, _ = sdk()

        def run(content: Any) -> InstanceInfo:
            props, inv = self._with_topology(content, instance_id, mapping.VM_LIST_PROPERTIES)
            if not self._in_scope(props, inv):
                raise InstanceNotFound(instance_id)
            if mapping.is_managed(props):
                raise InvalidState(f"vsphere: {props.get('name')!r} is managed already")
            vm = self._ref(content, "VirtualMachine", instance_id)
            spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=mapping.MANAGED_KEY, value="true")])
            self._task(content, vm.ReconfigVM_Task(spec), "adopt")
            return self._info(content, instance_id)

        return self._call("adopt", run, ref=instance_id)

    # -- crash-safe creation ------------------------------------------------------------------------

    def reap(self, *, dry_run: bool = False, grace_s: float = 3600.0) -> list[Leftover]:
        """VMs whose create token outlived their create, then vmdk files of creates that no VM refers to.

        Instances go first: Destroy_Task takes their disks with them, so the disk search
        that follows finds only what no VM holds (a CreateVM_Task that failed after making
        a disk, a cleanup cut short). Each removal is its own call, so one that fails (the
        VM is busy) leaves the others to go, and a dry run reports exactly what a real run
        would remove.
        """
        found = self._call("reap: find instances", lambda c: self._leftover_vms(c, grace_s), idempotent=True)
        removed: list[Leftover] = []
        for item in found:
            if dry_run:
                removed.append(item)
                continue
            try:
                gone = self._call(
                    f"reap {item.ref}",
                    functools.partial(self._destroy_leftover, vm_id=item.ref, token=item.token),
                    ref=item.ref,
                )
            except InstanceNotFound:
                gone = True  # removed meanwhile: nothing left
            except (InvalidState, Conflict) as exc:
                log.warning("vsphere: could not reap %s (%s): %s", item.ref, item.name, exc)
                continue
            if gone:
                removed.append(item)
        disks = self._call("reap: find disks", lambda c: self._leftover_disks(c, grace_s), idempotent=True)
        for item, datacenter in disks:
            if not dry_run:
                try:
                    self._call(
                        f"reap {item.ref}", functools.partial(self._delete_disk, path=item.ref, datacenter=datacenter)
                    )
                except NotFound:
                    pass  # gone already
                except (InvalidState, Conflict) as exc:
                    log.warning("vsphere: could not reap %s: %s", item.ref, exc)
                    continue
            removed.append(item)
        return removed

    def _leftover_vms(self, content: Any, grace_s: float) -> list[Leftover]:
        """Managed VMs in scope whose create token is abandoned (pets never carry one we honour)."""
        from virtdrivers.reaping import CreateToken

        inv = self._inventory(content)
        out = []
        for oid, props in inv.vms.items():
            text = mapping.create_token_of(props)
            token = CreateToken.decode(text)
            if token is None or not mapping.is_managed(props) or not self._in_scope(props, inv):
                continue
            if not token.abandoned(grace_s):
                continue
            cluster = inv.cluster_of_host(mapping.moid(props.get("runtime.host")))
            out.append(
                Leftover(
                    kind="instance",
                    ref=oid,
                    name=mapping.vm_name(props.get("name")),
                    node=cluster.name if cluster else None,
                    token=text,
                    reason=_why(token),
                )
            )
        return out

    def _destroy_leftover(self, content: Any, vm_id: str, token: str | None) -> bool:
        """Power off and destroy a leftover VM, unless its create completed since it was found."""
        vm = self._ref(content, "VirtualMachine", vm_id)
        objs = self._s.retrieve_objects(content, [vm], ["runtime.powerState", "config.extraConfig"])
        if not objs:
            return True
        props = mapping.props_of(objs[0])
        if token is None or mapping.create_token_of(props) != token:
            log.info("vsphere: %s completed its create meanwhile; not reaped", vm_id)
            return False
        if props.get("runtime.powerState") != "poweredOff":
            self._task(content, vm.PowerOffVM_Task(), "power off a leftover")
        self._task(content, vm.Destroy_Task(), "destroy a leftover")
        log.info("vsphere: reaped %s, left by an interrupted create (%s)", vm_id, token)
        return True

    def _leftover_disks(
        self, content: Any, grace_s: float, *, only: str | None = None
    ) -> list[tuple[Leftover, str | None]]:
        """vmdk files named with an abandoned create token (``only``: with this token) that no VM refers to.

        One SearchDatastoreSubFolders_Task per datastore in scope finds the candidates by name.
        Only if there are any are the references read: every VM of the vCenter (a VM of another
        cluster may use a shared datastore), with its devices, its file layout and the devices
        of each of its snapshots, so a disk a snapshot still holds is never taken.
        Returns each leftover with the datacenter its datastore belongs to.
        """
        from virtdrivers.reaping import CreateToken

        vim, _ = sdk()
        inv = self._inventory(content, with_vms=False)
        stores: dict[str, tuple[str, str | None]] = {}
        for cluster in self._scope(inv):
            for ds in cluster.datastores:
                if ds in inv.datastores:
                    stores.setdefault(ds, (inv.datastores[ds].name, cluster.datacenter))
        if not stores:
            return []
        refs = [self._ref(content, "Datastore", ds) for ds in sorted(stores)]
        browsers = {
            mapping.moid(o.obj): mapping.props_of(o).get("browser")
            for o in self._s.retrieve_objects(content, refs, ["browser"])
        }
        spec = vim.host.DatastoreBrowser.SearchSpec(
            query=[vim.host.DatastoreBrowser.VmDiskQuery()],
            matchPattern=[f"{only}_*.vmdk" if only else "vdc1-*.vmdk"],
        )
        candidates: dict[tuple[str, str], tuple[str, CreateToken, str | None]] = {}
        for ds, (name, datacenter) in sorted(stores.items()):
            browser = browsers.get(ds)
            if browser is None:
                continue
            results = self._task(
                content, browser.SearchDatastoreSubFolders_Task(f"[{name}]", spec), f"search datastore {name}"
            )
            for result in results or ():
                for f in result.file or ():
                    text = mapping.disk_token(str(f.path))
                    token = CreateToken.decode(text)
                    if text is None or token is None:
                        continue
                    if only is not None and text != only:
                        continue
                    if only is None and not token.abandoned(grace_s):
                        continue
                    path = mapping.datastore_file(f"{result.folderPath}/{f.path}")
                    if path is not None:
                        candidates[path] = (text, token, datacenter)
        if not candidates:
            return []
        referenced, creators = self._references(content)
        out = []
        for (ds_name, rel), (text, token, datacenter) in sorted(candidates.items()):
            if (ds_name, rel) in referenced or text in creators:
                continue
            out.append(
                (
                    Leftover(
                        kind="disk",
                        ref=f"[{ds_name}] {rel}",
                        name=rel.rsplit("/", 1)[-1],
                        token=text,
                        reason=_why(token) + "; no VM refers to it",
                    ),
                    datacenter,
                )
            )
        return out

    def _references(self, content: Any) -> tuple[set[tuple[str, str]], set[str]]:
        """Every datastore file any VM of the vCenter, or any of its snapshots, refers to; and the
        tokens of the creates that made the VMs (a disk of theirs detached and kept is still theirs)."""
        paths = ("config.hardware.device", "layoutEx.file", "layoutEx.snapshot", "config.extraConfig")
        view = self._s.view(content, ("VirtualMachine",))
        referenced: set[tuple[str, str]] = set()
        creators: set[str] = set()
        snapshots = []
        for oc in self._s.retrieve(content, view, {"VirtualMachine": paths}):
            props = mapping.props_of(oc)
            referenced |= mapping.referenced_files(props)
            creator = mapping.extra_config(props).get(mapping.CREATED_BY_KEY)
            if creator:
                creators.add(creator)
            snapshots += [s.key for s in props.get("layoutEx.snapshot") or () if getattr(s, "key", None) is not None]
        for oc in self._s.retrieve_objects(content, snapshots, ["config.hardware.device"]):
            referenced |= mapping.referenced_files(mapping.props_of(oc))
        return referenced, creators

    def _delete_disk(self, content: Any, path: str, datacenter: str | None) -> None:
        dc = self._ref(content, "Datacenter", datacenter) if datacenter else None
        manager = content.virtualDiskManager
        self._task(content, manager.DeleteVirtualDisk_Task(path, dc), f"delete {path}")
        log.info("vsphere: reaped %s, left by an interrupted create", path)

    # -- events -----------------------------------------------------------------------------------

    def subscribe(self, callback: EventCallback) -> Subscription:
        from virtdrivers_vmware.events import EventWatcher

        watcher = EventWatcher(self.settings, callback, scope=self.settings.cluster, name=self.name)

        def unsubscribe() -> None:
            watcher.stop()
            with self._subs_lock:
                self._watchers.discard(watcher)

        with self._subs_lock:
            self._watchers.add(watcher)
        watcher.start()
        return Subscription(unsubscribe)
