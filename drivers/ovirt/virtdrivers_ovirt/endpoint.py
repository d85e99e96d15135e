"""The embedded endpoint: the bundled simulator in a child process, and the hooks that make it misbehave.

Every hook acts on the PEER, through the simulator's fault knobs over HTTPS
(``POST /__simulator/fail-next-create|ignore-acpi|fail-node``), never on the driver
object: the driver under test runs exactly the code it runs against an engine, its
clean-up included. The simulator runs in another process, so the knobs are reached
over the wire, verified against the CA the simulator generated.

Listing endpoints (``virtdrivers drivers``) imports this module and calls
:func:`endpoints`: it imports neither ``ovirtsdk4``, ``cryptography``, the simulator
nor ``ssl``/``urllib``/``subprocess``; those load when an endpoint starts or a knob is turned.

The simulator keeps its inventory in a state file in its scratch directory (the
engine's database), with its CA there too: a simulator process that is killed and
started again with the same arguments (:func:`simulator_command`) comes back on the
same port with every VM, as an engine does after a restart.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtdrivers.capabilities import Capability
from virtdrivers.endpoint import EmbeddedEndpoint, EndpointHooks, Evidence
from virtdrivers.errors import BackendUnavailable, NotFound

if TYPE_CHECKING:
    from virtdrivers.driver import Driver

#: Hosts (compute nodes) in the simulated cluster: three, so a move to a named host is never
#: the only other choice.
HOSTS = 3
#: VMs made "outside" virtdrivers (running, HA, snapshotted), for ``adopt``.
PETS = 2
#: Environment variable the simulator program reads its password from (kept out of ``ps``).
PASSWORD_ENV = "VIRTDRIVERS_OVIRT_SIMULATOR_PASSWORD"


def simulator_command(scratch: Path, port: int = 0) -> list[str]:
    """The simulator program's command line, with its CA and state file in ``scratch``.

    Run again with the port it printed, it comes back as the same engine: same port, same
    CA, same inventory (the password comes in the environment, :data:`PASSWORD_ENV`).
    """
    import sys

    return [
        sys.executable,
        "-m",
        "virtdrivers_ovirt.simulator",
        "--port",
        str(port),
        "--hosts",
        str(HOSTS),
        "--pets",
        str(PETS),
        "--state-dir",
        str(scratch),
        "--state-file",
        str(scratch / "engine.json"),
    ]


@contextlib.contextmanager
def simulator_endpoint() -> Iterator[Mapping[str, Any]]:
    """Start the bundled simulator as a child process on a free port; stop exactly that process.

    The simulator runs in a process of its own, so it outlives a client that is killed
    mid-call (the crash harness's children) as an engine does. The admin password is
    random per run and handed over in the environment, so the suite's secret checks look
    for a string that cannot occur in any text by chance.
    """
    import secrets
    import shutil
    import subprocess
    import tempfile

    from virtdrivers.testing.process import stop_child

    scratch = Path(tempfile.mkdtemp(prefix="vd-ovirt-sim-"))
    env = dict(os.environ)
    env[PASSWORD_ENV] = "vd-" + secrets.token_urlsafe(18)
    proc = subprocess.Popen(
        simulator_command(scratch),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise BackendUnavailable(f"ovirt simulator exited with status {proc.wait(timeout=10)}")
        yield json.loads(line)
    finally:
        stop_child(proc, grace=10.0)
        shutil.rmtree(scratch, ignore_errors=True)


def control(settings: Mapping[str, Any], what: str, **args: Any) -> dict[str, Any]:
    """POST one fault knob to the simulator named by ``settings``; NotFound for an unknown object."""
    import ssl
    import urllib.error
    import urllib.request

    base = str(settings["url"]).split("/ovirt-engine/")[0]
    context = ssl.create_default_context(cafile=settings.get("ca_file"))
    request = urllib.request.Request(
        f"{base}/__simulator/{what}",
        data=json.dumps(args).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            reply: dict[str, Any] = json.load(response)
            return reply
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        if exc.code == 404:
            raise NotFound(f"ovirt simulator: {what}: {detail}") from None
        raise BackendUnavailable(f"ovirt simulator: {what} failed ({exc.code}): {detail}") from None
    except OSError as exc:
        raise BackendUnavailable(f"ovirt simulator: {what}: {exc}") from exc


def _fail_next_create(settings: Mapping[str, Any], driver: Driver) -> None:
    # Peer knob: the engine makes the next VM record, then its first disk goes illegal (or, with
    # no disk, its launch fails); the driver's own clean-up must remove the VM and the disk.
    control(settings, "fail-next-create", count=1)


def _ignore_acpi(settings: Mapping[str, Any], driver: Driver, instance_id: str) -> None:
    # Peer knob: the guest ignores shutdown; the engine keeps it powering down for its graceful
    # shutdown timeout (30 s, longer than the suite waits) and only a stop turns it off.
    control(settings, "ignore-acpi", vm=instance_id, deaf=True)


def _fail_node(settings: Mapping[str, Any], driver: Driver, node: str, down: bool) -> None:
    # Peer knob: the host goes non_responsive (its VMs unknown), or comes back rebooted.
    control(settings, "fail-node", node=node, down=down)


def _read_user_data(settings: Mapping[str, Any], driver: Driver, instance_id: str) -> str | None:
    # Peer read: the custom script of the cloud-init payload the engine attached to the VM's last
    # run with cloud-init (what the guest finds on its config drive), None when no run had one.
    reply = control(settings, "carrier", vm=instance_id)
    user_data = reply.get("user_data")
    return user_data if isinstance(user_data, str) else None


#: How the simulator earns each workload cell it serves: what it simulates, said on the cell.
NOTES = {
    Capability.IMAGES: "templates with disks, as the engine lists them, are modelled by our simulator; "
    "no image holds data",
    Capability.IMAGE_COW: "clone=false makes each VM disk a thin child of the template's disk in our simulator's "
    "disk chains (the template disk is never written; no real qcow2 exists)",
    Capability.IMAGE_COPY: "clone=true makes an independent disk copy in our simulator's model; no data is copied",
    Capability.NETWORKS: "vNIC profiles on two logical networks of our simulator; no host networking exists",
    Capability.NIC_HOTPLUG: "our simulator hot-plugs and unplugs NICs and refuses to remove a plugged one from a "
    "running VM, as the engine does; no guest sees the device",
    Capability.USER_DATA: "Initialization is kept with the VM; our simulator records the cloud-init payload the "
    "engine attaches to the first run and read_user_data reads its custom script; no guest boots to read it",
    Capability.GUEST_ADDRESSES: "our simulator reports devices 0.3 s after power-on as a guest agent would, with "
    "addresses it derives from each NIC's MAC; no guest runs an agent",
    Capability.CONSOLE_CONNECT: "our simulator issues graphics console tickets and ports as the engine would; "
    "nothing listens on them",
}


def endpoints() -> tuple[EmbeddedEndpoint, ...]:
    """The oVirt package's embedded endpoints (one: the bundled simulator)."""
    from virtdrivers_ovirt.simulator.identity import (
        ENGINE_FULL_VERSION,
        ENGINE_NAME,
        SIMULATOR_NAME,
        SIMULATOR_VERSION,
    )

    return (
        EmbeddedEndpoint(
            "simulator",
            f"bundled oVirt REST API simulator: {HOSTS} hosts, {PETS} unmanaged pets, "
            "HTTPS on 127.0.0.1, real ovirtsdk4 client",
            simulator_endpoint,
            evidence=Evidence.PROJECT_SIMULATOR,
            backend=SIMULATOR_NAME,
            backend_version=SIMULATOR_VERSION,
            imitates=f"{ENGINE_NAME} {ENGINE_FULL_VERSION}",
            hooks=EndpointHooks(
                fail_next_create=_fail_next_create,
                ignore_acpi=_ignore_acpi,
                fail_node=_fail_node,
                read_user_data=_read_user_data,
            ),
            # Its guests "boot" in an instant: the agent reports 0.3 s after power-on.
            guest_boot_timeout=30.0,
            notes=NOTES,
        ),
    )
