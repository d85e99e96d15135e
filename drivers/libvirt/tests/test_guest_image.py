"""The tiny real guest, booted with plain QEMU (TCG, no libvirt): does it do what workloads need?

Why plain QEMU: these tests pin down the *image* (seed consumed, marker printed, agent
answering with the DHCP address, ACPI power button honoured, base image untouched) so that a
failure in the libvirt backend's own workload tests can be told apart from a broken guest.
QMP and the guest agent are spoken directly over their UNIX sockets.

Timings are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from virtdrivers_libvirt.guest import (
    GuestImage,
    default_cache_dir,
    ensure_tiny_guest,
    file_sha256,
    make_seed,
    userdata_marker,
)

QEMU = "qemu-system-x86_64"
MAC = "52:54:00:12:34:56"
BOOT_DEADLINE = 60.0
AGENT_DEADLINE = 60.0
POWERDOWN_DEADLINE = 30.0


def _say(msg: str) -> None:
    sys.stderr.write(f"[tiny guest] {msg}\n")


@pytest.fixture(scope="module")
def image() -> GuestImage:
    started = time.monotonic()
    img = ensure_tiny_guest()
    _say(f"ensure_tiny_guest: {time.monotonic() - started:.2f} s (build itself took {img.build_seconds} s once)")
    return img


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """UNIX socket paths must fit in 108 bytes; pytest's tmp_path can be longer."""
    d = Path(tempfile.mkdtemp(prefix="vdg-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- small QMP / QGA clients ------------------------------------------------------------------


class _JsonSocket:
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(msg).encode() + b"\n")

    def recv(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("socket closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        line = line.lstrip(b"\xff")  # guest-sync-delimited puts a 0xFF sentinel before its reply
        try:
            msg: dict[str, Any] = json.loads(line)
        except ValueError:
            return self.recv()
        return msg

    def close(self) -> None:
        self.sock.close()


class Qmp(_JsonSocket):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        assert "QMP" in self.recv()
        self.execute("qmp_capabilities")

    def execute(self, command: str) -> Any:
        self.send({"execute": command})
        while True:
            msg = self.recv()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise RuntimeError(f"QMP {command}: {msg['error']}")


class Agent(_JsonSocket):
    """QEMU guest agent protocol: resynchronise first, because a previous client (or the agent
    starting late) can leave stale replies in the channel."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        super().__init__(path, timeout)
        token = secrets.randbelow(1 << 30)
        self.send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        while self.recv().get("return") != token:
            pass

    def execute(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.send(msg)
        reply = self.recv()
        if "error" in reply:
            raise RuntimeError(f"QGA {command}: {reply['error']}")
        return reply["return"]

    def run(self, *argv: str) -> tuple[int, str]:
        pid = self.execute("guest-exec", path=argv[0], arg=list(argv[1:]), **{"capture-output": True})["pid"]
        while not (status := self.execute("guest-exec-status", pid=pid))["exited"]:
            time.sleep(0.1)
        return int(status.get("exitcode", -1)), base64.b64decode(status.get("out-data", "")).decode()


# --- one guest --------------------------------------------------------------------------------


class Guest:
    """One QEMU process on an overlay of the base image; killed by PID when the test ends."""

    def __init__(self, base: GuestImage, workdir: Path, seed: Path, *, no_reboot: bool = True) -> None:
        self.dir = workdir
        self.console = workdir / "console.log"
        self.qga = workdir / "qga.sock"
        self.qmp_path = workdir / "qmp.sock"
        overlay = workdir / "overlay.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base.path), str(overlay)],
            check=True,
            timeout=30,
        )
        argv = [
            QEMU,
            "-machine", "pc",
            "-accel", "tcg,tb-size=64",  # the default 1 GiB translation cache slows resets, inflates RSS
            "-m", "128",
            "-nodefaults", "-no-user-config", "-display", "none",
            "-drive", f"file={overlay},format=qcow2,if=virtio",
            "-drive", f"file={seed},format=raw,if=virtio,readonly=on",
            "-netdev", "user,id=n0",
            "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
            "-device", "virtio-serial",
            "-chardev", f"socket,id=qga,path={self.qga},server=on,wait=off",
            "-device", "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
            "-serial", f"file:{self.console}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
        ]  # fmt: skip
        if no_reboot:
            argv.append("-no-reboot")  # a guest reboot or kernel panic (panic=5) ends QEMU
        self.started = time.monotonic()
        with open(workdir / "qemu.err", "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)

    def log(self) -> str:
        try:
            return self.console.read_text(errors="replace").replace("\r", "")
        except FileNotFoundError:
            return ""

    def wait_console(self, text: str, deadline: float, count: int = 1) -> float:
        """Seconds since QEMU started when ``text`` appeared ``count`` times on the serial console."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.log().count(text) >= count:
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        err = (self.dir / "qemu.err").read_text(errors="replace")
        pytest.fail(f"{text!r} not on the console (QEMU rc={self.proc.poll()}):\n{self.log()}\n{err}")

    def agent(self, deadline: float) -> Agent:
        end = time.monotonic() + deadline
        while True:
            try:
                return Agent(self.qga, timeout=2.0)
            except (OSError, ConnectionError):
                if time.monotonic() > end or self.proc.poll() is not None:
                    raise
                time.sleep(0.2)

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

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
        self.proc.wait(timeout=10)


@pytest.fixture
def guests() -> Iterator[list[Guest]]:
    started: list[Guest] = []
    yield started
    for g in started:
        g.kill()


def _interfaces_with(agent: Agent, address: str, deadline: float) -> dict[str, Any]:
    """The agent's view of the NIC, once it carries ``address`` (DHCP may still be running)."""
    end = time.monotonic() + deadline
    while True:
        for nic in agent.execute("guest-network-get-interfaces"):
            addrs = {a["ip-address"] for a in nic.get("ip-addresses", [])}
            if address in addrs:
                nic_info: dict[str, Any] = nic
                return nic_info
        if time.monotonic() > end:
            pytest.fail(f"{address} never showed up in guest-network-get-interfaces")
        time.sleep(0.2)


def _require_qemu() -> None:
    missing = [t for t in (QEMU, "qemu-img") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{missing} not found: apt-get install qemu-system-x86 qemu-utils")


# --- tests ------------------------------------------------------------------------------------


def test_boots_prints_marker_answers_agent_and_powers_off_on_acpi(
    image: GuestImage, short_dir: Path, guests: list[Guest]
) -> None:
    _require_qemu()
    base_hash = file_sha256(image.path)
    assert base_hash == image.sha256, "the cached base image changed since it was built"

    token = secrets.token_hex(8)
    user_data = f"#cloud-config\n# test {token}\n#vd-marker hello {token}\n"
    seed = make_seed(short_dir, user_data, {"instance-id": f"iid-{token}", "local-hostname": f"vd-{token[:8]}"})
    guest = Guest(image, short_dir, seed)
    guests.append(guest)

    t_marker = guest.wait_console(userdata_marker(user_data), BOOT_DEADLINE)
    assert f"#vd-marker hello {token}" in guest.log().splitlines()

    agent = guest.agent(AGENT_DEADLINE)
    assert agent.execute("guest-ping") == {}
    nic = _interfaces_with(agent, "10.0.2.15", AGENT_DEADLINE)
    t_address = time.monotonic() - guest.started
    assert nic["hardware-address"] == MAC
    assert {"ip-address": "10.0.2.15", "ip-address-type": "ipv4", "prefix": 24} in nic["ip-addresses"]
    assert agent.execute("guest-get-host-name")["host-name"] == f"vd-{token[:8]}"
    agent.close()
    rss = guest.rss_mib()

    qmp = Qmp(guest.qmp_path)
    pressed = time.monotonic()
    exited: float | None = None
    # A press can be lost if it comes before acpid listens; repeat it until the deadline.
    while exited is None and time.monotonic() - pressed < POWERDOWN_DEADLINE:
        with contextlib.suppress(OSError, ConnectionError, RuntimeError):
            qmp.execute("system_powerdown")
        exited = guest.wait_exit(5.0)
    qmp.close()
    assert exited is not None, f"no power-off within {POWERDOWN_DEADLINE} s of ACPI power button:\n{guest.log()}"
    t_off = time.monotonic() - pressed
    assert guest.proc.returncode == 0
    assert "VIRTDRIVERS-SHUTDOWN" in guest.log()

    assert file_sha256(image.path) == base_hash, "the guest wrote to its base image"
    _say(
        f"marker after {t_marker:.1f} s, agent address after {t_address:.1f} s, "
        f"ACPI power-off in {t_off:.1f} s, QEMU RSS {rss:.0f} MiB"
    )


def test_iso_seed_agent_reboot_and_agent_shutdown(image: GuestImage, short_dir: Path, guests: list[Guest]) -> None:
    """The other seed format (ISO9660 ``cidata``), a reboot, and the agent's shutdown (the shim)."""
    _require_qemu()
    if shutil.which("genisoimage") is None:
        pytest.skip("genisoimage not installed (ISO9660 seeds are optional)")
    token = secrets.token_hex(8)
    user_data = f"#!/bin/sh\necho script-ran-{token}\n#vd-marker iso {token}\n"
    seed = make_seed(short_dir, user_data, "instance-id: iid-iso\n", fs="iso9660")
    guest = Guest(image, short_dir, seed, no_reboot=False)
    guests.append(guest)
    marker = userdata_marker(user_data)
    guest.wait_console(marker, BOOT_DEADLINE)
    guest.wait_console(f"script-ran-{token}", BOOT_DEADLINE)  # "#!" user data runs once per boot

    with contextlib.closing(guest.agent(AGENT_DEADLINE)) as agent:
        rc, out = agent.run("/bin/cat", "/proc/cmdline")
        assert rc == 0
        assert "console=ttyS0" in out
        rebooting = time.monotonic()
        agent.send({"execute": "guest-shutdown", "arguments": {"mode": "reboot"}})  # no reply on success
    guest.wait_console(marker, BOOT_DEADLINE, count=2)
    t_reboot = time.monotonic() - rebooting

    with contextlib.closing(guest.agent(AGENT_DEADLINE)) as agent:
        _interfaces_with(agent, "10.0.2.15", AGENT_DEADLINE)
        stopping = time.monotonic()
        agent.send({"execute": "guest-shutdown"})  # default mode powerdown -> /sbin/shutdown -P
    assert guest.wait_exit(POWERDOWN_DEADLINE) is not None, f"agent shutdown did not power off:\n{guest.log()}"
    assert guest.proc.returncode == 0
    _say(f"agent reboot back to marker in {t_reboot:.1f} s, agent shutdown in {time.monotonic() - stopping:.1f} s")


def test_cached_and_concurrent_builds_agree(image: GuestImage, tmp_path: Path) -> None:
    """Two processes building into one empty cache get the same image; the second waits for the
    first instead of building again, and nothing half-built is left behind. The .debs are shared
    with the default cache so that this does not download again."""
    cache = tmp_path / "cache"
    cache.mkdir()
    debs = default_cache_dir() / "debs"
    if debs.is_dir():
        (cache / "debs").symlink_to(debs.resolve())
    code = (
        "import sys; from pathlib import Path; from virtdrivers_libvirt.guest import ensure_tiny_guest as e; "
        "print(e(Path(sys.argv[1])).to_json())"
    )
    started = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(cache)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, 9)
                p.wait()
    cold = time.monotonic() - started
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
    metas = [json.loads(out) for out, _err in outs]
    assert metas[0] == metas[1]
    assert metas[0]["key"] == image.key
    assert metas[0]["sha256"] == image.sha256, "equal inputs gave a different image (build not reproducible)"
    assert sorted(p.name for p in (cache / "images").iterdir()) == [image.key]
    assert not list(cache.glob(".build-*"))

    started = time.monotonic()
    again = ensure_tiny_guest(cache)
    cached = time.monotonic() - started
    assert again.sha256 == metas[0]["sha256"]
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(again.path)], capture_output=True, check=True, timeout=30
        ).stdout
    )
    assert info["format"] == again.format == "qcow2"
    assert info["virtual-size"] == again.virtual_size
    assert again.kernel_version.endswith("-cloud-amd64")
    assert cached < 2.0
    _say(f"two concurrent cold builds (debs cached): {cold:.1f} s; cached lookup {cached * 1000:.0f} ms")
