"""Inventory listing at scale: our list_instances vs a naive pyVmomi walk vs apache-libcloud.

Run with ``./dev bench vmware`` (or ``python drivers/vmware/bench.py --sizes 1000``).
For each size one vcsim is started (2 clusters of 4 hosts, the VMs split between
them, marked as ours and powered on: each has a NIC, and our launcher reports its
address in ``guest.net`` as VMware Tools would) and all three contenders list the same
inventory over HTTPS, NICs and guest addresses included. Printed: wall time, SOAP round trips (counted at pyVmomi's
``SoapStubAdapter.InvokeMethod``, so all three are counted the same way), the
ratio to ours, and our round trips per page.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import ssl
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from virtdrivers_vmware import VSphereDriver, mapping
from virtdrivers_vmware.simulator import Vcsim
from virtdrivers_vmware.simulator.wire import count_round_trips


@dataclass
class Result:
    name: str
    seconds: float | None
    round_trips: int
    count: int
    note: str = ""


def measure(name: str, fn: Callable[[], int]) -> Result:
    with count_round_trips() as rt:
        start = time.perf_counter()
        try:
            count = fn()
        except Exception as exc:
            last = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
            return Result(name, None, rt.total, 0, f"FAILED: {type(exc).__name__}: {str(exc)[:200]} (at {where})")
        seconds = time.perf_counter() - start
    return Result(name, seconds, rt.total, count)


def naive_walk(si_content: Any) -> int:
    """What most scripts do: a view, then attribute access per VM (one round trip each)."""
    from pyVmomi import vim

    view = si_content.viewManager.CreateContainerView(si_content.rootFolder, [vim.VirtualMachine], True)
    rows = []
    for vm in view.view:
        runtime = vm.runtime
        hardware = vm.config.hardware
        nics = [d.macAddress for d in hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
        addresses = [a for n in vm.guest.net or () for a in n.ipAddress or ()]
        rows.append(
            (vm.name, runtime.powerState, hardware.numCPU, hardware.memoryMB, runtime.host.name, nics, addresses)
        )
    view.Destroy()
    return len(rows)


def our_listing(driver: VSphereDriver) -> int:
    """Our listing with NICs (in InstanceInfo) and each VM's guest addresses, in one paged retrieval."""
    listed = driver.list_instances_with_addresses()
    if not all(info.nics and addresses for info, addresses in listed):
        raise AssertionError("a VM was listed without its NIC or its address")
    return len(listed)


def run_size(size: int, args: argparse.Namespace) -> list[Result]:
    from pyVim.connect import Disconnect, SmartConnect

    per_cluster = size // args.clusters
    print(f"\n== {per_cluster * args.clusters} VMs: starting vcsim ({args.clusters} clusters x {args.hosts} hosts)")
    t = time.perf_counter()
    with Vcsim(
        clusters=args.clusters,
        hosts=args.hosts,
        vms=per_cluster,
        standalone_hosts=args.standalone_hosts,
        autostart=True,
        mark=mapping.MANAGED_KEY,
    ) as sim:
        print(f"   vcsim up in {time.perf_counter() - t:.1f} s on port {sim.port}")
        settings = sim.settings()
        results: list[Result] = []
        with VSphereDriver(settings, page_size=args.page_size) as driver:
            cold = measure("virtdrivers listing (cold: + view)", lambda: our_listing(driver))
            warm = [measure("virtdrivers listing", lambda: our_listing(driver)) for _ in range(3)]
            results += [cold, min(warm, key=lambda r: r.seconds or math.inf)]
        if not args.skip_naive:
            si = SmartConnect(
                host="127.0.0.1",
                port=sim.port,
                user=settings["user"],
                pwd=settings["password"],
                sslContext=ssl.create_default_context(cafile=settings["ca_file"]),
            )
            try:
                results.append(measure("naive pyVmomi attribute walk", lambda: naive_walk(si.RetrieveContent())))
            finally:
                Disconnect(si)
        if not args.skip_libcloud:
            results.append(measure("apache-libcloud VSphereNodeDriver.list_nodes", lambda: libcloud_list(settings)))
        return results


def libcloud_list(settings: dict[str, Any]) -> int:
    from libcloud.compute.drivers.vsphere import VSphereNodeDriver

    # libcloud logs per-VM errors to its logger; keep the benchmark output readable.
    with contextlib.redirect_stderr(io.StringIO()):
        driver = VSphereNodeDriver(
            "127.0.0.1",
            settings["user"],
            settings["password"],
            port=settings["port"],
            ca_cert=settings["ca_file"],
        )
        return len(driver.list_nodes())


def report(results: list[Result], page_size: int) -> None:
    ours = next(r for r in results if r.name == "virtdrivers listing")
    print(f"   {'contender':48} {'VMs':>6} {'wall s':>8} {'round trips':>12} {'x ours (wall)':>14}")
    for r in results:
        wall = f"{r.seconds:8.3f}" if r.seconds is not None else "       -"
        ratio = f"{r.seconds / ours.seconds:13.1f}x" if r.seconds and ours.seconds else "             -"
        print(f"   {r.name:48} {r.count:6d} {wall} {r.round_trips:12d} {ratio}")
        if r.note:
            print(f"      {r.note}")
    # Objects in one retrieval: the VMs plus 1 datacenter, 2 clusters, 8 hosts and 1 datastore (roughly).
    pages = math.ceil((ours.count + 1 + 2 + 8 + 1) / page_size)
    per_page = ours.round_trips / pages
    print("   (each contender reads name, power, CPUs, memory, host, NICs and guest addresses of every VM)")
    print(f"   ours: {ours.round_trips} round trips for {pages} page(s) of {page_size} = {per_page:.2f} per page")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated VM counts")
    parser.add_argument("--clusters", type=int, default=2)
    parser.add_argument("--hosts", type=int, default=4, help="hosts per cluster")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument(
        "--standalone-hosts",
        type=int,
        default=0,
        help="standalone hosts per datacenter (1 reproduces vcsim 0.24's unset-parent panic under libcloud)",
    )
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-libcloud", action="store_true")
    args = parser.parse_args()
    import pyVmomi

    try:
        from importlib.metadata import version

        libcloud_version = version("apache-libcloud")
    except Exception:
        libcloud_version = "not installed"
    print(f"pyvmomi {version('pyvmomi')} ({pyVmomi.__name__}), apache-libcloud {libcloud_version}")
    for size in (int(s) for s in args.sizes.split(",")):
        results = run_size(size, args)
        report(results, args.page_size)


if __name__ == "__main__":
    main()
