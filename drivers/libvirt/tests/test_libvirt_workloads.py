"""Workloads on libvirt (contract 1.2): the image store, copy-on-write root disks, NICs, the
NoCloud seed, the console log, guest-agent addresses, metrics, and what a failed or killed
create leaves. The QEMU tests boot the project's tiny real guest (see ``virtdrivers_libvirt.guest``)
under libvirt's embedded driver, TCG; each boot takes about 7 s here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

from virtdrivers.capabilities import DiskFormat
from virtdrivers.errors import Conflict, DriverError, InvalidSpec, NotFound, Timeout
from virtdrivers.objects import InstanceMetrics, InstanceSpec, NicSpec, PowerState
from virtdrivers.reaping import CreateToken
from virtdrivers_conformance.suite.checks import wait_for
from virtdrivers_libvirt import guest_io, mapping
from virtdrivers_libvirt.driver import LibvirtDriver
from virtdrivers_libvirt.endpoints import TINY_GUEST_IMAGE
from virtdrivers_libvirt.images import ImageStore
from virtdrivers_libvirt.storage import DirStore

T = TypeVar("T")
SMALL: dict[str, Any] = {"vcpus": 1, "memory_mb": 128}
BOOT_TIMEOUT = 120.0


def _qemu_img_info(path: str) -> dict[str, Any]:
    out = subprocess.run(["qemu-img", "info", "--output=json", "-U", path], capture_output=True, text=True, check=True)
    info: dict[str, Any] = json.loads(out.stdout)
    return info


def _files(settings: Mapping[str, Any]) -> set[str]:
    return {n for n in os.listdir(settings["disk_dir"]) if not n.startswith(".")}


# -- pure mapping ---------------------------------------------------------------------------------


def test_workload_devices_round_trip_through_the_domain_xml() -> None:
    uid = str(uuid.uuid4())
    root = mapping.DiskRecord(dev="vda", path="/d/vd-root.qcow2", size_gib=1, format=DiskFormat.QCOW2, image="img-1")
    root = dataclasses.replace(root, cow=True)
    data = mapping.DiskRecord(dev="sda", path="/d/vd-data.qcow2", size_gib=2, format=DiskFormat.QCOW2)
    nics = (
        mapping.NicRecord(mac="52:54:00:00:00:01", network="user", model="virtio"),
        mapping.NicRecord(mac="52:54:00:00:00:02", network="default", model="e1000"),
    )
    seed = f"/d/vd-{uid}-seed-tok.img"
    xml = mapping.domain_xml(
        uuid=uid,
        name="w",
        vcpus=1,
        memory_mb=128,
        domain_type="qemu",
        disks=(root, data),
        nics=nics,
        seed=seed,
        console="/d/console.log",
        agent=True,
        agent_socket=f"/d/vd-{uid}.agent",
        tcg_cache_mib=64,
    )
    record = mapping.parse_domain_xml(xml)
    assert [d.dev for d in record.disks] == ["vda", "sda"], "the seed is not a contract disk"
    assert record.image == "img-1"
    assert record.disks[0].cow
    assert record.nics == nics
    assert (record.seed, record.console, record.agent_socket) == (seed, "/d/console.log", f"/d/vd-{uid}.agent")
    info = record.info(PowerState.SHUTDOWN, "n")
    assert info.image == "img-1"
    assert [(n.id, n.network, n.model) for n in info.nics] == [
        ("52:54:00:00:00:01", "user", "virtio"),
        ("52:54:00:00:00:02", "default", "e1000"),
    ]
    # Redefining the disks of a stopped domain keeps the seed (it is not one of "the disks").
    again = mapping.parse_domain_xml(mapping.redefined_disks_xml(xml, {}, (root,)))
    assert [d.dev for d in again.disks] == ["vda"]
    assert again.seed == seed
    assert '<tb-cache unit="MiB">64</tb-cache>' in xml


# -- the image store and root disks ---------------------------------------------------------------------


def test_the_image_store_probes_formats_and_refuses_a_wrong_one(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    with raw.open("wb") as fh:
        fh.truncate(16 << 20)
    store = ImageStore(str(tmp_path / "store"))
    image = store.add(str(raw), "raw-one")
    assert (image.disk_format, image.virtual_size_bytes) == (DiskFormat.RAW, 16 << 20)
    assert [i.image.id for i in store.list()] == [image.id]
    assert store.find("raw-one") is not None
    assert store.find(image.id) is not None
    assert store.verify(image.id)
    with pytest.raises(InvalidSpec) as err:
        store.add(str(raw), "wrong", disk_format=DiskFormat.QCOW2)  # a raw file declared qcow2
    assert err.value.field == "disk_format"
    with pytest.raises(InvalidSpec):
        store.add(str(raw), "raw-one")  # names are unique
    store.remove(image.id)
    assert store.list() == []
    assert os.listdir(tmp_path / "store") == []
    with pytest.raises(NotFound):
        store.remove(image.id)


@pytest.mark.parametrize("base_gib", [1, 4])
def test_a_cow_root_disk_is_a_child_made_in_constant_time(tmp_path: Path, base_gib: int) -> None:
    """The overlay holds only qcow2 metadata whatever the image's size, and names the image as
    its backing file; a copy has no backing file. (Timing is the benchmark's; size is proof.)"""
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), f"{base_gib}G"], check=True)
    subprocess.run(  # some data in the base, so a copy would have something to copy
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 8M", str(base)], check=True, capture_output=True
    )
    store = DirStore(str(tmp_path / "disks"))
    started = time.monotonic()
    cow = store.create_from_image("vd-cow", str(base), DiskFormat.QCOW2, base_gib, cow=True)
    took = time.monotonic() - started
    info = _qemu_img_info(cow)
    assert info["backing-filename"] == str(base)
    assert info["backing-filename-format"] == "qcow2"
    assert os.path.getsize(cow) < 1 << 20, "the overlay copied data"
    assert took < 5, f"making an overlay took {took:.1f} s"
    copy = store.create_from_image("vd-copy", str(base), DiskFormat.QCOW2, base_gib, cow=False)
    info = _qemu_img_info(copy)
    assert "backing-filename" not in info
    assert info["virtual-size"] == base_gib << 30
    assert os.path.getsize(copy) >= 8 << 20, "the copy does not hold the image's data"


# -- real guests on the embedded QEMU endpoint -------------------------------------------------------


def _marker_of(user_data: str) -> str:
    return f"VIRTDRIVERS-USERDATA {hashlib.sha256(user_data.encode()).hexdigest()}"


def test_a_real_guest_boots_from_an_image_with_its_user_data_address_and_counters(
    qemu: LibvirtDriver, qemu_settings: Mapping[str, Any]
) -> None:
    store = ImageStore(qemu_settings["image_dir"])
    user_data = f"#cloud-config\n#vd-marker {uuid.uuid4().hex}\n"
    mac = "52:54:00:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:3])
    info = qemu.create(
        InstanceSpec(
            name="wl-real",
            **SMALL,
            image=TINY_GUEST_IMAGE,
            nics=[{"network": "user", "mac": mac}],
            user_data={"user_data": user_data, "hostname": "wl-host"},
            disks=[],
        )
    )
    assert info.image == TINY_GUEST_IMAGE
    assert [n.mac for n in info.nics] == [mac]

    def marked() -> str | None:
        text = qemu.console_output(info.id)
        return text if _marker_of(user_data) in text else None

    console = wait_for("the user-data marker", BOOT_TIMEOUT, marked)
    assert user_data.splitlines()[1] in console
    found = wait_for("an agent-reported address", BOOT_TIMEOUT, lambda: qemu.guest_addresses(info.id))
    assert [(a.mac, a.source) for a in found] == [(mac, "agent")]
    assert "10.0.2.15/24" in found[0].addresses
    first = qemu.instance_metrics(info.id)

    def grown() -> InstanceMetrics | None:
        now = qemu.instance_metrics(info.id)
        return now if (now.cpu_time_ns or 0) > (first.cpu_time_ns or 0) else None

    second = wait_for("CPU time growing", BOOT_TIMEOUT, grown)
    assert second.disk_read_bytes
    assert second.memory_used_mb
    # The guest ran and wrote on its copy-on-write child; the image is byte for byte unchanged.
    assert store.verify(TINY_GUEST_IMAGE)
    with pytest.raises(Conflict):
        qemu.delete_image(TINY_GUEST_IMAGE)
    # Graceful means ACPI: the guest says it saw the button and went down by itself.
    assert qemu.power_off(info.id, timeout=60).power_state == PowerState.SHUTDOWN
    assert "VIRTDRIVERS-SHUTDOWN" in qemu.console_output(info.id), "forced, not by the guest's own ACPI shutdown"
    assert qemu.guest_addresses(info.id) == []
    qemu.destroy(info.id)
    assert _files(qemu_settings) == set(), "destroy left the overlay, seed or console log behind"


def _live_macs(driver: LibvirtDriver, instance_id: str) -> set[str]:
    """The NICs QEMU has now (the live definition), not the ones the next start will have."""
    dom = driver._primary.session.call(lambda c: c.lookupByUUIDString(instance_id))
    return {n.mac for n in mapping.parse_domain_xml(dom.XMLDesc(0)).nics}


def test_a_nic_is_hot_plugged_and_the_real_guest_ejects_it_on_detach(qemu: LibvirtDriver) -> None:
    info = qemu.create(
        InstanceSpec(name="wl-nic", **SMALL, image=TINY_GUEST_IMAGE, disks=[], nics=[{"network": "user"}])
    )
    wait_for("the guest up", BOOT_TIMEOUT, lambda: qemu.guest_addresses(info.id))
    nic = qemu.attach_nic(info.id, NicSpec(network="user"))
    assert nic.mac in _live_macs(qemu, info.id)
    assert nic.id in {n.id for n in qemu.get_instance(info.id).nics}
    with pytest.raises(InvalidSpec) as err:
        qemu.attach_nic(info.id, NicSpec(network="user", mac=nic.mac))
    assert err.value.field == "nic.mac"
    qemu.detach_nic(info.id, nic.id.upper())  # MACs compare case-insensitively
    assert nic.mac not in _live_macs(qemu, info.id), "detach returned before the guest let the NIC go"
    assert nic.id not in {n.id for n in qemu.get_instance(info.id).nics}
    qemu.destroy(info.id)


def test_detach_from_a_guest_that_never_ejects_times_out_typed(
    qemu_settings: Mapping[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(LibvirtDriver, "nic_unplug_timeout", 1.0)
    with LibvirtDriver(qemu_settings) as driver:
        info = driver.create(InstanceSpec(name="wl-deaf-nic", **SMALL, disks=[], nics=[{"network": "user"}]))
        mac = info.nics[0].mac
        with pytest.raises(Timeout, match="did not release NIC"):
            driver.detach_nic(info.id, mac)  # no OS in this guest: nobody answers the eject request
        assert mac in _live_macs(driver, info.id)
        assert mac not in {n.mac for n in driver.get_instance(info.id).nics}, "the definition still has it"
        driver.destroy(info.id)


def test_a_soft_reboot_of_a_real_guest_boots_it_again(qemu: LibvirtDriver) -> None:
    info = qemu.create(InstanceSpec(name="wl-reboot", **SMALL, image=TINY_GUEST_IMAGE, disks=[]))
    wait_for("the first boot", BOOT_TIMEOUT, lambda: "VIRTDRIVERS-USERDATA none" in qemu.console_output(info.id))
    assert qemu.reboot(info.id).power_state == PowerState.RUNNING
    wait_for("a second boot", BOOT_TIMEOUT, lambda: qemu.console_output(info.id).count("VIRTDRIVERS-BOOT") >= 2)
    qemu.destroy(info.id)


def test_bad_workload_input_is_refused_before_anything_is_made(
    qemu: LibvirtDriver, qemu_settings: Mapping[str, Any]
) -> None:
    before = {i.id for i in qemu.list_instances()}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"image": "no-such-image"}, "image"),
        ({"image": TINY_GUEST_IMAGE, "nics": [{"network": "no-such-net"}]}, "nics.0.network"),
        ({"image": TINY_GUEST_IMAGE, "nics": [{"network": "user", "mac": "01:00:00:00:00:01"}]}, "nics.0.mac"),
        ({"image": TINY_GUEST_IMAGE, "user_data": {"user_data": "x" * (64 * 1024 + 1)}}, "user_data.user_data"),
    ]
    for extra, field in cases:
        with pytest.raises(InvalidSpec) as err:
            qemu.create({"name": "wl-bad", **SMALL, **extra})  # type: ignore[arg-type]
        assert field in (err.value.field or ""), (extra, err.value.field)
    assert {i.id for i in qemu.list_instances()} == before
    assert _files(qemu_settings) == set()


def test_a_create_that_fails_late_leaves_no_overlay_seed_or_log(
    qemu: LibvirtDriver, qemu_settings: Mapping[str, Any]
) -> None:
    qemu.arm_create_fault()
    with pytest.raises(DriverError, match="injected fault"):
        qemu.create(
            InstanceSpec(name="wl-fail", **SMALL, image=TINY_GUEST_IMAGE, user_data={"user_data": "#x\n"}, disks=[])
        )
    assert _files(qemu_settings) == set()
    assert qemu.list_instances() == []


def test_reap_takes_the_overlay_seed_and_log_of_a_killed_create_and_spares_a_live_one(
    qemu: LibvirtDriver, qemu_settings: Mapping[str, Any]
) -> None:
    live = qemu.create(
        InstanceSpec(name="wl-live", **SMALL, image=TINY_GUEST_IMAGE, user_data={"user_data": "#y\n"}, disks=[])
    )
    kept = _files(qemu_settings)
    # What a create killed after making its files (and before defining the domain) leaves.
    token = CreateToken.new()
    dead = dataclasses.replace(token, pid_start=token.pid_start + 1).encode()
    uid = str(uuid.uuid4())
    store = qemu._primary.store
    assert isinstance(store, DirStore)
    image = qemu._image(TINY_GUEST_IMAGE, "image")
    overlay = store.create_from_image(f"vd-{uid}-vda-{dead}", image.path, image.format, 1, cow=True)
    spec = InstanceSpec(name="wl-dead", **SMALL, user_data={"user_data": "#z\n"})
    seed = guest_io.write_seed(spec, uid, store.directory, f"vd-{uid}-{mapping.SEED_ROLE}-{dead}.img")
    log = Path(store.directory, f"vd-{uid}-{mapping.CONSOLE_ROLE}-{dead}.log")
    log.write_text("boot\n")
    found = qemu.reap(grace_s=0)  # 0: every create is over, so only references protect files
    assert sorted(f.ref for f in found) == sorted([overlay, seed, str(log)])
    assert _files(qemu_settings) == kept, "reap touched a live instance's files"
    qemu.destroy(live.id)
    assert _files(qemu_settings) == set()


def test_images_register_and_delete_through_the_driver(qemu: LibvirtDriver, tmp_path: Path) -> None:
    raw = tmp_path / "small.raw"
    with raw.open("wb") as fh:
        fh.truncate(8 << 20)
    image = qemu.register_image(str(raw), "wl-small")
    assert image.id in {i.id for i in qemu.list_images()}
    info = qemu.create(InstanceSpec(name="wl-copy", **SMALL, image="wl-small", image_mode="copy", start=False))
    qemu.delete_image(image.id)  # a full copy does not depend on its image
    assert qemu.get_instance(info.id).image == image.id
    qemu.destroy(info.id)
    with pytest.raises(NotFound):
        qemu.delete_image(image.id)


def test_the_ignore_acpi_hook_really_deafens_a_real_guest(
    qemu: LibvirtDriver, qemu_settings: Mapping[str, Any]
) -> None:
    """The endpoints' ignore_acpi hook on a guest that does obey ACPI: after it, a graceful
    power-off waits out its timeout and forces, and the guest never saw the button."""
    from virtdrivers_libvirt.endpoints import ENDPOINTS

    hook = next(e for e in ENDPOINTS if e.name == "qemu").hooks.ignore_acpi
    assert hook is not None
    info = qemu.create(InstanceSpec(name="wl-deaf", **SMALL, image=TINY_GUEST_IMAGE, disks=[]))
    wait_for("the boot", BOOT_TIMEOUT, lambda: "VIRTDRIVERS-USERDATA none" in qemu.console_output(info.id))
    hook(qemu_settings, qemu, info.id)
    started = time.monotonic()
    assert qemu.power_off(info.id, timeout=4).power_state == PowerState.SHUTDOWN
    assert time.monotonic() - started >= 4, "a deaf guest went down before the timeout"
    assert "VIRTDRIVERS-ACPI-POWER-BUTTON" not in qemu.console_output(info.id)
    qemu.destroy(info.id)
