"""The tiny real guest, booted with plain QEMU (TCG, no libvirt): does it do what workloads need?

Why plain QEMU: these tests pin down the *image* (seed consumed, marker printed, agent
answering with the DHCP address, ACPI power button honoured, base image untouched) so that a
failure in the libvirt backend's own workload tests can be told apart from a broken guest.
QMP and the guest agent are spoken directly over their UNIX sockets (``plain_qemu.py``).

Timings are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from plain_qemu import Guest, require_qemu  # registered by conftest.py

from virtdrivers_libvirt.guest import (
    GuestImage,
    default_cache_dir,
    ensure_tiny_guest,
    file_sha256,
    make_seed,
    userdata_marker,
)

MAC = "52:54:00:12:34:56"
MEMORY_MIB = 128
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


# --- tests ------------------------------------------------------------------------------------


def test_boots_prints_marker_answers_agent_and_powers_off_on_acpi(
    image: GuestImage, short_dir: Path, guests: list[Guest]
) -> None:
    require_qemu()
    base_hash = file_sha256(image.path)
    assert base_hash == image.sha256, "the cached base image changed since it was built"

    token = secrets.token_hex(8)
    user_data = f"#cloud-config\n# test {token}\n#vd-marker hello {token}\n"
    seed = make_seed(short_dir, user_data, {"instance-id": f"iid-{token}", "local-hostname": f"vd-{token[:8]}"})
    guest = Guest(image.path, image.format, short_dir, seed, memory_mib=MEMORY_MIB, mac=MAC)
    guests.append(guest)

    t_marker = guest.wait_text(userdata_marker(user_data), BOOT_DEADLINE)
    assert f"#vd-marker hello {token}" in guest.log().splitlines()

    agent = guest.agent(AGENT_DEADLINE)
    assert agent.call("guest-ping") == {}
    nic = agent.interfaces_with("10.0.2.15", AGENT_DEADLINE)
    t_address = time.monotonic() - guest.started
    assert nic["hardware-address"] == MAC
    assert {"ip-address": "10.0.2.15", "ip-address-type": "ipv4", "prefix": 24} in nic["ip-addresses"]
    assert agent.call("guest-get-host-name")["host-name"] == f"vd-{token[:8]}"
    agent.close()
    rss = guest.rss_mib()

    t_off = guest.power_down(POWERDOWN_DEADLINE, press_every=5.0)
    assert t_off is not None, f"no power-off within {POWERDOWN_DEADLINE} s of ACPI power button:\n{guest.log()}"
    assert guest.proc.returncode == 0
    assert "VIRTDRIVERS-SHUTDOWN" in guest.log()

    assert file_sha256(image.path) == base_hash, "the guest wrote to its base image"
    _say(
        f"marker after {t_marker:.1f} s, agent address after {t_address:.1f} s, "
        f"ACPI power-off in {t_off:.1f} s, QEMU RSS {rss:.0f} MiB"
    )


def test_iso_seed_agent_reboot_and_agent_shutdown(image: GuestImage, short_dir: Path, guests: list[Guest]) -> None:
    """The other seed format (ISO9660 ``cidata``), a reboot, and the agent's shutdown (the shim)."""
    require_qemu()
    if shutil.which("genisoimage") is None:
        pytest.skip("genisoimage not installed (ISO9660 seeds are optional)")
    token = secrets.token_hex(8)
    user_data = f"#!/bin/sh\necho script-ran-{token}\n#vd-marker iso {token}\n"
    seed = make_seed(short_dir, user_data, "instance-id: iid-iso\n", fs="iso9660")
    guest = Guest(image.path, image.format, short_dir, seed, memory_mib=MEMORY_MIB, mac=MAC, no_reboot=False)
    guests.append(guest)
    marker = userdata_marker(user_data)
    guest.wait_text(marker, BOOT_DEADLINE)
    guest.wait_text(f"script-ran-{token}", BOOT_DEADLINE)  # "#!" user data runs once per boot

    with contextlib.closing(guest.agent(AGENT_DEADLINE)) as agent:
        rc, out = agent.run("/bin/cat", "/proc/cmdline")
        assert rc == 0
        assert "console=ttyS0" in out
        rebooting = time.monotonic()
        agent.send({"execute": "guest-shutdown", "arguments": {"mode": "reboot"}})  # no reply on success
    guest.wait_text(marker, BOOT_DEADLINE, count=2)
    t_reboot = time.monotonic() - rebooting

    with contextlib.closing(guest.agent(AGENT_DEADLINE)) as agent:
        agent.interfaces_with("10.0.2.15", AGENT_DEADLINE)
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

    built = (cache / "images" / image.key).stat().st_mtime_ns
    started = time.monotonic()
    again = ensure_tiny_guest(cache)
    cached = time.monotonic() - started
    assert again.sha256 == metas[0]["sha256"]
    assert (cache / "images" / image.key).stat().st_mtime_ns == built, "a cached image was built again"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(again.path)], capture_output=True, check=True, timeout=30
        ).stdout
    )
    assert info["format"] == again.format == "qcow2"
    assert info["virtual-size"] == again.virtual_size
    assert again.kernel_version.endswith("-cloud-amd64")
    _say(f"two concurrent cold builds (debs cached): {cold:.1f} s; cached lookup {cached * 1000:.0f} ms")
