"""What the simulator's PowerShell does: the closed set of scripts it recognises.

The simulator does not parse PowerShell. It recognises each fixed script body the
driver sends by its SHA-256 (see :mod:`virtdrivers_hyperv.scripts`) and runs the
Python twin below, which performs the same cmdlet calls, in the same order, against
:class:`~virtdrivers_hyperv.simulator.model.Model`. A body it does not know fails as
PowerShell would fail on an unknown command. This keeps the simulator honest about
*cmdlet* behaviour (state rules, error texts, categories) while the golden tests pin
the script text itself; the twin must be kept in step with its script.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from typing import Any

from virtdrivers_hyperv import scripts
from virtdrivers_hyperv.simulator.model import (
    OFF,
    PAUSED,
    RUNNING,
    SAVED,
    STATE_NAMES,
    VHDX,
    VM,
    Model,
    PSFault,
)

__all__ = ["HANDLERS", "Handler", "depth_of", "lookup"]

Handler = Callable[[Model, dict[str, Any]], Any]


def _fail(message: str, category: str, error_id: str, target: str = "") -> PSFault:
    """What the scripts' ``Fail`` (Write-Error -ErrorId) raises."""
    return PSFault("Fail", message, category, f"{error_id},Fail", target, "WriteErrorException")


def _mine(vm: VM) -> bool:
    """Twin of the scripts' ``Test-VDMine``: Notes that are a JSON object with a ``virtdrivers`` key."""
    if not vm.notes.startswith("{"):
        return False
    try:
        doc = json.loads(vm.notes)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("virtdrivers") is not None


def _find(m: Model, a: dict[str, Any]) -> VM:
    """Twin of ``Get-VDVM $a.id``: the VM, if it is on an up node and managed (or ``$a.any``)."""
    vm_id = a.get("id")
    vm = m.vm(str(vm_id))
    if vm is None or vm.host not in m.up_nodes() or not (a.get("any") or _mine(vm)):
        raise _fail(f"Hyper-V was unable to find a virtual machine with ID {vm_id}.", "ObjectNotFound", "VDVMNotFound")
    return vm


def _info(m: Model, vms: list[VM]) -> list[dict[str, Any]]:
    out = []
    holders = m.wl.holders()
    for v in vms:
        disks = []
        for path in v.drives:
            # Get-VHD -ComputerName <the VM's node>: the one host that may read a disk its VM holds open.
            vhd = m.vhds.get(path.replace("/", "\\").lower())
            if vhd is not None:
                m.get_vhd(path, host=v.host, holders=holders)
            disks.append(
                {
                    "Path": path,
                    "Size": vhd.size if vhd else None,
                    "Type": vhd.type if vhd else None,
                    "Format": VHDX if vhd and path.lower().endswith(".vhdx") else (2 if vhd else None),
                }
            )
        out.append(
            {
                "Id": v.id,
                "Name": v.name,
                "State": v.state,
                "Cpu": v.cpus,
                "Mem": v.memory,
                "Host": v.host,
                "Notes": v.notes,
                "Clustered": m.group_of(v) is not None,
                "Disks": disks,
                "Nics": [
                    {"Id": n.id, "SwitchName": n.switch, "MacAddress": n.mac, "IPAddresses": m.wl.addresses(v, n)}
                    for n in v.nics
                ],
            }
        )
    return out


def _state_name(vm: VM) -> str:
    return STATE_NAMES.get(vm.state, str(vm.state))


def _snap(s: Any) -> dict[str, Any]:
    return {"Id": s.id, "Name": s.name, "Created": s.created, "State": s.state}


def _ha(m: Model, vm_id: str) -> dict[str, Any]:
    g = m.group(vm_id) if m.clustered else None
    if g is None:
        return {"Enabled": False}
    return {"Enabled": True, "Owner": g.owner, "State": m.group_state(g), "Priority": g.priority}


def _target(m: Model, vm: VM, node: Any) -> str:
    if node:
        n = m.cluster_node(str(node))
        if n.state != 0:
            raise _fail(f"Node {node} is not up.", "InvalidOperation", "VDNodeDown")
        if n.name == vm.host:
            raise _fail(f"The virtual machine is on {node} already.", "InvalidArgument", "VDSameNode")
        return n.name
    others = [n for n in m.up_nodes() if n != vm.host]
    if not others:
        raise _fail("No other node is up.", "InvalidOperation", "VDNoNode")
    return others[0]


def _require(vm: VM, state: int) -> None:
    if vm.state != state:
        raise _fail(
            f"The virtual machine is {_state_name(vm)}, it must be {STATE_NAMES[state]}.",
            "InvalidOperation",
            "VDInvalidState",
        )


def _vm_op(body: Callable[[Model, VM, dict[str, Any]], VM | None]) -> Handler:
    def run(m: Model, a: dict[str, Any]) -> Any:
        vm = _find(m, a)
        vm = body(m, vm, a) or vm
        return _info(m, [vm])

    return run


# -- one twin per script -------------------------------------------------------------------


def h_info(m: Model, a: dict[str, Any]) -> Any:
    node = m.nodes[m.local.upper()]
    return {
        "Host": m.local,
        "Os": node.os_version + ".0",
        "Cluster": m.cluster if m.clustered else None,
        "Ps": "5.1.20348.2849",
    }


def h_nodes(m: Model, a: dict[str, Any]) -> Any:
    if not m.clustered:
        return [{"Name": m.local, "State": 0}]
    return [{"Name": n.name, "State": n.state} for n in m.nodes.values()]


def h_aggregates(m: Model, a: dict[str, Any]) -> Any:
    if not m.clustered:
        return []
    return [{"Name": m.cluster, "Nodes": [n.name for n in m.nodes.values()]}]


def h_list(m: Model, a: dict[str, Any]) -> Any:
    up = m.up_nodes()
    return _info(m, [v for v in m.vms.values() if v.host in up])


def _test_node(m: Model, node: Any) -> None:
    """Twin of ``Test-VDNode``: a caller's node name must name a node of this cluster (up or not)."""
    known = [n.name for n in m.nodes.values()] if m.clustered else [m.local]
    if node and str(node).lower() not in {k.lower() for k in known}:
        raise _fail(f"No node named {node} in this cluster.", "ObjectNotFound", "VDNoSuchNode")


def h_host(m: Model, a: dict[str, Any]) -> Any:
    _test_node(m, a.get("node"))
    node = m.node(str(a.get("node") or m.local), "Get-VMHost")
    running = [v for v in m.vms.values() if v.host == node.name and v.state in (RUNNING, PAUSED)]
    return {
        "Name": node.name,
        "Cpu": node.cpus,
        "Mem": node.memory,
        "CpuUsed": sum(v.cpus for v in running),
        "MemUsed": sum(v.memory for v in running),
        "DiskSize": m.volume_size,
        "DiskFree": m.volume_size - m.volume_used(),
        "Ver": node.os_version,
    }


def h_create(m: Model, a: dict[str, Any]) -> Any:
    up = m.up_nodes()
    _test_node(m, a.get("node"))
    if any(v.name.lower() == str(a["name"]).lower() for v in m.vms.values() if v.host in up):
        raise _fail(f"A virtual machine named {a['name']} exists already.", "ResourceExists", "VDNameExists")
    if a.get("node"):
        host = str(a["node"])
    else:
        load = {n: sum(v.memory for v in m.vms.values() if v.host == n) for n in up}
        host = sorted(up, key=lambda n: load[n])[0]
    vm: VM | None = None
    group = None
    made: list[str] = []
    try:
        if a.get("mk"):
            m.new_directory(str(a["dir"]))
        for i, d in enumerate(a.get("disks") or []):
            path = f"{a['dir']}\\disk{i}.vhdx"
            m.new_vhd(path, int(d["size"]), bool(d.get("fixed")), host)
            made.append(path)
        vm = m.new_vm(str(a["name"]), host, int(a["mem"]))
        vm.notes = str(a.get("notes") or "")
        vm.nics.clear()  # Get-VMNetworkAdapter|Remove-VMNetworkAdapter
        for nic in a.get("nics") or []:
            m.wl.add_adapter(vm, str(nic["sw"]), str(nic["mac"]))
        for path in [*(a.get("pre") or []), *made]:
            m.add_drive(vm, str(path))
        m.set_processor(vm, int(a["cpu"]))
        m.set_memory(vm, int(a["mem"]))
        if a.get("ha"):
            group = m.add_role(vm, vm.id)
        m.work(m.create_seconds)  # a slow host, for tests of deadlines
        if a.get("start"):
            m.start_vm(vm)
    except PSFault:
        if group is not None:
            m.remove_group(group)
        if vm is not None:
            if vm.state in (RUNNING, PAUSED):
                vm.state = OFF
            m.remove_vm(vm)
        if a.get("mk"):
            m.remove_item(str(a["dir"]), recurse=True)
        raise
    return vm.id


def h_destroy(m: Model, a: dict[str, Any]) -> Any:
    _remove_vm(m, _find(m, a))
    return []


def _remove_vm(m: Model, vm: VM) -> None:
    """Twin of ``Remove-VDVM``: as destroy removes a VM (role, saved state, checkpoints, record, disk files)."""
    paths = list(vm.drives)
    group = m.group_of(vm)
    if group is not None:
        m.remove_group(group)
    if vm.state == SAVED:
        m.remove_saved_state(vm)
    elif vm.state != OFF:
        m.stop_vm(vm, turn_off=True)
    for s in list(vm.snapshots):
        m.remove_snapshot(vm, s)
    m.remove_vm(vm)
    for p in paths:
        with contextlib.suppress(PSFault):  # -ErrorAction SilentlyContinue
            m.remove_item(p)
    for folder in sorted({p.replace("/", "\\").rsplit("\\", 1)[0] for p in paths}):
        leaf = folder.rsplit("\\", 1)[-1]
        rest = [f for f in m.child_files(folder, "") if not f.lower().endswith("\\" + scripts.COMPLETE_MARKER)]
        if leaf.lower().startswith("vd-") and not rest and not m.child_dirs(folder):
            with contextlib.suppress(PSFault):
                m.remove_item(folder, recurse=True)


def _used(vms: list[VM]) -> set[str]:
    """Twin of ``Get-VDUsed``: the folders (lower case) holding a disk of any of ``vms``."""
    return {p.replace("/", "\\").rsplit("\\", 1)[0].lower() for v in vms for p in v.drives}


def _remove_dir(m: Model, folder: Any, used: set[str]) -> bool:
    """Twin of ``Remove-VDDir``: only a create's token folder no VM uses and not marked complete."""
    if not folder or not m.test_path(str(folder)):
        return False
    path = str(folder)
    leaf = path.replace("/", "\\").rstrip("\\").rsplit("\\", 1)[-1]
    if not leaf.lower().startswith(scripts.TOKEN_DIR_PREFIX) or path.lower() in used:
        return False
    if m.test_path(f"{path}\\{scripts.COMPLETE_MARKER}"):
        return False
    m.remove_item(path, recurse=True)
    return True


def _visible(m: Model) -> list[VM]:
    up = m.up_nodes()
    return [v for v in m.vms.values() if v.host in up]


def h_purge(m: Model, a: dict[str, Any]) -> Any:
    token = str(a.get("token") or "")
    vms = [v for v in _visible(m) if v.notes and token and token in v.notes]
    for vm in vms:
        _remove_vm(m, vm)
    _remove_dir(m, a.get("dir"), _used(_visible(m)))
    return [vm.id for vm in vms]


def h_complete(m: Model, a: dict[str, Any]) -> Any:
    vm = _find(m, a)
    folder = a.get("dir")
    if folder and m.test_path(str(folder)):
        m.set_content(f"{folder}\\{scripts.COMPLETE_MARKER}", str(a.get("token") or ""))
    if vm.notes == a.get("was"):
        vm.notes = str(a.get("notes") or "")
    m.wl.enable_metering(vm)
    return _info(m, [vm])


def h_leftovers(m: Model, a: dict[str, Any]) -> Any:
    vms = _visible(m)
    used = _used(vms)
    root = str(a.get("root") or "")
    dirs = []
    if root and m.test_path(root):
        for path in m.child_dirs(root):
            leaf = path.rsplit("\\", 1)[-1]
            if not leaf.lower().startswith(scripts.TOKEN_DIR_PREFIX):  # -Filter 'vd-vdc1-*'
                continue
            dirs.append(
                {
                    "Path": path,
                    "Used": path.lower() in used,
                    "Done": m.test_path(f"{path}\\{scripts.COMPLETE_MARKER}"),
                    "Files": m.child_files(path, ".vhdx"),
                }
            )
    down = [n.name for n in m.nodes.values() if n.state != 0] if m.clustered else []
    return {
        "Vms": [
            {"Id": v.id, "Name": v.name, "Host": v.host, "Notes": v.notes}
            for v in vms
            if v.notes and "vdc1-" in v.notes
        ],
        "Dirs": dirs,
        "Down": down,
    }


def h_reap(m: Model, a: dict[str, Any]) -> Any:
    gone: list[str] = []
    for x in a.get("vms") or []:
        vm = m.vm(str(x.get("id")))
        token = str(x.get("token") or "")
        if vm is not None and vm.host in m.up_nodes() and token and token in vm.notes:
            _remove_vm(m, vm)
            gone.append(vm.id)
    used = _used(_visible(m))
    for folder in a.get("dirs") or []:
        if _remove_dir(m, folder, used):
            gone.append(str(folder))
    return gone


def _start(m: Model, vm: VM, a: dict[str, Any]) -> None:
    if vm.state != RUNNING:
        m.start_vm(vm)


def _stop(m: Model, vm: VM, a: dict[str, Any]) -> None:
    if vm.state == OFF:
        return
    if vm.state == RUNNING and not a.get("force"):
        # Stop-VM -AsJob; Wait-Job -Timeout; Stop-Job when it is not done: a failed job, or a guest
        # that ignores the request for the whole timeout, leaves the VM running for the TurnOff below.
        m.shutdown_job(vm, float(a.get("timeout") or 0))
    if vm.state == SAVED:
        m.remove_saved_state(vm)
    elif vm.state != OFF:
        m.stop_vm(vm, turn_off=True)


def _reboot(m: Model, vm: VM, a: dict[str, Any]) -> None:
    if a.get("hard"):
        m.restart_vm(vm)
        return
    _require(vm, RUNNING)
    # Stop-VM -AsJob; Wait-Job -Timeout; then TurnOff whatever did not shut down, and Start-VM.
    m.shutdown_job(vm, float(a.get("timeout") or 0))
    if vm.state != OFF:
        m.stop_vm(vm, turn_off=True)
    m.start_vm(vm)


def _resume(m: Model, vm: VM, a: dict[str, Any]) -> None:
    _require(vm, SAVED)
    m.start_vm(vm)


def _resize(m: Model, vm: VM, a: dict[str, Any]) -> None:
    if a.get("cpu") is not None:
        m.set_processor(vm, int(a["cpu"]))
    if a.get("mem") is not None:
        m.set_memory(vm, int(a["mem"]))


def h_attach(m: Model, a: dict[str, Any]) -> Any:
    vm = _find(m, a)
    directory = vm.drives[0].rsplit("\\", 1)[0] if vm.drives else f"{a['root']}\\vd-{vm.id}"
    path = f"{directory}\\{a['file']}"
    m.new_vhd(path, int(a["size"]), bool(a.get("fixed")), vm.host)
    try:
        m.add_drive(vm, path)
    except PSFault:
        m.remove_item(path)
        raise
    if a.get("notes"):
        vm.notes = str(a["notes"])
    vhd = m.get_vhd(path, host=vm.host)
    return {"Path": vhd.path, "Size": vhd.size, "Type": vhd.type, "Format": VHDX}


def h_detach(m: Model, a: dict[str, Any]) -> Any:
    vm = _find(m, a)
    want = str(a.get("path", "")).lower()
    if not any(p.lower() == want for p in vm.drives):
        raise _fail(f"The disk {a.get('path')} is not attached.", "ObjectNotFound", "VDDiskNotFound")
    m.remove_drive(vm, str(a["path"]))
    if a.get("delete"):
        m.remove_item(str(a["path"]))
    return []


def h_checkpoint(m: Model, a: dict[str, Any]) -> Any:
    vm = _find(m, a)
    if any(s.name.lower() == str(a["name"]).lower() for s in vm.snapshots):
        raise _fail(f"A checkpoint named {a['name']} exists already.", "ResourceExists", "VDSnapExists")
    return _snap(m.checkpoint(vm, str(a["name"]), standard=bool(a.get("memory"))))


def h_snapshots(m: Model, a: dict[str, Any]) -> Any:
    vm = _find(m, a)
    return [_snap(s) for s in vm.snapshots]


def _snapshot_of(vm: VM, sid: Any) -> Any:
    for s in vm.snapshots:
        if s.id == str(sid).lower():
            return s
    raise _fail(f"Checkpoint {sid} not found.", "ObjectNotFound", "VDSnapNotFound")


def _revert(m: Model, vm: VM, a: dict[str, Any]) -> None:
    snap = _snapshot_of(vm, a.get("sid"))
    if vm.state not in (OFF, SAVED):
        m.stop_vm(vm, turn_off=True)
    m.restore_snapshot(vm, snap)
    if vm.state == SAVED:
        m.start_vm(vm)


def h_unsnapshot(m: Model, a: dict[str, Any]) -> Any:
    vm = _find(m, a)
    m.remove_snapshot(vm, _snapshot_of(vm, a.get("sid")))
    return []


def _move(m: Model, vm: VM, a: dict[str, Any]) -> None:
    _require(vm, RUNNING if a.get("live") else OFF)
    target = _target(m, vm, a.get("node"))
    group = m.group_of(vm)
    if group is not None:
        m.move_group(group, target)
    else:
        m.move_vm(vm, target)


def h_ha_set(m: Model, a: dict[str, Any]) -> Any:
    vm = _find(m, a)
    group = m.group(vm.id)
    if a.get("enabled"):
        if group is None:
            group = m.add_role(vm, vm.id)
        group.priority = int(a.get("priority", 2000))
    elif group is not None:
        m.remove_group(group)
    return _ha(m, vm.id)


def h_ha_get(m: Model, a: dict[str, Any]) -> Any:
    vm = _find(m, a)
    return _ha(m, vm.id)


def h_failover(m: Model, a: dict[str, Any]) -> Any:
    vm = _find(m, a)
    group = m.group(vm.id)
    if group is None:
        raise _fail("The virtual machine is not a clustered role.", "InvalidOperation", "VDNotClustered")
    m.move_group(group, _target(m, vm, a.get("node")))
    return _ha(m, vm.id)


def h_evacuate(m: Model, a: dict[str, Any]) -> Any:
    node = m.cluster_node(str(a.get("node")))
    if node.state != 0:
        raise _fail(f"Node {a.get('node')} is not up.", "InvalidOperation", "VDNodeDown")
    target = node.name
    vm = m.vm(str(a.get("id")))
    if vm is not None and vm.host in m.up_nodes():
        if vm.state != OFF:
            raise _fail(
                f"The virtual machine is {_state_name(vm)} on a node that is up: migrate it.",
                "InvalidOperation",
                "VDInvalidState",
            )
        if vm.host == target:
            raise _fail(f"The virtual machine is on {target} already.", "InvalidArgument", "VDSameNode")
        group = m.group_of(vm)
        if group is not None:
            m.move_group(group, target)
        else:
            m.move_vm(vm, target)
        return _info(m, [vm])
    path = f"{m.vm_path}\\Virtual Machines\\{a.get('id')}.vmcx"
    if not m.config_exists(path):
        raise _fail(
            f"Hyper-V was unable to find a virtual machine with ID {a.get('id')}.", "ObjectNotFound", "VDVMNotFound"
        )
    return _info(m, [m.import_vm(path, target)])


def _set_notes(m: Model, vm: VM, a: dict[str, Any]) -> None:
    vm.notes = str(a.get("notes") or "")


_BY_NAME: dict[str, Handler] = {
    "info": h_info,
    "nodes": h_nodes,
    "aggregates": h_aggregates,
    "list": h_list,
    "get": _vm_op(lambda m, vm, a: None),
    "host": h_host,
    "create": h_create,
    "destroy": h_destroy,
    "purge": h_purge,
    "complete": h_complete,
    "leftovers": h_leftovers,
    "reap": h_reap,
    "start": _vm_op(_start),
    "stop": _vm_op(_stop),
    "reboot": _vm_op(_reboot),
    "pause": _vm_op(lambda m, vm, a: m.suspend_vm(vm)),
    "unpause": _vm_op(lambda m, vm, a: m.resume_vm(vm)),
    "suspend": _vm_op(lambda m, vm, a: m.save_vm(vm)),
    "resume": _vm_op(_resume),
    "resize": _vm_op(_resize),
    "attach": h_attach,
    "detach": h_detach,
    "checkpoint": h_checkpoint,
    "snapshots": h_snapshots,
    "revert": _vm_op(_revert),
    "unsnapshot": h_unsnapshot,
    "move": _vm_op(_move),
    "ha_set": h_ha_set,
    "ha_get": h_ha_get,
    "failover": h_failover,
    "set_notes": _vm_op(_set_notes),
    "evacuate": h_evacuate,
}

from virtdrivers_hyperv.simulator.workload_handlers import BY_NAME as _WORKLOADS  # noqa: E402

_BY_NAME.update(_WORKLOADS)

assert set(_BY_NAME) == set(scripts.SCRIPTS), "every script needs its simulator twin"

#: Script body digest -> (script name, twin).
HANDLERS: dict[str, tuple[str, Handler]] = {
    scripts.body_digest(body): (name, _BY_NAME[name]) for name, body in scripts.SCRIPTS.items()
}

_DEPTH = re.compile(r"ConvertTo-Json\b[^\n|;]*?-Depth (\d+)")


def depth_of(body: str) -> int:
    """The ``-Depth`` the script passes to ConvertTo-Json (PowerShell's default is 2)."""
    match = _DEPTH.search(body)
    return int(match.group(1)) if match else 2


def lookup(body: str) -> tuple[str, Handler] | None:
    return HANDLERS.get(scripts.body_digest(body))
