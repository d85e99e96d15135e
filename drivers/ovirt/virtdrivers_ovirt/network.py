"""vNIC profiles as networks, a VM's NICs, and the addresses its guest agent reports.

On oVirt a NIC is put on a *vNIC profile*, which belongs to a logical network (the profile
carries QoS, port mirroring, filters); a network's default profile has the network's name.
So :class:`Network` here is a profile: its id is the profile's id, its name the profile's.
Profile names are only unique per network, so a name two profiles share is refused up front
and the id is the way to ask for either.

Addresses come only from the guest agent (``reported_devices``): the engine has no DHCP
lease or ARP view of a guest. A VM whose agent is not running, or not yet, reports none,
which is "not reported yet", never an error (terraform-provider-ovirt #280).

Pure functions over SDK objects; builders take ``ovirtsdk4.types`` as an argument.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from virtdrivers.errors import InvalidSpec
from virtdrivers.objects import GuestAddress, Network, NicInfo, NicSpec
from virtdrivers_ovirt import mapping

#: The contract's model names and the engine's ``NicInterface`` values they stand for.
MODELS = {"virtio": "virtio", "e1000": "e1000", "e1000e": "e1000e", "rtl8139": "rtl8139"}
DEFAULT_MODEL = "virtio"
#: How a profile list is read: with its network inline, one round trip.
PROFILE_FOLLOW = "network"


@dataclass(frozen=True)
class NicPlan:
    """A NIC the create (or attach) will add, checked before anything is made."""

    profile_id: str
    mac: str | None
    interface: str


def networks(profiles: Sequence[Any]) -> list[Network]:
    return [Network(id=p.id, name=p.name, kind="vnic-profile") for p in profiles]


def resolve(profiles: Sequence[Any], nics: Iterable[NicSpec], field: str) -> list[NicPlan]:
    """NIC specs as plans; InvalidSpec naming the NIC's field for an unknown or ambiguous profile
    or a model the engine has no such NIC for."""
    by_id = {p.id: p for p in profiles}
    out = []
    for n, nic in enumerate(nics):
        where = f"{field}.{n}" if field == "nics" else field
        profile = by_id.get(nic.network)
        if profile is None:
            named = [p for p in profiles if p.name == nic.network]
            if len(named) > 1:
                owners = ", ".join(sorted(str(getattr(p.network, "name", None) or p.network.id) for p in named))
                raise InvalidSpec(
                    f"vNIC profile {nic.network!r} exists on several networks ({owners}): give its id",
                    field=f"{where}.network",
                )
            if not named:
                raise InvalidSpec(f"no network (vNIC profile) {nic.network!r}", field=f"{where}.network")
            profile = named[0]
        model = nic.model or DEFAULT_MODEL
        if model not in MODELS:
            raise InvalidSpec(f"oVirt has no {model!r} NIC; one of {', '.join(MODELS)}", field=f"{where}.model")
        out.append(NicPlan(profile.id, nic.mac, MODELS[model]))
    return out


def nic_for_plan(types: Any, plan: NicPlan, name: str) -> Any:
    return types.Nic(
        name=name,
        vnic_profile=types.VnicProfile(id=plan.profile_id),
        interface=types.NicInterface(plan.interface),
        mac=types.Mac(address=plan.mac) if plan.mac else None,
    )


def nic_info(nic: Any) -> NicInfo:
    profile = getattr(nic, "vnic_profile", None)
    mac = getattr(nic, "mac", None)
    return NicInfo(
        id=nic.id,
        network=str(profile.id) if profile is not None and profile.id else "",
        mac=str(mac.address).lower() if mac is not None and mac.address else "",
        model=mapping.value(nic.interface) or None,
    )


def nic_infos(vm: Any) -> tuple[NicInfo, ...]:
    """A VM's NICs (read with ``follow=nics``), in the order the engine lists them."""
    return tuple(nic_info(n) for n in getattr(vm, "nics", None) or ())


def next_nic_name(vm: Any) -> str:
    """``nicN`` for the first N no NIC of the VM is called (the engine's own naming)."""
    taken = {n.name for n in getattr(vm, "nics", None) or ()}
    n = 1
    while f"nic{n}" in taken:
        n += 1
    return f"nic{n}"


def _cidr(ip: Any) -> str | None:
    """An engine ``Ip`` in CIDR notation when the agent gave its netmask, else the bare address:
    the agent usually reports none, and a prefix made up here would claim more than was said."""
    try:
        address = ipaddress.ip_address(str(ip.address))
    except ValueError:
        return None
    netmask = getattr(ip, "netmask", None)
    if netmask:
        try:
            return str(ipaddress.ip_interface(f"{address}/{netmask}"))
        except ValueError:
            pass
    return str(address)


def addresses(vm: Any, now: datetime.datetime) -> list[GuestAddress]:
    """The guest agent's addresses per NIC, from a VM read with ``follow=nics,reported_devices``.

    Only NICs of the VM count (an agent also reports ``lo`` and devices the engine does not
    manage); a VM that is not up reports nothing, whatever stale data the engine still holds.
    """
    if mapping.value(vm.status) != "up":
        return []
    macs = {n.mac for n in nic_infos(vm)}
    out = []
    for device in getattr(vm, "reported_devices", None) or ():
        if mapping.value(device.type) not in ("network", ""):
            continue
        mac = str(device.mac.address).lower() if device.mac is not None and device.mac.address else ""
        if not mac or (macs and mac not in macs):
            continue
        found = tuple(c for c in (_cidr(ip) for ip in device.ips or ()) if c is not None)
        if found:
            out.append(GuestAddress(mac=mac, addresses=found, source="agent", observed_at=now))
    return out
