"""Engine objects as the API's XML, written by hand from the API model.

The simulator does not borrow the SDK's writer on purpose: its own tests read every
document produced here with the SDK's reader and write it back with the SDK's
writer, so a tag or value the API model does not have shows up as a difference.
"""

from __future__ import annotations

import datetime
import xml.etree.ElementTree as ET

from virtdrivers_ovirt.simulator.model import (
    BLANK_TEMPLATE_ID,
    ENGINE_FULL_VERSION,
    ENGINE_NAME,
    ENGINE_VERSION,
    Attachment,
    Cluster,
    Disk,
    Engine,
    Host,
    Job,
    Snapshot,
    StorageDomain,
    Vm,
)

API = "/ovirt-engine/api"
Element = ET.Element


def to_bytes(root: Element) -> bytes:
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n' + body


def _date(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+00:00"


def _text(parent: Element, tag: str, value: object) -> Element | None:
    """A leaf element; the engine leaves out empty strings, so does this."""
    if value == "":
        return None
    el = ET.SubElement(parent, tag)
    if isinstance(value, bool):
        el.text = "true" if value else "false"
    elif isinstance(value, datetime.datetime):
        el.text = _date(value)
    else:
        el.text = str(value)
    return el


def _ref(parent: Element, tag: str, kind: str, ref_id: str) -> Element:
    return ET.SubElement(parent, tag, href=f"{API}/{kind}/{ref_id}", id=ref_id)


def _obj(tag: str, kind: str, obj_id: str) -> Element:
    return Element(tag, href=f"{API}/{kind}/{obj_id}", id=obj_id)


def collection(tag: str, items: list[Element]) -> Element:
    root = Element(tag)
    root.extend(items)
    return root


def fault(reason: str, detail: str) -> Element:
    root = Element("fault")
    _text(root, "reason", reason)
    _text(root, "detail", detail)
    return root


def action(status: str = "complete", job: Job | None = None, inner: Element | None = None) -> Element:
    """An action's reply: the engine echoes an ``<action>`` with its status, a job link and any result."""
    root = Element("action")
    if inner is not None:
        root.append(inner)
    if job is not None:
        _ref(root, "job", "jobs", job.id)
    _text(root, "status", status)
    return root


def _version(parent: Element, tag: str) -> None:
    major, minor, build, revision = ENGINE_VERSION
    ver = ET.SubElement(parent, tag)
    _text(ver, "build", build)
    _text(ver, "full_version", ENGINE_FULL_VERSION)
    _text(ver, "major", major)
    _text(ver, "minor", minor)
    _text(ver, "revision", revision)


def api(engine: Engine) -> Element:
    root = Element("api")
    info = ET.SubElement(root, "product_info")
    _text(info, "instance_id", "8f2d1e2c-0000-4000-8000-000000000001")
    _text(info, "name", ENGINE_NAME)
    _text(info, "vendor", "ovirt.org")
    _version(info, "version")
    summary = ET.SubElement(root, "summary")
    for tag, total, active in (
        ("hosts", len(engine.hosts), sum(h.status == "up" for h in engine.hosts.values())),
        ("storage_domains", len(engine.storage_domains), len(engine.storage_domains)),
        ("users", 1, 1),
        ("vms", len(engine.vms), sum(v.status == "up" for v in engine.vms.values())),
    ):
        el = ET.SubElement(summary, tag)
        _text(el, "active", active)
        _text(el, "total", total)
    _text(root, "time", datetime.datetime.now(datetime.UTC))
    return root


def _cpu(parent: Element, sockets: int, cores: int, threads: int) -> None:
    cpu = ET.SubElement(parent, "cpu")
    _text(cpu, "architecture", "x86_64")
    topo = ET.SubElement(cpu, "topology")
    _text(topo, "cores", cores)
    _text(topo, "sockets", sockets)
    _text(topo, "threads", threads)


def _vm_body(root: Element, vm: Vm, engine: Engine, follow: set[str]) -> None:
    """The fields a VM and a snapshot of it share, in the API model's order."""
    _ref(root, "cluster", "clusters", vm.cluster_id)
    _text(root, "comment", vm.comment)
    _cpu(root, vm.sockets, vm.cores, vm.threads)
    _text(root, "creation_time", vm.creation_time)
    _text(root, "description", vm.description)
    if "disk_attachments" in follow:
        atts = ET.SubElement(root, "disk_attachments")
        for att in vm.attachments:
            atts.append(disk_attachment(vm, att, engine, "disk_attachments.disk" in follow))
    ha = ET.SubElement(root, "high_availability")
    _text(ha, "enabled", vm.ha_enabled)
    _text(ha, "priority", vm.ha_priority)
    if vm.host_id is not None:
        _ref(root, "host", "hosts", vm.host_id)
    _text(root, "memory", vm.memory)
    policy = ET.SubElement(root, "memory_policy")
    _text(policy, "guaranteed", vm.memory)
    _text(policy, "max", vm.memory * 4)
    _text(root, "name", vm.name)
    _text(root, "origin", vm.origin)
    placement = ET.SubElement(root, "placement_policy")
    _text(placement, "affinity", vm.affinity)
    if vm.preferred_host_ids:
        hosts = ET.SubElement(placement, "hosts")
        for host_id in vm.preferred_host_ids:
            _ref(hosts, "host", "hosts", host_id)
    if vm.start_time is not None:
        _text(root, "start_time", vm.start_time)
    _text(root, "stateless", False)
    _text(root, "status", vm.status)
    if vm.stop_time is not None:
        _text(root, "stop_time", vm.stop_time)
    _ref(root, "template", "templates", BLANK_TEMPLATE_ID)
    _text(root, "type", "server")


def vm(vm_: Vm, engine: Engine, follow: set[str] | frozenset[str] = frozenset()) -> Element:
    root = _obj("vm", "vms", vm_.id)
    _vm_body(root, vm_, engine, set(follow))
    return root


def snapshot(vm_: Vm, snap: Snapshot, engine: Engine) -> Element:
    root = Element("snapshot", href=f"{API}/vms/{vm_.id}/snapshots/{snap.id}", id=snap.id)
    _text(root, "date", snap.date)
    _text(root, "description", snap.description)
    _text(root, "persist_memorystate", snap.persist_memorystate)
    _text(root, "snapshot_status", snap.status)
    _text(root, "snapshot_type", snap.snapshot_type)
    _ref(root, "vm", "vms", vm_.id)
    return root


def disk(d: Disk) -> Element:
    root = _obj("disk", "disks", d.id)
    _text(root, "actual_size", d.actual_size)
    _text(root, "alias", d.name)
    _text(root, "content_type", "data")
    _text(root, "description", d.description)
    _text(root, "format", d.format)
    _text(root, "name", d.name)
    _text(root, "provisioned_size", d.provisioned_size)
    _text(root, "shareable", False)
    _text(root, "sparse", d.sparse)
    _text(root, "status", d.status)
    sds = ET.SubElement(root, "storage_domains")
    _ref(sds, "storage_domain", "storagedomains", d.storage_domain_id)
    _text(root, "storage_type", "image")
    _text(root, "total_size", d.actual_size)
    _text(root, "wipe_after_delete", False)
    return root


def disk_attachment(vm_: Vm, att: Attachment, engine: Engine, with_disk: bool = False) -> Element:
    root = Element("disk_attachment", href=f"{API}/vms/{vm_.id}/diskattachments/{att.disk_id}", id=att.disk_id)
    _text(root, "active", att.active)
    _text(root, "bootable", att.bootable)
    d = engine.disks.get(att.disk_id)
    if with_disk and d is not None:
        root.append(disk(d))
    else:
        _ref(root, "disk", "disks", att.disk_id)
    _text(root, "interface", att.interface)
    _text(root, "pass_discard", False)
    _text(root, "read_only", False)
    _ref(root, "vm", "vms", vm_.id)
    return root


def host(h: Host, engine: Engine) -> Element:
    root = _obj("host", "hosts", h.id)
    _text(root, "address", h.address)
    _ref(root, "cluster", "clusters", h.cluster_id)
    cpu = ET.SubElement(root, "cpu")
    _text(cpu, "name", "Intel Xeon Processor (Icelake)")
    _text(cpu, "speed", 2600)
    topo = ET.SubElement(cpu, "topology")
    _text(topo, "cores", h.cores)
    _text(topo, "sockets", h.sockets)
    _text(topo, "threads", h.threads)
    _text(cpu, "type", "Intel Icelake Server Family")
    used = sum(v.memory for v in engine.vms.values() if v.host_id == h.id)
    _text(root, "max_scheduling_memory", max(h.memory - used, 0))
    _text(root, "memory", h.memory)
    _text(root, "name", h.name)
    _text(root, "port", 54321)
    summary = ET.SubElement(root, "summary")
    running = [v for v in engine.vms.values() if v.host_id == h.id]
    _text(summary, "active", sum(v.status == "up" for v in running))
    _text(summary, "migrating", sum(v.status == "migrating" for v in running))
    _text(summary, "total", len(running))
    _text(root, "status", h.status)
    _text(root, "type", "rhel")
    _version(root, "version")
    return root


def cluster(c: Cluster, engine: Engine) -> Element:
    root = _obj("cluster", "clusters", c.id)
    _text(root, "comment", "")
    cpu = ET.SubElement(root, "cpu")
    _text(cpu, "architecture", "x86_64")
    _text(cpu, "type", "Intel Icelake Server Family")
    _text(root, "description", c.description)
    _text(root, "ha_reservation", False)
    _text(root, "name", c.name)
    ver = ET.SubElement(root, "version")
    _text(ver, "major", ENGINE_VERSION[0])
    _text(ver, "minor", ENGINE_VERSION[1])
    return root


def storage_domain(sd: StorageDomain) -> Element:
    root = _obj("storage_domain", "storagedomains", sd.id)
    _text(root, "available", sd.available - sd.used)
    _text(root, "committed", sd.committed)
    _text(root, "external_status", "ok")
    _text(root, "master", True)
    _text(root, "name", sd.name)
    storage = ET.SubElement(root, "storage")
    _text(storage, "address", "192.0.2.200")
    _text(storage, "path", f"/exports/{sd.name}")
    _text(storage, "type", sd.storage_type)
    _text(root, "storage_format", "v5")
    _text(root, "type", "data")
    _text(root, "used", sd.used)
    return root


def template_blank(engine: Engine) -> Element:
    root = _obj("template", "templates", BLANK_TEMPLATE_ID)
    _cpu(root, 1, 1, 1)
    _text(root, "creation_time", datetime.datetime(2008, 4, 1, tzinfo=datetime.UTC))
    _text(root, "description", "Blank template")
    _text(root, "memory", 1024**3)
    _text(root, "name", "Blank")
    _text(root, "status", "ok")
    _text(root, "type", "server")
    ver = ET.SubElement(root, "version")
    _text(ver, "version_name", "base version")
    _text(ver, "version_number", 1)
    return root


def job(j: Job) -> Element:
    root = _obj("job", "jobs", j.id)
    _text(root, "auto_cleared", True)
    _text(root, "description", j.description)
    if j.end_time is not None:
        _text(root, "end_time", j.end_time)
    _text(root, "external", False)
    _text(root, "last_updated", j.last_updated)
    _text(root, "start_time", j.start_time)
    _text(root, "status", j.status)
    return root
