"""What goes into a guest and comes out of it: the NoCloud seed, the console log, the counters.

User data travels the way cloud-init's NoCloud datasource reads it: a small vfat disk
labelled ``CIDATA`` with ``user-data``, ``meta-data`` and ``network-config`` (see
:mod:`virtdrivers_libvirt.guest.seed`), attached read-only. The console is QEMU's serial port
logged to a file (``append='on'``, so a restart keeps what the previous boot printed).
Counters come from libvirt's bulk stats call, the same one the listing uses.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from virtdrivers.errors import DriverError
from virtdrivers.objects import InstanceMetrics, InstanceSpec
from virtdrivers_libvirt.session import Session

# virDomainStatsTypes, repeated so this module imports without the SDK.
_STATS_CPU_TOTAL, _STATS_BALLOON, _STATS_INTERFACE, _STATS_BLOCK = 2, 4, 16, 32
_HOSTNAME = re.compile(r"(?=.{1,63}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")


def meta_data(spec: InstanceSpec, instance_id: str) -> dict[str, str]:
    """NoCloud meta-data: the instance id (cloud-init runs its per-instance modules once per
    id) and the host name asked for, else the instance name where it is a valid label."""
    meta = {"instance-id": instance_id}
    hostname = spec.user_data.hostname if spec.user_data else None
    if hostname is None and _HOSTNAME.fullmatch(spec.name):
        hostname = spec.name
    if hostname is not None:
        meta["local-hostname"] = hostname
    return meta


def write_seed(spec: InstanceSpec, instance_id: str, directory: str, name: str) -> str:
    """Write the seed as ``directory/name`` and return its path. It is made in a temporary
    directory beside it and renamed into place, so the final name (which reap recognises)
    only ever holds a complete seed."""
    from virtdrivers_libvirt.guest.seed import SeedError, make_seed

    ud = spec.user_data
    if ud is None:
        raise ValueError("no user data to seed")
    os.makedirs(directory, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".seed-", dir=directory)
    try:
        made = make_seed(Path(tmp), ud.user_data or "", meta_data(spec, instance_id), ud.network_config)
        final = os.path.join(directory, name)
        os.replace(made, final)
        return final
    except SeedError as exc:
        raise DriverError(f"cannot write the NoCloud seed: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def console_tail(path: str | None, max_bytes: int) -> str:
    """The last ``max_bytes`` of the console log, decoded leniently; empty before the guest
    printed anything (QEMU creates the file when it starts)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - max_bytes))
            data = fh.read(max_bytes)
    except FileNotFoundError:
        return ""
    text = data.decode(errors="replace")
    # A cut through a multi-byte character decodes to U+FFFD: drop it rather than grow past the limit.
    while len(text.encode()) > max_bytes:
        text = text[1:]
    return text


def metrics(session: Session, dom: Any, instance_id: str) -> InstanceMetrics:
    """One bulk-stats call for this domain. A stopped domain reports what libvirt still has
    (usually nothing): None rather than a made-up zero."""
    flags = _STATS_CPU_TOTAL | _STATS_BALLOON | _STATS_INTERFACE | _STATS_BLOCK
    got = session.call(lambda c: c.domainListGetStats([dom], flags, 0), ref=instance_id)
    stats: dict[str, Any] = got[0][1] if got else {}
    now = datetime.datetime.now(datetime.UTC)

    def total(prefix: str, suffix: str) -> int | None:
        count = stats.get(f"{prefix}.count")
        if count is None:
            return None
        values = [stats.get(f"{prefix}.{i}.{suffix}") for i in range(int(count))]
        present = [int(v) for v in values if v is not None]
        return sum(present) if present else None

    rss = stats.get("balloon.rss")
    current = stats.get("balloon.current")
    memory_kib = rss if rss is not None else current
    cpu = stats.get("cpu.time")
    return InstanceMetrics(
        instance_id=instance_id,
        timestamp=now,
        cpu_time_ns=int(cpu) if cpu is not None else None,
        memory_used_mb=int(memory_kib) // 1024 if memory_kib is not None else None,
        disk_read_bytes=total("block", "rd.bytes"),
        disk_write_bytes=total("block", "wr.bytes"),
        disk_read_ops=total("block", "rd.reqs"),
        disk_write_ops=total("block", "wr.reqs"),
        net_rx_bytes=total("net", "rx.bytes"),
        net_tx_bytes=total("net", "tx.bytes"),
        net_rx_packets=total("net", "rx.pkts"),
        net_tx_packets=total("net", "tx.pkts"),
    )


def agent_exec(session: Session, dom: Any, argv: list[str], *, timeout: float) -> int:
    """Run ``argv`` in the guest through qemu-guest-agent (``guest-exec``) and return its exit
    status, waiting up to ``timeout`` for the agent to answer at all (it starts with the guest).

    A testing seam for the endpoints, which need a guest that ignores ACPI on purpose; not a
    contract operation (running commands in guests is the tenant's business, not the host's).
    """
    import json
    import time

    import libvirt_qemu  # type: ignore[import-untyped]  # libvirt-python ships no stubs

    def command(payload: dict[str, Any]) -> dict[str, Any]:
        raw = session.call(lambda _c: libvirt_qemu.qemuAgentCommand(dom, json.dumps(payload), 5, 0))
        answer: dict[str, Any] = json.loads(raw)
        return answer

    deadline = time.monotonic() + timeout
    while True:
        try:
            command({"execute": "guest-ping"})
            break
        except DriverError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    pid = command({"execute": "guest-exec", "arguments": {"path": argv[0], "arg": argv[1:]}})["return"]["pid"]
    while True:
        status = command({"execute": "guest-exec-status", "arguments": {"pid": pid}})["return"]
        if status.get("exited"):
            return int(status.get("exitcode", -1))
        if time.monotonic() > deadline:
            raise DriverError(f"{argv[0]} did not finish in the guest within {timeout:.0f} s")
        time.sleep(0.2)
