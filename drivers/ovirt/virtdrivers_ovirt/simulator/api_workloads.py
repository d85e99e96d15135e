"""The API tree's workload resources: templates, networks, vNIC profiles, a VM's NICs, reported
devices, statistics and graphics consoles, and the ``Initialization`` a request carries.

Each handler gets the request (:class:`~virtdrivers_ovirt.simulator.server._Api`) and the path
below its resource, and returns the HTTP status and the XML root, as the server's own handlers do.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from virtdrivers_ovirt.simulator import render, workloads
from virtdrivers_ovirt.simulator.model import BLANK_TEMPLATE_ID, EngineFault, Vm, not_found

if TYPE_CHECKING:
    from virtdrivers_ovirt.simulator.server import _Api

Reply = tuple[int, ET.Element]


def _no_such(method: str, path: str) -> EngineFault:
    return EngineFault(404, f"No such resource: {method} {path}", reason="Not Found")


def _follow(api: _Api) -> set[str]:
    """The links ``follow=`` names, with what a nested one implies (``nics.statistics``: ``nics``)."""
    follow: set[str] = set()
    for path in filter(None, api.query.get("follow", "").split(",")):
        parts = path.strip().split(".")
        follow.update(".".join(parts[: n + 1]) for n in range(len(parts)))
    return follow


def templates(api: _Api, p: list[str]) -> Reply:
    if api.method != "GET":
        raise _no_such(api.method, "/templates")
    e = api.e
    follow = _follow(api)
    if not p:
        items = [render.template_blank(e)] + [render.template(t, e, follow) for t in e.templates.values()]
        return 200, render.collection("templates", items)
    if p[0] == BLANK_TEMPLATE_ID and len(p) == 1:
        return 200, render.template_blank(e)
    tpl = e.templates.get(p[0])
    if tpl is None:
        raise not_found("template", p[0])
    if len(p) == 1:
        return 200, render.template(tpl, e, follow)
    if p[1] == "diskattachments" and len(p) == 2:
        return 200, render.collection(
            "disk_attachments", [render.template_disk_attachment(tpl, a, e) for a in tpl.attachments]
        )
    raise _no_such(api.method, f"/templates/{'/'.join(p)}")


def networks(api: _Api, p: list[str]) -> Reply:
    if api.method != "GET":
        raise _no_such(api.method, "/networks")
    if not p:
        return 200, render.collection("networks", [render.network(n) for n in api.e.networks.values()])
    net = api.e.networks.get(p[0])
    if net is None or len(p) > 1:
        raise not_found("network", p[0])
    return 200, render.network(net)


def vnic_profiles(api: _Api, p: list[str]) -> Reply:
    if api.method != "GET":
        raise _no_such(api.method, "/vnicprofiles")
    follow = _follow(api)
    if not p:
        items = [render.vnic_profile(v, api.e, follow) for v in api.e.vnic_profiles.values()]
        return 200, render.collection("vnic_profiles", items)
    profile = api.e.vnic_profiles.get(p[0])
    if profile is None or len(p) > 1:
        raise not_found("vnic profile", p[0])
    return 200, render.vnic_profile(profile, api.e, follow)


def _nic_fields(body: ET.Element) -> dict[str, Any]:
    profile = body.find("vnic_profile")
    return {
        "name": body.findtext("name") or None,
        "mac": body.findtext("mac/address") or None,
        "profile_id": profile.get("id") if profile is not None else None,
        "interface": body.findtext("interface") or None,
    }


def nics(api: _Api, vm: Vm, p: list[str]) -> Reply:
    e, m = api.e, api.method
    follow = _follow(api)
    if not p and m == "GET":
        return 200, render.collection("nics", [render.nic(vm, n, e, follow) for n in vm.nics])
    if not p and m == "POST":
        body = api.xml()
        if body.find("vnic_profile") is not None and not body.find("vnic_profile").get("id"):  # type: ignore[union-attr]
            raise EngineFault(400, "Nic [vnicProfile.id] required for add", reason="Incomplete parameters")
        nic = workloads.add_nic(e, vm, **_nic_fields(body))
        return 201, render.nic(vm, nic, e)
    nic = workloads.nic_of(vm, p[0])
    if len(p) == 1 and m == "GET":
        return 200, render.nic(vm, nic, e, follow)
    if len(p) == 1 and m == "DELETE":
        workloads.remove_nic(e, vm, nic)
        return 200, render.action()
    if len(p) == 2 and m == "POST" and p[1] in ("activate", "deactivate"):
        api.xml()
        workloads.set_plugged(e, vm, nic, p[1] == "activate")
        return 200, render.action()
    if len(p) == 2 and m == "GET" and p[1] == "reporteddevices":
        devices = [d for d in workloads.reported_devices(e, vm) if d.nic_id == nic.id]
        return 200, render.collection("reported_devices", [render.reported_device(vm, d) for d in devices])
    if len(p) == 2 and m == "GET" and p[1] == "statistics":
        base = f"vms/{vm.id}/nics/{nic.id}"
        stats = [
            render.statistic(base, ("nic", f"vms/{vm.id}/nics", nic.id), s) for s in workloads.nic_statistics(vm, nic)
        ]
        return 200, render.collection("statistics", stats)
    raise _no_such(m, f"/vms/{vm.id}/nics/{'/'.join(p)}")


def reported_devices(api: _Api, vm: Vm, p: list[str]) -> Reply:
    devices = workloads.reported_devices(api.e, vm)
    if api.method == "GET" and not p:
        return 200, render.collection("reported_devices", [render.reported_device(vm, d) for d in devices])
    raise _no_such(api.method, f"/vms/{vm.id}/reporteddevices/{'/'.join(p)}")


def statistics(api: _Api, vm: Vm, p: list[str]) -> Reply:
    if api.method == "GET" and not p:
        stats = [render.statistic(f"vms/{vm.id}", ("vm", "vms", vm.id), s) for s in workloads.vm_statistics(vm)]
        return 200, render.collection("statistics", stats)
    raise _no_such(api.method, f"/vms/{vm.id}/statistics/{'/'.join(p)}")


def graphics_consoles(api: _Api, vm: Vm, p: list[str]) -> Reply:
    e, m = api.e, api.method
    current = (api.query.get("current") or "").lower() == "true"
    ids = workloads.console_ids(vm)
    if not p and m == "GET":
        items = [render.graphics_console(vm, proto, cid, e, current) for proto, cid in ids.items()]
        return 200, render.collection("graphics_consoles", items)
    proto = next((k for k, v in ids.items() if v == p[0]), None)
    if proto is None:
        raise not_found("graphics console", p[0])
    if len(p) == 1 and m == "GET":
        return 200, render.graphics_console(vm, proto, p[0], e, current)
    if len(p) == 2 and p[1] == "ticket" and m == "POST":
        body = api.xml()
        expiry = body.findtext("ticket/expiry")
        value, lifetime = workloads.ticket(e, vm, int(expiry) if expiry else None)
        return 200, render.action(inner=render.ticket(value, lifetime))
    raise _no_such(m, f"/vms/{vm.id}/graphicsconsoles/{'/'.join(p)}")


def parse_initialization(el: ET.Element | None) -> dict[str, Any] | None:
    """An ``<initialization>`` as the engine keeps it; the engine's faults for values it refuses."""
    if el is None:
        return None
    init: dict[str, Any] = {}
    for key in workloads.INIT_FIELDS:
        if el.find(key) is not None:
            init[key] = el.findtext(key) or ""
    protocol = init.get("cloud_init_network_protocol")
    if protocol is not None and protocol not in workloads.NETWORK_PROTOCOLS:
        raise EngineFault(400, f"Invalid value '{protocol}' for cloud_init_network_protocol", reason="Invalid value")
    configs = []
    for conf in el.findall("nic_configurations/nic_configuration"):
        boot = conf.findtext("boot_protocol") or "dhcp"
        if boot not in workloads.BOOT_PROTOCOLS:
            raise EngineFault(400, f"Invalid value '{boot}' for boot_protocol", reason="Invalid value")
        name = conf.findtext("name")
        if not name:
            raise EngineFault(400, "NicConfiguration [name] required", reason="Incomplete parameters")
        configs.append(
            {
                "name": name,
                "boot_protocol": boot,
                "on_boot": (conf.findtext("on_boot") or "true").lower() == "true",
                "address": conf.findtext("ip/address"),
                "netmask": conf.findtext("ip/netmask"),
                "gateway": conf.findtext("ip/gateway"),
            }
        )
    if configs:
        init["nic_configurations"] = configs
    return init


def template_disk_overrides(body: ET.Element) -> dict[str, dict[str, str]]:
    """What ``<disk_attachments>`` of a VM add asks for each template disk, by the template disk's id."""
    out: dict[str, dict[str, str]] = {}
    for att in body.findall("disk_attachments/disk_attachment"):
        disk = att.find("disk")
        if disk is None or not disk.get("id"):
            continue
        asked = {
            k: disk.findtext(k) or "" for k in ("description", "alias", "format", "sparse") if disk.find(k) is not None
        }
        out[str(disk.get("id"))] = asked
    return out
