"""What goes into a guest and what comes out: cloud-init ``Initialization``, console tickets, statistics.

User data travels in the VM's own ``Initialization`` (kept with the VM, shown by ``GET /vms/{id}``):
the engine builds a cloud-init payload from it and attaches it on the VM's first run (and on
a run started with ``use_cloud_init``). The engine writes the payload's ``user-data`` itself as
a ``#cloud-config`` document, from its own fields (host name, user, keys) followed by
``custom_script``: our user data goes in ``custom_script``, so only cloud-config user data
arrives as a guest can use it. A script or a MIME multipart would be merged into YAML and
broken, so it is refused up front instead. The engine also writes the network configuration
itself, from ``nic_configurations``; it has no field for a verbatim cloud-init network-config
(static addresses there not being applied is terraform-provider-ovirt #252's story), so a
``network_config`` is refused up front too rather than silently dropped.

Consoles: the engine has no REST call for a serial console's output, so CONSOLE_OUTPUT is not
offered; a graphics console (VNC, else SPICE) with a one-time ticket is the connection.

Statistics: the engine reports CPU only as a percentage gauge (``cpu.current.total``), never a
cumulative CPU time, so :class:`InstanceMetrics` has ``cpu_time_ns`` None here; memory in use
and the NICs' cumulative byte counters (``data.total.rx``/``tx``) are real counters.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from typing import Any

from pydantic import SecretStr

from virtdrivers.errors import InvalidSpec
from virtdrivers.objects import ConsoleConnection, InstanceMetrics, UserData
from virtdrivers_ovirt import mapping

#: The first line the engine's merged ``user-data`` document needs our part to be.
CLOUD_CONFIG = "#cloud-config"
#: Characters XML 1.0 cannot carry at all (the API is XML): the engine would never see them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_LABEL = re.compile(r"(?=.{1,63}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")
#: Seconds a console ticket is valid: long enough to start a viewer, short enough to be one-time.
TICKET_SECONDS = 120
#: Console protocols in the order we offer them: VNC has the wider choice of clients.
CONSOLE_PREFERENCE = ("vnc", "spice")


def check(user_data: UserData) -> None:
    """Refuse, before any call, user data the engine's carrier cannot deliver as given."""
    text = user_data.user_data
    if text is not None:
        if not text.lstrip().startswith(CLOUD_CONFIG):
            raise InvalidSpec(
                "oVirt merges user data into the #cloud-config document it writes itself; "
                "give cloud-config (starting with #cloud-config), not a script or MIME multipart",
                field="user_data.user_data",
            )
        if _NOT_XML.search(text):
            raise InvalidSpec("contains control characters XML cannot carry", field="user_data.user_data")
    if user_data.network_config is not None:
        raise InvalidSpec(
            "oVirt builds the guest's network configuration itself from its NIC configurations "
            "and has no field for a cloud-init network-config",
            field="user_data.network_config",
        )


def initialization(types: Any, user_data: UserData, instance_name: str) -> Any:
    """The ``Initialization`` for the VM add; :func:`check` has passed.

    The host name is the user's, else the instance's name when it is a valid label, else
    left to the guest (the engine would otherwise write the VM's name, valid or not).
    """
    hostname = user_data.hostname
    if hostname is None and _LABEL.fullmatch(instance_name):
        hostname = instance_name
    return types.Initialization(
        custom_script=user_data.user_data,
        host_name=hostname,
        cloud_init_network_protocol=types.CloudInitNetworkProtocol.OPENSTACK_METADATA,
    )


def choose_console(consoles: Iterable[Any]) -> Any | None:
    """The console to offer, from a list read with ``current=true`` (only listening ones have an address)."""
    listening = [c for c in consoles if c.address and (c.port or c.tls_port)]
    rank = {p: n for n, p in enumerate(CONSOLE_PREFERENCE)}
    return min(listening, key=lambda c: rank.get(mapping.value(c.protocol), len(rank)), default=None)


def connection(console: Any, ticket: Any, now: datetime.datetime) -> ConsoleConnection:
    """Where ``console`` listens and the ticket that opens it; SPICE's TLS port where it has one."""
    kind = mapping.value(console.protocol)
    port = console.tls_port if kind == "spice" and console.tls_port else console.port
    return ConsoleConnection(
        kind=kind,
        host=console.address,
        port=port,
        ticket=SecretStr(ticket.value) if ticket.value else None,
        expires_at=now + datetime.timedelta(seconds=int(ticket.expiry or TICKET_SECONDS)),
    )


def _datum(stat: Any) -> float | None:
    values = getattr(stat, "values", None) or ()
    return float(values[0].datum) if values and values[0].datum is not None else None


def metrics(instance_id: str, vm: Any, now: datetime.datetime) -> InstanceMetrics:
    """Counters from a VM read with ``follow=statistics,nics.statistics``."""
    stats = {s.name: _datum(s) for s in getattr(vm, "statistics", None) or ()}
    rx = tx = None
    for nic in getattr(vm, "nics", None) or ():
        nic_stats = {s.name: _datum(s) for s in getattr(nic, "statistics", None) or ()}
        if nic_stats.get("data.total.rx") is not None:
            rx = (rx or 0) + int(nic_stats["data.total.rx"] or 0)
        if nic_stats.get("data.total.tx") is not None:
            tx = (tx or 0) + int(nic_stats["data.total.tx"] or 0)
    used = stats.get("memory.used")
    return InstanceMetrics(
        instance_id=instance_id,
        timestamp=now,
        memory_used_mb=int(used) // mapping.MIB if used is not None else None,
        net_rx_bytes=rx,
        net_tx_bytes=tx,
    )
