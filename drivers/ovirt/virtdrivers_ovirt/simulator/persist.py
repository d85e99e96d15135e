"""The engine's database: its inventory in a JSON file, so a restarted simulator process keeps it.

A real engine keeps its inventory in PostgreSQL; when the engine process dies and
comes back, every VM, disk and snapshot is still there and clients that waited on
them carry on (or find them, as an engine restart looks to an SDK: refused
connections, then a 401 and a fresh login). A simulator that kept its inventory
only in memory would turn a killed simulator process into a lost data center, and
a call in flight into ``InstanceNotFound``, which no engine does.

The file is rewritten (atomically: a temporary file renamed over it) after every
change. Sessions are not saved: an engine restart ends them. Transitions that were
under way when the process died are settled on load the way the engine settles
them when it comes back: it asks the hosts what runs (a VM powering up is up, one
powering down is down), unlocks what its interrupted commands locked
(compensation), and marks their jobs failed.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from virtdrivers_ovirt.simulator.model import (
    Attachment,
    Cluster,
    Disk,
    Engine,
    Host,
    Job,
    Snapshot,
    StorageDomain,
    Vm,
    now,
)
from virtdrivers_ovirt.simulator.workloads import Network, Nic, Template, VnicProfile

FORMAT = 1

#: Where an interrupted transition ends when the engine comes back.
_SETTLE = {
    "image_locked": "down",
    "powering_up": "up",
    "wait_for_launch": "up",
    "restoring_state": "up",
    "reboot_in_progress": "up",
    "migrating": "up",
    "powering_down": "down",
    "saving_state": "suspended",
}


def _default(value: object) -> object:
    """JSON for what ``json`` cannot write itself: the engine's timestamps."""
    if isinstance(value, datetime.datetime):
        return {"$dt": value.isoformat()}
    raise TypeError(f"cannot save {type(value).__name__}")


def _hook(obj: dict[str, Any]) -> Any:
    return datetime.datetime.fromisoformat(obj["$dt"]) if set(obj) == {"$dt"} else obj


def _row(obj: object) -> dict[str, Any]:
    """A flat record's fields (``dataclasses.asdict`` deep-copies and costs ten times as much)."""
    return dict(vars(obj))


def _vm_row(vm: Vm) -> dict[str, Any]:
    row = _row(vm)
    row["attachments"] = [_row(a) for a in vm.attachments]
    row["nics"] = [_row(n) for n in vm.nics]
    # Console tickets are one-time secrets of a running display: a restarted engine has none.
    row.pop("tickets", None)
    row["snapshots"] = [_snapshot_row(s) for s in vm.snapshots]
    return row


def _snapshot_row(snap: Snapshot) -> dict[str, Any]:
    row = _row(snap)
    row["image"] = _vm_row(snap.image) if snap.image is not None else None
    return row


def _template_row(tpl: Template) -> dict[str, Any]:
    row = _row(tpl)
    row["attachments"] = [_row(a) for a in tpl.attachments]
    return row


def _template(data: dict[str, Any]) -> Template:
    data = _known(Template, data)
    data["attachments"] = [Attachment(**_known(Attachment, a)) for a in data.get("attachments", [])]
    return Template(**data)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _vm(data: dict[str, Any]) -> Vm:
    data = _known(Vm, data)
    data["attachments"] = [Attachment(**_known(Attachment, a)) for a in data.get("attachments", [])]
    data["nics"] = [Nic(**_known(Nic, n)) for n in data.get("nics", [])]
    data["snapshots"] = [_snapshot(s) for s in data.get("snapshots", [])]
    return Vm(**data)


def _snapshot(data: dict[str, Any]) -> Snapshot:
    data = _known(Snapshot, data)
    image = data.get("image")
    data["image"] = _vm(image) if image is not None else None
    return Snapshot(**data)


def save(engine: Engine, path: Path) -> None:
    """Write the inventory; the caller holds ``engine.lock``."""
    state = {
        "format": FORMAT,
        "clusters": [_row(c) for c in engine.clusters.values()],
        "hosts": [_row(h) for h in engine.hosts.values()],
        "storage_domains": [_row(s) for s in engine.storage_domains.values()],
        "vms": [_vm_row(v) for v in engine.vms.values()],
        "disks": [_row(d) for d in engine.disks.values()],
        "templates": [_template_row(t) for t in engine.templates.values()],
        "networks": [_row(n) for n in engine.networks.values()],
        "vnic_profiles": [_row(p) for p in engine.vnic_profiles.values()],
        "jobs": [_row(j) for j in engine.jobs.values()],
        "failing_creates": engine.failing_creates,
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, separators=(",", ":"), default=_default)
    os.replace(tmp, path)


def load(engine: Engine, path: Path) -> bool:
    """Replace the engine's inventory with the one in ``path``; False when there is none yet."""
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f, object_hook=_hook)
    except FileNotFoundError:
        return False
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: not an oVirt simulator state file of format {FORMAT}")
    with engine.lock:
        engine.clusters = {c["id"]: Cluster(**_known(Cluster, c)) for c in state["clusters"]}
        engine.hosts = {h["id"]: Host(**_known(Host, h)) for h in state["hosts"]}
        engine.storage_domains = {s["id"]: StorageDomain(**_known(StorageDomain, s)) for s in state["storage_domains"]}
        engine.vms = {v["id"]: _vm(v) for v in state["vms"]}
        engine.disks = {d["id"]: Disk(**_known(Disk, d)) for d in state["disks"]}
        engine.templates = {t["id"]: _template(t) for t in state.get("templates", [])}
        engine.networks = {n["id"]: Network(**_known(Network, n)) for n in state.get("networks", [])}
        engine.vnic_profiles = {p["id"]: VnicProfile(**_known(VnicProfile, p)) for p in state.get("vnic_profiles", [])}
        engine.jobs = {j["id"]: Job(**_known(Job, j)) for j in state["jobs"]}
        engine.failing_creates = int(state.get("failing_creates", 0))
        _settle(engine)
    return True


def _settle(engine: Engine) -> None:
    """Finish, as the engine does when it comes back, what the dead process left under way."""
    for vm in engine.vms.values():
        vm.status = _SETTLE.get(vm.status, vm.status)
        if vm.status == "down":
            vm.host_id = None
        for snap in vm.snapshots:
            if snap.status == "locked":
                snap.status = "ok"
    for disk in engine.disks.values():
        if disk.status == "locked":
            disk.status = "ok"
    for job in engine.jobs.values():
        if job.status == "started":
            job.status, job.end_time, job.last_updated = "failed", now(), now()
