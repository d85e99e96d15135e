"""What passes between vSphere and a guest: cloud-init's guestinfo keys and the webmks console ticket.

User data travels in the VM's extraConfig as cloud-init's VMware datasource (and
cloudbase-init's VMware GuestInfo service) reads it: ``guestinfo.userdata`` and
``guestinfo.metadata``, each with its ``.encoding`` key. Encoding is done before any call,
so oversized or unencodable input never reaches the server.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from virtdrivers.errors import InvalidSpec
from virtdrivers.objects import ConsoleConnection, UserData

USERDATA_KEY = "guestinfo.userdata"
METADATA_KEY = "guestinfo.metadata"
#: Every key this driver writes for cloud-init, so that none of an earlier value survives.
GUESTINFO_KEYS = (USERDATA_KEY, USERDATA_KEY + ".encoding", METADATA_KEY, METADATA_KEY + ".encoding")
#: Above this many bytes the text is gzipped before base64 (both encodings are cloud-init's).
_GZIP_FROM = 4096
#: vCenter keeps a VM's whole configuration under a few MB; one guestinfo value stays well inside.
MAX_VALUE_BYTES = 512 * 1024
#: How long vCenter honours a webmks ticket; vSphere documents it as short-lived and single use.
TICKET_LIFETIME = datetime.timedelta(seconds=60)
#: A host name label (RFC 1123), as ``UserData.hostname`` accepts: an instance name like this is the default.
_LABEL = re.compile(r"(?=.{1,63}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")


def encode(text: str) -> tuple[str, str]:
    """The value and ``.encoding`` of a guestinfo key holding ``text``."""
    raw = text.encode()
    if len(raw) >= _GZIP_FROM:
        return base64.b64encode(gzip.compress(raw, mtime=0)).decode(), "gzip+base64"
    return base64.b64encode(raw).decode(), "base64"


def decode(value: str, encoding: str | None) -> str:
    """A guestinfo value as the guest's datasource decodes it."""
    if encoding in (None, ""):
        return value
    if encoding in ("base64", "b64"):
        return base64.b64decode(value).decode()
    if encoding in ("gzip+base64", "gz+b64"):
        return gzip.decompress(base64.b64decode(value)).decode()
    raise ValueError(f"unknown guestinfo encoding {encoding!r}")


def guestinfo(user_data: UserData | None, *, instance_uuid: str, name: str) -> dict[str, str]:
    """The extraConfig entries for ``user_data``: empty when there is none.

    The metadata is JSON (cloud-init reads JSON or YAML): ``instance-id`` is the VM's
    instance UUID, so a clone of a template is a new instance to cloud-init;
    ``local-hostname`` the given hostname, else the instance name where it is a valid label;
    ``network`` the network-config, base64 with its own ``network.encoding``.
    """
    if user_data is None:
        return {}
    metadata: dict[str, str] = {"instance-id": instance_uuid}
    hostname = user_data.hostname or (name if _LABEL.fullmatch(name) else None)
    if hostname:
        metadata["local-hostname"] = hostname
    if user_data.network_config is not None:
        metadata["network"], metadata["network.encoding"] = encode(user_data.network_config)
    entries: dict[str, str] = {}
    value, encoding = encode(json.dumps(metadata, sort_keys=True))
    entries[METADATA_KEY], entries[METADATA_KEY + ".encoding"] = value, encoding
    if user_data.user_data is not None:
        value, encoding = encode(user_data.user_data)
        entries[USERDATA_KEY], entries[USERDATA_KEY + ".encoding"] = value, encoding
    for key, value in entries.items():
        if len(value) > MAX_VALUE_BYTES:
            raise InvalidSpec(f"{key} would be {len(value)} bytes once encoded", field="user_data")
    return entries


def user_data_of(extra: Mapping[str, str]) -> str | None:
    """The user data a guest reads from these extraConfig entries; None when there is none."""
    value = extra.get(USERDATA_KEY)
    if value is None:
        return None
    return decode(value, extra.get(USERDATA_KEY + ".encoding"))


#: The serial port's file in the VM's directory: what the guest writes to its first serial console.
CONSOLE_FILE = "console.log"


def serial_port_change(datastore: str, directory: str) -> Any:
    """A serial port whose output goes to ``[datastore] directory/console.log``: the VM's console log."""
    from virtdrivers_vmware._sdk import sdk

    vim, _ = sdk()
    port = vim.vm.device.VirtualSerialPort(
        key=-300,
        backing=vim.vm.device.VirtualSerialPort.FileBackingInfo(fileName=f"[{datastore}] {directory}/{CONSOLE_FILE}"),
        yieldOnPoll=True,
        connectable=vim.vm.device.VirtualDevice.ConnectInfo(startConnected=True, connected=True),
    )
    return vim.vm.device.VirtualDeviceSpec(operation="add", device=port)


def console_file(devices: Any) -> str | None:
    """The datastore path of the VM's serial-port file, if it has one."""
    from virtdrivers_vmware._sdk import sdk

    vim, _ = sdk()
    for dev in devices or ():
        if isinstance(dev, vim.vm.device.VirtualSerialPort) and isinstance(
            dev.backing, vim.vm.device.VirtualSerialPort.FileBackingInfo
        ):
            return str(dev.backing.fileName)
    return None


def console_text(data: bytes, max_bytes: int) -> str:
    """A console log's tail as text, decoded leniently and never longer than ``max_bytes`` as UTF-8.

    A cut through a multi-byte character decodes to U+FFFD, which is longer than the bytes it
    stands for: such leading characters are dropped rather than grow past the limit.
    """
    text = data.decode("utf-8", errors="replace")
    while len(text.encode()) > max_bytes:
        text = text[1:]
    return text


def console(ticket: Any, default_host: str, now: datetime.datetime | None = None) -> ConsoleConnection:
    """A webmks ticket as a ConsoleConnection.

    The URL is the WebSocket to open *without* the ticket (``wss://host:port/ticket/``), and
    the ticket is the secret to append: vSphere's own ``url`` field embeds it, and a URL that
    carries a secret would print it.
    """
    secret = str(ticket.ticket)
    host = str(getattr(ticket, "host", None) or default_host)
    port = int(getattr(ticket, "port", None) or 443)
    url = getattr(ticket, "url", None)
    base = str(url).replace(secret, "") if url else f"wss://{host}:{port}/ticket/"
    return ConsoleConnection(
        kind="webmks",
        url=base,
        host=host,
        port=port,
        ticket=SecretStr(secret),
        expires_at=(now or datetime.datetime.now(datetime.UTC)) + TICKET_LIFETIME,
    )
