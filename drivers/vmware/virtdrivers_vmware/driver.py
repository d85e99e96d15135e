"""The vSphere driver: a vCenter's clusters as compute nodes, driven through pyVmomi.

A node is a cluster, as a compute agent sees a vCenter: its resources are the sum
of its hosts, and the instance's ``host`` field names the ESXi host it runs on.
Live and cold migration without a node move an instance to another host of its
own cluster (vMotion inside the cluster); naming another cluster relocates it
there. pyVmomi is imported only once a session connects.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from virtdrivers.capabilities import Capability, DiskFormat
from virtdrivers.driver import EventCallback, ProgressCallback, Subscription
from virtdrivers.endpoint import EmbeddedEndpoint, Evidence
from virtdrivers.errors import DriverError, InstanceNotFound, InvalidSpec, InvalidState, NotFound
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
    NodeInfo,
    PowerState,
)
from virtdrivers_vmware import guest_io, images, listing, mapping, network
from virtdrivers_vmware._sdk import sdk
from virtdrivers_vmware.reaping import ReapOps
from virtdrivers_vmware.settings import VSphereSettings
from virtdrivers_vmware.snapshots import SnapshotOps
from virtdrivers_vmware.workloads import Template, WorkloadOps

if TYPE_CHECKING:
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


@dataclass(frozen=True)
class _Plan:
    """Where a create goes and what it is made from, as its plan read them."""

    cluster: mapping.ClusterRow
    store: mapping.DatastoreRow
    dc: mapping.DatacenterRow
    networks: list[network.NetworkRow]
    template: Template | None


class VSphereDriver(WorkloadOps, SnapshotOps, ReapOps, listing.ListingOps):
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
            Capability.IMAGES,
            Capability.IMAGE_COW,
            Capability.IMAGE_COPY,
            Capability.NETWORKS,
            Capability.NIC_HOTPLUG,
            Capability.USER_DATA,
            Capability.GUEST_ADDRESSES,
            Capability.CONSOLE_CONNECT,
            Capability.CONSOLE_OUTPUT,
        }
    )
    settings_model = VSphereSettings
    default_disk_format: ClassVar[DiskFormat | None] = DiskFormat.VMDK
    unique_names = True
    settings: VSphereSettings

    @classmethod
    def embedded_endpoints(cls) -> Sequence[EmbeddedEndpoint]:
        # The simulator module imports no SDK: listing endpoints stays cheap.
        from virtdrivers_vmware.simulator.vcsim import VCSIM_HOOKS, VCSIM_NOTES, VCSIM_UNAVAILABLE

        return (
            EmbeddedEndpoint(
                "vcsim",
                "govmomi's vCenter simulator over HTTPS on 127.0.0.1: 1 datacenter, "
                "3 clusters of 2 hosts, 1 unmanaged VM per cluster, a template, a random password; "
                "our launcher keeps each VM's config.changeVersion as vCenter does (vcsim 0.24 leaves it "
                "empty), which the listing's config cache follows",
                _vcsim_endpoint,
                # vcsim is VMware's own simulator; it names itself and its govmomi version in
                # backend_info(), so the column needs no backend of ours.
                evidence=Evidence.VENDOR_SIMULATOR,
                hooks=VCSIM_HOOKS,
                unavailable=VCSIM_UNAVAILABLE,
                notes=VCSIM_NOTES,
                # No guest boots: what a guest would show (addresses) is there at power-on.
                guest_boot_timeout=10.0,
            ),
        )

    def __init__(self, settings: Any = None, /, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._session: Session | None = None
        self._subs_lock = threading.Lock()
        self._watchers: set[Any] = set()
        #: Per-name locks of creates in flight, with how many creates hold or wait for each.
        self._name_locks: dict[str, tuple[threading.Lock, int]] = {}
        #: What the listings derived from each VM's config, by config.changeVersion (see listing.py).
        self._config_cache = listing.ConfigCache()

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

    def _inventory(self, content: Any, *, with_vms: bool = True) -> mapping.Inventory:
        """Topology (and the VMs' placement properties) in one paged retrieval."""
        props = _INVENTORY if with_vms else _TOPOLOGY
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
        # A template is an image, never an instance, even one that was ours before it was marked.
        if not mapping.is_managed(props) or images.is_template(props) or not self._in_scope(props, inv):
            raise InstanceNotFound(instance_id)
        return props, inv

    def _info(self, content: Any, instance_id: str) -> InstanceInfo:
        props, inv = self._managed(content, instance_id)
        facts = listing.config_facts(props)
        # What was read anyway spares the next listing this VM's config (the version came with it).
        self._config_cache.put(instance_id, facts)
        return listing.instance_info(instance_id, props, inv, facts)

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
        """CreateVM_Task, or with ``spec.image`` one CloneVM_Task of the template; then power-on.

        Everything that can be refused without the server is refused before any call (the
        metadata, NIC models, the user data once encoded); the image, the networks and the
        name are checked by the plan's reads, before anything is made.
        """
        report = progress or (lambda fraction, message: None)
        mapping.check_metadata(spec.metadata)
        network.check_nics(spec.nics)
        # Chosen here so that the VM's cloud-init instance-id and the UUID a failed create is
        # found by are the same, and known before anything is sent.
        instance_uuid = str(uuid.uuid4())
        guestinfo = guest_io.guestinfo(spec.user_data, instance_uuid=instance_uuid, name=spec.name)
        vim, _ = sdk()

        def plan(content: Any) -> _Plan:
            inv = self._inventory(content)
            if any(mapping.vm_name(props.get("name")) == spec.name for props in inv.vms.values()):
                raise InvalidSpec(f"an instance named {spec.name!r} exists already", field="name")
            template = self._template(content, inv, spec) if spec.image is not None else None
            networks = self._network_rows(content) if spec.nics else []
            for i, nic in enumerate(spec.nics):
                network.resolve(nic.network, networks, f"nics.{i}.network")
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
            return _Plan(cluster, store, dc, networks, template)

        def make(content: Any) -> str:
            if the.template is not None:
                return self._clone(
                    content,
                    spec,
                    the.template,
                    folder=the.dc.vm_folder or "",
                    pool=the.cluster.resource_pool or "",
                    datastore=the.store,
                    networks=the.networks,
                    instance_uuid=instance_uuid,
                    token=token,
                    extra=guestinfo,
                )
            config = mapping.create_spec(spec, datastore=the.store.name, instance_uuid=instance_uuid, token=token)
            for i, nic in enumerate(spec.nics):
                row = network.resolve(nic.network, the.networks, f"nics.{i}.network")
                config.deviceChange.append(network.nic_change(nic, row, key=-(200 + i)))
            config.deviceChange.append(guest_io.serial_port_change(the.store.name, mapping.escaped_name(spec.name)))
            config.extraConfig += [vim.option.OptionValue(key=k, value=v) for k, v in guestinfo.items()]
            folder = self._ref(content, "Folder", the.dc.vm_folder or "")
            pool = self._ref(content, "ResourcePool", the.cluster.resource_pool or "")
            vm = self._task(content, folder.CreateVM_Task(config, pool), f"create {spec.name}")
            return str(vm._moId)

        # vCenter refuses a second VM of one name in a folder, but between our check and its
        # create another thread of this driver may create it: creates of one name take turns.
        with self._claim_name(spec.name):
            the = self._call("plan create", plan, idempotent=True)
            verb = "cloning" if the.template is not None else "creating"
            report(0.1, f"{verb} {spec.name} in {the.cluster.name} on {the.store.name}")
            from virtdrivers.reaping import CreateToken

            # The operation token goes into the very spec that makes the VM and its disks (the
            # create's first backend change): killed at any later point, what this create made
            # carries it, and reap() finds it once this process is gone.
            token = CreateToken.new().encode()
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
            if the.template is not None:
                template = the.template
                self._call(f"check clone {spec.name}", lambda c: self._finish_clone(c, vm_id, spec, template))
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
                return listing.instance_info(instance_id, props, inv)
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
                return listing.instance_info(instance_id, props, inv)
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

    def adopt(self, instance_id: str) -> InstanceInfo:
        """Mark the VM as ours in its extraConfig: a reconfigure that leaves it running and intact."""
        vim, _ = sdk()

        def run(content: Any) -> InstanceInfo:
            props, inv = self._with_topology(content, instance_id, mapping.VM_LIST_PROPERTIES)
            if not self._in_scope(props, inv):
                raise InstanceNotFound(instance_id)
            if mapping.is_managed(props):
                raise InvalidState(f"vsphere: {props.get('name')!r} is managed already")
            if images.is_template(props):
                raise InvalidState(f"vsphere: {props.get('name')!r} is a template (an image), not a VM to adopt")
            vm = self._ref(content, "VirtualMachine", instance_id)
            spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=mapping.MANAGED_KEY, value="true")])
            self._task(content, vm.ReconfigVM_Task(spec), "adopt")
            return self._info(content, instance_id)

        return self._call("adopt", run, ref=instance_id)

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
