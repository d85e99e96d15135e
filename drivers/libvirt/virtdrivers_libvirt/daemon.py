"""Private libvirtd daemons: for live-migration and reconnect tests, and for orchestrators.

Each :class:`LibvirtDaemon` runs the monolithic ``/usr/sbin/libvirtd`` as root in its own mount
namespace (``unshare --mount``) where ``/etc/libvirt``, ``/run``, ``/var/lib/libvirt``,
``/var/log/libvirt`` and ``/var/cache/libvirt`` are bind mounts of a scratch directory. So it
never touches the host's own libvirt state, two of them do not see each other, and each has its
own ``host_uuid`` (libvirt refuses to migrate to "the same host"). It runs under ``tini -s`` so
the QEMU processes it starts are reaped at once (a late reaper makes every destroy ~1.6 s).

Everything started is tracked by PID: :meth:`stop` ends exactly the daemon and the QEMU
processes that daemon started, and removes the scratch directory if it made it.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from virtdrivers.errors import BackendUnavailable, Timeout

_BIND = {
    "etc": "/etc/libvirt",
    "run": "/run",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}


def unavailable_reason() -> str | None:
    """Why daemons cannot run here (None when they can): tests print this when they skip."""
    if os.geteuid() != 0:
        return "libvirtd with private mount namespaces needs root"
    for tool in ("/usr/sbin/libvirtd", shutil.which("unshare"), shutil.which("tini")):
        if not tool or not os.path.exists(tool):
            return f"missing {tool or 'unshare/tini'} (apt: libvirt-daemon util-linux tini)"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a mount namespace: {probe.stderr.strip()}"
    return None


class LibvirtDaemon:
    """One private libvirtd. Use as a context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        scratch: str | Path | None = None,
        *,
        host_uuid: str | None = None,
        migration_ports: tuple[int, int] | None = None,
        start_timeout: float = 60.0,
        sasl_user: tuple[str, str] | None = None,
    ) -> None:
        self._own_scratch = scratch is None
        self.scratch = Path(scratch) if scratch is not None else Path(tempfile.mkdtemp(prefix="vd-libvirtd-"))
        self.host_uuid = host_uuid or str(uuid.uuid4())
        self.migration_ports = migration_ports or _free_port_window()
        self.start_timeout = start_timeout
        #: (username, password) the socket demands through SASL (SCRAM-SHA-256), or None for no auth.
        self._sasl_user = sasl_user
        self._proc: subprocess.Popen[bytes] | None = None
        self._qemu_pids: set[int] = set()

    # -- paths and URIs --------------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        return self.scratch / "run" / "libvirt" / "libvirt-sock"

    def uri(self, driver: str = "qemu", path: str = "/system") -> str:
        """A URI reaching this daemon: ``qemu+unix:///system?socket=...`` or ``test+unix:///default...``."""
        return f"{driver}+unix://{path}?socket={self.socket_path}"

    @property
    def pid(self) -> int | None:
        """PID of libvirtd itself (the child of tini)."""
        if self._proc is None:
            return None
        children = _children(self._proc.pid)
        return children[0] if children else None

    # -- lifecycle ---------------------------------------------------------------------------------

    def _write_config(self) -> None:
        for sub in _BIND:
            (self.scratch / sub).mkdir(parents=True, exist_ok=True)
        (self.scratch / "run" / "libvirt").mkdir(exist_ok=True)
        etc = self.scratch / "etc"
        auth = "sasl" if self._sasl_user is not None else "none"
        (etc / "libvirtd.conf").write_text(
            f'host_uuid = "{self.host_uuid}"\n'
            f'auth_unix_rw = "{auth}"\nauth_unix_ro = "{auth}"\nunix_sock_rw_perms = "0700"\n'
            'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
        )
        if self._sasl_user is not None:
            _write_sasl_db(self.scratch / "sasl", *self._sasl_user)
        lo, hi = self.migration_ports
        (etc / "qemu.conf").write_text(
            'stdio_handler = "file"\nuser = "root"\ngroup = "root"\nremember_owner = 0\n'
            f"migration_port_min = {lo}\nmigration_port_max = {hi}\n"
        )

    def start(self) -> LibvirtDaemon:
        """Start the daemon and wait until its socket answers (or raise Timeout)."""
        reason = unavailable_reason()
        if reason:
            raise BackendUnavailable(f"cannot start libvirtd: {reason}")
        if self._proc is not None and self._proc.poll() is None:
            return self
        self._write_config()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        mounts = " && ".join(f"mount --bind {self.scratch / src} {dst}" for src, dst in _BIND.items())
        script = f"set -e; mkdir -p /var/log/libvirt /var/cache/libvirt; {mounts}; exec tini -s -- /usr/sbin/libvirtd"
        log = open(self.scratch / "daemon.out", "ab")  # noqa: SIM115  (kept open for the child)
        env = dict(os.environ)
        if self._sasl_user is not None:
            env["SASL_CONF_PATH"] = str(self.scratch / "sasl")  # cyrus-sasl reads libvirt.conf there
        try:
            self._proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        finally:
            log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        delay = 0.01
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                out = (self.scratch / "daemon.out").read_text(errors="replace")[-2000:]
                raise BackendUnavailable(f"libvirtd exited with {self._proc.returncode}: {out}")
            if self.socket_path.exists():
                with socket.socket(socket.AF_UNIX) as s, contextlib.suppress(OSError):
                    s.connect(str(self.socket_path))
                    return
            time.sleep(delay)  # polling the socket: libvirtd has no readiness notification here
            delay = min(delay * 2, 0.2)
        self.stop()
        raise Timeout(f"libvirtd did not answer on {self.socket_path} within {self.start_timeout:.0f} s")

    def _collect_qemu(self) -> None:
        """Remember QEMU processes this daemon started (descendants of our tini, and pid files)."""
        if self._proc is not None:
            stack = list(_children(self._proc.pid))
            while stack:
                pid = stack.pop()
                stack += _children(pid)
                if _comm(pid).startswith("qemu"):
                    self._qemu_pids.add(pid)
        for pidfile in (self.scratch / "run" / "libvirt" / "qemu").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
                if _comm(pid).startswith("qemu"):
                    self._qemu_pids.add(pid)

    def kill(self) -> None:
        """SIGKILL libvirtd only, as a crash would: its QEMU guests keep running."""
        self._collect_qemu()
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait(timeout=10)
            self._proc = None

    def restart(self) -> LibvirtDaemon:
        """Start again on the same state directories (guests left running are picked up again)."""
        return self.start()

    def stop(self) -> None:
        """Stop the daemon and every QEMU it started; remove the scratch dir if we made it."""
        self._collect_qemu()
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGTERM)  # tini forwards it to libvirtd
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pid = self.pid
                for p in (pid, self._proc.pid):
                    if p is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p, signal.SIGKILL)
                self._proc.wait(timeout=10)
            self._proc = None
        for pid in sorted(self._qemu_pids):
            if _comm(pid).startswith("qemu"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._qemu_pids.clear()
        if self._own_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> LibvirtDaemon:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


#: Run in a child process: cyrus-sasl's server state is process-wide, and libvirt's client side
#: in this process uses the same library. This is what ``saslpasswd2 -c`` does (sasl2-bin is not
#: needed): the SCRAM plugin stores its salted secret in the sasldb named by the config.
_SASL_SETPASS = """
import ctypes, os, sys
lib = ctypes.CDLL("libsasl2.so.2")
conn = ctypes.c_void_p()
user, password = sys.stdin.read().split("\\0", 1)
pw = password.encode()
ok = lib.sasl_server_init(None, b"libvirt") == 0
ok = ok and lib.sasl_server_new(b"libvirt", None, None, None, None, None, 0, ctypes.byref(conn)) == 0
ok = ok and lib.sasl_setpass(conn, user.encode(), pw, len(pw), None, 0, 1) == 0
sys.exit(0 if ok else 1)
"""


def _write_sasl_db(directory: Path, user: str, password: str) -> None:
    """A SASL config and user database for libvirtd (SCRAM-SHA-256, which needs no TLS on a
    UNIX socket). The password goes to the child on stdin, never on a command line."""
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "passwd.db"
    db.unlink(missing_ok=True)
    (directory / "libvirt.conf").write_text(f"mech_list: scram-sha-256\nsasldb_path: {db}\n")
    done = subprocess.run(
        [sys.executable, "-c", _SASL_SETPASS],
        input=f"{user}\0{password}",
        env={**os.environ, "SASL_CONF_PATH": str(directory)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise BackendUnavailable("cannot write the SASL user database (is libsasl2-modules installed?)")


def _free_port_window(size: int = 16, low: int = 30000, high: int = 45000) -> tuple[int, int]:
    """A random window of ports that are free now, for incoming migrations.

    libvirt's default range (49152-49215) is shared by every daemon on the host, and two
    daemons (other test runs, another engineer's) racing for one port make a migration fail.
    """
    rng = random.SystemRandom()
    for _ in range(50):
        start = rng.randrange(low, high - size)
        if all(_port_free(p) for p in range(start, start + size)):
            return start, start + size - 1
    return low, low + size - 1


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(p) for p in f.read().split()]
    return out


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""
