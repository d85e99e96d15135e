"""What a compute agent needs to run a workload, not a blank VM (contract 1.2).

An image to boot from, NICs on networks, user data for cloud-init, the guest's
addresses, its console and its counters: one object per idea, backend-neutral.
Each backend chooses its own carrier (a NoCloud seed volume, guestinfo keys, the
manager's cloud-init field) and declares what it cannot serve as absent. The
anchors are Nova's ``spawn``/``get_console_output``/``get_instance_diagnostics``
and libcloud's ``create_node(size, image, location)`` with ``Node.private_ips``.
"""

from __future__ import annotations

import datetime
import enum
import re
from typing import Annotated

from pydantic import AfterValidator, Field, SecretStr

from virtdrivers.capabilities import DiskFormat
from virtdrivers.objects.base import VersionedObject

__all__ = [
    "ConsoleConnection",
    "GuestAddress",
    "Image",
    "ImageMode",
    "InstanceMetrics",
    "Network",
    "NicInfo",
    "NicSpec",
    "UserData",
]

#: cloud-init's NoCloud and config-drive carriers hold user data of this size comfortably,
#: and EC2 and OpenStack both cap it at 64 KiB.
MAX_USER_DATA_BYTES = 64 * 1024
MAX_NETWORK_CONFIG_BYTES = 16 * 1024
MAX_NICS = 8

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_HOSTNAME = re.compile(r"(?=.{1,63}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")


def _check_mac(value: str) -> str:
    mac = value.lower().replace("-", ":")
    if not _MAC.fullmatch(mac):
        raise ValueError("must be a MAC address like 52:54:00:12:34:56")
    if int(mac[:2], 16) & 1:
        raise ValueError("must be a unicast MAC address (the first octet's lowest bit clear)")
    return mac


def _check_token(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError("must be 1-32 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return value


def _check_hostname(value: str) -> str:
    if not _HOSTNAME.fullmatch(value):
        raise ValueError("must be a host name label: letters, digits and '-', at most 63")
    return value


def _bounded(limit: int) -> AfterValidator:
    def check(value: str) -> str:
        if len(value.encode()) > limit:
            raise ValueError(f"must be at most {limit} bytes as UTF-8")
        return value

    return AfterValidator(check)


Mac = Annotated[str, AfterValidator(_check_mac)]
Model = Annotated[str, AfterValidator(_check_token)]
Ref = Annotated[str, Field(min_length=1, max_length=255)]


class ImageMode(enum.StrEnum):
    """How a root disk is made from an image."""

    COW = "cow"
    """A per-instance copy-on-write child of the image: instant, the image is never written."""
    COPY = "copy"
    """A full, independent copy of the image."""


class Image(VersionedObject):
    """A bootable disk image the backend can create instances from."""

    VERSION = "1.0"
    id: str
    name: str
    disk_format: DiskFormat | None = None
    virtual_size_bytes: int = Field(default=0, ge=0)
    min_disk_gib: int = Field(default=0, ge=0)
    checksum: str | None = None
    """The image's content as the store knows it: unchanged while instances run from it."""
    os_type: str | None = None
    """``linux``, ``windows``, ... where the image says so."""
    os_distro: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class Network(VersionedObject):
    """A network NICs can be put on: a libvirt network or bridge, a port group, a vNIC profile, a switch."""

    VERSION = "1.0"
    id: str
    name: str
    kind: str = ""
    """The backend's own word for it (``user``, ``bridge``, ``portgroup``, ``vnic-profile``, ``switch``)."""


class NicSpec(VersionedObject):
    """A NIC to create with an instance or to attach later."""

    VERSION = "1.0"
    network: Ref
    """A network id or name from ``list_networks``."""
    mac: Mac | None = None
    """A unicast MAC to keep; None lets the backend choose."""
    model: Model | None = None
    """The device model (virtio, e1000, vmxnet3, ...); None for the backend's best paravirtual one."""


class NicInfo(VersionedObject):
    VERSION = "1.0"
    id: str
    network: str
    mac: str
    model: str | None = None


class UserData(VersionedObject):
    """What cloud-init (or cloudbase-init) reads at first boot."""

    VERSION = "1.0"
    user_data: Annotated[str, _bounded(MAX_USER_DATA_BYTES)] | None = None
    """cloud-config, a script or a MIME multipart, passed through verbatim."""
    hostname: Annotated[str, AfterValidator(_check_hostname)] | None = None
    """meta-data ``local-hostname``; the instance name when it is a valid label, else left to the guest."""
    network_config: Annotated[str, _bounded(MAX_NETWORK_CONFIG_BYTES)] | None = None
    """cloud-init network-config (version 1 or 2), verbatim."""


class GuestAddress(VersionedObject):
    """The addresses a guest has on one NIC, and who said so."""

    VERSION = "1.0"
    mac: str
    addresses: tuple[str, ...] = ()
    """CIDR notation where the reporter knows the prefix (``10.0.2.15/24``, ``fe80::1/64``), a bare
    address where it does not (Hyper-V's KVP exchange reports none): never an invented prefix."""
    source: str
    """Who reported them: ``agent`` (qemu-guest-agent), ``tools``, ``kvp``, ``lease``, ``arp``, ``simulated``."""
    observed_at: datetime.datetime


class ConsoleConnection(VersionedObject):
    """How to reach an instance's interactive console. The ticket is a secret and never prints.

    ``url`` never carries the ticket: where the protocol wants it in the address (vSphere's
    ``wss://host:port/ticket/<ticket>``), the caller appends ``ticket.get_secret_value()``, so
    the connection can be logged and shown without leaking a live credential.
    """

    VERSION = "1.0"
    kind: str
    """``vnc``, ``spice``, ``serial``, ``webmks``, ``rdp``."""
    url: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    ticket: SecretStr | None = None
    expires_at: datetime.datetime | None = None


class InstanceMetrics(VersionedObject):
    """Cumulative counters at one moment: two readings give rates. None where the backend cannot tell."""

    VERSION = "1.0"
    instance_id: str
    timestamp: datetime.datetime
    cpu_time_ns: int | None = Field(default=None, ge=0)
    memory_used_mb: int | None = Field(default=None, ge=0)
    disk_read_bytes: int | None = Field(default=None, ge=0)
    disk_write_bytes: int | None = Field(default=None, ge=0)
    disk_read_ops: int | None = Field(default=None, ge=0)
    disk_write_ops: int | None = Field(default=None, ge=0)
    net_rx_bytes: int | None = Field(default=None, ge=0)
    net_tx_bytes: int | None = Field(default=None, ge=0)
    net_rx_packets: int | None = Field(default=None, ge=0)
    net_tx_packets: int | None = Field(default=None, ge=0)
