"""Workload operations (contract 1.2) on vSphere: templates, port groups and NICs, addresses, console.

A mixin of the driver (see :mod:`virtdrivers_vmware._ops`); ``create`` in ``driver.py``
uses :meth:`WorkloadOps._clone` when the spec names an image. The spec-building and
translating functions live in :mod:`images`, :mod:`network` and :mod:`guest_io`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from virtdrivers.errors import InvalidSpec, InvalidState, NotFound, NotSupported
from virtdrivers.objects import (
    ConsoleConnection,
    GuestAddress,
    Image,
    ImageMode,
    InstanceSpec,
    Network,
    NicInfo,
    NicSpec,
)
from virtdrivers_vmware import guest_io, images, mapping, network
from virtdrivers_vmware._ops import VSphereOps
from virtdrivers_vmware._sdk import sdk

log = logging.getLogger("virtdrivers_vmware.driver")

#: What guest_addresses reads of a VM: one retrieval, guest.net next to the NICs it belongs to.
GUEST_PROPERTIES = (*mapping.VM_LIST_PROPERTIES, "config.hardware.device", "guest.net")


@dataclass(frozen=True)
class Template:
    """The image a create clones, as read during its plan."""

    moid: str
    props: dict[str, Any]
    #: The snapshot a linked clone is a child of; None for a full copy.
    snapshot: Any | None


class WorkloadOps(VSphereOps):
    """Images, networks, NICs, guest addresses and the console: see the module docstring."""

    # -- reading ----------------------------------------------------------------------------------

    def _network_rows(self, content: Any) -> list[network.NetworkRow]:
        """Every port group a NIC can go on, from one paged retrieval."""
        props = network.NETWORK_PROPERTIES
        view = self._s.view(content, tuple(props))
        return network.network_rows(self._s.retrieve(content, view, dict(props)))

    def _templates(self, content: Any) -> dict[str, dict[str, Any]]:
        """Every template of the vCenter with what an Image shows: one retrieval over all VMs."""
        view = self._s.view(content, ("VirtualMachine",))
        paths = ("config.template", *images.TEMPLATE_PROPERTIES)
        found = {}
        for oc in self._s.retrieve(content, view, {"VirtualMachine": paths}):
            props = mapping.props_of(oc)
            if images.is_template(props):
                found[mapping.moid(oc.obj) or ""] = props
        return found

    def list_images(self) -> list[Image]:
        """vSphere templates (VMs marked as templates), wherever they are in the vCenter."""

        def read(content: Any) -> list[Image]:
            found = self._templates(content)
            return sorted((images.image_of(oid, props) for oid, props in found.items()), key=lambda i: (i.name, i.id))

        return self._call("list images", read, idempotent=True)

    def list_networks(self) -> list[Network]:
        """Standard and distributed port groups (uplink port groups excluded)."""
        return self._call("list networks", lambda c: [r.network() for r in self._network_rows(c)], idempotent=True)

    # -- creating from an image -------------------------------------------------------------------

    def _template(self, content: Any, inv: mapping.Inventory, spec: InstanceSpec) -> Template:
        """The template a create names, with the snapshot a linked clone would use (read during the plan)."""
        assert spec.image is not None
        candidates = {oid: props for oid, props in inv.vms.items() if images.is_template(props)}
        oid = images.resolve(spec.image, candidates)
        objs = self._s.retrieve_objects(
            content, [self._ref(content, "VirtualMachine", oid)], images.TEMPLATE_PROPERTIES
        )
        if not objs:
            raise InvalidSpec(f"image {spec.image!r} went away", field="image")
        props = mapping.props_of(objs[0])
        snapshot = props.get("snapshot.currentSnapshot")
        if spec.image_mode == ImageMode.COW and snapshot is None:
            raise InvalidSpec(
                f"image {spec.image!r} has no snapshot to link clones to "
                "(snapshot the VM before marking it a template)",
                field="image_mode",
            )
        if spec.image_mode == ImageMode.COPY:
            snapshot = None
        return Template(oid, props, snapshot)

    def _clone(
        self,
        content: Any,
        spec: InstanceSpec,
        template: Template,
        *,
        folder: str,
        pool: str,
        datastore: mapping.DatastoreRow,
        networks: Sequence[network.NetworkRow],
        instance_uuid: str,
        token: str,
        extra: dict[str, str],
    ) -> str:
        """One CloneVM_Task into ``pool`` with the whole spec; returns the new VM's id."""
        clone = images.clone_spec(
            spec,
            template_id=template.moid,
            template_devices=template.props.get("config.hardware.device"),
            networks=networks,
            pool=self._ref(content, "ResourcePool", pool),
            datastore=self._ref(content, "Datastore", datastore.moid),
            datastore_name=datastore.name,
            snapshot=template.snapshot,
            instance_uuid=instance_uuid,
            token=token,
            extra=extra,
        )
        source = self._ref(content, "VirtualMachine", template.moid)
        task = source.CloneVM_Task(
            folder=self._ref(content, "Folder", folder), name=mapping.escaped_name(spec.name), spec=clone
        )
        vm = self._task(content, task, f"clone {spec.name}")
        return str(vm._moId)

    def _finish_clone(self, content: Any, vm_id: str, spec: InstanceSpec, template: Template) -> None:
        """Check the clone is what was asked, and make it so where the server fell short.

        vcsim 0.24 copies the template's CPU and memory instead of the spec's (vCenter applies
        the spec): a reconfigure sets them, a no-op elsewhere. A linked clone asked for by
        ``image_mode=cow`` that came out as a full copy (vcsim ignores ``diskMoveType``) is
        refused, so the caller never believes in a child disk that does not exist.
        """
        vim, _ = sdk()

        props, _ = self._managed(content, vm_id, mapping.VM_INFO_PROPERTIES)
        if spec.image_mode == ImageMode.COW and not images.is_linked(props.get("config.hardware.device")):
            raise NotSupported(
                "vsphere: the server made a full copy where a linked clone was asked for "
                "(it ignored diskMoveType createNewChildDiskBacking)"
            )
        reconfig = vim.vm.ConfigSpec()
        changed = False
        if props.get("config.hardware.numCPU") != spec.vcpus:
            reconfig.numCPUs, changed = spec.vcpus, True
        if props.get("config.hardware.memoryMB") != spec.memory_mb:
            reconfig.memoryMB, changed = spec.memory_mb, True
        if changed:
            vm = self._ref(content, "VirtualMachine", vm_id)
            self._task(content, vm.ReconfigVM_Task(reconfig), "apply the spec's CPU and memory to the clone")

    # -- NICs -------------------------------------------------------------------------------------

    def attach_nic(self, instance_id: str, nic: NicSpec) -> NicInfo:
        """ReconfigVM_Task adding one card, live when the VM runs (vSphere hot-adds NICs)."""
        network.check_nics([nic], field="nic")
        vim, _ = sdk()

        def run(content: Any) -> NicInfo:
            props, _ = self._managed(content, instance_id, mapping.VM_INFO_PROPERTIES)
            row = network.resolve(nic.network, self._network_rows(content), "nic.network")
            before = {n.id for n in network.nics_of(props.get("config.hardware.device"))}
            vm = self._ref(content, "VirtualMachine", instance_id)
            spec = vim.vm.ConfigSpec(deviceChange=[network.nic_change(nic, row, key=-1)])
            self._task(content, vm.ReconfigVM_Task(spec), "attach NIC")
            after, _ = self._managed(content, instance_id, mapping.VM_INFO_PROPERTIES)
            added = [n for n in network.nics_of(after.get("config.hardware.device")) if n.id not in before]
            if len(added) != 1:
                raise InvalidState(f"vsphere: the attached NIC did not appear on {props.get('name')!r}")
            return added[0]

        return self._call("attach NIC", run, ref=instance_id)

    def detach_nic(self, instance_id: str, nic_id: str) -> None:
        vim, _ = sdk()

        def run(content: Any) -> None:
            props, _ = self._managed(content, instance_id, mapping.VM_INFO_PROPERTIES)
            for dev in props.get("config.hardware.device") or ():
                if network.is_nic(dev) and str(dev.key) == nic_id:
                    break
            else:
                raise NotFound(f"vsphere: NIC {nic_id!r} not on {props.get('name')!r}")
            vm = self._ref(content, "VirtualMachine", instance_id)
            spec = vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="remove", device=dev)])
            self._task(content, vm.ReconfigVM_Task(spec), "detach NIC")

        self._call("detach NIC", run, ref=instance_id)

    # -- the guest --------------------------------------------------------------------------------

    def guest_addresses(self, instance_id: str) -> list[GuestAddress]:
        """From ``guest.net`` (VMware Tools' report) in the same read as the VM's NICs: one round trip."""

        def read(content: Any) -> list[GuestAddress]:
            props, _ = self._managed(content, instance_id, GUEST_PROPERTIES)
            return network.guest_addresses(props)

        return self._call("guest addresses", read, idempotent=True, ref=instance_id)

    def console_output(self, instance_id: str, *, max_bytes: int = 64 * 1024) -> str:
        """The tail of the VM's serial-port file on its datastore, read over ``/folder`` with a Range request.

        Every instance this driver creates has that serial port; "" until the guest writes.
        """
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise InvalidSpec("must be a positive number of bytes", field="max_bytes")

        def read(content: Any) -> str:
            props, inv = self._managed(content, instance_id, mapping.VM_INFO_PROPERTIES)
            path = guest_io.console_file(props.get("config.hardware.device"))
            found = mapping.datastore_file(path or "")
            if found is None:
                raise NotSupported(f"vsphere: {props.get('name')!r} has no serial port to a file: no console log")
            cluster = inv.cluster_of_host(mapping.moid(props.get("runtime.host")))
            dc = inv.datacenters.get(cluster.datacenter or "") if cluster else None
            if dc is None:
                raise InvalidState(f"vsphere: no datacenter found for {props.get('name')!r}")
            data = self._s.read_datastore_tail(dc.name, found[0], found[1], max_bytes)
            return guest_io.console_text(data or b"", max_bytes)

        return self._call("console output", read, idempotent=True, ref=instance_id)

    def console_connection(self, instance_id: str) -> ConsoleConnection:
        """A webmks ticket (``AcquireTicket``): a WebSocket URL and a one-time ticket, for a running VM."""
        _, vmodl = sdk()

        def run(content: Any) -> ConsoleConnection:
            props, _ = self._managed(content, instance_id, mapping.VM_LIST_PROPERTIES)
            if props.get("runtime.powerState") != "poweredOn":
                raise InvalidState(f"vsphere: {props.get('name')!r} is not running: it has no console")
            vm = self._ref(content, "VirtualMachine", instance_id)
            try:
                ticket = vm.AcquireTicket("webmks")
            except (vmodl.fault.MethodNotFound, vmodl.fault.NotSupported) as exc:
                raise NotSupported("vsphere: this server hands out no webmks console tickets") from exc
            return guest_io.console(ticket, self.settings.host)

        return self._call("console connection", run, ref=instance_id)
