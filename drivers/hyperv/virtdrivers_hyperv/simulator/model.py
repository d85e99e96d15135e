"""A small Hyper-V failover cluster in memory: nodes, VMs, VHDX files, checkpoints, cluster roles.

Methods are named after the cmdlets they stand for and raise :class:`PSFault` with
the category and text Windows would print. Where real behaviour could not be
confirmed here (no Windows host is reachable), the assumption is written next to
the code as ``ASSUMPTION:``.
"""

from __future__ import annotations

import copy
import datetime
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["VM", "ClusterGroup", "Model", "Node", "PSFault", "PipelineStopped", "Snapshot", "Vhd"]

MIB = 1024 * 1024
GIB = 1024 * MIB
TIB = 1024 * GIB

# VMState
RUNNING, OFF, SAVED, PAUSED = 2, 3, 6, 9
STATE_NAMES = {RUNNING: "Running", OFF: "Off", SAVED: "Saved", PAUSED: "Paused"}
# VhdType, VhdFormat
FIXED, DYNAMIC, DIFFERENCING = 2, 3, 4
VHDX = 3
# ClusterGroupState
ONLINE, OFFLINE = 0, 1
# ClusterNodeState
UP, DOWN = 0, 1

VHDX_MAX = 64 * TIB
#: Longest a blocking cmdlet waits in the simulator before giving up by itself (a day).
_FOREVER = 86400.0


class PipelineStopped(BaseException):  # named after PowerShell's PipelineStoppedException
    """The client signalled terminate: powershell.exe dies where it is, no catch block runs."""


class PSFault(Exception):
    """A PowerShell error record: what the cmdlet prints and how it is categorised."""

    def __init__(
        self,
        cmdlet: str,
        message: str,
        category: str,
        error_id: str,
        target: str = "",
        exception: str = "VirtualizationException",
    ) -> None:
        super().__init__(message)
        self.cmdlet = cmdlet
        self.message = message
        self.category = category
        self.error_id = error_id
        self.target = target
        self.exception = exception


@dataclass
class Node:
    name: str
    cpus: int = 32
    memory: int = 128 * GIB
    state: int = UP
    os_version: str = "10.0.20348"


@dataclass
class Vhd:
    path: str
    size: int
    type: int
    host: str
    parent: str | None = None
    """A differencing disk's parent (``New-VHD -ParentPath``); see :mod:`.workloads` for the chain rules."""
    used: int = 0
    """Bytes the guest wrote into a dynamic or differencing disk (it grows by that much)."""
    mtime: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))
    volume: dict[str, Any] | None = None
    """A volume made on the mounted disk (the NoCloud seed): file system, label, files."""
    mounted: bool = False

    @property
    def file_size(self) -> int:
        # ASSUMPTION: an empty dynamic VHDX occupies 4 MiB; a fixed one its full size.
        return self.size if self.type == FIXED else 4 * MIB + self.used


@dataclass
class Snapshot:
    id: str
    name: str
    created: datetime.datetime
    state: int
    image: dict[str, Any]


@dataclass
class VM:
    id: str
    name: str
    host: str
    memory: int
    cpus: int = 1
    state: int = OFF
    notes: str = ""
    drives: list[str] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    config: str = ""
    """Path of the .vmcx configuration file (on shared storage, so another node can register it)."""
    checkpoint_type: int = 3  # Production
    guest_shutdown: bool = True
    """Whether the Shutdown integration service is offered at all (without it a graceful Stop-VM fails at once)."""
    ignores_shutdown: bool = False
    """The service is there but the guest never acts on it (hung, or a firmware with no OS): a graceful
    Stop-VM waits for an Off that never comes (an ACPI-deaf guest)."""
    nics: list[Any] = field(default_factory=list)
    """Network adapters (:class:`.workloads.Adapter`), in the order they were added."""
    metering: Any = None
    """Resource metering counters (:class:`.workloads.Metering`) once Enable-VMResourceMetering ran."""
    running_since: float | None = None
    """Monotonic time the guest last booted: KVP addresses appear a boot's time after it."""

    def image(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "memory": self.memory, "drives": list(self.drives), "notes": self.notes}


@dataclass
class ClusterGroup:
    name: str
    vm_id: str
    owner: str
    priority: int = 2000


#: VMs that exist before anyone connects: pets made outside virtdrivers, to adopt.
_DEFAULT_VMS: list[dict[str, Any]] = [
    {"name": "pet-web-1", "memory_mb": 2048, "cpus": 2, "state": RUNNING, "notes": "web front end, owned by ops"},
    {"name": "pet-db-1", "memory_mb": 4096, "cpus": 4, "state": OFF, "host": "HV-NODE2", "disks_gib": [40, 100]},
]


def _key(path: str) -> str:
    """Windows paths compare case-insensitively and with either slash."""
    return path.replace("/", "\\").lower()


class Model:
    """One failover cluster. Every public method runs under the model lock."""

    def __init__(self, inventory: dict[str, Any] | None = None) -> None:
        inv = inventory or {}
        self.lock = threading.RLock()
        self.cluster = str(inv.get("cluster", "HVCLUSTER"))
        self.clustered = bool(inv.get("clustered", True))
        # Three nodes: a move to a named node is then a choice, not the only other node there is.
        nodes = inv.get("nodes") or [{"name": "HV-NODE1"}, {"name": "HV-NODE2"}, {"name": "HV-NODE3"}]
        self.nodes: dict[str, Node] = {}
        for n in nodes:
            node = Node(**n)
            self.nodes[node.name.upper()] = node
        self.local = str(inv.get("local", next(iter(self.nodes.values())).name))
        self.volume_path = str(inv.get("volume", "C:\\ClusterStorage\\Volume1"))
        self.volume_size = int(inv.get("volume_size", 4 * TIB))
        self.migration_seconds = float(inv.get("migration_seconds", 0.0))
        self.create_seconds = float(inv.get("create_seconds", 0.0))
        #: One-shot injected failures by cmdlet name (test knob): the next call of that cmdlet fails.
        self.faults: dict[str, int] = {}
        #: One-shot injected crashes by cmdlet name (test knob): powershell.exe dies at that cmdlet.
        self.crashes: dict[str, int] = {}
        #: Per command thread: set when the client signals terminate.
        self.cancel = threading.local()
        self.vms: dict[str, VM] = {}
        self.vhds: dict[str, Vhd] = {}
        #: Folders made with New-Item, and plain files (Set-Content), by key: path as written, text.
        self.dirs: dict[str, str] = {}
        self.files: dict[str, tuple[str, str]] = {}
        self.groups: dict[str, ClusterGroup] = {}
        from virtdrivers_hyperv.simulator.workloads import Workloads  # switches, images, KVP, metering

        self.wl = Workloads(self, inv, defaults=inventory is None)
        for spec in inv.get("vms", _DEFAULT_VMS if inventory is None else []):
            self._seed_vm(spec)

    def _seed_vm(self, spec: dict[str, Any]) -> None:
        vm = VM(
            id=str(spec.get("id") or uuid.uuid4()),
            name=str(spec["name"]),
            host=self.node(str(spec.get("host", self.local)), "New-VM").name,
            memory=int(spec.get("memory_mb", 2048)) * MIB,
            cpus=int(spec.get("cpus", 2)),
            state=int(spec.get("state", RUNNING)),
            notes=str(spec.get("notes", "")),
            guest_shutdown=bool(spec.get("guest_shutdown", True)),
            ignores_shutdown=bool(spec.get("ignores_shutdown", False)),
        )
        vm.config = self.config_path(vm.id)
        for switch in spec.get("nics", []):
            self.wl.add_adapter(vm, str(switch), None)
        for i, size in enumerate(spec.get("disks_gib", [40])):
            path = f"{self.volume_path}\\{vm.name}\\disk{i}.vhdx"
            self.vhds[_key(path)] = Vhd(path, int(size) * GIB, DYNAMIC, vm.host)
            vm.drives.append(path)
        self.vms[vm.id] = vm

    # -- lookups ---------------------------------------------------------------------------

    def node(self, name: str, cmdlet: str) -> Node:
        node = self.nodes.get(str(name).upper())
        if node is None:
            raise PSFault(
                cmdlet,
                f"The operation on computer '{name}' failed: The WinRM client cannot process the request. "
                "The computer name could not be resolved.",
                "ObjectNotFound",
                f"ObjectNotFound,Microsoft.HyperV.PowerShell.Commands.{cmdlet.replace('-', '')}",
                str(name),
            )
        if node.state != UP:
            raise PSFault(
                cmdlet,
                f"The operation on computer '{name}' failed: The RPC server is unavailable.",
                "ResourceUnavailable",
                f"Unspecified,Microsoft.HyperV.PowerShell.Commands.{cmdlet.replace('-', '')}",
                str(name),
            )
        return node

    def up_nodes(self) -> list[str]:
        if not self.clustered:
            return [self.local]
        return [n.name for n in self.nodes.values() if n.state == UP]

    def vm(self, vm_id: str) -> VM | None:
        return self.vms.get(str(vm_id).lower())

    def group_of(self, vm: VM) -> ClusterGroup | None:
        for g in self.groups.values():
            if g.vm_id == vm.id:
                return g
        return None

    def _state_error(self, cmdlet: str, vm: VM) -> PSFault:
        return PSFault(
            cmdlet,
            f"'{vm.name}' failed to change state. The operation cannot be performed while the object is in its "
            "current state.",
            "InvalidOperation",
            f"InvalidState,Microsoft.HyperV.PowerShell.Commands.{cmdlet.replace('-', '')}",
            vm.name,
        )

    # -- injected faults (test knobs) ------------------------------------------------------------

    #: Cmdlets whose next call the fault knob can make fail.
    FAULTABLE = ("New-VHD", "Add-VMHardDiskDrive", "Set-VMProcessor", "Set-VMMemory", "Start-VM")

    def arm_fault(self, cmdlet: str) -> None:
        """Make the next call of ``cmdlet`` fail as a storage outage would (``POST /_sim/faults/<cmdlet>``)."""
        if cmdlet not in self.FAULTABLE:
            raise KeyError(cmdlet)
        self.faults[cmdlet] = self.faults.get(cmdlet, 0) + 1

    #: Cmdlets at whose next call the crash knob can make powershell.exe die.
    CRASHABLE = ("New-VM", *FAULTABLE)

    def arm_crash(self, cmdlet: str) -> None:
        """Make powershell.exe die at the next call of ``cmdlet``: no ``catch`` block runs after it.

        This is what a host-side crash (the WinRM plugin host or VMMS restarting, the node
        rebooting) does to a script in flight: what it made so far stays, nothing rolls back.
        The command ends as a stopped pipeline does (exit code 1).
        """
        if cmdlet not in self.CRASHABLE:
            raise KeyError(cmdlet)
        self.crashes[cmdlet] = self.crashes.get(cmdlet, 0) + 1

    def _injected(self, cmdlet: str, target: str) -> None:
        if self.crashes.get(cmdlet):
            self.crashes[cmdlet] -= 1
            raise PipelineStopped()
        if not self.faults.get(cmdlet):
            return
        self.faults[cmdlet] -= 1
        # ASSUMPTION: a Cluster Shared Volume that goes into redirected or paused I/O under a
        # cmdlet surfaces as a VirtualizationException with this text and category NotSpecified.
        raise PSFault(
            cmdlet,
            f"The operation failed: the Virtual Machine Management Service could not write to the Cluster "
            f"Shared Volume for '{target}'. The device is not ready. (0x80070015)",
            "NotSpecified",
            f"Unspecified,Microsoft.HyperV.PowerShell.Commands.{cmdlet.replace('-', '')}",
            target,
        )

    # -- VMs --------------------------------------------------------------------------------

    def new_vm(self, name: str, host: str, memory: int) -> VM:
        self.node(host, "New-VM")
        self._injected("New-VM", name)
        if memory % (2 * MIB) or memory < 32 * MIB:
            raise PSFault(
                "New-VM",
                f"Failed to modify device 'Memory'. Invalid startup memory amount assigned for '{name}'. The amount "
                "of memory assigned must be a multiple of 2 MB and at least 32 MB.",
                "InvalidArgument",
                "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.NewVM",
                name,
            )
        # ASSUMPTION: Hyper-V itself accepts duplicate VM names (it does on real hosts); the
        # driver's script enforces uniqueness before calling New-VM.
        vm = VM(id=str(uuid.uuid4()), name=name, host=self.node(host, "New-VM").name, memory=memory)
        vm.config = self.config_path(vm.id)
        self.wl.add_adapter(vm, None, None)  # New-VM gives a VM one network adapter, connected to nothing
        self.vms[vm.id] = vm
        return vm

    @property
    def vm_path(self) -> str:
        """Every host's VirtualMachinePath: on the CSV. ASSUMPTION: cluster admins set it so."""
        return f"{self.volume_path}\\Hyper-V"

    def config_path(self, vm_id: str) -> str:
        return f"{self.vm_path}\\Virtual Machines\\{vm_id.upper()}.vmcx"

    def config_exists(self, path: str) -> bool:
        return any(_key(v.config) == _key(path) for v in self.vms.values())

    def import_vm(self, path: str, destination: str) -> VM:
        """Import-VM -Register: the VM keeps its id, configuration and disks where they are."""
        node = self.node(destination, "Import-VM")
        for vm in self.vms.values():
            if _key(vm.config) == _key(path):
                if vm.host in self.up_nodes():
                    raise PSFault(
                        "Import-VM",
                        "Failed to import a virtual machine. A virtual machine with the same identifier already "
                        "exists.",
                        "ResourceExists",
                        "OperationFailed,Microsoft.HyperV.PowerShell.Commands.ImportVM",
                        path,
                    )
                # ASSUMPTION: a VM whose host died imports in the Off state (its saved memory is gone).
                vm.host, vm.state = node.name, OFF
                return vm
        raise PSFault(
            "Import-VM",
            f"Failed to import a virtual machine. The file '{path}' was not found.",
            "ObjectNotFound",
            "ObjectNotFound,Microsoft.HyperV.PowerShell.Commands.ImportVM",
            path,
        )

    def fail_node(self, name: str) -> None:
        """The node dies: the cluster restarts its clustered roles on another node that is up."""
        node = self.nodes[name.upper()]
        node.state = DOWN
        others = [n for n in self.up_nodes() if n != node.name]
        for group in self.groups.values():
            vm = self.vms[group.vm_id]
            if group.owner == node.name and others:
                group.owner = vm.host = others[0]
                if vm.state in (PAUSED, SAVED):
                    vm.state = RUNNING if vm.state == PAUSED else OFF

    def recover_node(self, name: str) -> None:
        self.nodes[name.upper()].state = UP

    def set_processor(self, vm: VM, count: int) -> None:
        node = self.nodes[vm.host.upper()]
        if vm.state != OFF:
            raise PSFault(
                "Set-VMProcessor",
                f"Failed to modify device 'Processor'. The virtual machine '{vm.name}' must be turned off to change "
                "the number of virtual processors.",
                "InvalidOperation",
                "InvalidState,Microsoft.HyperV.PowerShell.Commands.SetVMProcessor",
                vm.name,
            )
        if not 1 <= count <= min(node.cpus, 240):
            raise PSFault(
                "Set-VMProcessor",
                f"The virtual machine '{vm.name}' cannot have {count} virtual processors: the host has "
                f"{node.cpus} logical processors.",
                "InvalidArgument",
                "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.SetVMProcessor",
                vm.name,
            )
        self._injected("Set-VMProcessor", vm.name)
        vm.cpus = count

    def set_memory(self, vm: VM, startup: int) -> None:
        self._injected("Set-VMMemory", vm.name)
        if startup % (2 * MIB) or startup < 32 * MIB:
            raise PSFault(
                "Set-VMMemory",
                "Invalid startup memory amount. The amount of memory assigned must be a multiple of 2 MB.",
                "InvalidArgument",
                "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.SetVMMemory",
                vm.name,
            )
        if vm.state in (RUNNING, PAUSED) and startup > vm.memory:
            self._check_memory(vm, startup - vm.memory, "Set-VMMemory")
        # ASSUMPTION: static memory can be changed at runtime (Windows Server 2016 and later).
        vm.memory = startup

    def _check_memory(self, vm: VM, extra: int, cmdlet: str) -> None:
        node = self.nodes[vm.host.upper()]
        used = sum(v.memory for v in self.vms.values() if v.host == vm.host and v.state in (RUNNING, PAUSED))
        if used + extra > node.memory:
            raise PSFault(
                cmdlet,
                f"'{vm.name}' failed to start. Not enough memory in the system to start the virtual machine {vm.name}.",
                "ResourceUnavailable",
                f"OutOfMemory,Microsoft.HyperV.PowerShell.Commands.{cmdlet.replace('-', '')}",
                vm.name,
            )

    def start_vm(self, vm: VM) -> None:
        if vm.state not in (OFF, SAVED):
            raise self._state_error("Start-VM", vm)
        self._injected("Start-VM", vm.name)
        self._check_memory(vm, vm.memory, "Start-VM")
        vm.state = RUNNING

    def stop_vm(self, vm: VM, *, turn_off: bool) -> None:
        if turn_off:
            if vm.state in (RUNNING, PAUSED):
                vm.state = OFF
            elif vm.state == SAVED:
                raise self._state_error("Stop-VM", vm)
            return
        if vm.state == OFF:
            return
        if vm.state != RUNNING:
            raise self._state_error("Stop-VM", vm)
        if not vm.guest_shutdown:
            raise PSFault(
                "Stop-VM",
                f"The virtual machine '{vm.name}' could not be shut down: the Shutdown integration service is not "
                "available.",
                "NotEnabled",
                "Unspecified,Microsoft.HyperV.PowerShell.Commands.StopVM",
                vm.name,
            )
        if vm.ignores_shutdown:
            # ASSUMPTION: a synchronous graceful Stop-VM waits for the guest as long as it takes;
            # only the client giving up (Signal terminate) ends it. Scripts use -AsJob to bound it.
            self.work(_FOREVER)
        vm.state = OFF

    def shutdown_job(self, vm: VM, timeout: float) -> bool:
        """``Stop-VM -AsJob`` then ``Wait-Job -Timeout``: whether the guest shut down within ``timeout``.

        A guest that ignores the request keeps the job running for the whole timeout (the
        caller waits it out, outside the model lock); then ``Stop-Job`` abandons it and the VM
        is still Running. A guest with no Shutdown service fails the job at once.
        """
        if vm.state != RUNNING:
            raise self._state_error("Stop-VM", vm)
        if not vm.guest_shutdown:
            return False  # the job failed; Wait-Job returns it, Running unchanged
        if vm.ignores_shutdown:
            self.work(timeout)
            return False
        vm.state = OFF
        return True

    def suspend_vm(self, vm: VM) -> None:
        if vm.state != RUNNING:
            raise self._state_error("Suspend-VM", vm)
        vm.state = PAUSED

    def resume_vm(self, vm: VM) -> None:
        if vm.state != PAUSED:
            raise self._state_error("Resume-VM", vm)
        vm.state = RUNNING

    def save_vm(self, vm: VM) -> None:
        if vm.state not in (RUNNING, PAUSED):
            raise self._state_error("Save-VM", vm)
        vm.state = SAVED

    def remove_saved_state(self, vm: VM) -> None:
        if vm.state != SAVED:
            raise self._state_error("Remove-VMSavedState", vm)
        vm.state = OFF

    def restart_vm(self, vm: VM) -> None:
        if vm.state not in (RUNNING, PAUSED):
            raise self._state_error("Restart-VM", vm)
        vm.state = RUNNING

    def remove_vm(self, vm: VM) -> None:
        if vm.state != OFF:
            raise self._state_error("Remove-VM", vm)
        if self.group_of(vm) is not None:
            raise PSFault(
                "Remove-VM",
                f"The virtual machine '{vm.name}' is clustered. Remove it from the cluster first.",
                "InvalidOperation",
                "InvalidOperation,Microsoft.HyperV.PowerShell.Commands.RemoveVM",
                vm.name,
            )
        # Like Hyper-V, Remove-VM leaves the virtual hard disk files behind.
        del self.vms[vm.id]

    # -- storage ------------------------------------------------------------------------------

    def volume_used(self) -> int:
        return sum(v.file_size for v in self.vhds.values())

    def new_vhd(self, path: str, size: int, fixed: bool, host: str) -> Vhd:
        self.node(host, "New-VHD")
        self._injected("New-VHD", path)
        if not _key(path).endswith(".vhdx") and not _key(path).endswith(".vhd"):
            raise PSFault(
                "New-VHD",
                f"Failed to create the virtual hard disk. The file '{path}' has an invalid extension.",
                "InvalidArgument",
                "InvalidParameter,Microsoft.Vhd.PowerShell.Cmdlets.NewVhd",
                path,
            )
        if _key(path) in self.vhds:
            raise PSFault(
                "New-VHD",
                f"Failed to create the virtual hard disk. The system failed to create '{path}': The file exists.",
                "ResourceExists",
                "InvalidParameter,Microsoft.Vhd.PowerShell.Cmdlets.NewVhd",
                path,
            )
        if not 3 * MIB <= size <= VHDX_MAX:
            raise PSFault(
                "New-VHD",
                f"Failed to create the virtual hard disk. The size of '{path}' must be between 3 MB and 64 TB.",
                "InvalidArgument",
                "InvalidParameter,Microsoft.Vhd.PowerShell.Cmdlets.NewVhd",
                path,
            )
        vhd = Vhd(path, size, FIXED if fixed else DYNAMIC, host)
        if self.volume_used() + vhd.file_size > self.volume_size:
            raise PSFault(
                "New-VHD",
                f"Failed to create the virtual hard disk. The system failed to create '{path}': There is not "
                "enough space on the disk. (0x80070070).",
                "LimitsExceeded",
                "InvalidParameter,Microsoft.Vhd.PowerShell.Cmdlets.NewVhd",
                path,
            )
        self.vhds[_key(path)] = vhd
        return vhd

    def get_vhd(self, path: str, host: str | None = None, holders: dict[str, str] | None = None) -> Vhd:
        """``Get-VHD -Path``, run on ``host`` when the script names one (see ``Workloads.refuse_remote_read``)."""
        key = _key(path)
        if host is not None:
            self.wl.refuse_remote_read(path, host, holders)
        vhd = self.vhds.get(key)
        if vhd is None:
            raise PSFault(
                "Get-VHD",
                f"Getting the mounted storage instance for the path '{path}' failed. The system cannot find the "
                "file specified.",
                "ObjectNotFound",
                "ObjectNotFound,Microsoft.Vhd.PowerShell.Cmdlets.GetVHD",
                path,
            )
        return vhd

    def add_drive(self, vm: VM, path: str) -> None:
        self.wl.refuse_parent_write(self.get_vhd(path), "Add-VMHardDiskDrive")
        self._injected("Add-VMHardDiskDrive", vm.name)
        if any(_key(p) == _key(path) for v in self.vms.values() for p in v.drives):
            raise PSFault(
                "Add-VMHardDiskDrive",
                f"Failed to add device 'Virtual Hard Disk'. The file '{path}' is in use by another virtual machine.",
                "ResourceBusy",
                "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.AddVMHardDiskDrive",
                path,
            )
        if len(vm.drives) >= 64:
            raise PSFault(
                "Add-VMHardDiskDrive",
                "No free location on the SCSI controller.",
                "LimitsExceeded",
                "OutOfRange,Microsoft.HyperV.PowerShell.Commands.AddVMHardDiskDrive",
                vm.name,
            )
        # Generation 2: SCSI, hot-add allowed while running.
        vm.drives.append(path)

    def remove_drive(self, vm: VM, path: str) -> None:
        vm.drives = [p for p in vm.drives if _key(p) != _key(path)]

    def new_directory(self, path: str) -> None:
        """``New-Item -ItemType Directory -Force``: made if missing, no error if there."""
        self.dirs.setdefault(_key(path).rstrip("\\"), path.rstrip("\\"))

    def set_content(self, path: str, text: str) -> None:
        """``Set-Content``: the folder must exist (explicitly, or as the parent of a file in it)."""
        parent = path.replace("/", "\\").rsplit("\\", 1)[0]
        if not self.test_path(parent):
            raise PSFault(
                "Set-Content",
                f"Could not find a part of the path '{path}'.",
                "ObjectNotFound",
                "GetContentWriterDirectoryNotFoundError,Microsoft.PowerShell.Commands.SetContentCommand",
                path,
                "DirectoryNotFoundException",
            )
        self.files[_key(path)] = (path, text)

    def _entries(self) -> list[str]:
        return [v.path for v in self.vhds.values()] + [p for p, _ in self.files.values()]

    def test_path(self, path: str) -> bool:
        """``Test-Path -LiteralPath``: a file, a folder made, or a folder some file lives in."""
        key = _key(path).rstrip("\\")
        if key in self.vhds or key in self.files or key in self.dirs:
            return True
        return any(_key(p).startswith(key + "\\") for p in self._entries())

    def child_dirs(self, root: str) -> list[str]:
        """``Get-ChildItem -LiteralPath root -Directory``: full paths of the folders right under ``root``."""
        prefix = _key(root).rstrip("\\") + "\\"
        found: dict[str, str] = {}
        for path in [*self.dirs.values(), *(p.rsplit("\\", 1)[0] for p in self._entries())]:
            if _key(path).startswith(prefix):
                name = path.replace("/", "\\")[len(prefix) :].split("\\", 1)[0]
                found.setdefault(name.lower(), root.rstrip("\\") + "\\" + name)
        return sorted(found.values())

    def child_files(self, folder: str, suffix: str) -> list[str]:
        """``Get-ChildItem -LiteralPath folder -File -Filter *<suffix>``: full paths of matching files."""
        prefix = _key(folder).rstrip("\\") + "\\"
        return sorted(
            p
            for p in self._entries()
            if _key(p).startswith(prefix) and "\\" not in _key(p)[len(prefix) :] and _key(p).endswith(suffix)
        )

    def remove_item(self, path: str, *, recurse: bool = False) -> None:
        key = _key(path)
        if key in self.files:
            del self.files[key]
            return
        if key in self.vhds:
            self.wl.refuse_parent_removal(self.vhds[key])
            in_use = [v for v in self.vms.values() if any(_key(p) == key for p in v.drives)]
            if in_use:
                raise PSFault(
                    "Remove-Item",
                    f"Cannot remove item {path}: The process cannot access the file '{path}' because it is being "
                    "used by another process.",
                    "WriteError",
                    "RemoveFileSystemItemIOError,Microsoft.PowerShell.Commands.RemoveItemCommand",
                    path,
                    "IOException",
                )
            del self.vhds[key]
            return
        if recurse:
            key = key.rstrip("\\")
            inside = [p for p in self._entries() if _key(p).startswith(key + "\\")]
            busy = {_key(p) for v in self.vms.values() for p in v.drives}
            if any(_key(p) in busy for p in inside):
                raise PSFault(
                    "Remove-Item",
                    f"Cannot remove item {path}: The process cannot access the file because it is being used by "
                    "another process.",
                    "WriteError",
                    "RemoveFileSystemItemIOError,Microsoft.PowerShell.Commands.RemoveItemCommand",
                    path,
                    "IOException",
                )
            for k in [k for k in self.vhds if k.startswith(key + "\\")]:
                del self.vhds[k]
            for k in [k for k in self.files if k.startswith(key + "\\")]:
                del self.files[k]
            for k in [k for k in self.dirs if k == key or k.startswith(key + "\\")]:
                del self.dirs[k]

    # -- checkpoints -----------------------------------------------------------------------------

    def checkpoint(self, vm: VM, name: str, standard: bool) -> Snapshot:
        # ASSUMPTION: a Production checkpoint never holds memory (the guest's VSS writer makes it
        # consistent); a Standard one of a running, paused or saved VM does, and its State is the
        # VM's state at capture.
        state = vm.state if standard and vm.state in (RUNNING, PAUSED, SAVED) else OFF
        snap = Snapshot(str(uuid.uuid4()), name, datetime.datetime.now(datetime.UTC), state, vm.image())
        vm.snapshots.append(snap)
        return snap

    def restore_snapshot(self, vm: VM, snap: Snapshot) -> None:
        if vm.state not in (OFF, SAVED):
            raise self._state_error("Restore-VMSnapshot", vm)
        vm.cpus, vm.memory = snap.image["cpus"], snap.image["memory"]
        vm.drives, vm.notes = list(snap.image["drives"]), snap.image["notes"]
        # Applying a checkpoint with memory leaves the VM Saved (Start-VM resumes it); without, Off.
        vm.state = SAVED if snap.state in (RUNNING, PAUSED, SAVED) else OFF

    def remove_snapshot(self, vm: VM, snap: Snapshot) -> None:
        vm.snapshots = [s for s in vm.snapshots if s.id != snap.id]

    # -- migration and cluster ----------------------------------------------------------------------

    def work(self, seconds: float) -> None:
        """Simulated work time, outside the lock so other requests (and Receive timeouts) proceed."""
        if seconds <= 0:
            return
        cancelled: threading.Event | None = getattr(self.cancel, "event", None)
        self.lock.release()
        try:
            if cancelled is not None:
                cancelled.wait(seconds)
            else:
                time.sleep(seconds)
        finally:
            self.lock.acquire()
        if cancelled is not None and cancelled.is_set():
            raise PipelineStopped()

    def _travel(self) -> None:
        self.work(self.migration_seconds)

    def move_vm(self, vm: VM, destination: str) -> None:
        node = self.node(destination, "Move-VM")
        if self.group_of(vm) is not None:
            raise PSFault(
                "Move-VM",
                f"The virtual machine '{vm.name}' is clustered; move it with Move-ClusterVirtualMachineRole.",
                "InvalidOperation",
                "InvalidOperation,Microsoft.HyperV.PowerShell.Commands.MoveVM",
                vm.name,
            )
        if vm.state in (RUNNING, PAUSED):
            dest_used = sum(v.memory for v in self.vms.values() if v.host == node.name and v.state in (RUNNING, PAUSED))
            if dest_used + vm.memory > node.memory:
                raise PSFault(
                    "Move-VM",
                    f"Virtual machine migration operation for '{vm.name}' failed at migration destination "
                    f"'{node.name}': not enough memory.",
                    "ResourceUnavailable",
                    "OutOfMemory,Microsoft.HyperV.PowerShell.Commands.MoveVM",
                    vm.name,
                )
        self._travel()
        vm.host = node.name

    def cluster_node(self, name: str) -> Node:
        node = self.nodes.get(str(name).upper())
        if node is None or not self.clustered:
            raise PSFault(
                "Get-ClusterNode",
                f"The cluster node '{name}' was not found in the cluster configuration.",
                "ObjectNotFound",
                "Get-ClusterNode,Microsoft.FailoverClusters.PowerShell.GetNodeCommand",
                str(name),
                "ClusterCmdletException",
            )
        return node

    def add_role(self, vm: VM, name: str) -> ClusterGroup:
        if not self.clustered:
            raise PSFault(
                "Add-ClusterVirtualMachineRole",
                "The term 'Add-ClusterVirtualMachineRole' is not recognized as the name of a cmdlet.",
                "ObjectNotFound",
                "CommandNotFoundException",
                "Add-ClusterVirtualMachineRole",
                "CommandNotFoundException",
            )
        if self.group_of(vm) is not None or name.lower() in self.groups:
            raise PSFault(
                "Add-ClusterVirtualMachineRole",
                f"The virtual machine '{vm.name}' is already a clustered role.",
                "ResourceExists",
                "Add-ClusterVirtualMachineRole,Microsoft.FailoverClusters.PowerShell.AddClusterVirtualMachineRoleCommand",
                vm.name,
                "ClusterCmdletException",
            )
        group = ClusterGroup(name=name, vm_id=vm.id, owner=vm.host)
        self.groups[name.lower()] = group
        return group

    def group(self, name: str) -> ClusterGroup | None:
        return self.groups.get(str(name).lower())

    def remove_group(self, group: ClusterGroup) -> None:
        self.groups.pop(group.name.lower(), None)

    def move_group(self, group: ClusterGroup, destination: str) -> None:
        node = self.cluster_node(destination)
        if node.state != UP:
            raise PSFault(
                "Move-ClusterGroup",
                f"The cluster node '{destination}' is not up.",
                "InvalidOperation",
                "Move-ClusterGroup,Microsoft.FailoverClusters.PowerShell.MoveClusterGroupCommand",
                destination,
                "ClusterCmdletException",
            )
        vm = self.vms[group.vm_id]
        self._travel()
        vm.host = group.owner = node.name

    def group_state(self, group: ClusterGroup) -> int:
        vm = self.vms.get(group.vm_id)
        return ONLINE if vm is not None and vm.state in (RUNNING, PAUSED) else OFFLINE

    # -- inspection (for tests and the /_sim/state page) ------------------------------------------

    def snapshot_state(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(
                {
                    "vms": {v.id: {"name": v.name, "host": v.host, "state": v.state} for v in self.vms.values()},
                    "vhds": sorted(v.path for v in self.vhds.values()),
                    "dirs": sorted(self.dirs.values()),
                    "files": sorted(p for p, _ in self.files.values()),
                    "groups": {g.name: {"vm": g.vm_id, "owner": g.owner} for g in self.groups.values()},
                }
            )
