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
import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

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
        cmd += ["-user", USER]
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

    ``request`` keys (see ``faultRequest`` in ``vcsim/main.go``): ``fail_next`` (a ``*_Task``
    method whose next call runs and then fails) with optional ``message``; ``ignore_acpi`` /
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
    """The next CreateVM_Task makes its VM and disks, then its task reports a SystemError."""
    set_fault(settings, fail_next="CreateVM_Task", message="vdvcsim: the host lost its storage after the VM was made")


def _ignore_acpi(settings: Mapping[str, Any], driver: Driver, instance_id: str) -> None:
    """ShutdownGuest on this VM is accepted and ignored, as by a guest with Tools but no working shutdown."""
    set_fault(settings, ignore_acpi=instance_id)


def _fail_node(settings: Mapping[str, Any], driver: Driver, node: str, down: bool) -> None:
    """Every host of cluster ``node`` goes notResponding (as vCenter shows a dead host), or connected again."""
    set_fault(settings, cluster=node, host_state="notResponding" if down else "connected")


VCSIM_HOOKS = EndpointHooks(fail_next_create=_fail_next_create, ignore_acpi=_ignore_acpi, fail_node=_fail_node)


@contextlib.contextmanager
def vcsim_endpoint(**kwargs: Any) -> Iterator[Mapping[str, Any]]:
    """Start vcsim (two clusters of two hosts by default) and yield driver settings for it."""
    sim = Vcsim(**kwargs)
    try:
        sim.start()
        yield sim.settings()
    finally:
        sim.cleanup()
