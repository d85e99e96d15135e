"""What a workload needs from the engine: templates with disk chains, networks and vNIC profiles,
NICs, cloud-init ``Initialization``, the guest agent's reported devices, statistics and console tickets.

Kept out of :mod:`.model` so the engine's life-cycle state machine stays readable; every function
here runs under the engine lock (the HTTP front takes it for each request).

What is simulated and how, so nobody mistakes it for a guest:

- A template's disks hold no data. A VM made from it with ``clone=false`` gets a thin child of
  each template disk (``parent_id`` names the template disk, the child starts nearly empty and
  the template disk is never written); ``clone=true`` makes independent copies as big as the
  template disk's data. A template with children cannot be removed, as on the engine.
- The engine attaches a cloud-init payload (a config-2 drive) when a VM runs with cloud-init:
  on its first run when it has an ``Initialization``, or on any run started with
  ``use_cloud_init``. That payload is recorded on the VM (:attr:`Vm.payload`) and is what
  ``POST /__simulator/carrier`` returns: no guest reads it.
- Reported devices are what a guest agent would report: :data:`AGENT_DELAY` seconds after a VM
  made from a template with an agent is up, ``lo`` and one device per plugged NIC with an address
  the simulator derives from the NIC's MAC on its network's subnet, and an IPv6 link-local address.
  VMs from ``Blank`` have no operating system, so no agent and no reported devices.
- Statistics are gauges the engine shows (``cpu.current.*``, ``memory.*``, ``elapsed.time``)
  and NIC byte counters that grow with the time a VM has been up.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import uuid
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from virtdrivers_ovirt.simulator.model import GIB, MIB, Attachment, Disk, EngineFault, conflict, not_found, now

if TYPE_CHECKING:
    from virtdrivers_ovirt.simulator.model import Engine, Vm

#: Seconds after a VM is up until its guest agent reports its devices.
AGENT_DELAY = 0.3
#: Seconds a console ticket lives when the client asks for no expiry (the engine's default).
TICKET_EXPIRY = 120
#: NIC models the engine knows (``NicInterface``).
NIC_INTERFACES = ("e1000", "e1000e", "pci_passthrough", "rtl8139", "rtl8139_virtio", "spapr_vlan", "virtio")
#: Fields of ``Initialization`` the simulator keeps, in the API model's spelling.
INIT_FIELDS = ("authorized_ssh_keys", "cloud_init_network_protocol", "custom_script", "host_name", "user_name")
#: ``cloud_init_network_protocol`` values the API model has.
NETWORK_PROTOCOLS = ("eni", "openstack_metadata")
#: ``boot_protocol`` values of a NIC configuration.
BOOT_PROTOCOLS = ("autoconf", "dhcp", "none", "poly_dhcp_autoconf", "static")


@dataclass
class Template:
    id: str
    name: str
    description: str = ""
    memory: int = GIB
    sockets: int = 1
    cores: int = 1
    threads: int = 1
    os_type: str = "other"
    #: Whether guests booted from it run a guest agent (it reports devices).
    agent: bool = False
    attachments: list[Attachment] = field(default_factory=list)
    creation_time: datetime.datetime = field(default_factory=now)


@dataclass
class Network:
    id: str
    name: str
    description: str = ""
    subnet: str = "192.0.2.0/24"
    vlan: int | None = None


@dataclass
class VnicProfile:
    id: str
    name: str
    network_id: str
    description: str = ""


@dataclass
class Nic:
    id: str
    name: str
    mac: str
    profile_id: str | None
    interface: str = "virtio"
    plugged: bool = True
    linked: bool = True


@dataclass
class NicConfiguration:
    name: str
    boot_protocol: str = "dhcp"
    on_boot: bool = True
    address: str | None = None
    netmask: str | None = None
    gateway: str | None = None


def seed(engine: Engine) -> None:
    """The inventory a fresh engine has: two networks with three profiles, and one cloud image template."""
    mgmt = Network(str(uuid.uuid4()), "ovirtmgmt", "Management Network", "192.0.2.0/24")
    vmnet = Network(str(uuid.uuid4()), "vm-net", "VM traffic, VLAN 100", "198.51.100.0/24", vlan=100)
    engine.networks = {n.id: n for n in (mgmt, vmnet)}
    profiles = (
        VnicProfile(str(uuid.uuid4()), "ovirtmgmt", mgmt.id),
        VnicProfile(str(uuid.uuid4()), "vm-net", vmnet.id),
        VnicProfile(str(uuid.uuid4()), "vm-net-mirror", vmnet.id, "port mirroring"),
    )
    engine.vnic_profiles = {p.id: p for p in profiles}
    engine.templates = {}
    add_template(engine, "debian-12-genericcloud", 2 * GIB, "debian_12", agent=True)


def add_template(engine: Engine, name: str, size: int, os_type: str, *, agent: bool) -> Template:
    """A template with one bootable disk holding ``size`` bytes (of which 40% are data)."""
    sd = next(iter(engine.storage_domains.values()))
    tpl = Template(str(uuid.uuid4()), name, f"{name} cloud image", os_type=os_type, agent=agent)
    disk = Disk(str(uuid.uuid4()), f"{name}_root", size, "cow", True, sd.id, "ok", size * 2 // 5)
    disk.description = f"root disk of template {name}"
    engine.disks[disk.id] = disk
    sd.committed += disk.provisioned_size
    sd.used += disk.actual_size
    tpl.attachments.append(Attachment(disk.id, bootable=True))
    engine.templates[tpl.id] = tpl
    return tpl


def template_by(engine: Engine, ref_id: str | None, ref_name: str | None) -> Template | None:
    """The template a request names; None for Blank; the engine's fault for an unknown one."""
    from virtdrivers_ovirt.simulator.model import BLANK_TEMPLATE_ID

    if ref_id in (None, BLANK_TEMPLATE_ID) and ref_name in (None, "Blank"):
        return None
    for tpl in engine.templates.values():
        if (ref_id and tpl.id == ref_id) or (ref_name and tpl.name == ref_name):
            return tpl
    raise EngineFault(400, "Entity not found: Template", reason="Operation Failed")


def template_children(engine: Engine, tpl: Template) -> list[str]:
    """Names of the VMs whose disks are thin children of the template's disks (they pin it)."""
    mine = {a.disk_id for a in tpl.attachments}
    return sorted(
        vm.name
        for vm in engine.vms.values()
        if any((d := engine.disks.get(a.disk_id)) is not None and d.parent_id in mine for a in vm.attachments)
    )


def disks_from_template(
    engine: Engine, vm: Vm, tpl: Template, *, clone: bool, overrides: dict[str, dict[str, str]]
) -> list[Disk]:
    """The VM's disks made from the template's: thin children (``clone=false``) or copies.

    ``overrides`` maps a template disk id to what the request's ``disk_attachments`` asked for
    that disk (``description``, ``alias``, ``format``, ``sparse``), as the engine honours them.
    """
    made = []
    for att in tpl.attachments:
        base = engine.disk(att.disk_id)
        asked = overrides.get(base.id, {})
        fmt = asked.get("format") or base.format
        if fmt not in ("cow", "raw"):
            raise EngineFault(400, f"Invalid value '{fmt}' for format", reason="Invalid value")
        if not clone and fmt != "cow":
            raise conflict("add VM", "Thin provisioned disks of a VM based on a template must be in QCOW2 format.")
        sparse = asked["sparse"] == "true" if "sparse" in asked else (True if not clone else base.sparse)
        disk = Disk(
            str(uuid.uuid4()),
            asked.get("alias") or f"{vm.name}_{base.name}",
            base.provisioned_size,
            fmt,
            sparse,
            base.storage_domain_id,
            "locked",
        )
        disk.description = asked.get("description", "")
        disk.parent_id = None if clone else base.id
        sd = engine.storage_domains[disk.storage_domain_id]
        disk.actual_size = base.actual_size if clone and sparse else (disk.provisioned_size if clone else MIB)
        sd.committed += disk.provisioned_size
        sd.used += disk.actual_size
        engine.disks[disk.id] = disk
        vm.attachments.append(Attachment(disk.id, bootable=att.bootable))
        made.append(disk)
    return made


# -- NICs -------------------------------------------------------------------------------------


def _macs_in_use(engine: Engine) -> set[str]:
    return {n.mac for v in engine.vms.values() for n in v.nics}


def new_mac(engine: Engine) -> str:
    """A MAC from the engine's default pool (56:6f:...), not used by any VM."""
    taken = _macs_in_use(engine)
    while True:
        mac = "56:6f:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(4))
        if mac not in taken:
            return mac


def add_nic(
    engine: Engine, vm: Vm, *, name: str | None, mac: str | None, profile_id: str | None, interface: str | None
) -> Nic:
    """Add a NIC (hot-plugged when the VM runs); the engine's faults for a bad profile, MAC or model."""
    with engine.lock:
        if vm.status == "image_locked":
            raise conflict("add Interface", "VM is locked. Please try again in a few minutes.")
        if profile_id is not None and profile_id not in engine.vnic_profiles:
            raise conflict("add Interface", "VM network interface profile doesn't exist.")
        model = interface or "virtio"
        if model not in NIC_INTERFACES:
            raise EngineFault(400, f"Invalid value '{model}' for interface", reason="Invalid value")
        if mac is not None:
            mac = mac.lower()
            try:
                if len(mac.split(":")) != 6 or int(mac.split(":")[0], 16) & 1:
                    raise ValueError(mac)
                bytes.fromhex(mac.replace(":", ""))
            except ValueError:
                raise EngineFault(400, f"Invalid MAC address '{mac}'", reason="Operation Failed") from None
            if mac in _macs_in_use(engine):
                raise conflict("add Interface", "MAC Address is already in use.")
        name = name or f"nic{len(vm.nics) + 1}"
        if any(n.name == name for n in vm.nics):
            raise conflict("add Interface", "Interface name is already in use.")
        nic = Nic(str(uuid.uuid4()), name, mac or new_mac(engine), profile_id, model)
        vm.nics.append(nic)
        return nic


def nic_of(vm: Vm, nic_id: str) -> Nic:
    for nic in vm.nics:
        if nic.id == nic_id:
            return nic
    raise not_found("nic", nic_id)


def set_plugged(engine: Engine, vm: Vm, nic: Nic, plugged: bool) -> None:
    """Hot-plug (``activate``) or hot-unplug (``deactivate``) a NIC."""
    with engine.lock:
        if vm.status == "image_locked":
            raise conflict("update Interface", "VM is locked. Please try again in a few minutes.")
        nic.plugged = plugged


def remove_nic(engine: Engine, vm: Vm, nic: Nic) -> None:
    """The engine refuses to remove a plugged NIC of a VM that is not down: unplug it first."""
    with engine.lock:
        if vm.status not in ("down", "image_locked") and nic.plugged:
            raise conflict("remove Interface", "Active device cannot be removed, please unplug it first.")
        vm.nics.remove(nic)


# -- cloud-init ---------------------------------------------------------------------------------


def payload_at_start(vm: Vm, run_once: dict[str, object] | None, use_cloud_init: bool | None) -> None:
    """Record the cloud-init payload the engine attaches to this run, if it attaches one.

    A run-once ``Initialization`` in the start request wins; else the VM's own one, on its
    first run or when the request says ``use_cloud_init``. ``use_cloud_init=false`` attaches none.
    """
    init = run_once if run_once is not None else vm.initialization
    first = not vm.initialized
    vm.initialized = True
    if init is None or use_cloud_init is False or not (use_cloud_init or first or run_once is not None):
        return
    vm.payload = dict(init)


# -- what a guest agent reports ---------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    id: str
    name: str
    mac: str
    ips: tuple[tuple[str, str], ...]
    nic_id: str


def _has_agent(engine: Engine, vm: Vm) -> bool:
    tpl = engine.templates.get(vm.template_id)
    return tpl is not None and tpl.agent


def reported_devices(engine: Engine, vm: Vm) -> list[Device]:
    """What the VM's guest agent reports: nothing until it has been up :data:`AGENT_DELAY` seconds."""
    if vm.status != "up" or vm.start_time is None or not _has_agent(engine, vm):
        return []
    if (now() - vm.start_time).total_seconds() < AGENT_DELAY:
        return []
    # Agents report the loopback device too (a MAC of zeros), which is no NIC of the VM.
    loopback = str(uuid.uuid5(uuid.NAMESPACE_OID, f"{vm.id}/lo"))
    out = [Device(loopback, "lo", "00:00:00:00:00:00", (("127.0.0.1", "v4"), ("::1", "v6")), "")]
    for n, nic in enumerate(vm.nics):
        if not nic.plugged:
            continue
        ips: list[tuple[str, str]] = []
        profile = engine.vnic_profiles.get(nic.profile_id or "")
        network = engine.networks.get(profile.network_id) if profile is not None else None
        if network is not None:
            subnet = ipaddress.ip_network(network.subnet)
            host = 100 + zlib.crc32(nic.mac.encode()) % (subnet.num_addresses - 110)
            ips.append((str(subnet.network_address + host), "v4"))
        octets = [int(x, 16) for x in nic.mac.split(":")]
        eui = [octets[0] ^ 2, *octets[1:3], 0xFF, 0xFE, *octets[3:]]
        ips.append((str(ipaddress.IPv6Address(bytes([0xFE, 0x80, *([0] * 6), *eui]))), "v6"))
        device_id = str(uuid.uuid5(uuid.NAMESPACE_OID, f"{vm.id}/{nic.mac}"))
        out.append(Device(device_id, f"eth{n}", nic.mac, tuple(ips), nic.id))
    return out


# -- statistics ---------------------------------------------------------------------------------


def _up_seconds(vm: Vm) -> float:
    if vm.status not in ("up", "migrating", "reboot_in_progress", "powering_down") or vm.start_time is None:
        return 0.0
    return max((now() - vm.start_time).total_seconds(), 0.0)


def vm_statistics(vm: Vm) -> list[tuple[str, str, str, str, str, float]]:
    """(name, description, kind, type, unit, value) as the engine lists them for a VM."""
    up = _up_seconds(vm)
    running = up > 0
    used = vm.memory * 3 // 10 if running else 0
    cpu = 3.0 + (zlib.crc32(vm.id.encode()) % 20) / 10 if running else 0.0
    return [
        ("memory.installed", "Total memory configured", "gauge", "integer", "bytes", vm.memory),
        ("memory.used", "Memory used (agent)", "gauge", "integer", "bytes", used),
        ("memory.free", "Memory free (agent)", "gauge", "integer", "bytes", vm.memory - used if running else 0),
        ("cpu.current.guest", "CPU used by guest", "gauge", "decimal", "percent", cpu),
        ("cpu.current.hypervisor", "CPU overhead", "gauge", "decimal", "percent", 0.2 if running else 0.0),
        ("cpu.current.total", "Total CPU used", "gauge", "decimal", "percent", cpu + 0.2 if running else 0.0),
        ("network.current.total", "Total network used", "gauge", "decimal", "percent", 0.0),
        ("elapsed.time", "Elapsed VM runtime", "gauge", "integer", "seconds", int(up)),
    ]


def nic_statistics(vm: Vm, nic: Nic) -> list[tuple[str, str, str, str, str, float]]:
    """A NIC's rates and its cumulative byte counters (which restart with the VM's process)."""
    up = _up_seconds(vm) if nic.plugged else 0.0
    return [
        ("data.current.rx", "Receive data rate", "gauge", "decimal", "bytes_per_second", 1500.0 if up else 0.0),
        ("data.current.tx", "Transmit data rate", "gauge", "decimal", "bytes_per_second", 500.0 if up else 0.0),
        ("data.total.rx", "Total received data", "counter", "integer", "bytes", int(up * 1500)),
        ("data.total.tx", "Total transmitted data", "counter", "integer", "bytes", int(up * 500)),
        ("errors.total.rx", "Total receive errors", "counter", "integer", "none", 0),
        ("errors.total.tx", "Total transmit errors", "counter", "integer", "none", 0),
    ]


# -- consoles -------------------------------------------------------------------------------------


def console_ids(vm: Vm) -> dict[str, str]:
    """The VM's graphics consoles (SPICE and VNC), with ids stable per VM as the engine's device ids are."""
    return {proto: str(uuid.uuid5(uuid.NAMESPACE_OID, f"{vm.id}/{proto}")) for proto in ("spice", "vnc")}


def console_port(vm: Vm, protocol: str) -> int:
    """Where a running VM's console listens on its host: from 5900 up, as libvirt allocates them."""
    slot = zlib.crc32(vm.id.encode()) % 500
    return 5900 + 2 * slot + (1 if protocol == "vnc" else 0)


def ticket(engine: Engine, vm: Vm, expiry: int | None) -> tuple[str, int]:
    """A one-time console password, set on the running VM's display (the engine's ``SetVmTicket``)."""
    if vm.status != "up":
        raise conflict("set console ticket", "VM is not running.")
    value = secrets.token_urlsafe(12)
    lifetime = TICKET_EXPIRY if expiry is None or expiry <= 0 else expiry
    vm.tickets = [*vm.tickets[-4:], value]
    return value, lifetime
