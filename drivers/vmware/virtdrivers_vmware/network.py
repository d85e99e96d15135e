"""Networks, NICs and the guest's addresses: vSphere port groups and ethernet cards as contract objects.

A network is a standard port group (``vim.Network``) or a distributed port group; its id is
the managed-object id (``network-7``, ``dvportgroup-11``), which is also what a NIC's backing
names, so a NIC reads back without a lookup. Pure functions, except those building specs,
which import pyVmomi when called.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from virtdrivers.errors import InvalidSpec
from virtdrivers.objects import GuestAddress, Network, NicInfo, NicSpec
from virtdrivers_vmware._sdk import sdk

#: Per inventory type, what the networks listing reads: one retrieval for all three.
NETWORK_PROPERTIES: dict[str, tuple[str, ...]] = {
    "Network": ("name",),
    "DistributedVirtualPortgroup": ("name", "key", "config.distributedVirtualSwitch", "tag"),
    "DistributedVirtualSwitch": ("uuid", "config.uplinkPortgroup"),
}

#: Contract model names and the ethernet card class each one is; VMXNET3 is the paravirtual default.
NIC_MODELS = {
    "vmxnet3": "VirtualVmxnet3",
    "vmxnet2": "VirtualVmxnet2",
    "e1000": "VirtualE1000",
    "e1000e": "VirtualE1000e",
    "pcnet32": "VirtualPCNet32",
}
DEFAULT_NIC_MODEL = "vmxnet3"
#: A vSphere tag the uplink port group of a distributed switch carries: no VM can be put there.
_UPLINK_TAG = "SYSTEM/DVS.UPLINKPG"


@dataclass(frozen=True)
class NetworkRow:
    moid: str
    name: str
    kind: str
    #: For a distributed port group: its key and its switch's UUID, which a NIC backing names.
    key: str | None = None
    switch_uuid: str | None = None

    def network(self) -> Network:
        return Network(id=self.moid, name=self.name, kind=self.kind)


def network_rows(objects: Sequence[Any]) -> list[NetworkRow]:
    """Networks a NIC can be put on, from one retrieval of :data:`NETWORK_PROPERTIES`, sorted by name."""
    from virtdrivers_vmware.mapping import moid, props_of, type_name

    switches, uplinks = {}, set()
    for o in objects:
        if type_name(o.obj).endswith("DistributedVirtualSwitch"):
            props = props_of(o)
            switches[moid(o.obj)] = props.get("uuid")
            uplinks |= {moid(p) for p in props.get("config.uplinkPortgroup") or ()}
    rows = []
    for o in objects:
        kind, oid, props = type_name(o.obj), moid(o.obj) or "", props_of(o)
        if kind == "Network":
            rows.append(NetworkRow(oid, str(props.get("name", oid)), "portgroup"))
        elif kind == "DistributedVirtualPortgroup":
            if oid in uplinks or any(getattr(t, "key", None) == _UPLINK_TAG for t in props.get("tag") or ()):
                continue
            switch = switches.get(moid(props.get("config.distributedVirtualSwitch")))
            if not switch:
                continue
            name = str(props.get("name", oid))
            rows.append(NetworkRow(oid, name, "distributed-portgroup", str(props.get("key") or oid), str(switch)))
    return sorted(rows, key=lambda r: (r.name, r.moid))


def check_nics(nics: Sequence[NicSpec], field: str = "nics") -> None:
    """Refuse a NIC model vSphere has no card for, before anything is sent."""
    for i, nic in enumerate(nics):
        if nic.model is not None and nic.model.lower() not in NIC_MODELS:
            known = ", ".join(sorted(NIC_MODELS))
            raise InvalidSpec(f"vSphere has no {nic.model!r} NIC; use one of {known}", field=f"{field}.{i}.model")


def resolve(ref: str, rows: Sequence[NetworkRow], field: str) -> NetworkRow:
    """The network a NIC spec names, by id first, then by name; a name two networks share is refused."""
    for row in rows:
        if row.moid == ref:
            return row
    named = [r for r in rows if r.name == ref]
    if len(named) == 1:
        return named[0]
    if named:
        ids = ", ".join(r.moid for r in named)
        raise InvalidSpec(f"network name {ref!r} is ambiguous ({ids}): give its id", field=field)
    raise InvalidSpec(f"no network {ref!r} (see list_networks)", field=field)


def nic_change(nic: NicSpec, row: NetworkRow, key: int) -> Any:
    """The device change that adds ``nic`` on ``row``: a kept MAC is a manual address."""
    vim, _ = sdk()

    card_class = getattr(vim.vm.device, NIC_MODELS[(nic.model or DEFAULT_NIC_MODEL).lower()])
    if row.switch_uuid is not None:
        backing: Any = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(switchUuid=row.switch_uuid, portgroupKey=row.key)
        )
    else:
        backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
            deviceName=row.name, network=vim.Network(row.moid)
        )
    card = card_class(
        key=key,
        backing=backing,
        connectable=vim.vm.device.VirtualDevice.ConnectInfo(
            startConnected=True, connected=True, allowGuestControl=True
        ),
        addressType="manual" if nic.mac else "generated",
    )
    if nic.mac:
        card.macAddress = nic.mac
    return vim.vm.device.VirtualDeviceSpec(operation="add", device=card)


def is_nic(device: Any) -> bool:
    vim, _ = sdk()
    return isinstance(device, vim.vm.device.VirtualEthernetCard)


def _model_of(device: Any) -> str | None:
    kind = type(device).__name__.rsplit(".", 1)[-1]
    return next((m for m, cls in NIC_MODELS.items() if cls == kind), None)


def network_of(device: Any) -> str:
    """The id of the network a card is on: a port group's moid, or a distributed port group's key."""
    backing = device.backing
    port = getattr(backing, "port", None)
    if port is not None:
        return str(port.portgroupKey)
    net = getattr(backing, "network", None)
    if net is not None:
        return str(net._moId)
    return str(getattr(backing, "deviceName", "") or "")


def nics_of(devices: Sequence[Any] | None) -> tuple[NicInfo, ...]:
    """The VM's ethernet cards in device order; the id is the device key."""
    return tuple(
        NicInfo(id=str(d.key), network=network_of(d), mac=str(d.macAddress or "").lower(), model=_model_of(d))
        for d in devices or ()
        if is_nic(d)
    )


def guest_addresses(
    props: Mapping[str, Any], now: datetime.datetime | None = None, *, macs: set[str] | None = None
) -> list[GuestAddress]:
    """What VMware Tools reports in ``guest.net`` for the VM's present NICs: CIDR from ``ipConfig``, else bare.

    Only while the VM runs: a stopped VM's guest info is what Tools said last, not now.
    Entries of NICs the VM no longer has, and entries without addresses, are left out.
    ``macs`` are the VM's NICs when the caller knows them already (the listing, from its cache).
    """
    if props.get("runtime.powerState") != "poweredOn":
        return []
    when = now or datetime.datetime.now(datetime.UTC)
    if macs is None:
        macs = {n.mac for n in nics_of(props.get("config.hardware.device"))}
    out = []
    for entry in props.get("guest.net") or ():
        mac = str(getattr(entry, "macAddress", "") or "").lower()
        if not mac or (macs and mac not in macs):
            continue
        config = getattr(entry, "ipConfig", None)
        addresses = [f"{a.ipAddress}/{a.prefixLength}" for a in getattr(config, "ipAddress", None) or ()]
        if not addresses:
            # Tools named the address without its prefix: a bare address, never an invented prefix.
            addresses = [str(a) for a in getattr(entry, "ipAddress", None) or ()]
        if addresses:
            out.append(GuestAddress(mac=mac, addresses=tuple(addresses), source="tools", observed_at=when))
    return out
