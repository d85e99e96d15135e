"""Benchmark: booting the tiny real guest from an image on libvirt@qemu (embedded QEMU, TCG).

Times, through the driver only (the way a compute agent sees it):

- create-from-image (copy-on-write root disk, NoCloud seed, one user-mode NIC) to the guest's
  user-data marker on the console, and to the first guest-agent address;
- the same for 4 guests created at once (4 threads);
- making a root disk from a 1 GiB and a 4 GiB image (bases made with ``qemu-img create`` and
  filled with a non-zero pattern by ``qemu-io``, so that a copy has real bytes to read): the
  copy-on-write overlay takes the same time and the same few hundred KiB whatever the image's
  size; the full copy grows with it.

Run: ``python drivers/libvirt/bench_workloads.py [--rounds N] [--concurrent N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable

from virtdrivers.capabilities import DiskFormat
from virtdrivers.objects import InstanceSpec
from virtdrivers_libvirt.driver import LibvirtDriver
from virtdrivers_libvirt.endpoints import ENDPOINTS, TINY_GUEST_IMAGE
from virtdrivers_libvirt.storage import DirStore

TIMEOUT = 180.0


def _wait(probe: Callable[[], bool], started: float) -> float:
    while not probe():
        if time.monotonic() - started > TIMEOUT:
            raise TimeoutError(f"not within {TIMEOUT:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


def boot(driver: LibvirtDriver, name: str) -> dict[str, float]:
    """Create one guest from the image and time it to its marker and its address."""
    user_data = f"#cloud-config\n#vd-marker {name}\n"
    marker = f"VIRTDRIVERS-USERDATA {hashlib.sha256(user_data.encode()).hexdigest()}"
    started = time.monotonic()
    info = driver.create(
        InstanceSpec(
            name=name,
            vcpus=1,
            memory_mb=128,
            image=TINY_GUEST_IMAGE,
            nics=[{"network": "user"}],
            user_data={"user_data": user_data},
        )
    )
    created = time.monotonic() - started
    try:
        to_marker = _wait(lambda: marker in driver.console_output(info.id), started)
        to_address = _wait(lambda: bool(driver.guest_addresses(info.id)), started)
    finally:
        driver.destroy(info.id)
    return {"create": created, "user_data": to_marker, "address": to_address}


def _summary(label: str, runs: list[dict[str, float]]) -> None:
    for key in ("create", "user_data", "address"):
        values = [r[key] for r in runs]
        print(
            f"  {label:<22} {key:<10} median {statistics.median(values):6.2f} s"
            f"  min {min(values):6.2f}  max {max(values):6.2f}  (n={len(values)})"
        )


def overlays(workdir: str) -> None:
    print("root disk from an image (qemu-img, this machine's disk):")
    for gib in (1, 4):
        base = os.path.join(workdir, f"base-{gib}g.raw")
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", base, f"{gib}G"], check=True)
        # Real bytes throughout (a non-zero pattern), so a copy cannot skip zeros.
        writes = [arg for o in range(gib * 4) for arg in ("-c", f"write -q -P 0x5a {o * 256}M 256M")]
        subprocess.run(["qemu-io", "-f", "raw", *writes, base], check=True, capture_output=True)
        store = DirStore(os.path.join(workdir, "disks"))
        for mode, cow in (("cow", True), ("copy", False)):
            times = []
            for n in range(3 if cow else 1):
                started = time.monotonic()
                path = store.create_from_image(f"vd-{mode}-{gib}-{n}", base, DiskFormat.RAW, gib, cow=cow)
                times.append(time.monotonic() - started)
                size = os.path.getsize(path)
                store.delete(path)
            print(
                f"  {gib} GiB image  {mode:<4}  {statistics.median(times) * 1000:8.1f} ms  file {size / 1024:9.0f} KiB"
            )
        os.unlink(base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="sequential single boots")
    parser.add_argument("--concurrent", type=int, default=4, help="guests booted at once")
    args = parser.parse_args()
    endpoint = next(e for e in ENDPOINTS if e.name == "qemu")
    with endpoint.start() as settings, LibvirtDriver(**settings) as driver:
        print(f"libvirt@qemu, tiny guest, {os.cpu_count()} host CPUs, TCG")
        singles = [boot(driver, f"bench-{n}") for n in range(args.rounds)]
        _summary("one at a time", singles)
        results: list[dict[str, float]] = []
        errors: list[BaseException] = []

        def one(n: int) -> None:
            try:
                results.append(boot(driver, f"bench-c{n}"))
            except BaseException as exc:  # reported below; the other boots go on
                errors.append(exc)

        started = time.monotonic()
        threads = [threading.Thread(target=one, args=(n,)) for n in range(args.concurrent)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - started
        if errors:
            raise errors[0]
        _summary(f"{args.concurrent} at once", results)
        print(f"  {args.concurrent} at once: all addressed and destroyed after {wall:.2f} s")
    with tempfile.TemporaryDirectory(prefix="vd-bench-") as workdir:
        overlays(workdir)


if __name__ == "__main__":
    main()
