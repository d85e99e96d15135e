"""The workload side of the simulated cluster: virtual switches, an image library, network
adapters with KVP addresses, resource metering, and the FAT volume of a NoCloud seed.

Nothing here boots a guest. What a guest would do is simulated and said so: a VM that has been
Running for ``boot_seconds`` "reports" an address per connected adapter through the KVP data
exchange, as a Linux guest with hv_kvp_daemon (or Windows with its integration services)
would; a running VM accrues CPU, memory, disk and network counters at a fixed synthetic rate;
its attached leaf disks are written (they grow and their modification time moves). These are
advanced by :meth:`Workloads.tick`, which the WS-Management layer calls around every script.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virtdrivers_hyperv.simulator.model import VM, Model, Vhd

__all__ = ["Adapter", "Metering", "Switch", "Workloads"]

MIB = 1024 * 1024
GIB = 1024 * MIB
# VMSwitchType
PRIVATE, INTERNAL, EXTERNAL = 0, 1, 2
#: Hyper-V's own OUI: dynamic MACs come from a per-host pool in it.
_HYPERV_OUI = "00155D"
#: The integration service whose data exchange carries the guest's addresses to the host.
KVP_SERVICE = "Key-Value Pair Exchange"

_DEFAULT_SWITCHES: list[dict[str, Any]] = [
    {"name": "vd-external", "type": EXTERNAL, "subnet": "192.168.50.0/24"},
    {"name": "vd-internal", "type": INTERNAL, "subnet": "172.20.0.0/24"},
    {"name": "vd-private", "type": PRIVATE, "subnet": None},
]
_DEFAULT_IMAGES: list[dict[str, Any]] = [
    {"name": "debian-12-genericcloud.vhdx", "size_gib": 2, "used_mib": 620},
    {"name": "ubuntu-24.04-cloudimg.vhdx", "size_gib": 3, "used_mib": 880},
]


@dataclass
class Switch:
    id: str
    name: str
    type: int
    subnet: str | None
    """Where the guests on it get their (simulated DHCP) addresses; None on a switch without DHCP."""


@dataclass
class Adapter:
    id: str
    switch: str | None
    static: str | None
    """A static MAC (12 hex digits) or None for a dynamic one."""
    dynamic: str = "000000000000"
    """Hyper-V assigns a dynamic MAC from its pool when the VM first starts; all zeros until then."""

    @property
    def mac(self) -> str:
        return self.static or self.dynamic


@dataclass
class Metering:
    """Cumulative resource use since Enable-VMResourceMetering (what Measure-VM averages over)."""

    last: float
    seconds: float = 0.0
    cpu_mhz_seconds: float = 0.0
    memory_mb_seconds: float = 0.0
    read_mb: float = 0.0
    written_mb: float = 0.0
    rx_mb: float = 0.0
    tx_mb: float = 0.0


class Workloads:
    """Switches, the image library and the guest-side simulation of one cluster."""

    def __init__(self, model: Model, inv: dict[str, Any], *, defaults: bool = True) -> None:
        """``inv`` may name ``switches``, ``library``, ``images`` and ``boot_seconds``; without an inventory
        (``defaults``) there are three switches and two images, with one there are the images it names."""
        from virtdrivers_hyperv.simulator.model import DYNAMIC, Vhd

        self.model = model
        self.switches = [
            Switch(str(uuid.uuid5(uuid.NAMESPACE_URL, s["name"])), s["name"], int(s["type"]), s.get("subnet"))
            for s in inv.get("switches", _DEFAULT_SWITCHES)
        ]
        self.library = str(inv.get("library", f"{model.volume_path}\\images"))
        self.boot_seconds = float(inv.get("boot_seconds", 1.0))
        #: Win32_Processor.MaxClockSpeed of every node.
        self.clock_mhz = 2400
        #: The share of its vCPUs a running guest keeps busy (synthetic).
        self.load = 0.05
        #: Msvm_TerminalServiceSettingData.ListenerPort: vmconnect's RDP port (Hyper-V's default).
        self.console_port = 2179
        self._macs = 0
        for image in inv.get("images", _DEFAULT_IMAGES if defaults else []):
            path = f"{self.library}\\{image['name']}"
            vhd = Vhd(path, int(image["size_gib"]) * GIB, DYNAMIC, model.local, used=int(image["used_mib"]) * MIB)
            vhd.mtime = datetime.datetime(2026, 11, 2, 9, 30, tzinfo=datetime.UTC)
            model.vhds[path.lower()] = vhd

    # -- switches and adapters ---------------------------------------------------------------

    def switch(self, name: str) -> Switch | None:
        return next((s for s in self.switches if s.name.lower() == name.lower()), None)

    def add_adapter(self, vm: VM, switch: str | None, static: str | None) -> Adapter:
        """``Add-VMNetworkAdapter`` (and the adapter ``New-VM`` makes): Gen 2 VMs take them hot."""
        from virtdrivers_hyperv.simulator.model import PSFault

        if switch is not None and self.switch(switch) is None:
            raise PSFault(
                "Add-VMNetworkAdapter",
                f'Hyper-V was unable to find a virtual switch with name "{switch}".',
                "ObjectNotFound",
                "ObjectNotFound,Microsoft.HyperV.PowerShell.Commands.AddVMNetworkAdapter",
                switch,
            )
        if static is not None:
            static = static.replace(":", "").replace("-", "").upper()
            if len(static) != 12 or int(static[:2], 16) & 1:
                raise PSFault(
                    "Add-VMNetworkAdapter",
                    f"Invalid MAC address '{static}'.",
                    "InvalidArgument",
                    "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.AddVMNetworkAdapter",
                    static,
                )
        if len(vm.nics) >= 8:  # ASSUMPTION: 8 synthetic adapters per VM, the documented maximum of 2012 R2
            raise PSFault(
                "Add-VMNetworkAdapter",
                "The maximum number of network adapters for this virtual machine has been reached.",
                "LimitsExceeded",
                "OutOfRange,Microsoft.HyperV.PowerShell.Commands.AddVMNetworkAdapter",
                vm.name,
            )
        adapter = Adapter(f"Microsoft:{vm.id.upper()}\\{str(uuid.uuid4()).upper()}", switch, static)
        vm.nics.append(adapter)
        if vm.running_since is not None:
            self._assign_mac(adapter)
        return adapter

    def _assign_mac(self, adapter: Adapter) -> None:
        if adapter.static is None and adapter.dynamic == "000000000000":
            self._macs += 1
            adapter.dynamic = f"{_HYPERV_OUI}{self._macs:06X}"

    def addresses(self, vm: VM, adapter: Adapter, now: float | None = None) -> list[str]:
        """What KVP reports for one adapter: nothing until the guest has booted, then its DHCP lease
        (where the switch has one) and its IPv6 link-local address, as Hyper-V lists them."""
        from virtdrivers_hyperv.simulator.model import RUNNING

        now = time.monotonic() if now is None else now
        switch = self.switch(adapter.switch) if adapter.switch else None
        if vm.state != RUNNING or vm.running_since is None or switch is None:
            return []
        if now - vm.running_since < self.boot_seconds:
            return []
        mac = bytes.fromhex(adapter.mac)
        found = []
        if switch.subnet:
            net = ipaddress.ip_network(switch.subnet)
            host = 10 + int.from_bytes(hashlib.sha256(mac).digest()[:2]) % (net.num_addresses - 20)
            found.append(str(net.network_address + host))
        eui = bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:]
        found.append(str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui)))
        return found

    # -- time passing --------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance what running guests do (boot, write their disks, use CPU) up to now."""
        from virtdrivers_hyperv.simulator.model import PAUSED, RUNNING

        now = time.monotonic()
        stamp = datetime.datetime.now(datetime.UTC)
        for vm in list(self.model.vms.values()):
            running = vm.state == RUNNING and vm.host in self.model.up_nodes()
            if running and vm.running_since is None:
                vm.running_since = now
                for adapter in vm.nics:
                    self._assign_mac(adapter)
            elif not running and vm.state != PAUSED:
                vm.running_since = None
            meter: Metering | None = vm.metering
            if meter is None:
                continue
            dt, meter.last = max(0.0, now - meter.last), now
            meter.seconds += dt
            if not running or dt == 0:
                continue
            meter.cpu_mhz_seconds += dt * self.load * vm.cpus * self.clock_mhz
            meter.memory_mb_seconds += dt * vm.memory / MIB * 0.6
            meter.read_mb += dt * 2.0
            meter.written_mb += dt * 1.0
            if any(a.switch for a in vm.nics):
                meter.rx_mb += dt * 0.5
                meter.tx_mb += dt * 0.25
            for path in vm.drives:  # the guest writes its own (leaf) disks, never a parent
                vhd = self.model.vhds.get(path.lower())
                if vhd is not None and vhd.type != 2:
                    vhd.used += int(dt * MIB)
                    vhd.mtime = stamp

    # -- metering ---------------------------------------------------------------------------------

    def enable_metering(self, vm: VM) -> None:
        if vm.metering is None:
            vm.metering = Metering(last=time.monotonic())

    def measure(self, vm: VM) -> dict[str, Any]:
        """``Measure-VM``: averages over the metering duration, totals in MB (as the report gives them)."""
        from virtdrivers_hyperv.simulator.model import PSFault

        meter: Metering | None = vm.metering
        if meter is None:
            # ASSUMPTION: the text and category Measure-VM reports without metering enabled.
            raise PSFault(
                "Measure-VM",
                f"Resource metering is not enabled for virtual machine '{vm.name}'.",
                "InvalidOperation",
                "InvalidOperation,Microsoft.HyperV.PowerShell.Commands.MeasureVM",
                vm.name,
            )
        secs = meter.seconds
        return {
            "Mhz": int(meter.cpu_mhz_seconds / secs) if secs else 0,
            "Clock": self.clock_mhz,
            "Secs": secs,
            "Ram": int(meter.memory_mb_seconds / secs) if secs else 0,
            "Read": int(meter.read_mb),
            "Written": int(meter.written_mb),
            "In": int(meter.rx_mb),
            "Out": int(meter.tx_mb),
        }

    # -- differencing chains -----------------------------------------------------------------------

    def children(self, vhd: Vhd) -> list[Vhd]:
        return [v for v in self.model.vhds.values() if v.parent and v.parent.lower() == vhd.path.lower()]

    def refuse_parent_write(self, vhd: Vhd, cmdlet: str) -> None:
        """A parent of differencing disks is never opened for writing while children exist.

        ASSUMPTION: stricter than Hyper-V, which does not track a parent's children: there a write to
        the parent silently corrupts them. The simulator fails loudly instead, so a driver bug shows.
        """
        from virtdrivers_hyperv.simulator.model import PSFault

        kids = self.children(vhd)
        if kids:
            raise PSFault(
                cmdlet,
                f"The file '{vhd.path}' is the parent of {len(kids)} differencing disk(s) and must not be modified.",
                "ResourceBusy",
                f"InvalidOperation,Microsoft.HyperV.PowerShell.Commands.{cmdlet.replace('-', '')}",
                vhd.path,
            )

    def refuse_parent_removal(self, vhd: Vhd) -> None:
        """A parent whose child is attached to a running VM is held open by that VM's worker process."""
        from virtdrivers_hyperv.simulator.model import RUNNING, PSFault

        running = {p.lower() for v in self.model.vms.values() if v.state == RUNNING for p in v.drives}
        if any(k.path.lower() in running for k in self.children(vhd)):
            raise PSFault(
                "Remove-Item",
                f"Cannot remove item {vhd.path}: The process cannot access the file '{vhd.path}' because it is "
                "being used by another process.",
                "WriteError",
                "RemoveFileSystemItemIOError,Microsoft.PowerShell.Commands.RemoveItemCommand",
                vhd.path,
                "IOException",
            )

    def holders(self) -> dict[str, str]:
        """Disk path (lower case) -> the node whose Running or Paused VM holds it open."""
        from virtdrivers_hyperv.simulator.model import PAUSED, RUNNING

        return {
            p.lower(): vm.host.upper()
            for vm in self.model.vms.values()
            if vm.state in (RUNNING, PAUSED)
            for p in vm.drives
        }

    def refuse_remote_read(self, path: str, host: str, holders: dict[str, str] | None = None) -> None:
        """Get-VHD's documentation: on shared storage, a VHD in use by a VM can be read only from the host
        using it; any other host gets an "in use" error. ASSUMPTION: in use = attached to a Running or Paused
        VM (its worker process holds the file), with this text and category. ``holders`` (from
        :meth:`holders`) saves recomputing them for many disks."""
        from virtdrivers_hyperv.simulator.model import PSFault

        holder = (holders if holders is not None else self.holders()).get(path.replace("/", "\\").lower())
        if holder is not None and holder != host.upper():
            raise PSFault(
                "Get-VHD",
                f"Getting the mounted storage instance for the path '{path}' failed. The process cannot access "
                "the file because it is being used by another process.",
                "ResourceBusy",
                "InvalidOperation,Microsoft.Vhd.PowerShell.Cmdlets.GetVHD",
                path,
            )

    # -- the seed's volume -------------------------------------------------------------------------

    def carrier(self, vm: VM, label: str) -> dict[str, bytes] | None:
        """The files on the first attached disk whose volume has ``label`` (case-insensitive), as a guest sees them."""
        for path in vm.drives:
            vhd = self.model.vhds.get(path.lower())
            volume = vhd.volume if vhd is not None else None
            if volume and str(volume.get("label", "")).lower() == label.lower():
                files: dict[str, bytes] = volume.get("files", {})
                return dict(files)
        return None
