"""Engine objects as the API's XML, written by hand from the API model.

The simulator does not borrow the SDK's writer on purpose: its own tests read every
document produced here with the SDK's reader and write it back with the SDK's
writer, so a tag or value the API model does not have shows up as a difference.
"""

from __future__ import annotations

import datetime
import uuid
import xml.etree.ElementTree as ET

from virtdrivers_ovirt.simulator import workloads
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
    # A carriage return in a value (a script with CRLF lines) must survive the client's XML parser,
    # which turns a literal CR into LF: the engine escapes it, so does this.
    body = body.replace(b"\r", b"&#13;")
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
    _ref(root, "template", "templates", vm.template_id)
    _text(root, "type", "server")
    if vm.initialization is not None:
        initialization(root, vm.initialization)
    if "nics" in follow:
        nics = ET.SubElement(root, "nics")
        for n in vm.nics:
            nics.append(nic(vm, n, engine, follow_nested(follow, "nics")))
    if "reported_devices" in follow:
        devices = ET.SubElement(root, "reported_devices")
        devices.extend(reported_device(vm, d) for d in workloads.reported_devices(engine, vm))
    if "statistics" in follow:
        stats = ET.SubElement(root, "statistics")
        stats.extend(statistic(f"vms/{vm.id}", ("vm", "vms", vm.id), s) for s in workloads.vm_statistics(vm))


def follow_nested(follow: set[str] | frozenset[str], prefix: str) -> set[str]:
    """What ``follow=nics.statistics`` asks of each NIC: ``statistics``."""
    return {f[len(prefix) + 1 :] for f in follow if f.startswith(prefix + ".")}


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
    return _disk_chain_attachment("vms", vm_.id, att, engine, with_disk)


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


# -- workloads: templates, networks, NICs, initialization, reported devices, statistics, consoles --


def _disk_chain_attachment(owner_kind: str, owner_id: str, att: Attachment, engine: Engine, with_disk: bool) -> Element:
    tag = "vm" if owner_kind == "vms" else "template"
    root = Element(
        "disk_attachment", href=f"{API}/{owner_kind}/{owner_id}/diskattachments/{att.disk_id}", id=att.disk_id
    )
    _text(root, "active", att.active)
    _text(root, "bootable", att.bootable)
    d = engine.disks.get(att.disk_id)
    if with_disk and d is not None:
        root.append(disk(d))
    else:
        _ref(root, "disk", "disks", att.disk_id)
    _text(root, "interface", att.interface)
    if owner_kind == "vms":  # a template's attachments carry neither
        _text(root, "pass_discard", False)
        _text(root, "read_only", False)
    _ref(root, tag, owner_kind, owner_id)
    return root


def template(tpl: workloads.Template, engine: Engine, follow: set[str] | frozenset[str] = frozenset()) -> Element:
    root = _obj("template", "templates", tpl.id)
    _cpu(root, tpl.sockets, tpl.cores, tpl.threads)
    _text(root, "creation_time", tpl.creation_time)
    _text(root, "description", tpl.description)
    if "disk_attachments" in follow:
        atts = ET.SubElement(root, "disk_attachments")
        for att in tpl.attachments:
            atts.append(_disk_chain_attachment("templates", tpl.id, att, engine, "disk_attachments.disk" in follow))
    _text(root, "memory", tpl.memory)
    _text(root, "name", tpl.name)
    os_ = ET.SubElement(root, "os")
    _text(os_, "type", tpl.os_type)
    _text(root, "status", "ok")
    _text(root, "type", "server")
    ver = ET.SubElement(root, "version")
    _text(ver, "version_name", "base version")
    _text(ver, "version_number", 1)
    return root


def template_disk_attachment(tpl: workloads.Template, att: Attachment, engine: Engine) -> Element:
    return _disk_chain_attachment("templates", tpl.id, att, engine, False)


def network(n: workloads.Network) -> Element:
    root = _obj("network", "networks", n.id)
    _text(root, "description", n.description)
    _text(root, "mtu", 0)
    _text(root, "name", n.name)
    _text(root, "required", True)
    _text(root, "stp", False)
    usages = ET.SubElement(root, "usages")
    _text(usages, "usage", "vm")
    if n.name == "ovirtmgmt":
        _text(usages, "usage", "management")
    _text(root, "vdsm_name", n.name)
    if n.vlan is not None:
        ET.SubElement(root, "vlan", id=str(n.vlan))
    return root


def vnic_profile(p: workloads.VnicProfile, engine: Engine, follow: set[str] | frozenset[str] = frozenset()) -> Element:
    root = _obj("vnic_profile", "vnicprofiles", p.id)
    _text(root, "description", p.description)
    _text(root, "name", p.name)
    net = engine.networks.get(p.network_id)
    if "network" in follow and net is not None:
        root.append(network(net))
    else:
        _ref(root, "network", "networks", p.network_id)
    passthrough = ET.SubElement(root, "pass_through")
    _text(passthrough, "mode", "disabled")
    _text(root, "port_mirroring", p.name.endswith("-mirror"))
    return root


def nic(vm_: Vm, n: workloads.Nic, engine: Engine, follow: set[str] | frozenset[str] = frozenset()) -> Element:
    root = Element("nic", href=f"{API}/vms/{vm_.id}/nics/{n.id}", id=n.id)
    _text(root, "interface", n.interface)
    _text(root, "linked", n.linked)
    mac = ET.SubElement(root, "mac")
    _text(mac, "address", n.mac)
    _text(root, "name", n.name)
    _text(root, "plugged", n.plugged)
    if "reported_devices" in follow:
        devices = ET.SubElement(root, "reported_devices")
        devices.extend(reported_device(vm_, d) for d in workloads.reported_devices(engine, vm_) if d.nic_id == n.id)
    if "statistics" in follow:
        stats = ET.SubElement(root, "statistics")
        base = f"vms/{vm_.id}/nics/{n.id}"
        stats.extend(statistic(base, ("nic", f"vms/{vm_.id}/nics", n.id), s) for s in workloads.nic_statistics(vm_, n))
    _text(root, "synced", True)
    if n.profile_id is not None:
        _ref(root, "vnic_profile", "vnicprofiles", n.profile_id)
    _ref(root, "vm", "vms", vm_.id)
    return root


def reported_device(vm_: Vm, d: workloads.Device) -> Element:
    root = Element("reported_device", href=f"{API}/vms/{vm_.id}/reporteddevices/{d.id}", id=d.id)
    _text(root, "description", "guest reported data")
    ips = ET.SubElement(root, "ips")
    for address, version in d.ips:
        ip = ET.SubElement(ips, "ip")
        _text(ip, "address", address)
        _text(ip, "version", version)
    mac = ET.SubElement(root, "mac")
    _text(mac, "address", d.mac)
    _text(root, "name", d.name)
    _text(root, "type", "network")
    _ref(root, "vm", "vms", vm_.id)
    return root


def statistic(base: str, parent: tuple[str, str, str], stat: tuple[str, str, str, str, str, float]) -> Element:
    """One statistic under ``{API}/{base}/statistics``; ``parent`` is (tag, collection path, id)."""
    name, description, kind, value_type, unit, value = stat
    stat_id = str(uuid.uuid5(uuid.NAMESPACE_OID, f"{base}/{name}"))
    root = Element("statistic", href=f"{API}/{base}/statistics/{stat_id}", id=stat_id)
    _text(root, "description", description)
    _text(root, "kind", kind)
    _text(root, "name", name)
    _text(root, "type", value_type)
    _text(root, "unit", unit)
    values = ET.SubElement(root, "values")
    datum = ET.SubElement(values, "value")
    _text(datum, "datum", int(value) if value_type == "integer" else float(value))
    tag, collection, parent_id = parent
    _ref(root, tag, collection, parent_id)
    return root


def graphics_console(vm_: Vm, protocol: str, console_id: str, engine: Engine, current: bool) -> Element:
    """A console; its address and port only with ``current=true`` on a running VM, as on the engine."""
    root = Element("graphics_console", href=f"{API}/vms/{vm_.id}/graphicsconsoles/{console_id}", id=console_id)
    host = engine.hosts.get(vm_.host_id or "")
    if current and host is not None and vm_.status == "up":
        _text(root, "address", host.address)
        _text(root, "port", workloads.console_port(vm_, protocol))
    _text(root, "protocol", protocol)
    if current and host is not None and vm_.status == "up" and protocol == "spice":
        _text(root, "tls_port", workloads.console_port(vm_, protocol) + 1000)
    _ref(root, "vm", "vms", vm_.id)
    return root


def ticket(value: str, expiry: int) -> Element:
    root = Element("ticket")
    _text(root, "expiry", expiry)
    _text(root, "value", value)
    return root


def initialization(parent: Element, init: dict[str, object]) -> None:
    """The VM's cloud-init fields, as ``GET /vms/{id}`` shows them."""
    root = ET.SubElement(parent, "initialization")
    for key in workloads.INIT_FIELDS:
        value = init.get(key)
        if isinstance(value, str):
            _text(root, key, value)
    configs = init.get("nic_configurations")
    if isinstance(configs, list) and configs:
        el = ET.SubElement(root, "nic_configurations")
        for conf in configs:
            c = ET.SubElement(el, "nic_configuration")
            _text(c, "boot_protocol", conf.get("boot_protocol") or "")
            if conf.get("address"):
                ip = ET.SubElement(c, "ip")
                for key in ("address", "gateway", "netmask"):
                    _text(ip, key, conf.get(key) or "")
            _text(c, "name", conf.get("name") or "")
            _text(c, "on_boot", bool(conf.get("on_boot", True)))
    _text(root, "regenerate_ssh_keys", False)
