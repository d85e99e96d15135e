"""List 1,000 VMs two ways against the simulator (a separate process, HTTPS, real SDK) and compare.

- bulk: what the driver does. One hosts call, then one search call per page of VMs with their
  disks inlined (``follow=disk_attachments.disk``): a handful of round trips.
- naive: list the VMs, then ask for each VM's disk attachments, each disk and the host: one
  round trip per VM and per attribute, as tools that walk objects do.

Then every VM's guest addresses: the driver's paged search with NICs and the agent's reported
devices inline (``follow=nics,reported_devices``) against asking each VM for its NICs and its
reported devices.

Run: ./dev bench ovirt  (or: .venv/bin/python drivers/ovirt/bench.py [--vms N])
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

from virtdrivers_ovirt.driver import OvirtDriver


def _control(settings: dict[str, Any], what: str) -> dict[str, int]:
    base = settings["url"].split("/ovirt-engine/")[0]
    ctx = ssl.create_default_context(cafile=settings["ca_file"])
    req = urllib.request.Request(f"{base}/__simulator/{what}", data=b"", method="POST")
    with urllib.request.urlopen(req, context=ctx) as resp:
        data: dict[str, int] = json.load(resp)
        return data


def _naive_addresses(drv: OvirtDriver) -> int:
    """One round trip per VM and per collection: VM list, then each VM's NICs and reported devices."""

    def walk(system: Any) -> int:
        found = 0
        for vm in system.vms_service().list():
            service = system.vms_service().vm_service(vm.id)
            macs = {n.mac.address for n in service.nics_service().list()}
            found += sum(1 for d in service.reported_devices_service().list() if d.mac.address in macs and d.ips)
        return found

    result: int = drv.session.call(walk)
    return result


def _naive(drv: OvirtDriver) -> int:
    """One round trip per VM and per attribute: VM list, then disk attachments, disks and host of each."""

    def walk(system: Any) -> int:
        count = 0
        hosts: dict[str, str] = {}
        for vm in system.vms_service().list():
            service = system.vms_service().vm_service(vm.id)
            for att in service.disk_attachments_service().list():
                system.disks_service().disk_service(att.disk.id).get()
            if vm.host is not None:
                hosts[vm.host.id] = system.hosts_service().host_service(vm.host.id).get().name
            count += 1
        return count

    result: int = drv.session.call(walk)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=1000)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="vd-ovirt-bench-")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "virtdrivers_ovirt.simulator",
            "--port",
            "0",
            "--pets",
            str(args.vms),
            "--state-dir",
            scratch,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        settings = json.loads(proc.stdout.readline())
        with OvirtDriver(settings) as drv:
            drv.list_unmanaged()  # warm up: TLS session, token
            _control(settings, "reset-stats")
            t0 = time.perf_counter()
            bulk = drv.list_unmanaged()
            bulk_s = time.perf_counter() - t0
            bulk_trips = sum(_control(settings, "stats").values())
            _control(settings, "reset-stats")
            t0 = time.perf_counter()
            naive_count = _naive(drv)
            naive_s = time.perf_counter() - t0
            naive_trips = sum(_control(settings, "stats").values())
            _control(settings, "reset-stats")
            t0 = time.perf_counter()
            addresses = drv.all_guest_addresses(managed_only=False)
            addr_s = time.perf_counter() - t0
            addr_trips = sum(_control(settings, "stats").values())
            _control(settings, "reset-stats")
            t0 = time.perf_counter()
            naive_found = _naive_addresses(drv)
            naive_addr_s = time.perf_counter() - t0
            naive_addr_trips = sum(_control(settings, "stats").values())
        assert len(bulk) == naive_count == args.vms, (len(bulk), naive_count)
        assert all(len(i.nics) == 2 for i in bulk), "every pet has its two NICs in the listing"
        bulk_found = sum(len(a) for a in addresses.values())
        assert bulk_found == naive_found == 2 * args.vms, (bulk_found, naive_found)
        print(f"oVirt simulator, {args.vms} VMs, each with 1 disk and 2 NICs, over HTTPS with ovirtsdk4")
        print("listing (disks and NICs inline):")
        print(f"  bulk  (driver list, paged search + follow): {bulk_s:8.3f} s  {bulk_trips:6d} round trips")
        print(f"  naive (per-VM attribute walk):              {naive_s:8.3f} s  {naive_trips:6d} round trips")
        print(f"  ratio: {naive_s / bulk_s:.1f}x faster, {naive_trips / bulk_trips:.0f}x fewer round trips")
        print("guest addresses of every VM (the agent's reported devices per NIC):")
        print(f"  bulk  (paged search + follow):              {addr_s:8.3f} s  {addr_trips:6d} round trips")
        print(f"  naive (NICs and devices per VM):            {naive_addr_s:8.3f} s  {naive_addr_trips:6d} round trips")
        print(f"  ratio: {naive_addr_s / addr_s:.1f}x faster, {naive_addr_trips / addr_trips:.0f}x fewer round trips")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
