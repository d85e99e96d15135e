"""Workloads (contract 1.2) on oVirt, against the simulator through the real SDK: templates as images
with their disk chains, vNIC profiles and NICs, cloud-init Initialization, reported devices, console
tickets and statistics; what reaches the engine, and what never does."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Any

import pytest

from virtdrivers.errors import InstanceNotFound, InvalidSpec, InvalidState, NotFound, NotSupported
from virtdrivers.objects import ImageMode, InstanceSpec, NicSpec, PowerState
from virtdrivers_ovirt.driver import OvirtDriver
from virtdrivers_ovirt.simulator import Simulator
from virtdrivers_ovirt.simulator import model as sim_model
from virtdrivers_ovirt.simulator import workloads as sim_workloads

CLOUD_CONFIG = "#cloud-config\nruncmd:\n  - [echo, 'hello \" < & wörld']\n"


def _spec(name: str, **kw: object) -> InstanceSpec:
    fields: dict[str, object] = {"name": name, "vcpus": 1, "memory_mb": 256, "disks": []}
    fields.update(kw)
    return InstanceSpec(**fields)  # type: ignore[arg-type]


def _template(sim: Simulator) -> sim_workloads.Template:
    return next(iter(sim.engine.templates.values()))


def _profile(sim: Simulator, name: str) -> str:
    return next(p.id for p in sim.engine.vnic_profiles.values() if p.name == name)


def _changes(sim: Simulator) -> dict[str, int]:
    """Requests that change something on the engine (any method but GET), by shape."""
    return {k: v for k, v in sim.requests.items() if not k.startswith("GET ")}


def _knob(sim: Simulator, what: str, args: dict[str, Any]) -> dict[str, Any]:
    from virtdrivers_ovirt.simulator.server import _Handler

    reply = _Handler._knob(sim.engine, what, args)
    assert reply is not None
    return reply


def _wait(what: str, probe: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.05)
    pytest.fail(f"{what} did not happen within {timeout} s")


# -- images: templates and their disk chains ------------------------------------------------------


def test_templates_with_disks_are_the_images_and_blank_is_not(sim: Simulator, driver: OvirtDriver) -> None:
    tpl = _template(sim)
    images = driver.list_images()
    assert [i.id for i in images] == [tpl.id]
    image = images[0]
    root = sim.engine.disks[tpl.attachments[0].disk_id]
    assert (image.name, image.disk_format, image.virtual_size_bytes) == (tpl.name, "qcow2", root.provisioned_size)
    assert (image.min_disk_gib, image.os_type, image.os_distro) == (2, "linux", "debian_12")


@pytest.mark.parametrize("mode", [ImageMode.COW, None, ImageMode.COPY])
def test_a_vm_from_a_template_gets_a_thin_child_or_a_copy_and_keeps_its_lineage(
    sim: Simulator, driver: OvirtDriver, mode: ImageMode | None
) -> None:
    tpl = _template(sim)
    base = sim.engine.disks[tpl.attachments[0].disk_id]
    before = (base.actual_size, base.status, base.description)
    during: list[str] = []

    def progress(fraction: float, message: str) -> None:
        if message == "starting":  # the disks are made, the create is not complete yet
            vm = next(v for v in sim.engine.vms.values() if v.name == f"from-tpl-{mode}")
            during.extend(sim.engine.disks[a.disk_id].description for a in vm.attachments)

    spec = _spec(f"from-tpl-{mode}", image=tpl.name, image_mode=mode, disks=[{"size_gib": 1}])
    info = driver.create(spec, progress=progress)
    assert len(during) == 2
    assert all(d.startswith("virtdrivers create ") for d in during), "every disk carries the create token"
    assert info.image == tpl.id
    assert [d.size_gib for d in info.disks] == [2, 1], "the template's root disk first, then the spec's"
    vm = sim.engine.vms[info.id]
    assert vm.template_id == tpl.id
    root = sim.engine.disks[vm.attachments[0].disk_id]
    assert vm.attachments[0].bootable
    assert not vm.attachments[1].bootable
    if mode == ImageMode.COPY:
        assert root.parent_id is None
        assert root.actual_size == base.actual_size
    else:  # copy-on-write is what an unasked create gets
        assert root.parent_id == base.id
        assert root.actual_size < base.actual_size
    assert root.description == "", "the create token is cleared from the template disk's copy too"
    assert (base.actual_size, base.status, base.description) == before, "the template disk was written"
    assert driver.get_instance(info.id).image == tpl.id


def test_an_unknown_or_ambiguous_template_is_refused_before_any_change(sim: Simulator, driver: OvirtDriver) -> None:
    sim.requests.clear()
    with pytest.raises(InvalidSpec) as err:
        driver.create(_spec("no-tpl", image="no-such-template"))
    assert err.value.field == "image"
    with pytest.raises(InvalidSpec) as err:
        driver.create(_spec("blank-tpl", image="Blank"))  # no disk: not an image
    assert err.value.field == "image"
    with sim.engine.lock:
        sim_workloads.add_template(sim.engine, _template(sim).name, 1024**3, "other", agent=False)
    with pytest.raises(InvalidSpec) as err:
        driver.create(_spec("two-tpl", image=_template(sim).name))
    assert err.value.field == "image"
    assert "give the template's id" in str(err.value)
    assert _changes(sim) == {}


def test_a_create_from_a_template_that_fails_half_way_leaves_no_vm_and_no_disk(
    sim: Simulator, driver: OvirtDriver
) -> None:
    disks_before, vms_before = set(sim.engine.disks), set(sim.engine.vms)
    sim.engine.fail_next_create()
    with pytest.raises(InvalidState):
        driver.create(_spec("broken-copy", image=_template(sim).id, nics=[{"network": "ovirtmgmt"}]))
    _wait("the half-made VM to go", lambda: set(sim.engine.vms) == vms_before)
    _wait("its disks to go", lambda: set(sim.engine.disks) == disks_before)


# -- networks and NICs ---------------------------------------------------------------------------


def test_profiles_are_the_networks_and_nics_keep_profile_mac_and_model(sim: Simulator, driver: OvirtDriver) -> None:
    nets = {n.name: n for n in driver.list_networks()}
    assert set(nets) == {"ovirtmgmt", "vm-net", "vm-net-mirror"}
    assert {n.kind for n in nets.values()} == {"vnic-profile"}
    info = driver.create(
        _spec(
            "nics",
            start=False,
            nics=[
                {"network": "vm-net", "mac": "52:54:00:aa:bb:01", "model": "e1000"},
                {"network": nets["ovirtmgmt"].id},
            ],
        )
    )
    assert [(n.network, n.mac, n.model) for n in info.nics] == [
        (nets["vm-net"].id, "52:54:00:aa:bb:01", "e1000"),
        (nets["ovirtmgmt"].id, sim.engine.vms[info.id].nics[1].mac, "virtio"),
    ]
    engine_nics = sim.engine.vms[info.id].nics
    assert [(n.name, n.profile_id, n.interface) for n in engine_nics] == [
        ("nic1", nets["vm-net"].id, "e1000"),
        ("nic2", nets["ovirtmgmt"].id, "virtio"),
    ]
    assert driver.list_instances()[0].nics == info.nics


def test_bad_nics_are_refused_before_any_change(sim: Simulator, driver: OvirtDriver) -> None:
    sim.requests.clear()
    with pytest.raises(InvalidSpec) as err:
        driver.create(_spec("bad-net", nics=[{"network": "no-such-profile"}]))
    assert err.value.field == "nics.0.network"
    with pytest.raises(InvalidSpec) as err:
        driver.create(_spec("bad-model", nics=[{"network": "vm-net"}, {"network": "vm-net", "model": "vmxnet3"}]))
    assert err.value.field == "nics.1.model"
    assert _changes(sim) == {}


def test_a_mac_another_vm_holds_is_the_callers_error_and_the_create_leaves_nothing(
    sim: Simulator, driver: OvirtDriver
) -> None:
    pet_mac = next(v for v in sim.engine.vms.values() if v.name == "pet-1").nics[0].mac
    vms_before = set(sim.engine.vms)
    with pytest.raises(InvalidSpec) as err:
        driver.create(_spec("dup-mac", nics=[{"network": "vm-net", "mac": pet_mac}]))
    assert err.value.field == "nics.0.mac"
    _wait("the half-made VM to go", lambda: set(sim.engine.vms) == vms_before)


def test_hot_unplug_comes_before_removal_on_a_running_vm(sim: Simulator, driver: OvirtDriver) -> None:
    info = driver.create(_spec("hotplug", nics=[{"network": "ovirtmgmt"}]))
    nic = driver.attach_nic(info.id, NicSpec(network="vm-net-mirror"))
    engine_nic = sim_workloads.nic_of(sim.engine.vms[info.id], nic.id)
    assert (engine_nic.name, engine_nic.plugged, nic.network) == ("nic2", True, _profile(sim, "vm-net-mirror"))
    sim.requests.clear()
    driver.detach_nic(info.id, nic.id)
    assert sim.requests["POST /vms/{id}/nics/{id}/deactivate"] == 1
    assert [n.id for n in sim.engine.vms[info.id].nics] == [info.nics[0].id]
    assert driver.get_instance(info.id).power_state == PowerState.RUNNING
    with pytest.raises(NotFound):
        driver.detach_nic(info.id, nic.id)
    # The engine's rule the driver works with: a plugged NIC of a running VM cannot be removed.
    with pytest.raises(sim_model.EngineFault) as fault:
        sim_workloads.remove_nic(sim.engine, sim.engine.vms[info.id], sim.engine.vms[info.id].nics[0])
    assert fault.value.status == 409
    with pytest.raises(NotFound):
        driver.detach_nic(info.id, "../hosts")
    with pytest.raises(InvalidSpec) as err:
        driver.attach_nic(info.id, NicSpec(network="nope"))
    assert err.value.field == "nic.network"


# -- user data: Initialization ------------------------------------------------------------------


def test_user_data_lands_in_initialization_and_the_first_runs_payload(sim: Simulator, driver: OvirtDriver) -> None:
    info = driver.create(
        _spec("ud-vm", image=_template(sim).id, user_data={"user_data": CLOUD_CONFIG, "hostname": "web-1"})
    )
    vm = sim.engine.vms[info.id]
    assert vm.initialization == {
        "custom_script": CLOUD_CONFIG,
        "host_name": "web-1",
        "cloud_init_network_protocol": "openstack_metadata",
    }
    assert vm.payload == vm.initialization, "the engine attached the cloud-init payload to the first run"
    vm.payload = None
    driver.power_off(info.id, force=True)
    driver.power_on(info.id)
    assert vm.payload is None, "a later run gets no new payload (cloud-init ran once)"
    plain = driver.create(_spec("no-ud", start=False))
    assert sim.engine.vms[plain.id].initialization is None


def test_user_data_of_a_vm_created_stopped_reaches_its_first_run(sim: Simulator, driver: OvirtDriver) -> None:
    info = driver.create(_spec("later", start=False, user_data={"user_data": "#cloud-config\r\nx: 1\r\n"}))
    vm = sim.engine.vms[info.id]
    assert vm.payload is None
    with sim.engine.lock:  # the endpoint's read_user_data: the drive the first run will get
        assert _knob(sim, "carrier", {"vm": info.id})["user_data"] == "#cloud-config\r\nx: 1\r\n"
    assert vm.initialization is not None
    assert vm.initialization["host_name"] == "later"
    driver.power_on(info.id)
    assert vm.payload is not None
    assert vm.payload["custom_script"] == "#cloud-config\r\nx: 1\r\n", "CR LF kept"


@pytest.mark.parametrize(
    ("user_data", "field"),
    [
        ({"user_data": "#!/bin/sh\necho hi\n"}, "user_data.user_data"),
        ({"user_data": "Content-Type: multipart/mixed\n"}, "user_data.user_data"),
        ({"user_data": "#cloud-config\nx: \x01\n"}, "user_data.user_data"),
        ({"user_data": "#cloud-config\n", "network_config": "version: 2\n"}, "user_data.network_config"),
    ],
)
def test_user_data_the_engine_cannot_carry_is_refused_before_any_change(
    sim: Simulator, driver: OvirtDriver, user_data: dict[str, str], field: str
) -> None:
    sim.requests.clear()
    with pytest.raises(InvalidSpec) as err:
        driver.create(_spec("bad-ud", user_data=user_data))
    assert err.value.field == field
    assert sim.requests == {}, "nothing at all was asked of the engine"


# -- addresses, console, statistics ---------------------------------------------------------------


def test_addresses_come_from_the_agent_after_start_and_only_for_the_vms_nics(
    sim: Simulator, driver: OvirtDriver
) -> None:
    nics = [{"network": "ovirtmgmt"}, {"network": "vm-net"}]
    stopped = driver.create(_spec("addr-off", start=False, image=_template(sim).id, nics=nics))
    assert driver.guest_addresses(stopped.id) == []
    blank = driver.create(_spec("addr-blank", nics=nics))  # no OS, no agent
    info = driver.create(_spec("addr-on", image=_template(sim).id, nics=nics))
    found = _wait("the agent's addresses", lambda: driver.guest_addresses(info.id))
    assert [a.mac for a in found] == [n.mac for n in info.nics]
    assert {a.source for a in found} == {"agent"}
    assert all("/" not in address for a in found for address in a.addresses), "the agent gave no prefix"
    assert ipaddress.ip_address(found[0].addresses[0]) in ipaddress.ip_network("192.0.2.0/24")
    assert ipaddress.ip_address(found[1].addresses[0]) in ipaddress.ip_network("198.51.100.0/24")
    assert all(ipaddress.ip_address(a.addresses[1]).is_link_local for a in found)
    assert driver.guest_addresses(blank.id) == []
    bulk = driver.all_guest_addresses()
    assert [a.mac for a in bulk[info.id]] == [a.mac for a in found]
    assert bulk[stopped.id] == []
    assert bulk[blank.id] == []
    pets = {v.id for v in sim.engine.vms.values() if v.name.startswith("pet-")}
    assert not pets & set(bulk), "unmanaged VMs are not listed"
    assert pets <= set(driver.all_guest_addresses(managed_only=False))


def test_the_bulk_addresses_cost_one_request_per_page(sim: Simulator, driver: OvirtDriver) -> None:
    for n in range(5):
        driver.create(_spec(f"bulk-{n}", start=False, nics=[{"network": "vm-net"}]))
    small = OvirtDriver(sim.settings(), page_size=3)
    with small:
        sim.requests.clear()
        assert len(small.all_guest_addresses()) == 5
        assert dict(sim.requests) == {"GET /vms": 3}  # 7 VMs in pages of 3


def test_console_ticket_is_a_secret_for_the_preferred_console(sim: Simulator, driver: OvirtDriver) -> None:
    info = driver.create(_spec("console"))
    conn = driver.console_connection(info.id)
    vm = sim.engine.vms[info.id]
    assert conn.kind == "vnc"
    assert (conn.host, conn.port) == (sim.engine.hosts[vm.host_id or ""].address, sim_workloads.console_port(vm, "vnc"))
    assert conn.ticket is not None
    assert conn.ticket.get_secret_value() == vm.tickets[-1]
    assert vm.tickets[-1] not in repr(conn)
    assert vm.tickets[-1] not in str(conn)
    assert conn.expires_at is not None
    driver.power_off(info.id, force=True)
    with pytest.raises(InvalidState):
        driver.console_connection(info.id)


def test_statistics_give_memory_and_network_counters_but_no_cpu_time(sim: Simulator, driver: OvirtDriver) -> None:
    info = driver.create(_spec("stats", nics=[{"network": "vm-net"}]))
    first = driver.instance_statistics(info.id)
    second = _wait(
        "the NIC counters growing",
        lambda: (s := driver.instance_statistics(info.id)).net_rx_bytes > (first.net_rx_bytes or 0) and s,
    )
    assert second.memory_used_mb is not None
    assert 0 < second.memory_used_mb <= 256
    assert (second.net_tx_bytes or 0) >= (first.net_tx_bytes or 0)
    assert second.cpu_time_ns is None, "the engine has no cumulative CPU time"
    with pytest.raises(NotSupported):
        driver.instance_metrics(info.id)  # the contract's METRICS is not offered


# -- pets ---------------------------------------------------------------------------------------


def test_adopting_a_pet_keeps_its_nics_and_template_lineage(sim: Simulator, driver: OvirtDriver) -> None:
    pet = next(p for p in driver.list_unmanaged() if p.name == "pet-2")
    engine_vm = sim.engine.vms[pet.id]
    nics = [(n.id, n.mac, n.profile_id, n.plugged) for n in engine_vm.nics]
    disk = sim.engine.disks[engine_vm.attachments[0].disk_id]
    assert pet.image == _template(sim).id
    assert len(pet.nics) == 2
    with pytest.raises(InstanceNotFound):
        driver.guest_addresses(pet.id)  # not ours until adopted
    adopted = driver.adopt(pet.id)
    assert (adopted.image, adopted.nics) == (pet.image, pet.nics)
    assert [(n.id, n.mac, n.profile_id, n.plugged) for n in engine_vm.nics] == nics
    assert engine_vm.template_id == _template(sim).id
    assert disk.parent_id == _template(sim).attachments[0].disk_id, "the disk chain is untouched"
    found = _wait("the pet's agent addresses", lambda: driver.guest_addresses(pet.id))
    assert [a.mac for a in found] == [n.mac for n in pet.nics]


def test_an_engine_restart_keeps_templates_profiles_nics_and_initialization(
    sim: Simulator, driver: OvirtDriver, tmp_path: Any
) -> None:
    from virtdrivers_ovirt.simulator import Engine, persist

    info = driver.create(
        _spec("kept", image=_template(sim).id, nics=[{"network": "vm-net"}], user_data={"user_data": CLOUD_CONFIG})
    )
    path = tmp_path / "engine.json"
    with sim.engine.lock:
        persist.save(sim.engine, path)
    again = Engine(hosts=1)
    try:
        assert persist.load(again, path)
        assert again.templates == sim.engine.templates
        assert again.networks == sim.engine.networks
        assert again.vnic_profiles == sim.engine.vnic_profiles
        before, after = sim.engine.vms[info.id], again.vms[info.id]
        assert (after.nics, after.template_id) == (before.nics, before.template_id)
        assert (after.initialization, after.initialized, after.payload) == (
            before.initialization,
            True,
            before.payload,
        )
        assert [again.disks[a.disk_id].parent_id for a in after.attachments] == [
            sim.engine.disks[a.disk_id].parent_id for a in before.attachments
        ]
    finally:
        again.close()


def test_a_profile_name_two_networks_share_must_be_given_by_id() -> None:
    from types import SimpleNamespace as NS

    from virtdrivers_ovirt import network

    profiles = [
        NS(id="p1", name="default", network=NS(id="n1", name="blue")),
        NS(id="p2", name="default", network=NS(id="n2", name="red")),
        NS(id="p3", name="solo", network=NS(id="n2", name="red")),
    ]
    with pytest.raises(InvalidSpec) as err:
        network.resolve(profiles, [NicSpec(network="solo"), NicSpec(network="default")], "nics")
    assert err.value.field == "nics.1.network"
    assert "blue, red" in str(err.value)
    plans = network.resolve(profiles, [NicSpec(network="p2"), NicSpec(network="solo", model="e1000")], "nics")
    assert [(p.profile_id, p.interface) for p in plans] == [("p2", "virtio"), ("p3", "e1000")]
