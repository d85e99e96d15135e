"""The fake's workloads: an image store, networks, and a simulated guest.

The guest is what makes workload tests mean something without a hypervisor: it
"boots" when its instance starts, reads its user data and echoes the marker
lines to its console the way the project's tiny real guest does (see
``virtdrivers_libvirt.guest``), reports addresses only after a boot delay, and
its counters grow while it runs. The console convention, shared with the real
guest so one conformance test serves both:

- ``VIRTDRIVERS-BOOT``, once per boot;
- every user-data line starting with ``#vd-marker `` echoed verbatim;
- ``VIRTDRIVERS-USERDATA <sha256 of the user data>`` (``none`` without any), after the markers.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtdrivers.capabilities import DiskFormat
from virtdrivers.errors import InvalidSpec
from virtdrivers.objects import GuestAddress, Image, InstanceMetrics, Network, NicInfo

GIB = 1024**3
_QCOW2_MAGIC = b"QFI\xfb"


@functools.cache
def networks() -> tuple[Network, ...]:
    """The networks every fake backend has (made on first use: listing drivers builds no model)."""
    return (
        Network(id="net-default", name="default", kind="bridge"),
        Network(id="net-isolated", name="isolated", kind="bridge"),
    )


def seed_images() -> dict[str, Image]:
    """The images a new fake backend offers, with stable ids so tests and docs can name them."""
    images = [
        Image(
            id="img-fake-linux",
            name="fake-linux",
            disk_format=DiskFormat.QCOW2,
            virtual_size_bytes=GIB,
            checksum=hashlib.sha256(b"fake-linux").hexdigest(),
            os_type="linux",
            os_distro="debian",
        ),
        Image(
            id="img-fake-linux-raw",
            name="fake-linux-raw",
            disk_format=DiskFormat.RAW,
            virtual_size_bytes=2 * GIB,
            min_disk_gib=2,
            checksum=hashlib.sha256(b"fake-linux-raw").hexdigest(),
            os_type="linux",
            os_distro="debian",
        ),
    ]
    return {i.id: i for i in images}


def read_image_file(path: str, name: str, disk_format: DiskFormat | None, image_id: str) -> Image:
    """An image record for a local file: its format from its header, its virtual size, its sha256."""
    file = Path(path)
    if not file.is_file():
        raise InvalidSpec(f"no image file at {path!r}", field="path")
    with file.open("rb") as f:
        header = f.read(32)
        digest = hashlib.sha256(header)
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    found = DiskFormat.QCOW2 if header[:4] == _QCOW2_MAGIC else DiskFormat.RAW
    if disk_format is not None and disk_format != found:
        raise InvalidSpec(f"the file is {found.value}, not {disk_format.value}", field="disk_format")
    size = int.from_bytes(header[24:32], "big") if found == DiskFormat.QCOW2 else file.stat().st_size
    return Image(
        id=image_id,
        name=name,
        disk_format=found,
        virtual_size_bytes=size,
        min_disk_gib=max(1, math.ceil(size / GIB)),
        checksum=digest.hexdigest(),
    )


def root_disk_gib(image: Image) -> int:
    return max(1, image.min_disk_gib, math.ceil(image.virtual_size_bytes / GIB))


@dataclass
class Nic:
    id: str
    network: str
    mac: str
    model: str

    def info(self) -> NicInfo:
        return NicInfo(id=self.id, network=self.network, mac=self.mac, model=self.model)

    def address(self) -> str:
        octets = [int(x, 16) for x in self.mac.split(":")]
        net = 1 + sum(ord(c) for c in self.network) % 200
        return f"10.{net}.{octets[4]}.{max(octets[5], 2)}/24"

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "network": self.network, "mac": self.mac, "model": self.model}

    @classmethod
    def from_json(cls, d: dict[str, str]) -> Nic:
        return cls(d["id"], d["network"], d["mac"], d["model"])


@dataclass
class Guest:
    """A guest operating system as far as a compute agent can observe one."""

    console: list[str] = field(default_factory=list)
    #: Wall-clock time of the last boot; None while off. Wall clock, so a state file can share it.
    booted_at: float | None = None
    #: Seconds it ran before ``running_since`` (resumes keep counting from here).
    ran_s: float = 0.0
    running_since: float | None = None

    def boot(self, user_data: str | None, hostname: str) -> None:
        now = time.time()
        self.booted_at = self.running_since = now
        self.console.append("VIRTDRIVERS-BOOT")
        if user_data is not None:
            self.console.extend(line for line in user_data.splitlines() if line.startswith("#vd-marker "))
        digest = hashlib.sha256(user_data.encode()).hexdigest() if user_data is not None else "none"
        self.console.append(f"VIRTDRIVERS-USERDATA {digest}")
        self.console.append(f"VIRTDRIVERS-HOSTNAME {hostname}")
        del self.console[:-1000]

    def freeze(self) -> None:
        """Paused or suspended: stops counting, keeps its boot."""
        if self.running_since is not None:
            self.ran_s += time.time() - self.running_since
            self.running_since = None

    def thaw(self) -> None:
        if self.running_since is None:
            self.running_since = time.time()

    def halt(self) -> None:
        self.freeze()
        if self.booted_at is not None:
            self.console.append("VIRTDRIVERS-SHUTDOWN")
        self.booted_at = None

    def run_seconds(self) -> float:
        return self.ran_s + (time.time() - self.running_since if self.running_since is not None else 0.0)

    def addresses(self, nics: list[Nic], boot_delay_s: float) -> list[GuestAddress]:
        if self.booted_at is None or time.time() - self.booted_at < boot_delay_s:
            return []  # not reported yet: the guest has not brought its network up
        seen = datetime.datetime.fromtimestamp(self.booted_at + boot_delay_s, datetime.UTC)
        return [GuestAddress(mac=n.mac, addresses=(n.address(),), source="simulated", observed_at=seen) for n in nics]

    def metrics(self, instance_id: str, vcpus: int, memory_mb: int, disks: int, nics: int) -> InstanceMetrics:
        run = self.run_seconds()
        return InstanceMetrics(
            instance_id=instance_id,
            timestamp=datetime.datetime.now(datetime.UTC),
            cpu_time_ns=int(run * vcpus * 0.25e9),
            memory_used_mb=memory_mb * 3 // 5 if self.running_since is not None else 0,
            disk_read_bytes=int(run * disks * 2_000_000),
            disk_write_bytes=int(run * disks * 500_000),
            disk_read_ops=int(run * disks * 400),
            disk_write_ops=int(run * disks * 100),
            net_rx_bytes=int(run * nics * 30_000),
            net_tx_bytes=int(run * nics * 10_000),
            net_rx_packets=int(run * nics * 40),
            net_tx_packets=int(run * nics * 20),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "console": self.console,
            "booted_at": self.booted_at,
            "ran_s": self.ran_s,
            "running_since": self.running_since,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Guest:
        if not d:
            return cls()
        return cls(list(d["console"]), d["booted_at"], d["ran_s"], d["running_since"])
