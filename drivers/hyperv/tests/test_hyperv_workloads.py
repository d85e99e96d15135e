"""Workloads on Hyper-V (contract 1.2) against the in-process simulator, over real pywinrm and HTTPS.

What the conformance suite cannot see from outside: that a failed create from an image leaves no VM,
no differencing disk and no seed; that a parent VHDX is never written while it has children; the
seed's exact bytes; KVP addresses appearing only after boot and going with the guest; counters that
never go down; and typed errors before anything is made.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Iterator
from typing import Any

import pytest

from virtdrivers.errors import InvalidSpec, NotFound
from virtdrivers.objects import InstanceSpec, NicSpec, PowerState
from virtdrivers_hyperv import mapping
from virtdrivers_hyperv.driver import HypervDriver
from virtdrivers_hyperv.simulator import Simulator
from virtdrivers_hyperv.simulator.model import PSFault

IMAGE = "debian-12-genericcloud.vhdx"
INVENTORY: dict[str, Any] = {
    "vms": [],
    "images": [{"name": IMAGE, "size_gib": 2, "used_mib": 600}],
    "boot_seconds": 0.3,
}


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(user="admin", password="pw-wl", https=True, inventory=INVENTORY) as s:
        yield s


@pytest.fixture
def driver(sim: Simulator) -> Iterator[HypervDriver]:
    settings = {"host": "127.0.0.1", "port": sim.port, "user": "admin", "password": "pw-wl"}
    with HypervDriver(settings, transport="basic", ca_file=str(sim.ca_file)) as d:
        yield d
        for info in d.list_instances():
            with contextlib.suppress(NotFound):
                d.destroy(info.id)


def _spec(name: str, **kw: Any) -> InstanceSpec:
    fields: dict[str, Any] = {"name": name, "vcpus": 1, "memory_mb": 256}
    fields.update(kw)
    return InstanceSpec(**fields)


def _files(sim: Simulator) -> list[str]:
    """Every VHDX, folder and plain file outside the image library: what a create may leave behind."""
    state = sim.model.snapshot_state()
    return [p for p in state["vhds"] + state["dirs"] + state["files"] if "\\images\\" not in p]


def test_a_failed_create_from_an_image_leaves_no_vm_no_differencing_disk_and_no_seed(
    sim: Simulator, driver: HypervDriver
) -> None:
    full = {
        "image": IMAGE,
        "disks": [{"size_gib": 1}],
        "nics": [{"network": "vd-external"}],
        "user_data": {"user_data": "#cloud-config\n"},
    }
    # Fails in the create script (Set-VMMemory: VM, root, seed and data disk all exist by then) ...
    sim.model.arm_fault("Set-VMMemory")
    with pytest.raises(Exception, match="Cluster Shared Volume"):
        driver.create(_spec("half-a", **full))
    assert sim.model.snapshot_state()["vms"] == {}
    assert _files(sim) == []
    # A typed refusal by the host (more vCPUs than the node has): no purge runs after it in the driver,
    # so the create script's own rollback alone must take the root disk and the seed with the VM.
    with pytest.raises(InvalidSpec):
        driver.create(_spec("half-c", **{**full, "vcpus": 64, "disks": []}))
    assert sim.model.snapshot_state()["vms"] == {}
    assert _files(sim) == []
    # powershell.exe dying in the prepare script (no catch runs): the driver purges the folder by its token.
    sim.model.arm_crash("New-VHD")
    with pytest.raises(Exception, match="pipeline"):
        driver.create(_spec("half-d", **full))
    assert sim.model.snapshot_state()["vms"] == {}
    assert _files(sim) == []
    # ... and in the prepare script: at the root disk (its folder exists by then), and at the seed.
    for spec in (full, {"user_data": {"user_data": "#cloud-config\n"}}):
        sim.model.arm_fault("New-VHD")
        with pytest.raises(Exception, match="Cluster Shared Volume"):
            driver.create(_spec("half-b", **spec))
        assert sim.model.snapshot_state()["vms"] == {}
        assert _files(sim) == []


def test_unknown_images_and_switches_are_typed_errors_before_anything_is_made(
    sim: Simulator, driver: HypervDriver
) -> None:
    with pytest.raises(InvalidSpec) as err:
        driver.create(_spec("no-image", image="no-such-image", user_data={"user_data": "x"}))
    assert err.value.field == "image"
    with pytest.raises(InvalidSpec) as err:
        driver.create(_spec("no-switch", nics=[{"network": "vd-external"}, {"network": "no-such-switch"}]))
    assert err.value.field == "nics.1.network"
    with pytest.raises(InvalidSpec) as err:
        driver.create(_spec("bad-model", nics=[{"network": "vd-external", "model": "e1000"}]))
    assert err.value.field == "nics.0.model"
    assert sim.model.snapshot_state()["vms"] == {}
    assert _files(sim) == []


def test_cow_roots_are_differencing_children_and_the_parent_is_never_written(
    sim: Simulator, driver: HypervDriver
) -> None:
    before = {i.id: i for i in driver.list_images()}[IMAGE]
    a = driver.create(_spec("cow-a", image=IMAGE))
    b = driver.create(_spec("cow-b", image=IMAGE, image_mode="copy"))
    c = driver.create(_spec("cow-c", image="debian-12-genericcloud"))  # by name as well as by id
    time.sleep(0.2)  # the guests run (and write their disks) for a while
    roots = [sim.model.vhds[i.disks[0].id.lower()] for i in (a, b, c)]
    library = f"{sim.model.wl.library}\\{IMAGE}"
    assert [r.parent for r in roots] == [library, None, library]
    assert all(r.used > 0 for r in roots), "the guests wrote their root disks"
    assert (a.image, b.image, c.image) == (IMAGE, IMAGE, IMAGE)
    assert driver.get_instance(b.id).image == IMAGE
    after = {i.id: i for i in driver.list_images()}[IMAGE]
    assert after == before, "the image changed while instances ran from it"
    # The model refuses any write to a parent with children, and removal while a child runs.
    vm = sim.model.vm(a.id)
    assert vm is not None
    with sim.model.lock, pytest.raises(PSFault, match="parent"):
        sim.model.add_drive(vm, library)
    with sim.model.lock, pytest.raises(PSFault, match="being used"):
        sim.model.remove_item(library)


def test_the_seed_holds_exactly_the_user_data_hostname_and_network_config(sim: Simulator, driver: HypervDriver) -> None:
    user_data = "#cloud-config\r\nruncmd: [echo 'héllo ✓']\n"
    network = "version: 2\nethernets: {eth0: {dhcp4: true}}\n"
    info = driver.create(
        _spec("seeded", user_data={"user_data": user_data, "hostname": "web-1", "network_config": network})
    )
    vm = sim.model.vm(info.id)
    assert vm is not None
    files = sim.model.wl.carrier(vm, "cidata")
    assert files is not None
    assert files["user-data"] == user_data.encode("utf-8")
    assert files["network-config"] == network.encode("utf-8")
    meta = files["meta-data"].decode()
    assert "local-hostname: web-1\n" in meta
    assert meta.startswith("instance-id: vdc1-")
    assert info.disks == (), "the seed is not one of the instance's disks"
    plain = driver.create(_spec("unseeded"))
    plain_vm = sim.model.vm(plain.id)
    assert plain_vm is not None
    assert sim.model.wl.carrier(plain_vm, "cidata") is None


def test_kvp_addresses_appear_after_boot_and_go_with_the_guest(sim: Simulator, driver: HypervDriver) -> None:
    mac = "52:54:00:ab:cd:ef"
    info = driver.create(
        _spec("addressed", nics=[{"network": "vd-external", "mac": mac}, {"network": "vd-private"}], start=False)
    )
    assert info.nics[0].mac == mac
    assert driver.list_instances()[0].nics == info.nics, "the bulk listing carries the NICs too"
    assert driver.guest_addresses(info.id) == []
    driver.power_on(info.id)
    assert driver.guest_addresses(info.id) == [], "no address before the guest has booted"
    time.sleep(0.4)
    found = {a.mac: a for a in driver.guest_addresses(info.id)}
    assert set(found) == {n.mac for n in info.nics}
    assert found[mac].source == "kvp"
    assert any(a.startswith("192.168.50.") for a in found[mac].addresses)
    private = found[info.nics[1].mac].addresses
    assert all(a.startswith("fe80::") for a in private), "a switch without DHCP gives a link-local address only"
    driver.power_off(info.id, force=True)
    assert driver.guest_addresses(info.id) == []


def test_nics_hot_plug_on_a_running_instance_and_bad_ones_are_typed(sim: Simulator, driver: HypervDriver) -> None:
    info = driver.create(_spec("plugged"))
    assert info.power_state == PowerState.RUNNING
    assert info.nics == ()
    nic = driver.attach_nic(info.id, NicSpec(network="vd-internal"))
    assert nic.network == "vd-internal"
    assert nic.mac not in ("", "00:00:00:00:00:00")
    assert driver.get_instance(info.id).nics == (nic,)
    with pytest.raises(InvalidSpec) as err:
        driver.attach_nic(info.id, NicSpec(network="no-such-switch"))
    assert err.value.field == "nic.network"
    driver.detach_nic(info.id, nic.id)
    assert driver.get_instance(info.id).nics == ()
    with pytest.raises(NotFound):
        driver.detach_nic(info.id, nic.id)


def test_metering_counters_grow_while_running_and_never_go_down(sim: Simulator, driver: HypervDriver) -> None:
    info = driver.create(_spec("metered", vcpus=2, nics=[{"network": "vd-external"}]))
    first = driver.instance_metrics(info.id)
    time.sleep(0.3)
    second = driver.instance_metrics(info.id)
    assert (second.cpu_time_ns or 0) > (first.cpu_time_ns or 0)
    assert second.memory_used_mb
    driver.power_off(info.id, force=True)
    third = driver.instance_metrics(info.id)
    time.sleep(0.2)
    fourth = driver.instance_metrics(info.id)
    for counter in ("cpu_time_ns", "disk_read_bytes", "disk_write_bytes", "net_rx_bytes", "net_tx_bytes"):
        values = [getattr(m, counter) or 0 for m in (first, second, third, fourth)]
        assert values == sorted(values), f"{counter} went down: {values}"
    # Off, the guest uses no CPU: the cumulative CPU time stands still (within the integer MHz rounding).
    assert abs((fourth.cpu_time_ns or 0) - (third.cpu_time_ns or 0)) < 0.05 * (third.cpu_time_ns or 1)


def test_console_connection_is_vmconnects_rdp_port_on_the_vms_host(sim: Simulator, driver: HypervDriver) -> None:
    info = driver.create(_spec("console"))
    conn = driver.console_connection(info.id)
    assert (conn.kind, conn.host, conn.port, conn.ticket) == ("rdp", info.node, 2179, None)


def test_mapping_of_macs_addresses_and_reports() -> None:
    assert mapping.mac_from("00155D0A0B0C") == "00:15:5d:0a:0b:0c"
    assert mapping.mac_to("52:54:00:ab:cd:ef") == "525400ABCDEF"
    # IPAddresses as an array, one address unwrapped, or joined by ConvertTo-Json past its -Depth.
    for value in (["10.0.0.5", "fe80::1"], "10.0.0.5 fe80::1"):
        assert mapping.ip_list(value) == ("10.0.0.5", "fe80::1")
    now = datetime.datetime.now(datetime.UTC)
    assert mapping.addresses_from([{"MacAddress": "00155D000001", "IPAddresses": [], "Kvp": True}], now) == []
    off = [{"MacAddress": "00155D000001", "IPAddresses": ["10.0.0.5"], "Kvp": False}]
    assert mapping.addresses_from(off, now) == [], "without the KVP service nothing the guest says is trusted"
    report = {"Mhz": 240, "Clock": 2400, "Secs": 10.0, "Ram": 512, "Read": 3, "Written": 1, "In": None, "Out": 2}
    m = mapping.metrics_from(report, "id", now)
    assert (m.cpu_time_ns, m.memory_used_mb, m.disk_read_bytes, m.net_rx_bytes) == (10**9, 512, 3 * 2**20, None)
    assert mapping.metrics_from({}, "id", now).cpu_time_ns is None


def test_disks_of_running_vms_are_read_on_their_own_node(sim: Simulator, driver: HypervDriver) -> None:
    """Get-VHD's documentation: a VHD in use on shared storage is readable only from the host using it.

    The listing asks each node for its own VMs' disks, so VMs running on every node list with their sizes;
    the model refuses the same read from another node.
    """
    made = [driver.create(_spec(f"spread-{n}", node=n, disks=[{"size_gib": 1}])) for n in ("HV-NODE2", "HV-NODE3")]
    listed = {i.id: i for i in driver.list_instances()}
    assert all(listed[m.id].disks[0].size_gib == 1 for m in made)
    vm = sim.model.vm(made[0].id)
    assert vm is not None
    with sim.model.lock, pytest.raises(PSFault, match="being used by another process"):
        sim.model.get_vhd(vm.drives[0], host="HV-NODE1")
