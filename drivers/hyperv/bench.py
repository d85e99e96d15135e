"""Hyper-V backend benchmark: scripts, WS-Management round trips and HTTP requests per operation.

Run with ``./dev bench hyperv`` (or ``python drivers/hyperv/bench.py``). It starts the
simulator as a subprocess for each embedded endpoint (HTTPS+Basic, HTTP+NTLM with
message encryption), seeds 1,000 managed VMs, and prints for every contract operation
the number of scripts run (one per operation is the design), WS-Management round
trips by action, HTTP requests (authentication legs included) and wall time.

It also compares the bulk ``list_instances`` (one script) with the naive way of a
per-VM ``get_instance`` after listing ids, measured on the first 200 VMs.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from virtdrivers.objects import HAPriority, NicSpec
from virtdrivers_hyperv.driver import HypervDriver
from virtdrivers_hyperv.mapping import encode_notes
from virtdrivers_hyperv.simulator.endpoint import run_simulator

N_VMS = 1000
NAIVE_SAMPLE = 200


def _inventory() -> dict[str, Any]:
    notes = encode_notes({"bench": "1"}, {})
    vms = [
        {
            "name": f"bench-{i:04d}",
            "memory_mb": 512,
            "cpus": 1,
            "state": 2 if i % 2 else 3,
            "host": "HV-NODE1" if i % 2 else "HV-NODE2",
            "notes": notes,
            "disks_gib": [10],
            "nics": ["vd-external"],
        }
        for i in range(N_VMS)
    ]
    return {
        "vms": vms,
        "nodes": [{"name": "HV-NODE1", "memory": 4 << 40}, {"name": "HV-NODE2", "memory": 4 << 40}],
        "images": [{"name": "debian-12-genericcloud.vhdx", "size_gib": 2, "used_mib": 600}],
        "switches": [{"name": "vd-external", "type": 2, "subnet": "10.40.0.0/16"}],
        "boot_seconds": 0.0,
    }


def _measure(d: HypervDriver, label: str, func: Callable[[], Any], rows: list[tuple[str, ...]]) -> Any:
    before = Counter(d.session.round_trips)
    scripts_before = d.session.scripts_run
    t0 = time.perf_counter()
    result = func()
    elapsed = time.perf_counter() - t0
    delta = Counter(d.session.round_trips)
    delta.subtract(before)
    http = delta.pop("http", 0)
    wsman = {k: v for k, v in delta.items() if v}
    trips = sum(wsman.values())
    detail = " ".join(f"{k}={v}" for k, v in sorted(wsman.items()))
    rows.append(
        (label, str(d.session.scripts_run - scripts_before), str(trips), str(http), f"{elapsed * 1000:8.1f}", detail)
    )
    return result


def _run(endpoint: str, https: bool) -> None:
    print(f"\n== endpoint {endpoint}: simulator subprocess, {N_VMS} pre-existing managed VMs ==")
    with run_simulator(https=https, inventory=_inventory()) as settings:
        rows: list[tuple[str, ...]] = []
        d = HypervDriver(settings)
        t0 = time.perf_counter()
        d.connect()
        opened = dict(d.session.round_trips)
        rows.append(
            ("connect (open shell)", "0", str(opened.get("Create", 0)), str(opened.get("http", 0)),
             f"{(time.perf_counter() - t0) * 1000:8.1f}", "Create=1")
        )  # fmt: skip
        try:
            listed = _measure(d, f"list_instances ({N_VMS} VMs, NICs, KVP addresses)", d.list_instances, rows)
            assert len(listed) == N_VMS, len(listed)
            assert all(len(i.nics) == 1 for i in listed)
            spec = {"name": "bench-new", "vcpus": 1, "memory_mb": 256, "disks": [{"size_gib": 1}], "start": True}
            info = _measure(d, "create (1 VHDX, start)", lambda: d.create(spec), rows)
            vid = info.id
            _measure(d, "get_instance", lambda: d.get_instance(vid), rows)
            _measure(d, "power_off (force)", lambda: d.power_off(vid, force=True), rows)
            _measure(d, "power_on", lambda: d.power_on(vid), rows)
            _measure(d, "reboot (hard)", lambda: d.reboot(vid, hard=True), rows)
            _measure(d, "pause", lambda: d.pause(vid), rows)
            _measure(d, "unpause", lambda: d.unpause(vid), rows)
            _measure(d, "suspend (Save-VM)", lambda: d.suspend(vid), rows)
            _measure(d, "resume", lambda: d.resume(vid), rows)
            _measure(d, "resize memory", lambda: d.resize(vid, memory_mb=512), rows)
            disk = _measure(d, "attach_disk", lambda: d.attach_disk(vid, {"size_gib": 1}), rows)
            _measure(d, "detach_disk", lambda: d.detach_disk(vid, disk.id), rows)
            snap = _measure(d, "create_snapshot", lambda: d.create_snapshot(vid, "s1"), rows)
            _measure(d, "list_snapshots", lambda: d.list_snapshots(vid), rows)
            _measure(d, "delete_snapshot", lambda: d.delete_snapshot(vid, snap.id), rows)
            _measure(d, "live_migrate", lambda: d.live_migrate(vid), rows)
            _measure(
                d, "set_high_availability", lambda: d.set_high_availability(vid, True, priority=HAPriority.HIGH), rows
            )
            _measure(d, "failover", lambda: d.failover(vid), rows)
            _measure(d, "get_high_availability", lambda: d.get_high_availability(vid), rows)
            _measure(d, "set_high_availability off", lambda: d.set_high_availability(vid, False), rows)
            _measure(d, "power_off (graceful)", lambda: d.power_off(vid, timeout=5), rows)
            moved = _measure(d, "cold_migrate", lambda: d.cold_migrate(vid), rows)
            other = "HV-NODE1" if moved.node == "HV-NODE2" else "HV-NODE2"
            _measure(d, "evacuate (stopped VM)", lambda: d.evacuate(vid, other), rows)
            _measure(d, "list_unmanaged", d.list_unmanaged, rows)
            _measure(d, "list_aggregates", d.list_aggregates, rows)
            _measure(d, "list_nodes", d.list_nodes, rows)
            _measure(d, "host_resources", d.host_resources, rows)
            _measure(d, "destroy", lambda: d.destroy(vid), rows)

            # Workloads (contract 1.2).
            image = _measure(d, "list_images", d.list_images, rows)[0]
            net = _measure(d, "list_networks", d.list_networks, rows)[0]
            wl = {"name": "bench-wl", "vcpus": 1, "memory_mb": 256, "image": image.id, "nics": [{"network": net.id}]}
            seeded = {**wl, "name": "bench-seeded", "user_data": {"user_data": "#cloud-config\n" + "x" * 2000}}
            copy = {**wl, "name": "bench-copy", "image_mode": "copy"}
            made = [
                _measure(d, "create (image cow, 1 NIC)", lambda: d.create(wl), rows),
                _measure(d, "create (image cow, NIC, user data)", lambda: d.create(seeded), rows),
                _measure(d, "create (image copy, 1 NIC)", lambda: d.create(copy), rows),
            ]
            wid = made[0].id
            nic = _measure(d, "attach_nic", lambda: d.attach_nic(wid, NicSpec(network=net.id)), rows)
            _measure(d, "detach_nic", lambda: d.detach_nic(wid, nic.id), rows)
            found = _measure(d, "guest_addresses", lambda: d.guest_addresses(wid), rows)
            assert found, "the guest reported no address"
            _measure(d, "console_connection", lambda: d.console_connection(wid), rows)
            _measure(d, "instance_metrics", lambda: d.instance_metrics(wid), rows)
            for m in made:
                d.destroy(m.id)

            sample = [i.id for i in listed[:NAIVE_SAMPLE]]
            naive = _measure(
                d, f"naive: get_instance x {NAIVE_SAMPLE}", lambda: [d.get_instance(i) for i in sample], rows
            )
            assert len(naive) == NAIVE_SAMPLE
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                d.list_instances()
                times.append(time.perf_counter() - t0)
        finally:
            d.close()
        widths = [max(len(r[i]) for r in [*rows, _HEADER]) for i in range(len(_HEADER))]
        for row in [_HEADER, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        bulk_ms = statistics.median(times) * 1000
        naive_row = rows[-1]
        naive_ms_per_vm = float(naive_row[4]) / NAIVE_SAMPLE
        print(
            f"list_instances of {N_VMS}: median {bulk_ms:.1f} ms in one script (3 round trips + extra Receives for "
            f"split output); naive per-VM get measured on {NAIVE_SAMPLE} VMs: {naive_ms_per_vm:.2f} ms/VM, "
            f"{int(naive_row[2]) / NAIVE_SAMPLE:.0f} round trips/VM -> {N_VMS} VMs would take about "
            f"{naive_ms_per_vm * N_VMS:.0f} ms and {int(naive_row[2]) // NAIVE_SAMPLE * N_VMS} round trips "
            f"(ratio naive/bulk about {naive_ms_per_vm * N_VMS / bulk_ms:.0f}x)"
        )


_HEADER = ("operation", "scripts", "wsman trips", "http reqs", "ms", "round trips by action")


def main() -> int:
    _run("https-basic", https=True)
    _run("ntlm", https=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
