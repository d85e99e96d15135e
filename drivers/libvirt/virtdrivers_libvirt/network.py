"""Networks, NICs and guest addresses on libvirt.

Networks a NIC can join: QEMU's user-mode networking (``user``: NAT inside QEMU, no host setup,
which is all an embedded or unprivileged QEMU has) and the node's libvirt networks by name (a
real host's ``default`` NAT network, or networks forwarding to bridges).

Addresses come from whoever can say: the guest agent first (it knows every address on every
NIC), then libvirt's DHCP leases (only for libvirt-managed networks), then the host's ARP
table. None of them answering yet is "not reported yet": an empty list, never an error.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from virtdrivers.errors import DriverError, InvalidSpec
from virtdrivers.objects import GuestAddress, Network, NicSpec
from virtdrivers_libvirt import mapping
from virtdrivers_libvirt.session import Session

log = logging.getLogger(__name__)

#: virDomainInterfaceAddressesSource, repeated so this module imports without the SDK.
SRC_LEASE, SRC_AGENT, SRC_ARP = 0, 1, 2
_SOURCES = ((SRC_AGENT, "agent"), (SRC_LEASE, "lease"), (SRC_ARP, "arp"))


DEFAULT_MODEL = "virtio"


def list_networks(session: Session, domain_type: str) -> list[Network]:
    """``user`` where QEMU runs the guests, then the node's libvirt networks.

    The embedded driver has no network driver at all: that is not an error, just no networks.
    """
    # Made here, not at import: listing drivers must build no model of the contract.
    user = Network(id=mapping.USER_NETWORK, name=mapping.USER_NETWORK, kind="user")
    out = [user] if domain_type != "test" else []
    try:
        nets = session.call(lambda c: [(str(n.name()), str(n.UUIDString())) for n in c.listAllNetworks(0)])
    except DriverError as exc:
        log.debug("libvirt: no networks on %s: %s", session.uri, exc)
        nets = []
    out += [Network(id=name, name=name, kind="network") for name, _uid in sorted(nets)]
    return out


def resolve(
    networks: Sequence[Network], nics: Iterable[NicSpec], used_macs: set[str], field: str
) -> list[mapping.NicRecord]:
    """NIC specs as NIC records, refused up front (InvalidSpec naming the NIC's field) when a
    network is unknown or a MAC is taken. A MAC is chosen here where none is asked for, so
    what create returns and what the domain holds agree from the start."""
    by_ref = {n.id: n for n in networks} | {n.name: n for n in networks}
    out: list[mapping.NicRecord] = []
    taken = set(used_macs)
    for n, nic in enumerate(nics):
        where = f"{field}.{n}" if field == "nics" else field
        net = by_ref.get(nic.network)
        if net is None:
            raise InvalidSpec(f"no network {nic.network!r}", field=f"{where}.network")
        mac = nic.mac
        if mac is not None and mac in taken:
            raise InvalidSpec(f"MAC {mac} is in use", field=f"{where}.mac")
        while mac is None or mac in taken:
            mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        taken.add(mac)
        out.append(mapping.NicRecord(mac=mac, network=net.id, model=nic.model or DEFAULT_MODEL))
    return out


def _entries(raw: dict[str, Any], source: str, macs: set[str], now: datetime.datetime) -> list[GuestAddress]:
    out = []
    for _name, iface in sorted(raw.items()):
        mac = str(iface.get("hwaddr") or "").lower()
        if not mac or mac == "00:00:00:00:00:00":  # loopback
            continue
        if macs and mac not in macs:
            continue
        addrs = []
        for a in iface.get("addrs") or ():
            with_prefix = f"{a.get('addr')}/{a.get('prefix')}"
            try:
                parsed = ipaddress.ip_interface(with_prefix)
            except ValueError:
                continue
            if parsed.ip.is_loopback:
                continue
            addrs.append(str(parsed))
        if addrs:
            out.append(GuestAddress(mac=mac, addresses=tuple(addrs), source=source, observed_at=now))
    return out


def _ask(dom: Any, source: int) -> Callable[[Any], dict[str, Any]]:
    return lambda _conn: dict(dom.interfaceAddresses(source, 0) or {})


def guest_addresses(session: Session, dom: Any, record: mapping.DomainRecord) -> list[GuestAddress]:
    """The first source that reports any address for the domain's NICs wins.

    Each source fails in its own way while it cannot answer (agent not connected yet, no
    lease on user-mode networking, no ARP entry): all of these are "nothing yet".
    """
    macs = {n.mac for n in record.nics}
    for source, name in _SOURCES:
        if source == SRC_LEASE and not any(n.network != mapping.USER_NETWORK for n in record.nics):
            continue  # leases exist only on libvirt networks
        try:
            raw = session.call(_ask(dom, source), ref=record.uuid)
        except DriverError as exc:
            log.debug("libvirt: %s addresses of %s: %s", name, record.uuid, exc)
            continue
        found = _entries(raw or {}, name, macs, datetime.datetime.now(datetime.UTC))
        if found:
            return found
    return []
