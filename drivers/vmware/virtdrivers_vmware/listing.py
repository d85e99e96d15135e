"""The bulk listings, and what an InstanceInfo takes from a VM's config, kept per config version.

An InstanceInfo needs the VM's disks and NICs (``config.hardware.device``) and our marks and
metadata (``config.extraConfig``): some 360 XML elements per VM, which pyVmomi's deserializer
turns into objects at about a millisecond per VM, six times what the rest of a VM costs. vSphere
documents ``config.changeVersion`` as "a unique identifier for a given version of the
configuration. Each change to the configuration updates this value", so what is derived from a
config holds for as long as the VM shows that version. A listing therefore reads every VM's
light properties (name, power state, host, ``changeVersion``; ``guest.net`` when addresses are
asked for) in one paged retrieval, and the config only of the VMs whose version moved or that
this driver has not seen, in a second paged retrieval over exactly those VMs. In steady state
that is one round trip per page; a listing after N configs changed adds ceil(N / page_size).

The cache keeps one version per VM: any other version, older or newer, is a miss, so a revert
to an earlier config is re-read as well. A VM without a ``changeVersion`` (a server that does
not keep one) is never cached: its config is read on every listing. ``get_instance`` reads the
whole config each time and derives its answer with the same :func:`config_facts` and
:func:`instance_info`, so a listed instance equals the one read alone.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from virtdrivers.objects import DiskInfo, GuestAddress, InstanceInfo, NicInfo
from virtdrivers_vmware import mapping, network
from virtdrivers_vmware._gc import collector_paused
from virtdrivers_vmware._ops import VSphereOps

#: Read of every VM on every listing: what changes without its config changing, and the version.
VM_LIGHT_PROPERTIES = ("name", "runtime.powerState", "runtime.host", "config.changeVersion")
#: Read of a VM whose config version the cache does not hold: everything an InstanceInfo takes from it.
VM_CONFIG_PROPERTIES = (
    "config.changeVersion",
    "config.template",
    "config.extraConfig",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "config.hardware.device",
)


@dataclass(frozen=True)
class ConfigFacts:
    """What an InstanceInfo (and the listing's filters) take from one version of a VM's config."""

    version: str
    template: bool
    managed: bool
    vcpus: int
    memory_mb: int
    disks: tuple[DiskInfo, ...]
    nics: tuple[NicInfo, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)
    image: str | None = None

    @property
    def macs(self) -> set[str]:
        return {n.mac for n in self.nics}


def config_facts(props: Mapping[str, Any]) -> ConfigFacts:
    """The facts of the config in ``props`` (any retrieval holding :data:`VM_CONFIG_PROPERTIES`)."""
    extra = mapping.extra_config(props)
    devices = props.get("config.hardware.device")
    return ConfigFacts(
        version=str(props.get("config.changeVersion") or ""),
        template=props.get("config.template") is True,
        managed=extra.get(mapping.MANAGED_KEY) == "true",
        vcpus=int(props.get("config.hardware.numCPU") or 0),
        memory_mb=int(props.get("config.hardware.memoryMB") or 0),
        disks=mapping.disks_of(devices, extra) if devices is not None else (),
        nics=network.nics_of(devices),
        metadata=mapping.metadata_of(extra),
        image=extra.get(mapping.IMAGE_KEY),
    )


def instance_info(
    oid: str, props: Mapping[str, Any], inv: mapping.Inventory, facts: ConfigFacts | None = None
) -> InstanceInfo:
    """An InstanceInfo from a VM's properties (and its config's facts); node is its cluster, host its ESXi host."""
    if facts is None:
        facts = config_facts(props)
    host_id = mapping.moid(props.get("runtime.host"))
    host = inv.hosts.get(host_id or "")
    cluster = inv.cluster_of_host(host_id)
    return InstanceInfo(
        id=oid,
        name=mapping.vm_name(props.get("name")),
        power_state=mapping.power_state(props.get("runtime.powerState")),
        vcpus=facts.vcpus,
        memory_mb=facts.memory_mb,
        node=cluster.name if cluster else (host.name if host else None),
        host=host.name if host else None,
        disks=facts.disks,
        metadata=dict(facts.metadata),
        managed=facts.managed,
        image=facts.image,
        nics=facts.nics,
    )


class ConfigCache:
    """Per VM id, the facts of the last config version read; thread-safe, one entry per VM."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._facts: dict[str, ConfigFacts] = {}

    def get(self, oid: str, version: object) -> ConfigFacts | None:
        """The facts when ``version`` is the one they were read at (never for an empty version)."""
        if not version:
            return None
        with self._lock:
            facts = self._facts.get(oid)
        return facts if facts is not None and facts.version == version else None

    def put(self, oid: str, facts: ConfigFacts) -> None:
        if facts.version:
            with self._lock:
                self._facts[oid] = facts

    def keep_only(self, oids: set[str]) -> None:
        """Forget VMs a complete listing no longer saw (destroyed, unregistered)."""
        with self._lock:
            for oid in [o for o in self._facts if o not in oids]:
                del self._facts[oid]

    def __contains__(self, oid: object) -> bool:
        with self._lock:
            return oid in self._facts

    def __len__(self) -> int:
        with self._lock:
            return len(self._facts)


@dataclass(frozen=True)
class Listed:
    """One VM of a listing: its light properties, its config's facts, and its InstanceInfo."""

    oid: str
    props: dict[str, Any]
    facts: ConfigFacts
    info: InstanceInfo


class ListingOps(VSphereOps):
    """list_instances and the other bulk listings, over the config cache (see the module docstring)."""

    _config_cache: ConfigCache

    def _listing(
        self, content: Any, keep: Callable[[ConfigFacts], bool], extra_paths: Sequence[str] = ()
    ) -> list[Listed]:
        """VMs in scope whose config facts pass ``keep``: one retrieval, plus one for configs not cached."""
        # Imported here: driver imports us, and holds the topology's property lists.

        with collector_paused():  # parsing and building thousands of acyclic objects (see there)
            return self._listed(content, keep, extra_paths)

    def _listed(self, content: Any, keep: Callable[[ConfigFacts], bool], extra_paths: Sequence[str]) -> list[Listed]:
        # Imported here: driver imports us, and holds the topology's property lists.
        from virtdrivers_vmware.driver import _TOPOLOGY

        props: dict[str, Sequence[str]] = {**_TOPOLOGY, "VirtualMachine": (*VM_LIGHT_PROPERTIES, *extra_paths)}
        objects = self._s.retrieve(content, self._s.view(content, tuple(props)), props)
        refs = {mapping.moid(o.obj) or "": o.obj for o in objects if mapping.type_name(o.obj) == "VirtualMachine"}
        inv = mapping.build_inventory(objects)
        cache = self._config_cache
        # Out-of-scope VMs (by their host, a light property) are never read in full.
        scoped = {oid: vm for oid, vm in inv.vms.items() if self._in_scope(vm, inv)}
        facts = {oid: f for oid, vm in scoped.items() if (f := cache.get(oid, vm.get("config.changeVersion")))}
        missing = [refs[oid] for oid in scoped if oid not in facts]
        for oc in self._s.retrieve_objects(content, missing, VM_CONFIG_PROPERTIES, report_missing=True):
            oid, read = mapping.moid(oc.obj) or "", config_facts(mapping.props_of(oc))
            cache.put(oid, read)
            facts[oid] = read
        cache.keep_only(set(inv.vms))
        # A VM gone between the two reads has no facts: it is not listed.
        return [
            Listed(oid, vm, f, instance_info(oid, vm, inv, f))
            for oid, vm in scoped.items()
            if (f := facts.get(oid)) is not None and not f.template and keep(f)
        ]

    def list_instances(self) -> list[InstanceInfo]:
        """Every managed VM in scope, each equal to what get_instance says of it.

        One paged retrieval of the light properties; the configs whose version moved come in a
        second one over exactly those VMs (see the module docstring).
        """

        def read(content: Any) -> list[InstanceInfo]:
            return [x.info for x in self._listing(content, lambda f: f.managed)]

        return self._call("list instances", read, idempotent=True)

    def list_unmanaged(self) -> list[InstanceInfo]:
        """VMs without our mark, with their disks: what adopting them would take over."""

        def read(content: Any) -> list[InstanceInfo]:
            return [x.info for x in self._listing(content, lambda f: not f.managed)]

        return self._call("list unmanaged", read, idempotent=True)

    def list_instances_with_addresses(self) -> list[tuple[InstanceInfo, list[GuestAddress]]]:
        """list_instances with each instance's guest addresses, ``guest.net`` in the light retrieval.

        The listing stays one round trip per page in steady state however many VMs and NICs
        there are (the contract's ``guest_addresses`` is per instance).
        """

        def read(content: Any) -> list[tuple[InstanceInfo, list[GuestAddress]]]:
            with collector_paused():  # the addresses are as many small acyclic objects again
                listed = self._listing(content, lambda f: f.managed, ("guest.net",))
                now = datetime.datetime.now(datetime.UTC)  # one retrieval: one moment of observation
                return [(x.info, network.guest_addresses(x.props, now, macs=x.facts.macs)) for x in listed]

        return self._call("list instances with addresses", read, idempotent=True)

    def list_guest_addresses(self) -> dict[str, list[GuestAddress]]:
        """Every managed instance's addresses, from the same retrievals as the listing."""
        return {info.id: addresses for info, addresses in self.list_instances_with_addresses()}
