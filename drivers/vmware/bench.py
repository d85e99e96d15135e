"""Inventory listing at scale: our list_instances vs a naive pyVmomi walk vs apache-libcloud.

Run with ``./dev bench vmware`` (or ``python drivers/vmware/bench.py --sizes 1000``).
For each size one vcsim is started (2 clusters of 4 hosts, the VMs split between
them, marked as ours and powered on: each has a NIC, and our launcher reports its
address in ``guest.net`` as VMware Tools would) and all three contenders list the same
inventory over HTTPS, NICs and guest addresses included. Printed: wall time, SOAP round trips (counted at pyVmomi's
``SoapStubAdapter.InvokeMethod``, so all three are counted the same way), the
ratio to ours, and our round trips per page.

Ours is measured three ways, all printed. **Cold**: the first listing of a connected driver
(its container view is made, and every VM's config is read: its devices and extraConfig).
**Warm**: the steady state, best of three listings with nothing changed (each VM's light
properties only; configs come from the driver's cache, valid while ``config.changeVersion``
stands). **After 1% changed**: a warm listing after an administrator's own session
reconfigured 1% of the VMs, so that their configs are read again.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import ssl
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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
    #: CPU seconds of this process and of vcsim together: the work done, whatever else the machine runs.
    cpu: float | None = None


#: The vcsim process of the size being measured, whose CPU time counts with ours.
_server_pid: list[int] = []


def _server_cpu() -> float:
    """User + system CPU seconds of the vcsim process so far (Linux /proc)."""
    if not _server_pid:
        return 0.0
    try:
        fields = Path(f"/proc/{_server_pid[0]}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(name: str, fn: Callable[[], int]) -> Result:
    with count_round_trips() as rt:
        start, cpu, server = time.perf_counter(), time.process_time(), _server_cpu()
        try:
            count = fn()
        except Exception as exc:
            last = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
            return Result(name, None, rt.total, 0, f"FAILED: {type(exc).__name__}: {str(exc)[:200]} (at {where})")
        seconds = time.perf_counter() - start
        used = time.process_time() - cpu + _server_cpu() - server
    return Result(name, seconds, rt.total, count, cpu=used)


def best(name: str, fn: Callable[[], int], repeat: int) -> Result:
    """The fastest of ``repeat`` runs: the same treatment for every contender it is used on."""
    return min((measure(name, fn) for _ in range(repeat)), key=lambda r: r.seconds or math.inf)


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


def touch(si_content: Any, fraction: float) -> int:
    """Reconfigure ``fraction`` of the VMs from another session (an extraConfig key): their configs move."""
    from pyVmomi import vim, vmodl

    pc = vmodl.query.PropertyCollector
    view = si_content.viewManager.CreateContainerView(si_content.rootFolder, [vim.VirtualMachine], True)
    try:
        vms = list(view.view)
    finally:
        view.Destroy()
    step = max(1, round(1 / fraction))
    touched = vms[::step]
    spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key="bench.touched", value=str(time.time()))])
    tasks = [vm.ReconfigVM_Task(spec) for vm in touched]
    # vcsim runs tasks inside the call; a look at each task's state confirms it.
    done = si_content.propertyCollector.RetrieveContents(
        [
            pc.FilterSpec(
                objectSet=[pc.ObjectSpec(obj=t) for t in tasks],
                propSet=[pc.PropertySpec(type=vim.Task, pathSet=["info.state"])],
            )
        ]
    )
    if any(o.propSet[0].val != "success" for o in done):
        raise AssertionError("a reconfigure failed")
    return len(touched)


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
        assert sim.proc is not None
        _server_pid[:] = [sim.proc.pid]
        settings = sim.settings()
        results: list[Result] = []
        si = SmartConnect(
            host="127.0.0.1",
            port=sim.port,
            user=settings["user"],
            pwd=settings["password"],
            sslContext=ssl.create_default_context(cafile=settings["ca_file"]),
        )
        try:
            with VSphereDriver(settings, page_size=args.page_size) as driver:
                driver.connect()  # the login is not the listing's
                results.append(measure(COLD, lambda: our_listing(driver)))
                results.append(best(WARM, lambda: our_listing(driver), args.repeat))
                touched = touch(si.RetrieveContent(), 0.01)
                results.append(measure(CHANGED, lambda: our_listing(driver)))
                results[-1].note = f"{touched} VMs reconfigured since the last listing"
            if not args.skip_naive:
                results.append(measure("naive pyVmomi attribute walk", lambda: naive_walk(si.RetrieveContent())))
        finally:
            Disconnect(si)
        if not args.skip_libcloud:
            results.append(best(LIBCLOUD, lambda: libcloud_list(settings), args.repeat))
        return results


LIBCLOUD = "apache-libcloud VSphereNodeDriver.list_nodes"


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


COLD = "virtdrivers listing, cold (first: view, all configs)"
WARM = "virtdrivers listing, warm (steady state)"
CHANGED = "virtdrivers listing, warm after 1% changed"


def report(results: list[Result], page_size: int, clusters: int, hosts: int) -> None:
    by_name = {r.name: r for r in results}
    warm, cold = by_name[WARM], by_name[COLD]
    print(f"   {'contender':52} {'VMs':>6} {'wall s':>8} {'cpu s':>7} {'round trips':>12} {'x warm':>8} {'x cold':>8}")
    for r in results:
        wall = f"{r.seconds:8.3f}" if r.seconds is not None else "       -"
        cpu = f"{r.cpu:7.2f}" if r.cpu is not None else "      -"
        ratios = [f"{r.seconds / o.seconds:7.1f}x" if r.seconds and o.seconds else "       -" for o in (warm, cold)]
        print(f"   {r.name:52} {r.count:6d} {wall} {cpu} {r.round_trips:12d} {ratios[0]} {ratios[1]}")
        if r.note:
            print(f"      {r.note}")
    # Objects in the light retrieval: the VMs plus 1 datacenter, the clusters, their hosts and 1 datastore.
    pages = math.ceil((warm.count + 1 + clusters + clusters * hosts + 1) / page_size)
    config_pages = math.ceil(cold.count / page_size)
    print("   (each contender reads name, power, CPUs, memory, host, NICs and guest addresses of every VM;")
    print("    cpu s = CPU seconds of this process and of vcsim together, less sensitive to other load than wall s)")
    print(
        f"   ours, warm: {warm.round_trips} round trips for {pages} page(s) of {page_size} = "
        f"{warm.round_trips / pages:.2f} per page"
    )
    print(
        f"   ours, cold: {cold.round_trips} round trips = {pages} light page(s) + {config_pages} page(s) of configs "
        f"+ 1 to make the view = {cold.round_trips / pages:.2f} per light page"
    )
    libcloud = by_name.get(LIBCLOUD)
    if libcloud is not None and libcloud.seconds and warm.seconds and cold.seconds:
        print(
            f"   libcloud / ours, wall: warm {libcloud.seconds / warm.seconds:.1f}x (the goal: >= 8x), "
            f"cold {libcloud.seconds / cold.seconds:.1f}x"
        )
    if libcloud is not None and libcloud.cpu and warm.cpu and cold.cpu:
        print(f"   libcloud / ours, cpu:  warm {libcloud.cpu / warm.cpu:.1f}x, cold {libcloud.cpu / cold.cpu:.1f}x")


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
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of our warm listing and of libcloud's; the best is shown"
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
        report(results, args.page_size, args.clusters, args.hosts)


if __name__ == "__main__":
    main()
