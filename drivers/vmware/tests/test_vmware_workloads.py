"""Workloads on vSphere against vcsim over HTTPS: templates and clones, port groups and NICs,
guestinfo user data, guest addresses and the webmks console, through the real pyVmomi.

One vcsim serves the module, with a template made the way an administrator makes one.
What vcsim stores is read back over a separate pyVmomi session (``admin``), and what it
writes to its datastore is read from the directory it keeps under our scratch dir.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from virtdrivers import (
    DiskSpec,
    DriverError,
    ImageMode,
    InstanceNotFound,
    InstanceSpec,
    InvalidSpec,
    InvalidState,
    NicSpec,
    NotFound,
    NotSupported,
    UserData,
)
from virtdrivers_vmware import VSphereDriver, guest_io, images, network
from virtdrivers_vmware.simulator import Vcsim
from virtdrivers_vmware.simulator.vcsim import TEMPLATE_NAME, make_template, set_fault
from virtdrivers_vmware.simulator.wire import count_round_trips

#: The calls a create may make before it has decided the spec is good: reads only.
READS = {"RetrievePropertiesEx", "ContinueRetrievePropertiesEx", "CreateContainerView"}


@pytest.fixture(scope="module")
def sim() -> Iterator[Vcsim]:
    with Vcsim(clusters=2, hosts=2, vms=0) as sim:
        make_template(sim.settings())
        yield sim


@pytest.fixture
def driver(sim: Vcsim) -> Iterator[VSphereDriver]:
    with VSphereDriver(sim.settings()) as d:
        d.connect()
        yield d


@pytest.fixture
def admin(sim: Vcsim) -> Iterator[Any]:
    with sim.admin() as si:
        yield si


@pytest.fixture
def template(driver: VSphereDriver) -> str:
    return next(i.id for i in driver.list_images() if i.name == TEMPLATE_NAME)


def _vm(admin: Any, moid: str) -> Any:
    return vim.VirtualMachine(moid, admin._stub)


def _extra(admin: Any, moid: str) -> dict[str, str]:
    return {o.key: str(o.value) for o in _vm(admin, moid).config.extraConfig or ()}


def _files(sim: Vcsim, fragment: str) -> list[str]:
    """Every file vcsim keeps (its datastores are directories under our scratch dir) whose path has ``fragment``."""
    return [os.path.join(d, f) for d, _, fs in os.walk(sim.dir) for f in fs if fragment in os.path.join(d, f)]


def _net(driver: VSphereDriver, name: str) -> str:
    return next(n.id for n in driver.list_networks() if n.name == name)


# -- images -------------------------------------------------------------------------------------


def test_templates_are_the_images_and_never_instances(driver: VSphereDriver, template: str) -> None:
    image = next(i for i in driver.list_images() if i.id == template)
    assert (image.virtual_size_bytes, image.min_disk_gib, image.disk_format) == (1024**3, 1, "vmdk")
    assert template not in {i.id for i in driver.list_instances()}
    assert template not in {i.id for i in driver.list_unmanaged()}, "a template is not a VM to adopt"
    with pytest.raises(InstanceNotFound):
        driver.get_instance(template)
    with pytest.raises(InvalidState, match="template"):
        driver.adopt(template)


def test_a_clone_has_the_specs_hardware_nics_and_disks_and_the_template_stays(
    sim: Vcsim, driver: VSphereDriver, admin: Any, template: str
) -> None:
    before = _vm(admin, template).config.hardware.device
    template_disk = next(d for d in before if isinstance(d, vim.vm.device.VirtualDisk)).backing.fileName
    mac = "00:50:56:01:02:03"
    spec = InstanceSpec(
        name="wl-clone",
        vcpus=3,
        memory_mb=768,
        image=TEMPLATE_NAME,  # by name
        disks=[DiskSpec(size_gib=2, label="data")],
        nics=[NicSpec(network="VM Network", mac=mac), NicSpec(network=_net(driver, "DC0_DVPG0"), model="e1000e")],
        metadata={"role": "web"},
    )
    info = driver.create(spec)
    try:
        # vcsim copies the template's CPU and memory into a clone; the driver makes them the spec's.
        assert (info.vcpus, info.memory_mb, info.image) == (3, 768, template)
        assert [d.size_gib for d in info.disks] == [1, 2], "the image's root disk first, then the spec's"
        assert info.disks[1].label == "data"
        assert (info.nics[0].network, info.nics[0].mac, info.nics[0].model) == (
            _net(driver, "VM Network"),
            mac,
            "vmxnet3",
        )
        assert (info.nics[1].network, info.nics[1].model) == (_net(driver, "DC0_DVPG0"), "e1000e")
        assert info.metadata == {"role": "web"}
        extra = _extra(admin, info.id)
        assert "virtdrivers.create_token" not in extra or not extra["virtdrivers.create_token"]
        clone_disk = next(
            d for d in _vm(admin, info.id).config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)
        )
        assert clone_disk.backing.fileName != template_disk
    finally:
        driver.destroy(info.id)
    # vcsim 0.24 would have rewritten the template's own disk to the clone's file (then deleted
    # with it); the launcher keeps the source's devices, as vCenter never changes them.
    after = next(d for d in _vm(admin, template).config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))
    assert after.backing.fileName == template_disk
    assert _files(sim, f"{TEMPLATE_NAME}/{TEMPLATE_NAME}.vmdk"), "the template's disk file is gone"
    assert not _files(sim, "wl-clone"), "the destroyed clone left files"


def test_a_linked_clone_the_server_made_full_is_refused_and_removed(
    driver: VSphereDriver, admin: Any, template: str
) -> None:
    names = {i.name for i in driver.list_instances()}
    with pytest.raises(NotSupported, match="full copy"):
        driver.create(InstanceSpec(name="wl-cow", vcpus=1, memory_mb=128, image=template, image_mode=ImageMode.COW))
    assert {i.name for i in driver.list_instances()} == names
    assert not [v for v in admin.RetrieveContent().searchIndex.FindAllByDnsName(None, "wl-cow", True) or ()]


def test_a_clone_that_fails_leaves_no_vm_and_no_files(sim: Vcsim, driver: VSphereDriver, template: str) -> None:
    set_fault(sim.settings(), fail_next="CloneVM_Task", message="vdvcsim: the clone's host went away")
    spec = InstanceSpec(
        name="wl-failed",
        vcpus=1,
        memory_mb=128,
        image=template,
        disks=[DiskSpec(size_gib=1)],
        nics=[NicSpec(network="VM Network")],
        user_data=UserData(user_data="#cloud-config\n"),
    )
    with pytest.raises(DriverError, match="went away"):
        driver.create(spec)
    assert "wl-failed" not in {i.name for i in driver.list_instances()}
    assert "wl-failed" not in {i.name for i in driver.list_unmanaged()}
    assert not _files(sim, "wl-failed"), "the failed clone left files on the datastore"


def test_the_endpoints_failed_create_hook_fails_the_next_create_of_either_kind(
    sim: Vcsim, driver: VSphereDriver, template: str
) -> None:
    """The conformance hook arms CreateVM_Task and CloneVM_Task together: the first fails, then neither."""
    from virtdrivers_vmware.simulator.vcsim import VCSIM_HOOKS

    assert VCSIM_HOOKS.fail_next_create is not None
    VCSIM_HOOKS.fail_next_create(sim.settings(), driver)
    with pytest.raises(DriverError, match="lost its storage"):
        driver.create(InstanceSpec(name="wl-hook", vcpus=1, memory_mb=128, image=template))
    assert "wl-hook" not in {i.name for i in driver.list_instances()}
    made = driver.create(InstanceSpec(name="wl-hook-blank", vcpus=1, memory_mb=128))
    try:
        assert made.name == "wl-hook-blank", "the fault was disarmed for CreateVM_Task too"
    finally:
        driver.destroy(made.id)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"nics": [NicSpec(network="VM Network", model="rtl8139")]}, "nics.0.model"),
        ({"user_data": {"user_data": "\N{GRINNING FACE}" * 16_385}}, None),  # 65,540 bytes of UTF-8
    ],
)
def test_bad_specs_are_refused_before_any_call(
    driver: VSphereDriver, template: str, change: dict[str, Any], field: str | None
) -> None:
    with count_round_trips() as rt, pytest.raises(InvalidSpec) as err:
        driver.create({"name": "wl-bad", "vcpus": 1, "memory_mb": 128, "image": template, **change})
    assert rt.total == 0, f"calls made before refusing: {dict(rt.by_method)}"
    assert err.value.field is not None
    assert field is None or err.value.field == field


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"image": "no-such-template"}, "image"),
        ({"nics": [NicSpec(network="no-such-net")]}, "nics.0.network"),
        ({"nics": [NicSpec(network="VM Network"), NicSpec(network="DVS0-DVUplinks-9")]}, "nics.1.network"),
        ({"image_mode": ImageMode.COW, "image": "PLAIN"}, "image_mode"),
    ],
)
def test_unknown_images_and_networks_are_refused_after_reads_only(
    driver: VSphereDriver, admin: Any, template: str, change: dict[str, Any], field: str
) -> None:
    if change.get("image") == "PLAIN":  # a template with no snapshot cannot give linked clones
        plain = _plain_template(driver, admin)
        change = {**change, "image": plain}
    spec = {"name": "wl-bad", "vcpus": 1, "memory_mb": 128, "image": template, **change}
    with count_round_trips() as rt, pytest.raises(InvalidSpec) as err:
        driver.create(spec)
    assert err.value.field == field
    assert set(rt.by_method) <= READS, f"a refused create wrote: {dict(rt.by_method)}"
    assert "wl-bad" not in {i.name for i in driver.list_instances()}


def _plain_template(driver: VSphereDriver, admin: Any) -> str:
    found = [i.id for i in driver.list_images() if i.name == "wl-plain"]
    if found:
        return found[0]
    info = driver.create(
        InstanceSpec(name="wl-plain", vcpus=1, memory_mb=128, start=False, disks=[DiskSpec(size_gib=1)])
    )
    _vm(admin, info.id).MarkAsTemplate()
    return info.id


# -- networks and NICs --------------------------------------------------------------------------


def test_networks_are_port_groups_without_the_uplinks(driver: VSphereDriver) -> None:
    nets = driver.list_networks()
    assert [(n.name, n.kind) for n in nets] == [("DC0_DVPG0", "distributed-portgroup"), ("VM Network", "portgroup")]
    assert all(n.id.startswith(("dvportgroup-", "network-")) for n in nets)


def test_nics_hot_plug_on_a_running_vm_and_unknown_ones_are_not_found(driver: VSphereDriver) -> None:
    info = driver.create(InstanceSpec(name="wl-hot", vcpus=1, memory_mb=128, nics=[NicSpec(network="VM Network")]))
    try:
        nic = driver.attach_nic(info.id, NicSpec(network="DC0_DVPG0", model="vmxnet2"))
        assert (nic.network, nic.model) == (_net(driver, "DC0_DVPG0"), "vmxnet2")
        got = driver.get_instance(info.id)
        assert [n.id for n in got.nics] == [info.nics[0].id, nic.id]
        assert got.power_state == "running"
        addresses = {a.mac for a in driver.guest_addresses(info.id)}
        assert nic.mac in addresses, "a hot-plugged NIC gets its address as Tools would report it"
        driver.detach_nic(info.id, nic.id)
        assert [n.id for n in driver.get_instance(info.id).nics] == [info.nics[0].id]
        assert nic.mac not in {a.mac for a in driver.guest_addresses(info.id)}
        with pytest.raises(NotFound):
            driver.detach_nic(info.id, nic.id)
        with pytest.raises(InvalidSpec) as err:
            driver.attach_nic(info.id, NicSpec(network="no-such-net"))
        assert err.value.field == "nic.network"
    finally:
        driver.destroy(info.id)


# -- user data ----------------------------------------------------------------------------------


def test_user_data_is_in_guestinfo_as_cloud_init_reads_it(driver: VSphereDriver, admin: Any, template: str) -> None:
    small = "#cloud-config\nruncmd: [[echo, ünï]]\n"
    large = "#cloud-config\n" + "# padding line\n" * 600
    network_config = "version: 2\nethernets: {eth0: {dhcp4: true}}\n"
    info = driver.create(
        InstanceSpec(
            name="wl-ud",
            vcpus=1,
            memory_mb=128,
            image=template,
            user_data=UserData(user_data=small, hostname="web-1", network_config=network_config),
        )
    )
    other = driver.create(InstanceSpec(name="wl-ud2", vcpus=1, memory_mb=128, user_data=UserData(user_data=large)))
    try:
        extra = _extra(admin, info.id)
        assert extra["guestinfo.userdata.encoding"] == "base64"
        assert base64.b64decode(extra["guestinfo.userdata"]).decode() == small
        metadata = json.loads(base64.b64decode(extra["guestinfo.metadata"]))
        assert metadata["instance-id"] == _vm(admin, info.id).config.instanceUuid
        assert metadata["local-hostname"] == "web-1"
        assert base64.b64decode(metadata["network"]).decode() == network_config
        assert metadata["network.encoding"] == "base64"
        extra = _extra(admin, other.id)
        assert extra["guestinfo.userdata.encoding"] == "gzip+base64"
        assert gzip.decompress(base64.b64decode(extra["guestinfo.userdata"])).decode() == large
        assert json.loads(base64.b64decode(extra["guestinfo.metadata"]))["local-hostname"] == "wl-ud2"
    finally:
        driver.destroy(info.id)
        driver.destroy(other.id)


# -- guest addresses ----------------------------------------------------------------------------


def test_addresses_come_with_power_and_in_one_round_trip(driver: VSphereDriver, template: str) -> None:
    info = driver.create(
        InstanceSpec(name="wl-addr", vcpus=1, memory_mb=128, image=template, nics=[NicSpec(network="DC0_DVPG0")])
    )
    try:
        with count_round_trips() as rt:
            found = driver.guest_addresses(info.id)
        assert rt.total == 1
        assert [(a.mac, a.source) for a in found] == [(info.nics[0].mac, "tools")]
        assert found[0].addresses
        assert all("/" in a for a in found[0].addresses)
        # The first listing of a driver also reads the configs it has not seen (a second retrieval).
        driver.list_guest_addresses()
        with count_round_trips() as rt:
            everyone = driver.list_guest_addresses()
        assert rt.total == 1
        assert everyone[info.id] == [
            a.model_copy(update={"observed_at": everyone[info.id][0].observed_at}) for a in found
        ]
        driver.power_off(info.id, force=True)
        assert driver.guest_addresses(info.id) == [], "a stopped guest reports no address"
        driver.power_on(info.id)
        assert [a.addresses for a in driver.guest_addresses(info.id)] == [found[0].addresses]
    finally:
        driver.destroy(info.id)


# -- console ------------------------------------------------------------------------------------


def _open_websocket(sim: Vcsim, url: str, ticket: str) -> bytes:
    """A WebSocket handshake to ``url + ticket`` over verified TLS; the raw answer."""
    host, port = "127.0.0.1", sim.port
    path = url.split(f"{host}:{port}", 1)[1] + ticket
    context = ssl.create_default_context(cafile=str(sim.cert_file))
    with socket.create_connection((host, port), timeout=10) as raw, context.wrap_socket(raw, server_hostname=host) as s:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
            if not answer.startswith(b"HTTP/1.1 101") and b"\r\n\r\n" in answer:
                break  # a refusal: the connection stays open for the next request
        return answer


def test_webmks_ticket_opens_the_console_once_and_never_prints(sim: Vcsim, driver: VSphereDriver) -> None:
    info = driver.create(InstanceSpec(name="wl-mks", vcpus=1, memory_mb=128))
    try:
        conn = driver.console_connection(info.id)
        secret = conn.ticket.get_secret_value() if conn.ticket else ""
        assert conn.kind == "webmks"
        assert secret
        for shown in (repr(conn), str(conn), conn.url or ""):
            assert secret not in shown
        answer = _open_websocket(sim, conn.url or "", secret)
        assert answer.startswith(b"HTTP/1.1 101"), answer[:80]
        assert b"no screen" in answer
        again = _open_websocket(sim, conn.url or "", secret)
        assert again.startswith(b"HTTP/1.1 404"), "a ticket opens the console once"
        driver.power_off(info.id, force=True)
        with pytest.raises(InvalidState):
            driver.console_connection(info.id)
    finally:
        driver.destroy(info.id)


# -- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "short", 'ünïcode " < &\n' * 500])
def test_guestinfo_values_decode_to_what_was_given(text: str) -> None:
    value, encoding = guest_io.encode(text)
    assert guest_io.decode(value, encoding) == text
    assert encoding == ("gzip+base64" if len(text.encode()) >= 4096 else "base64")


def test_instance_names_that_are_no_host_name_leave_the_hostname_to_the_guest() -> None:
    entries = guest_io.guestinfo(UserData(user_data="x"), instance_uuid="u-1", name="not a label")
    metadata = json.loads(guest_io.decode(entries["guestinfo.metadata"], entries["guestinfo.metadata.encoding"]))
    assert metadata == {"instance-id": "u-1"}
    assert guest_io.guestinfo(None, instance_uuid="u", name="n") == {}


def test_names_shared_by_two_networks_or_templates_are_ambiguous() -> None:
    rows = [network.NetworkRow("network-1", "lan", "portgroup"), network.NetworkRow("network-2", "lan", "portgroup")]
    with pytest.raises(InvalidSpec, match="ambiguous") as err:
        network.resolve("lan", rows, "nics.0.network")
    assert err.value.field == "nics.0.network"
    assert network.resolve("network-2", rows, "f").moid == "network-2"
    templates = {"vm-1": {"name": "t"}, "vm-2": {"name": "t"}}
    with pytest.raises(InvalidSpec, match="ambiguous"):
        images.resolve("t", templates)
    assert images.resolve("vm-2", templates) == "vm-2"


def test_console_url_never_carries_the_ticket() -> None:
    ticket = vim.VirtualMachine.Ticket(ticket="s3cret", host="h", port=9443, url="wss://h:9443/ticket/s3cret")
    conn = guest_io.console(ticket, "fallback")
    assert (conn.url, conn.host, conn.port) == ("wss://h:9443/ticket/", "h", 9443)
    assert "s3cret" not in repr(conn)


def test_a_templates_own_nics_give_way_to_the_specs(driver: VSphereDriver, admin: Any) -> None:
    made = driver.create(
        InstanceSpec(name="wl-nic-tpl", vcpus=1, memory_mb=128, start=False, nics=[NicSpec(network="VM Network")])
    )
    _vm(admin, made.id).MarkAsTemplate()
    with pytest.raises(InstanceNotFound):  # ours before, an image now
        driver.get_instance(made.id)
    assert made.id in {i.id for i in driver.list_images()}
    info = driver.create(
        InstanceSpec(name="wl-from-nic-tpl", vcpus=1, memory_mb=128, image=made.id, nics=[NicSpec(network="DC0_DVPG0")])
    )
    try:
        assert [n.network for n in info.nics] == [_net(driver, "DC0_DVPG0")]
        assert info.nics[0].mac != made.nics[0].mac
    finally:
        driver.destroy(info.id)


def test_a_stopped_vm_reports_no_address_whatever_guest_net_still_says() -> None:
    card = vim.vm.device.VirtualVmxnet3(key=4000, macAddress="00:50:56:aa:bb:cc")
    entry = vim.vm.GuestInfo.NicInfo(macAddress="00:50:56:AA:BB:CC", ipAddress=["10.0.0.5", "fe80::1"])
    gone = vim.vm.GuestInfo.NicInfo(macAddress="00:50:56:00:00:01", ipAddress=["10.0.0.6"])
    props = {"config.hardware.device": [card], "guest.net": [entry, gone]}
    assert network.guest_addresses({**props, "runtime.powerState": "poweredOff"}) == []
    found = network.guest_addresses({**props, "runtime.powerState": "poweredOn"})
    # No ipConfig: Tools gave no prefix, so none is invented.
    assert [(a.mac, a.addresses) for a in found] == [("00:50:56:aa:bb:cc", ("10.0.0.5", "fe80::1"))]


def test_console_output_is_the_tail_of_the_serial_port_file(sim: Vcsim, driver: VSphereDriver, template: str) -> None:
    plain = driver.create(InstanceSpec(name="wl-con", vcpus=1, memory_mb=128))
    cloned = driver.create(InstanceSpec(name="wl-con2", vcpus=1, memory_mb=128, image=template))
    try:
        for info in (plain, cloned):
            assert driver.console_output(info.id) == "", "nothing written yet: empty, not an error"
            # No guest runs on vcsim: write the serial-port file where the VM's port points, as one would.
            log = Path(_files(sim, f"{info.name}/{info.name}.vmx")[0]).parent / guest_io.CONSOLE_FILE
            log.write_bytes("boot ünïcode\n".encode() * 50 + "login: ñ".encode())
            text = driver.console_output(info.id)
            assert text.endswith("login: ñ")
            assert text.count("boot ünïcode") == 50
            tail = driver.console_output(info.id, max_bytes=9)
            assert 0 < len(tail.encode()) <= 9
            assert "login: ñ".endswith(tail)
        with pytest.raises(InvalidSpec):
            driver.console_output(plain.id, max_bytes=0)
    finally:
        driver.destroy(plain.id)
        driver.destroy(cloned.id)


def test_a_server_without_webmks_tickets_says_not_supported() -> None:
    with Vcsim(clusters=1, hosts=1, webmks=False) as stock, VSphereDriver(stock.settings()) as driver:
        info = driver.create(InstanceSpec(name="wl-stock", vcpus=1, memory_mb=128))
        with pytest.raises(NotSupported, match="webmks"):
            driver.console_connection(info.id)
