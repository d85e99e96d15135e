"""The embedded endpoints: a simulator subprocess per endpoint, on 127.0.0.1 with a free port.

``https-basic`` serves HTTPS with a CA made at start (the driver verifies against it)
and Basic authentication; ``ntlm`` serves plain HTTP with NTLM and MS-WSMV message
encryption. Each start makes its own scratch directory and random password, and each
stop ends exactly the process it started (by PID) and removes the directory.

Both simulate a three-node failover cluster with two unmanaged VMs (pets to adopt).
Their :class:`~virtdrivers.endpoint.EndpointHooks` act on the simulator itself through
its HTTP test knobs (``/_sim/...``), never on the driver, so the driver's own clean-up
and timeout code runs against the peer exactly as it would against a real host.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtdrivers.capabilities import Capability
from virtdrivers.endpoint import EmbeddedEndpoint, EndpointHooks, Evidence
from virtdrivers.errors import BackendUnavailable
from virtdrivers.testing.process import stop_child

if TYPE_CHECKING:
    from virtdrivers.driver import Driver

__all__ = [
    "arm_fault",
    "embedded_endpoints",
    "read_carrier",
    "run_simulator",
    "set_guest_ignores_shutdown",
    "set_node_state",
    "simulator_process",
]

_START_TIMEOUT = 30.0
_USER = "vd-admin"


@contextlib.contextmanager
def simulator_process(
    *,
    https: bool,
    inventory: dict[str, Any] | None = None,
    extra_args: Sequence[str] = (),
    password: str | None = None,
    port: int = 0,
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any]]]:
    """Start ``python -m virtdrivers_hyperv.simulator``; yield the process and driver settings for it.

    The process is exposed for tests that kill it mid-call; ``password`` and ``port`` let
    such a test start a successor the same driver can reach again (a WinRM service
    restart). On exit, exactly this process is stopped (by PID) and its directory removed.
    """
    from virtdrivers_hyperv.simulator.app import PASSWORD_ENV  # the simulator itself only when one starts

    scratch = Path(tempfile.mkdtemp(prefix="vd-hyperv-ep-"))
    password = password if password is not None else secrets.token_urlsafe(18)
    cmd = [
        sys.executable, "-m", "virtdrivers_hyperv.simulator",
        "--host", "127.0.0.1", "--port", str(port), "--user", _USER,
        "--dir", str(scratch), "--exit-on-stdin-eof", *extra_args,
    ]  # fmt: skip
    if https:
        cmd.append("--https")
    if inventory is not None:
        inv = scratch / "inventory.json"
        inv.write_text(json.dumps(inventory))
        cmd += ["--inventory", str(inv)]
    env = {**os.environ, PASSWORD_ENV: password}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        info = _first_line(proc)
        yield (
            proc,
            {
                "host": "127.0.0.1",
                "port": info["port"],
                "https": https,
                "transport": "basic" if https else "ntlm",
                "user": _USER,
                "password": password,
                "ca_file": info.get("ca_file"),
                "operation_timeout": 5,
            },
        )
    finally:
        stop_child(proc)
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def run_simulator(
    *, https: bool, inventory: dict[str, Any] | None = None, extra_args: Sequence[str] = ()
) -> Iterator[dict[str, Any]]:
    """Start ``python -m virtdrivers_hyperv.simulator`` and yield driver settings for it."""
    with simulator_process(https=https, inventory=inventory, extra_args=extra_args) as (_, settings):
        yield settings


def _first_line(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + _START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=deadline - time.monotonic()):
                line = proc.stdout.readline()
                if not line:
                    break
                info: dict[str, Any] = json.loads(line)
                return info
    finally:
        sel.close()
    raise BackendUnavailable(f"the Hyper-V simulator did not start (exit code {proc.poll()})")


@contextlib.contextmanager
def _https_basic() -> Iterator[Mapping[str, Any]]:
    with run_simulator(https=True) as settings:
        yield settings


@contextlib.contextmanager
def _ntlm() -> Iterator[Mapping[str, Any]]:
    with run_simulator(https=False) as settings:
        yield settings


# -- hooks: every one acts on the simulator (the peer), through its HTTP test knobs -----------------


def _fail_next_create(settings: Mapping[str, Any], driver: Driver) -> None:
    """The next create fails at Set-VMMemory: the VM record and its VHDX files exist by then.

    This runs the create script's own rollback (its ``catch`` block, twinned in the
    simulator) and the driver's reaction to it, against the peer; nothing of the driver
    is replaced.
    """
    arm_fault(settings, "Set-VMMemory")


def _ignore_acpi(settings: Mapping[str, Any], driver: Driver, instance_id: str) -> None:
    """The guest ignores a graceful Stop-VM, so the stop script's Wait-Job runs out its timeout."""
    set_guest_ignores_shutdown(settings, instance_id, True)


def _fail_node(settings: Mapping[str, Any], driver: Driver, node: str, down: bool) -> None:
    set_node_state(settings, node, down)


def _read_user_data(settings: Mapping[str, Any], driver: Driver, instance_id: str) -> str | None:
    """``user-data`` from the ``cidata`` volume on the VM's disks, read from the simulator's model (not
    through the driver): the bytes the prepare script wrote there, as cloud-init's NoCloud would read them."""
    files = read_carrier(settings, instance_id)
    if files is None or "user-data" not in files:
        return None
    return files["user-data"].decode("utf-8")


_HOOKS = EndpointHooks(
    fail_next_create=_fail_next_create,
    ignore_acpi=_ignore_acpi,
    fail_node=_fail_node,
    read_user_data=_read_user_data,
)
#: How each workload cell is earned on these endpoints, where the behaviour is simulated.
_NOTES: dict[Capability, str] = {
    Capability.IMAGES: "VHDX files in the simulator's image library folder, listed with Get-ChildItem and Get-VHD",
    Capability.IMAGE_COW: "New-VHD -Differencing children in the simulator's model, which refuses any write to a "
    "parent while it has children; the guest writes (simulated) go to the child",
    Capability.IMAGE_COPY: "Copy-Item of the image's VHDX in the simulator's model",
    Capability.NETWORKS: "three virtual switches (external, internal, private) in the simulator's model",
    Capability.NIC_HOTPLUG: "Add-/Remove-VMNetworkAdapter on a running generation 2 VM in the simulator's model",
    Capability.USER_DATA: "a NoCloud seed (FAT volume labelled cidata in a VHDX, built by Mount-VHD, "
    "Initialize-Disk, New-Partition, Format-Volume) in the simulator's model; the hook reads user-data back from "
    "that volume; no guest boots to read it",
    Capability.GUEST_ADDRESSES: "addresses are set by the simulator one second after Start-VM on adapters "
    "connected to a switch, as the KVP data exchange would report them; no guest boots",
    Capability.CONSOLE_CONNECT: "vmconnect's RDP endpoint (host, ListenerPort 2179) as the simulator answers the "
    "CIM query; nobody connects to it",
    Capability.METRICS: "Measure-VM counters the simulator accrues at a fixed synthetic rate while a VM runs",
}
_SIMULATOR = "virtdrivers Hyper-V simulator"
#: What the simulator's model reports (Os 10.0.20348, PowerShell 5.1.20348), see ``handlers.h_info``.
_IMITATES = "Hyper-V on Windows Server 2022 (10.0.20348), failover cluster, Windows PowerShell 5.1"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("virtdrivers-hyperv")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "0+unknown"


def embedded_endpoints() -> Sequence[EmbeddedEndpoint]:
    common: dict[str, Any] = {
        "evidence": Evidence.PROJECT_SIMULATOR,
        "backend": _SIMULATOR,
        "backend_version": _version(),
        "imitates": _IMITATES,
        "hooks": _HOOKS,
        "notes": _NOTES,
        "guest_boot_timeout": 30.0,
    }
    return (
        EmbeddedEndpoint(
            "https-basic",
            "Hyper-V simulator (3-node failover cluster, 2 unmanaged VMs) over HTTPS with Basic auth, CA verified",
            _https_basic,
            **common,
        ),
        EmbeddedEndpoint(
            "ntlm",
            "Hyper-V simulator (3-node failover cluster, 2 unmanaged VMs) over HTTP with NTLM and MS-WSMV "
            "message encryption",
            _ntlm,
            **common,
        ),
    )


def _knob(settings: Mapping[str, Any], path: str, what: str) -> None:
    """POST to one of a running simulator's test knobs (``/_sim/...``, see ``server._Handler._knob``).

    ``settings`` are the driver settings the endpoint yielded (host, port, https, ca_file), so
    any process that can reach the simulator can use them, as a real outage would be seen.
    """
    import ssl
    import urllib.error
    import urllib.parse
    import urllib.request

    scheme = "https" if settings.get("https", True) else "http"
    url = f"{scheme}://{settings['host']}:{settings['port']}/_sim/{urllib.parse.quote(path)}"
    context = ssl.create_default_context(cafile=settings.get("ca_file")) if scheme == "https" else None
    request = urllib.request.Request(url, method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            status = reply.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    if status != 204:
        raise BackendUnavailable(f"the simulator refused to {what}: HTTP {status}")


def set_node_state(settings: Mapping[str, Any], node: str, down: bool) -> None:
    """Fail (``down``) or recover a cluster node of a running simulator."""
    _knob(settings, f"nodes/{node}/{'fail' if down else 'recover'}", f"change node {node!r}")


def arm_fault(settings: Mapping[str, Any], cmdlet: str) -> None:
    """Make the next call of ``cmdlet`` in a running simulator fail (a storage outage)."""
    _knob(settings, f"faults/{cmdlet}", f"arm a fault in {cmdlet!r}")


def read_carrier(settings: Mapping[str, Any], instance_id: str, label: str = "cidata") -> dict[str, bytes] | None:
    """The files on a VM's attached volume labelled ``label`` in a running simulator, or None."""
    import base64
    import ssl
    import urllib.error
    import urllib.parse
    import urllib.request

    scheme = "https" if settings.get("https", True) else "http"
    path = urllib.parse.quote(f"vms/{instance_id}/carrier/{label}")
    url = f"{scheme}://{settings['host']}:{settings['port']}/_sim/{path}"
    context = ssl.create_default_context(cafile=settings.get("ca_file")) if scheme == "https" else None
    try:
        with urllib.request.urlopen(url, context=context, timeout=10) as reply:
            files = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise BackendUnavailable(f"the simulator refused to read a carrier: HTTP {exc.code}") from None
    return {str(k): base64.b64decode(v) for k, v in files.items()}


def set_guest_ignores_shutdown(settings: Mapping[str, Any], instance_id: str, ignores: bool) -> None:
    """Make a VM's guest ignore (or again obey) a graceful shutdown in a running simulator."""
    action = "ignore-shutdown" if ignores else "obey-shutdown"
    _knob(settings, f"vms/{instance_id}/{action}", f"change the guest of {instance_id!r}")
