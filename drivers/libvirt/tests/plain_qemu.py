"""A real guest under plain QEMU (TCG, no libvirt), spoken to over QMP and the guest agent.

The guest-image tests boot the tiny guest and the real cloud-init guest this way, to pin down
the *image* (seed consumed, agent answering with the DHCP address, ACPI honoured, base image
untouched) apart from the libvirt backend: a failure in the backend's workload tests can then
be told from a broken guest. One harness serves both images; each test file keeps its own
deadlines, which differ by an order of magnitude between the two guests.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, NoReturn

import pytest

QEMU = "qemu-system-x86_64"


def require_qemu() -> None:
    missing = [t for t in (QEMU, "qemu-img") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{missing} not found: apt-get install qemu-system-x86 qemu-utils")


class JsonSocket:
    """One JSON message per line over a UNIX socket: enough of QMP and the agent protocol."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise
        self.buf = b""

    def call(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.send(msg)
        while True:
            reply = self.recv()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"{command}: {reply['error']}")

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(msg).encode() + b"\n")

    def recv(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("socket closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        try:
            msg: dict[str, Any] = json.loads(line.lstrip(b"\xff"))  # 0xFF: guest-sync-delimited sentinel
        except ValueError:
            return self.recv()
        return msg

    def close(self) -> None:
        self.sock.close()


class Agent(JsonSocket):
    """The QEMU guest agent, resynchronised first: the agent starting late, or an earlier
    client, can leave stale replies in the channel."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__(path, timeout)
        try:
            token = secrets.randbelow(1 << 30)
            self.send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
            while self.recv().get("return") != token:
                pass
        except BaseException:
            self.close()
            raise

    def run(self, *argv: str) -> tuple[int, str]:
        pid = self.call("guest-exec", path=argv[0], arg=list(argv[1:]), **{"capture-output": True})["pid"]
        while not (status := self.call("guest-exec-status", pid=pid))["exited"]:
            time.sleep(0.1)
        return int(status.get("exitcode", -1)), base64.b64decode(status.get("out-data", "")).decode()

    def interfaces_with(self, address: str, deadline: float) -> dict[str, Any]:
        """The agent's view of the NIC, once it carries ``address`` (DHCP may still be running)."""
        end = time.monotonic() + deadline
        while True:
            for nic in self.call("guest-network-get-interfaces"):
                if address in {a["ip-address"] for a in nic.get("ip-addresses", [])}:
                    found: dict[str, Any] = nic
                    return found
            if time.monotonic() > end:
                pytest.fail(f"{address} never showed up in guest-network-get-interfaces")
            time.sleep(0.3)


class Guest:
    """One QEMU process on a qcow2 overlay of a base image; killed by PID when the test ends."""

    def __init__(
        self,
        base: Path,
        base_format: str,
        workdir: Path,
        seed: Path,
        *,
        memory_mib: int,
        mac: str,
        no_reboot: bool = True,
    ) -> None:
        self.dir = workdir
        self.console = workdir / "console.log"
        self.qga = workdir / "qga.sock"
        self.qmp = workdir / "qmp.sock"
        overlay = workdir / "overlay.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base), str(overlay)],
            check=True,
            timeout=30,
        )
        argv = [
            QEMU,
            "-machine", "pc",
            "-accel", "tcg,tb-size=64",  # the default 1 GiB translation cache slows resets, inflates RSS
            "-m", str(memory_mib),
            "-nodefaults", "-no-user-config", "-display", "none",
            "-drive", f"file={overlay},format=qcow2,if=virtio",
            "-drive", f"file={seed},format=raw,if=virtio,readonly=on",
            "-netdev", "user,id=n0",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac}",
            "-device", "virtio-serial",
            "-chardev", f"socket,id=qga,path={self.qga},server=on,wait=off",
            "-device", "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
            "-serial", f"file:{self.console}",
            "-qmp", f"unix:{self.qmp},server=on,wait=off",
        ]  # fmt: skip
        if no_reboot:
            argv.append("-no-reboot")  # a guest reboot or kernel panic (panic=5) ends QEMU instead of looping
        self.started = time.monotonic()
        with open(workdir / "qemu.err", "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)

    def log(self) -> str:
        try:
            return self.console.read_text(errors="replace").replace("\r", "")
        except FileNotFoundError:
            return ""

    def _fail(self, what: str) -> NoReturn:
        err = (self.dir / "qemu.err").read_text(errors="replace")
        pytest.fail(f"{what} not on the console (QEMU rc={self.proc.poll()}):\n{self.log()}\n{err}")

    def wait_text(self, text: str, deadline: float, count: int = 1) -> float:
        """Seconds since QEMU started when ``text`` appeared ``count`` times on the serial console."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.log().count(text) >= count:
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self._fail(repr(text))

    def wait_line(self, pattern: re.Pattern[str], deadline: float) -> tuple[float, str]:
        """Seconds since QEMU started when ``pattern`` matched a console line, and the line."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for line in self.log().splitlines():
                if pattern.search(line):
                    return time.monotonic() - self.started, line
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self._fail(repr(pattern.pattern))

    def agent(self, deadline: float, *, timeout: float = 3.0) -> Agent:
        end = time.monotonic() + deadline
        while True:
            try:
                return Agent(self.qga, timeout)
            except (OSError, ConnectionError):
                if time.monotonic() > end or self.proc.poll() is not None:
                    raise
                time.sleep(0.3)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def wait_exit(self, deadline: float) -> float | None:
        try:
            self.proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            return None
        return time.monotonic() - self.started

    def power_down(self, deadline: float, *, press_every: float) -> float | None:
        """Seconds from the first ACPI power-button press until QEMU exits, or None by ``deadline``.

        A press sent before the guest listens (acpid, logind) is lost, so it is repeated."""
        pressed = time.monotonic()
        qmp = JsonSocket(self.qmp, timeout=10.0)
        try:
            assert "QMP" in qmp.recv()
            qmp.call("qmp_capabilities")
            while time.monotonic() - pressed < deadline:
                with contextlib.suppress(OSError, ConnectionError, RuntimeError):
                    qmp.call("system_powerdown")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=press_every)
                    return time.monotonic() - pressed
        finally:
            qmp.close()
        return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
        self.proc.wait(timeout=10)
