"""Running govmomi's vCenter simulator (vcsim) as a child process on 127.0.0.1.

The launcher binary (``drivers/vmware/vcsim/main.go``) is built once by
``dev-setup.sh`` from Debian's govmomi sources into ``drivers/vmware/.cache``;
``VIRTDRIVERS_VCSIM`` may name another build. The launcher writes its own
self-signed certificate (IP SAN 127.0.0.1) into our scratch directory, which the
driver then trusts as ``ca_file``: verification stays on.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from virtdrivers.capabilities import Capability
from virtdrivers.endpoint import EndpointHooks
from virtdrivers.errors import BackendUnavailable

# ``embedded_endpoints()`` imports this module to name its hooks whenever plugins are listed:
# process, TLS and HTTP modules are imported by the functions that start or reach vcsim.
if TYPE_CHECKING:
    import subprocess

    from virtdrivers.driver import Driver

_ROOM = Path(__file__).resolve().parents[2]
USER = "vdadmin"


def launcher_path() -> Path:
    """Where the vcsim launcher is, building it first when this checkout has not yet."""
    import subprocess

    override = os.environ.get("VIRTDRIVERS_VCSIM")
    if override:
        return Path(override)
    binary = _ROOM / ".cache" / "bin" / "vdvcsim"
    setup = _ROOM / "dev-setup.sh"
    if setup.exists():
        built = subprocess.run(["bash", str(setup)], capture_output=True, text=True)
        if built.returncode != 0:
            raise BackendUnavailable(f"building the vcsim launcher failed: {built.stderr.strip()[-500:]}")
    if not binary.exists():
        raise BackendUnavailable(f"vcsim launcher not built: run {setup} (needs golang-go and govmomi sources)")
    return binary


class Vcsim:
    """One vcsim process; :meth:`restart` brings a fresh inventory back on the same port and certificate."""

    def __init__(
        self,
        *,
        datacenters: int = 1,
        clusters: int = 2,
        hosts: int = 2,
        vms: int = 0,
        standalone_hosts: int = 0,
        autostart: bool = True,
        method_delay: Mapping[str, int] | None = None,
        mark: str | None = None,
        session_idle_timeout: float | None = None,
        workdir: Path | None = None,
        webmks: bool = True,
    ) -> None:
        """``mark``: an extraConfig key set to "true" on the model's VMs (``virtdrivers.managed`` makes them ours)."""
        self.args = {
            "dc": datacenters,
            "cluster": clusters,
            "host": hosts,
            "vm": vms,
            "standalone-host": standalone_hosts,
        }
        self.autostart = autostart
        self.webmks = webmks
        self.method_delay = dict(method_delay or {})
        self.mark = mark
        self.session_idle_timeout = session_idle_timeout
        import tempfile

        self._own_dir = workdir is None
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="vd-vcsim-"))
        self.password = os.urandom(12).hex()
        self.port = 0
        self.info: dict[str, Any] = {}
        self.proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None

    @property
    def cert_file(self) -> Path:
        return self.dir / "vcsim.pem"

    def start(self) -> dict[str, Any]:
        import subprocess

        if self.proc is not None:
            return self.info
        binary = launcher_path()
        cmd = [str(binary), "-cert", str(self.cert_file), "-key", str(self.dir / "vcsim.key")]
        cmd += [f"-{k}={v}" for k, v in self.args.items()]
        cmd += [f"-autostart={'true' if self.autostart else 'false'}", f"-port={self.port}"]
        cmd += ["-user", USER, f"-webmks={'true' if self.webmks else 'false'}"]
        if self.session_idle_timeout:
            cmd += [f"-session-idle-timeout={self.session_idle_timeout}s"]
        if self.mark:
            cmd += ["-mark", self.mark]
        if self.method_delay:
            cmd += ["-method-delay", ",".join(f"{k}={v}" for k, v in self.method_delay.items())]
        # vcsim keeps its datastores under TMPDIR: ours, so they go when the scratch dir goes.
        env = {**os.environ, "TMPDIR": str(self.dir), "VDVCSIM_PASSWORD": self.password}
        self._stderr = open(self.dir / "vcsim.log", "a")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = _readline(self.proc.stdout, timeout=120.0)
        if not line:
            code = self.proc.poll()
            self.stop()
            log_text = (self.dir / "vcsim.log").read_text() if (self.dir / "vcsim.log").exists() else ""
            raise BackendUnavailable(f"vcsim did not start (exit {code}): {log_text[-500:]}")
        self.info = json.loads(line)
        self.port = int(self.info["port"])
        return self.info

    def settings(self) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": USER,
            "password": self.password,
            "ca_file": str(self.cert_file),
        }

    @contextlib.contextmanager
    def admin(self) -> Iterator[Any]:
        """A pyVmomi ServiceInstance of its own on this simulator, as an administrator's session
        would be: to look at (and interfere with) the server apart from any driver."""
        si = _connect(self.settings())
        try:
            yield si
        finally:
            with contextlib.suppress(Exception):
                importlib.import_module("pyVim.connect").Disconnect(si)

    def faults(self, **request: str) -> None:
        """Arm one of the launcher's fault knobs (see :func:`set_fault`)."""
        set_fault(self.settings(), **request)

    def stop(self) -> None:
        """Stop the process we started (by its PID, through stdin then SIGTERM, SIGKILL last)."""
        from virtdrivers.testing.process import stop_child

        proc, self.proc = self.proc, None
        if proc is not None:
            stop_child(proc, grace=10.0)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def kill(self) -> None:
        """Kill it abruptly (SIGKILL on our PID), as a crashed vCenter would go."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.stop()

    def restart(self) -> dict[str, Any]:
        """Stop and start again on the same port with the same certificate and password."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        import shutil

        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Vcsim:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _readline(stream: IO[str], timeout: float) -> str:
    """First line of ``stream``, or "" if none comes within ``timeout`` seconds."""
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return out[0].strip() if out else ""


def set_fault(settings: Mapping[str, Any], **request: str) -> None:
    """POST one request to the launcher's fault knobs (``/vdvcsim/faults``), authenticated as the login user.

    ``request`` keys (see ``faultRequest`` in ``vcsim/main.go``): ``fail_next`` (``*_Task``
    methods, comma-separated: the next call of any of them runs and then fails, and the fault
    is disarmed for all) with optional ``message``; ``ignore_acpi`` /
    ``hear_acpi`` (a VM id whose guest ignores, or again obeys, ShutdownGuest); ``cluster``
    with ``host_state`` (``notResponding``, ``disconnected`` or ``connected`` for all its hosts).
    The knob is reached over the same verified HTTPS as the driver's own calls.
    """
    import ssl
    import urllib.error
    import urllib.request

    password = settings["password"]
    secret = password.get_secret_value() if hasattr(password, "get_secret_value") else str(password)
    credentials = base64.b64encode(f"{settings['user']}:{secret}".encode()).decode()
    request_ = urllib.request.Request(
        f"https://{settings['host']}:{settings['port']}/vdvcsim/faults",
        data=json.dumps(request).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Basic {credentials}"},
        method="POST",
    )
    context = ssl.create_default_context(cafile=settings.get("ca_file"))
    try:
        with urllib.request.urlopen(request_, context=context, timeout=30) as answer:
            answer.read()
    except urllib.error.HTTPError as exc:
        raise BackendUnavailable(f"vcsim fault knob refused {sorted(request)}: {exc.code} {exc.reason}") from None
    except OSError as exc:
        raise BackendUnavailable(f"vcsim fault knob unreachable: {type(exc).__name__}") from None


# The endpoint hooks act on the peer, never on the driver: each arms a knob in the vcsim
# launcher over HTTPS, and the driver meets the fault through its ordinary SOAP calls.


def _fail_next_create(settings: Mapping[str, Any], driver: Driver) -> None:
    """The next create makes its VM and disks, then its task reports a SystemError.

    Whichever way it is made: CreateVM_Task for a blank create, CloneVM_Task for one from an
    image. The first of the two called fails; the knob is then disarmed for both.
    """
    set_fault(
        settings,
        fail_next="CreateVM_Task,CloneVM_Task",
        message="vdvcsim: the host lost its storage after the VM was made",
    )


def _ignore_acpi(settings: Mapping[str, Any], driver: Driver, instance_id: str) -> None:
    """ShutdownGuest on this VM is accepted and ignored, as by a guest with Tools but no working shutdown."""
    set_fault(settings, ignore_acpi=instance_id)


def _fail_node(settings: Mapping[str, Any], driver: Driver, node: str, down: bool) -> None:
    """Every host of cluster ``node`` goes notResponding (as vCenter shows a dead host), or connected again."""
    set_fault(settings, cluster=node, host_state="notResponding" if down else "connected")


def _connect(settings: Mapping[str, Any]) -> Any:
    """A pyVmomi session of our own on the simulator, apart from any driver's."""
    import importlib
    import ssl

    connect: Any = importlib.import_module("pyVim.connect")
    password = settings["password"]
    secret = password.get_secret_value() if hasattr(password, "get_secret_value") else str(password)
    return connect.SmartConnect(
        host=settings["host"],
        port=int(settings["port"]),
        user=settings["user"],
        pwd=secret,
        sslContext=ssl.create_default_context(cafile=settings.get("ca_file")),
    )


def _read_user_data(settings: Mapping[str, Any], driver: Driver, instance_id: str) -> str | None:
    """The VM's guestinfo.userdata decoded by its ``.encoding``, as cloud-init's VMware datasource reads it.

    Read over a session of our own, straight from the VM's extraConfig: what vcsim stored,
    not what the driver under test says it sent.
    """
    from virtdrivers_vmware._sdk import sdk
    from virtdrivers_vmware.guest_io import user_data_of

    vim, _ = sdk()
    si = _connect(settings)
    try:
        vm = vim.VirtualMachine(instance_id, si._stub)
        extra = {str(o.key): str(o.value) for o in vm.config.extraConfig or () if o.value is not None}
    finally:
        _disconnect(si)
    return user_data_of(extra)


VCSIM_HOOKS = EndpointHooks(
    fail_next_create=_fail_next_create,
    ignore_acpi=_ignore_acpi,
    fail_node=_fail_node,
    read_user_data=_read_user_data,
)

#: What the driver declares and vcsim 0.24 cannot show: it ignores ``spec.snapshot`` and
#: ``diskMoveType`` and copies every disk, so a linked clone never exists there (the driver
#: refuses a "linked" clone that came out as a full copy rather than pass it off as one).
#: Nor does anything write a VM's serial-port file there: no guest runs, so its console log
#: stays empty (the backend's own tests write it as a guest would and read it back).
VCSIM_UNAVAILABLE = frozenset({Capability.IMAGE_COW, Capability.CONSOLE_OUTPUT})

#: How the vcsim column earns each workload cell whose behaviour is simulated (shown on the cell).
VCSIM_NOTES = {
    Capability.IMAGE_COW: (
        "not on vcsim: it ignores CloneVM_Task's snapshot and diskMoveType and makes a full copy; "
        "on vCenter a linked clone is a child of the template's current snapshot"
    ),
    Capability.CONSOLE_OUTPUT: (
        "not on vcsim: no guest runs to write the VM's serial-port file on the datastore; the "
        "driver reads that file's tail over /folder (tested by the backend, writing it as a guest would)"
    ),
    Capability.IMAGE_COPY: (
        "vcsim's CloneVM_Task copies the template's vmdk (an empty disk: no guest boots); our launcher "
        "keeps the template's own devices intact, which vcsim 0.24 would rewrite"
    ),
    Capability.USER_DATA: (
        "guestinfo.userdata/metadata with their .encoding keys, as stored by vcsim and decoded "
        "from the VM's extraConfig over a separate session the way cloud-init's VMware "
        "datasource reads them; no guest boots to read them"
    ),
    Capability.GUEST_ADDRESSES: (
        "addresses are set in guest.net by our vcsim launcher when a VM powers on (10.x.y.z/8 "
        "from the MAC), as VMware Tools would report them; no guest boots"
    ),
    Capability.NIC_HOTPLUG: (
        "vcsim's own ReconfigVM_Task adds and removes the card; the listing sees it through "
        "config.changeVersion, which our launcher moves on every config change as vCenter does "
        "(vcsim 0.24 leaves it empty)"
    ),
    Capability.CONSOLE_CONNECT: (
        "AcquireTicket('webmks') is answered by our vcsim launcher (vcsim 0.24 has none): a "
        "one-time ticket for a WebSocket that says there is no screen; no guest console"
    ),
}

#: The image the embedded endpoint offers: a template with one disk and a snapshot (for linked clones).
TEMPLATE_NAME = "vd-template-tiny"


def make_template(settings: Mapping[str, Any], name: str = TEMPLATE_NAME, *, disk_gib: int = 1) -> str:
    """Make a template as an administrator would: a VM with one thin disk, a snapshot, MarkAsTemplate.

    Over plain pyVmomi, not the driver: the endpoint's image exists before any driver under
    test connects. Returns the template's id. The disk is empty: no guest ever boots on vcsim.
    """
    from virtdrivers_vmware._sdk import sdk

    vim, _ = sdk()
    si = _connect(settings)
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.ClusterComputeResource], True)
        cluster = sorted(view.view, key=lambda c: c.name)[0]
        view.Destroy()
        datacenter = cluster.parent
        while not isinstance(datacenter, vim.Datacenter):
            datacenter = datacenter.parent
        store = cluster.datastore[0].name
        disk = vim.vm.device.VirtualDisk(
            key=-101,
            controllerKey=-100,
            unitNumber=0,
            capacityInKB=disk_gib * 1024 * 1024,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                fileName=f"[{store}] {name}/{name}.vmdk", diskMode="persistent", thinProvisioned=True
            ),
        )
        controller = vim.vm.device.ParaVirtualSCSIController(key=-100, busNumber=0, sharedBus="noSharing")
        config = vim.vm.ConfigSpec(
            name=name,
            numCPUs=1,
            memoryMB=256,
            guestId="otherLinux64Guest",
            files=vim.vm.FileInfo(vmPathName=f"[{store}]"),
            deviceChange=[
                vim.vm.device.VirtualDeviceSpec(operation="add", device=controller),
                vim.vm.device.VirtualDeviceSpec(operation="add", device=disk, fileOperation="create"),
            ],
        )
        task = datacenter.vmFolder.CreateVM_Task(config, cluster.resourcePool)
        _wait(task)
        vm = task.info.result
        _wait(vm.CreateSnapshot_Task("base", "the disk linked clones are children of", False, False))
        vm.MarkAsTemplate()
        return str(vm._moId)
    finally:
        _disconnect(si)


def _wait(task: Any) -> None:
    import importlib

    module: Any = importlib.import_module("pyVim.task")
    module.WaitForTask(task)


def _disconnect(si: Any) -> None:
    import importlib

    module: Any = importlib.import_module("pyVim.connect")
    module.Disconnect(si)


@contextlib.contextmanager
def vcsim_endpoint(*, template: bool = True, **kwargs: Any) -> Iterator[Mapping[str, Any]]:
    """Start vcsim (two clusters of two hosts by default) and yield driver settings for it.

    ``template``: also make :data:`TEMPLATE_NAME`, the image instances are cloned from.
    """
    sim = Vcsim(**kwargs)
    try:
        sim.start()
        if template:
            make_template(sim.settings())
        yield sim.settings()
    finally:
        sim.cleanup()
