"""Twins of the workload scripts (images, switches, NICs, the NoCloud seed, KVP, metering, console).

Each makes the same cmdlet calls as its script, in the same order, against the model; see
:mod:`virtdrivers_hyperv.simulator.handlers` for how twins are found and why.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from typing import Any

from virtdrivers_hyperv import scripts
from virtdrivers_hyperv.simulator import handlers as h
from virtdrivers_hyperv.simulator.model import DIFFERENCING, VM, Model, PSFault, Vhd

__all__ = ["BY_NAME"]


def _eq(a: Any, b: Any) -> bool:
    """PowerShell's ``-eq`` on strings: case-insensitive."""
    return a is not None and b is not None and str(a).lower() == str(b).lower()


def h_images(m: Model, a: dict[str, Any]) -> Any:
    out = []
    for path in m.child_files(str(a["lib"]), ".vhdx"):
        vhd = m.get_vhd(path, host=m.local)
        out.append(
            {
                "Name": path.rsplit("\\", 1)[-1],
                "Path": vhd.path,
                "Len": vhd.file_size,
                "Time": vhd.mtime,
                "Size": vhd.size,
                "Type": vhd.type,
                "Parent": vhd.parent,
            }
        )
    return out


def h_networks(m: Model, a: dict[str, Any]) -> Any:
    return [{"Id": s.id, "Name": s.name, "Type": s.type} for s in m.wl.switches]


def _copy_item(m: Model, source: Vhd, destination: str) -> None:
    """``Copy-Item`` of a VHDX: a full, independent copy (reading the source writes nothing to it)."""
    key = destination.lower()
    if key in m.vhds:
        raise PSFault(
            "Copy-Item",
            f"The file '{destination}' already exists.",
            "WriteError",
            "CopyFileInfoItemIOError,Microsoft.PowerShell.Commands.CopyItemCommand",
            destination,
            "IOException",
        )
    copy = Vhd(destination, source.size, source.type, source.host, used=source.used)
    if m.volume_used() + copy.file_size > m.volume_size:
        raise PSFault(
            "Copy-Item",
            "There is not enough space on the disk.",
            "WriteError",
            "CopyFileInfoItemIOError,Microsoft.PowerShell.Commands.CopyItemCommand",
            destination,
            "IOException",
        )
    m.vhds[key] = copy


def _new_differencing(m: Model, path: str, parent: Vhd) -> None:
    """``New-VHD -Path -ParentPath -Differencing``: the child has its parent's size and starts empty."""
    child = m.new_vhd(path, parent.size, False, m.local)
    child.type, child.parent = DIFFERENCING, parent.path


def _write_seed(m: Model, path: str, files: list[dict[str, Any]]) -> None:
    """New-VHD, Mount-VHD, Initialize-Disk (MBR), New-Partition, Format-Volume (FAT, ``cidata``), the files."""
    vhd = m.new_vhd(path, scripts.SEED_BYTES, False, m.local)
    m.wl.refuse_parent_write(vhd, "Mount-VHD")
    if vhd.mounted or any(_eq(p, path) for v in m.vms.values() for p in v.drives):
        raise PSFault(
            "Mount-VHD",
            f"Failed to mount the virtual disk. The process cannot access the file '{path}' because it is being "
            "used by another process.",
            "ResourceBusy",
            "InvalidOperation,Microsoft.Vhd.PowerShell.Cmdlets.MountVhd",
            path,
        )
    vhd.mounted = True
    try:
        volume: dict[str, Any] = {"style": "MBR", "fs": "FAT", "label": scripts.SEED_LABEL, "files": {}}
        for f in files:
            volume["files"][str(f["n"])] = base64.b64decode(str(f["b"]))
        vhd.volume = volume
    finally:
        vhd.mounted = False  # Dismount-VHD


def h_prepare(m: Model, a: dict[str, Any]) -> Any:
    out: dict[str, Any] = {"Image": None, "Root": None, "Seed": None, "Nets": []}
    image = None
    if a.get("image"):
        found = [
            p
            for p in m.child_files(str(a["lib"]), ".vhdx")
            if _eq(p.rsplit("\\", 1)[-1], a["image"]) or _eq(p.rsplit("\\", 1)[-1].rsplit(".", 1)[0], a["image"])
        ]
        if len(found) != 1:
            raise h._fail(f"No image named {a['image']} in the library.", "InvalidArgument", "VDNoImage")
        image = m.get_vhd(found[0])
        out["Image"] = image.path
    for k, x in enumerate(a.get("nets") or []):
        match = [s for s in m.wl.switches if _eq(s.id, x) or _eq(s.name, x)]
        if len(match) != 1:
            raise h._fail(f"No virtual switch named {x} for NIC {k}.", "InvalidArgument", "VDNoSwitch")
        out["Nets"].append(match[0].name)
    if image is None and not a.get("seed"):
        return out
    directory = str(a["dir"])
    try:
        m.new_directory(directory)
        if image is not None:
            out["Root"] = f"{directory}\\{scripts.ROOT_FILE}"
            if a.get("copy"):
                _copy_item(m, image, out["Root"])
            else:
                _new_differencing(m, out["Root"], image)
        if a.get("seed"):
            out["Seed"] = f"{directory}\\{scripts.SEED_FILE}"
            _write_seed(m, out["Seed"], list(a["seed"]))
    except PSFault:
        with contextlib.suppress(PSFault):
            m.remove_item(directory, recurse=True)
        raise
    return out


def _nic(n: Any) -> dict[str, Any]:
    return {"Id": n.id, "SwitchName": n.switch, "MacAddress": n.mac, "IPAddresses": []}


def h_nic_add(m: Model, a: dict[str, Any]) -> Any:
    vm = h._find(m, a)
    match = [s for s in m.wl.switches if _eq(s.id, a.get("net")) or _eq(s.name, a.get("net"))]
    if len(match) != 1:
        raise h._fail(f"No virtual switch named {a.get('net')}.", "InvalidArgument", "VDNoSwitch")
    return _nic(m.wl.add_adapter(vm, match[0].name, str(a["mac"])))


def h_nic_remove(m: Model, a: dict[str, Any]) -> Any:
    vm = h._find(m, a)
    found = [n for n in vm.nics if _eq(n.id, a.get("nic"))]
    if not found:
        raise h._fail(
            f"The network adapter {a.get('nic')} is not on this virtual machine.", "ObjectNotFound", "VDNicNotFound"
        )
    vm.nics.remove(found[0])
    return []


def h_addresses(m: Model, a: dict[str, Any]) -> Any:
    vm = h._find(m, a)
    return [{"MacAddress": n.mac, "IPAddresses": m.wl.addresses(vm, n), "Kvp": True} for n in vm.nics]


def h_metrics(m: Model, a: dict[str, Any]) -> Any:
    vm = h._find(m, a)
    m.wl.enable_metering(vm)
    return m.wl.measure(vm)


def h_console(m: Model, a: dict[str, Any]) -> Any:
    vm: VM = h._find(m, a)
    return {"Host": vm.host, "Port": m.wl.console_port}


BY_NAME: dict[str, Callable[[Model, dict[str, Any]], Any]] = {
    "images": h_images,
    "networks": h_networks,
    "prepare": h_prepare,
    "nic_add": h_nic_add,
    "nic_remove": h_nic_remove,
    "addresses": h_addresses,
    "metrics": h_metrics,
    "console": h_console,
}
