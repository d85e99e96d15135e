"""Benchmark: bulk listing against per-domain calls, 1,000 domains behind a real libvirtd.

Starts a private libvirtd (see virtdrivers_libvirt.daemon), defines 1,000 domains in its test
driver over the daemon socket, then times, in one run:

- ``list_instances`` warm: one ``getAllDomainStats`` call (definitions already cached),
- ``list_instances`` cold: the same plus one ``XMLDesc`` per domain seen for the first time,
- the naive way: ``listAllDomains`` and then ``info()`` on every domain.

Round trips are counted twice: libvirt API calls made (each is one RPC to the daemon) and the
daemon's own read() syscalls from /proc/<pid>/io, which does not trust our counting.
Run with ``./dev bench libvirt`` or ``python drivers/libvirt/bench.py [--domains N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from virtdrivers_libvirt import mapping
from virtdrivers_libvirt.daemon import LibvirtDaemon, unavailable_reason
from virtdrivers_libvirt.driver import LibvirtDriver
from virtdrivers_libvirt.session import Session


def daemon_reads(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("syscr:"):
                return int(line.split()[1])
    return 0


class Counter:
    """Counts libvirt calls our session makes (one RPC each over the daemon socket)."""

    def __init__(self) -> None:
        self.calls = 0
        self._real = Session.call

    def __enter__(self) -> Counter:
        counter, real = self, self._real

        def counting(session: Session, fn: Callable[[Any], Any], **kw: Any) -> Any:
            counter.calls += 1
            return real(session, fn, **kw)

        Session.call = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Session.call = self._real  # type: ignore[method-assign]


def measure(fn: Callable[[], int], pid: int, repeat: int) -> tuple[float, int, int]:
    """Median wall seconds, round trips per run by our count and by the daemon's reads."""
    times, trips, reads = [], [], []
    for _ in range(repeat):
        before = daemon_reads(pid)
        t0 = time.perf_counter()
        trips.append(fn())
        times.append(time.perf_counter() - t0)
        reads.append(daemon_reads(pid) - before)
    return statistics.median(times), trips[-1], int(statistics.median(reads))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"libvirt bench skipped: {reason}")
        return 0
    import libvirt

    with LibvirtDaemon() as daemon:
        uri = daemon.uri("test", "/default")
        pid = daemon.pid
        assert pid is not None
        # test:///default keeps its state only while some connection is open: keep this one.
        with libvirt.open(uri) as setup:
            t0 = time.perf_counter()
            for n in range(args.domains):
                xml = mapping.domain_xml(
                    uuid=str(uuid.uuid4()), name=f"bench-{n}", vcpus=1, memory_mb=64, domain_type="test", machine=None
                )
                setup.defineXML(xml)
            print(f"defined {args.domains} domains over the daemon socket in {time.perf_counter() - t0:.2f} s")

            with LibvirtDriver(uri=uri) as driver, libvirt.open(uri) as raw:

                def ours() -> int:
                    with Counter() as c:
                        listed = driver.list_instances()
                    assert len(listed) == args.domains, len(listed)
                    return c.calls

                def cold() -> int:
                    driver._forget()
                    return ours()

                def naive() -> int:
                    doms = raw.listAllDomains(0)
                    infos = [d.info() for d in doms]
                    assert len(infos) >= args.domains
                    return 1 + len(doms)

                cold_s, cold_trips, cold_reads = measure(cold, pid, args.repeat)
                ours_s, ours_trips, ours_reads = measure(ours, pid, args.repeat)
                naive_s, naive_trips, naive_reads = measure(naive, pid, args.repeat)

    print(f"{'':34} {'wall':>9} {'API calls':>10} {'daemon reads':>13}")
    print(f"{'list_instances (warm, bulk)':34} {ours_s * 1000:7.1f}ms {ours_trips:10d} {ours_reads:13d}")
    print(f"{'list_instances (cold: +XMLDesc)':34} {cold_s * 1000:7.1f}ms {cold_trips:10d} {cold_reads:13d}")
    print(f"{'listAllDomains + info() each':34} {naive_s * 1000:7.1f}ms {naive_trips:10d} {naive_reads:13d}")
    print(f"ratio naive/ours (warm): {naive_s / ours_s:.1f}x wall, {naive_trips / ours_trips:.0f}x round trips")
    print(f"ratio naive/ours (cold): {naive_s / cold_s:.2f}x wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
