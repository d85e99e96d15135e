"""The simulator on its own: the XML round-trip guard, search, faults, the standalone program."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import ovirtsdk4 as sdk
import ovirtsdk4.types as types
import pytest
from ovirtsdk4.reader import Reader
from ovirtsdk4.writer import Writer

from virtdrivers.objects import DiskSpec, InstanceSpec, NicSpec, UserData
from virtdrivers_ovirt.driver import OvirtDriver
from virtdrivers_ovirt.simulator import Engine, Simulator, render
from virtdrivers_ovirt.simulator import search as sim_search

_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")

#: Every root element the simulator can send; the guard must have seen each one.
RESPONSE_TYPES = {
    "api",
    "action",
    "fault",
    "vms",
    "vm",
    "disk_attachments",
    "disk_attachment",
    "disks",
    "disk",
    "snapshots",
    "snapshot",
    "hosts",
    "host",
    "clusters",
    "cluster",
    "templates",
    "template",
    "storage_domains",
    "storage_domain",
    "jobs",
    "job",
    "networks",
    "network",
    "vnic_profiles",
    "vnic_profile",
    "nics",
    "nic",
    "reported_devices",
    "statistics",
    "graphics_consoles",
    "graphics_console",
}


def _flatten(doc: bytes | str) -> collections.Counter[tuple[str, str, str]]:
    """Every element as (path, attributes, text), dates compared as instants."""
    out: collections.Counter[tuple[str, str, str]] = collections.Counter()

    def walk(el: ET.Element, path: str) -> None:
        here = f"{path}/{el.tag}"
        text = (el.text or "").strip()
        if _DATE.match(text):
            text = Reader.parse_date(text).isoformat()
        elif _NUMBER.match(text):
            text = repr(float(text))  # decimals come back as 2600.0
        attrs = ",".join(f"{k}={v}" for k, v in sorted(el.attrib.items()))
        out[(here, attrs, text)] += 1
        for child in el:
            walk(child, here)

    walk(ET.fromstring(doc), "")
    return out


def round_trip_loss(doc: bytes) -> list[tuple[str, str, str]]:
    """What disappears when the SDK reads ``doc`` and writes it back: anything not in the API model."""
    obj = Reader.read(doc)
    root = ET.fromstring(doc).tag
    written = Writer.write(obj, root=root) if isinstance(obj, list) else Writer.write(obj)
    lost = _flatten(doc) - _flatten(written)
    return sorted(lost)


def test_guard_catches_an_element_outside_the_api_model() -> None:
    doc = b"<vm id='1'><name>a</name><colour>blue</colour><status>up</status></vm>"
    assert round_trip_loss(doc) == [("/vm/colour", "", "blue")]
    assert round_trip_loss(b"<vm id='1'><status>sleepy</status></vm>") == [("/vm/status", "", "sleepy")]


def _exercise_everything(sim: Simulator) -> None:
    """Drive every endpoint and every reply kind the simulator has, through the real SDK."""
    with OvirtDriver(sim.settings()) as drv:
        info = drv.create(InstanceSpec(name="guard", vcpus=2, memory_mb=256, disks=[DiskSpec(size_gib=1)]))
        snap = drv.create_snapshot(info.id, "s1", with_memory=True)
        drv.list_snapshots(info.id)
        drv.live_migrate(info.id)
        drv.suspend(info.id)
        drv.resume(info.id)
        drv.reboot(info.id)
        drv.power_off(info.id, timeout=5)
        drv.revert_snapshot(info.id, snap.id)
        disk = drv.attach_disk(info.id, DiskSpec(size_gib=1, format="raw", thin=False))
        drv.detach_disk(info.id, disk.id)
        drv.delete_snapshot(info.id, snap.id)
        drv.list_aggregates()
        drv.host_resources()
        drv.backend_info()
        drv.adopt(drv.list_unmanaged()[0].id)
        drv.find_instance("guard")
        drv.reap(dry_run=True)  # the VM listing with attachments and the floating-disk search
        drv.destroy(info.id)
        # Workloads: a template, NICs on profiles, user data, addresses, a console ticket, statistics.
        image = drv.list_images()[0]
        nets = drv.list_networks()
        work = drv.create(
            InstanceSpec(
                name="guard-work",
                vcpus=1,
                memory_mb=256,
                image=image.id,
                nics=[NicSpec(network=nets[0].id)],
                user_data=UserData(user_data="#cloud-config\nruncmd: []\n", hostname="guard"),
            )
        )
        nic = drv.attach_nic(work.id, NicSpec(network=nets[1].id, model="e1000"))
        drv.detach_nic(work.id, nic.id)
        time.sleep(0.4)  # the agent reports after 0.3 s
        assert drv.guest_addresses(work.id)
        drv.all_guest_addresses()
        drv.console_connection(work.id)
        drv.instance_statistics(work.id)
    conn = sdk.Connection(url=sim.url, username=sim.username, password=sim.password, ca_file=str(sim.ca_file))
    try:
        system = conn.system_service()
        system.get()
        host = system.hosts_service().list()[0]
        system.hosts_service().host_service(host.id).get()
        cluster = system.clusters_service().list()[0]
        system.clusters_service().cluster_service(cluster.id).get()
        tpl = system.templates_service().list()[0]
        system.templates_service().template_service(tpl.id).get()
        sd = system.storage_domains_service().list()[0]
        system.storage_domains_service().storage_domain_service(sd.id).get()
        job = system.jobs_service().list()[0]
        system.jobs_service().job_service(job.id).get()
        disks = system.disks_service().list()
        system.disks_service().disk_service(disks[0].id).get()
        vm = system.vms_service().list(search="name=pet-*")[0]
        vm_service = system.vms_service().vm_service(vm.id)
        vm_service.get()
        atts = vm_service.disk_attachments_service().list()
        vm_service.disk_attachments_service().attachment_service(atts[0].id).get()
        snaps = vm_service.snapshots_service().list()
        vm_service.snapshots_service().snapshot_service(snaps[0].id).get()
        nics = vm_service.nics_service().list(follow="statistics,reported_devices")
        nic_service = vm_service.nics_service().nic_service(nics[0].id)
        nic_service.get()
        nic_service.reported_devices_service().list()
        nic_service.statistics_service().list()
        vm_service.reported_devices_service().list()
        vm_service.statistics_service().list()
        consoles = vm_service.graphics_consoles_service().list()
        vm_service.graphics_consoles_service().list(current=True)
        vm_service.graphics_consoles_service().console_service(consoles[0].id).get()
        system.vms_service().list(follow="nics.statistics,reported_devices,statistics")
        profiles = system.vnic_profiles_service().list(follow="network")
        system.vnic_profiles_service().profile_service(profiles[0].id).get()
        nets = system.networks_service().list()
        system.networks_service().network_service(nets[0].id).get()
        tpls = system.templates_service().list(follow="disk_attachments.disk")
        work_tpl = system.templates_service().template_service(tpls[-1].id)
        work_tpl.get()
        work_tpl.disk_attachments_service().list()
        with pytest.raises(sdk.Error):
            vm_service.start()  # 409: running
        with pytest.raises(sdk.NotFoundError):
            system.vms_service().vm_service("no-such-vm").get()
        with pytest.raises(sdk.Error):
            system.vms_service().list(search="name=")  # 400: cannot search
        with pytest.raises(sdk.Error):
            system.vms_service().add(types.Vm(name="x", template=types.Template(name="Blank")))  # no cluster
    finally:
        conn.close()


def test_every_response_survives_the_sdks_reader_and_writer(sim: Simulator) -> None:
    sim.recorded = []
    _exercise_everything(sim)
    roots = collections.Counter(ET.fromstring(doc).tag for doc in sim.recorded)
    assert set(roots) >= RESPONSE_TYPES, f"not exercised: {sorted(RESPONSE_TYPES - set(roots))}"
    assert set(roots) <= RESPONSE_TYPES, f"new response types need a place in RESPONSE_TYPES: {set(roots)}"
    losses: dict[str, set[tuple[str, str, str]]] = {}
    for doc in sim.recorded:
        lost = round_trip_loss(doc)
        if lost:
            losses.setdefault(ET.fromstring(doc).tag, set()).update(lost)
    assert losses == {}


@pytest.mark.parametrize(
    "status",
    [
        "down",
        "image_locked",
        "powering_up",
        "up",
        "powering_down",
        "reboot_in_progress",
        "migrating",
        "saving_state",
        "suspended",
        "restoring_state",
        "unknown",
    ],
)
def test_every_vm_status_the_simulator_uses_is_in_the_api_model(status: str) -> None:
    engine = Engine(pets=1)
    try:
        vm = next(iter(engine.vms.values()))
        vm.status = status
        vm.stop_time = vm.start_time
        docs = [render.vm(vm, engine, {"disk_attachments", "disk_attachments.disk"})]
        for disk_status in ("locked", "ok", "illegal"):
            for disk in engine.disks.values():
                disk.status = disk_status
                docs.append(render.disk(disk))
        for snap_status in ("locked", "ok"):
            for snap in vm.snapshots:
                snap.status = snap_status
                docs.append(render.snapshot(vm, snap, engine))
        for host in engine.hosts.values():
            for host_status in ("up", "non_responsive"):
                host.status = host_status
                docs.append(render.host(host, engine))
        for job_status in ("started", "finished", "failed"):
            job = engine.begin_job("j", None)
            if job_status != "started":
                engine.end_job(job, job_status)
            docs.append(render.job(job))
        for doc in docs:
            assert round_trip_loss(render.to_bytes(doc)) == []
    finally:
        engine.close()


def test_search_subset() -> None:
    items = [{"name": n, "status": s} for n, s in [("web1", "up"), ("web2", "down"), ("db1", "up"), ("Web3", "up")]]
    fields = {"name": lambda i: i["name"], "status": lambda i: i["status"]}

    def names(text: str | None, max_results: int | None = None) -> list[str]:
        return [i["name"] for i in sim_search.run(sim_search.parse(text), items, fields, max_results)]

    assert names("name=web*") == ["web1", "web2", "Web3"]
    assert names("name=web* and status=up") == ["web1", "Web3"]
    assert names("status!=up") == ["web2"]
    assert names('name="db1"') == ["db1"]
    assert names("sortby name desc") == ["Web3", "web2", "web1", "db1"]  # the engine sorts without case
    assert names("sortby name asc page 2", 3) == ["Web3"]
    assert names(None, 2) == ["web1", "web2"]
    with pytest.raises(sim_search.SearchError):
        names("colour=blue")
    with pytest.raises(sim_search.SearchError):
        names("name=")


def test_invalid_transitions_are_engine_faults(sim: Simulator) -> None:
    conn = sdk.Connection(url=sim.url, username=sim.username, password=sim.password, ca_file=str(sim.ca_file))
    try:
        vms = conn.system_service().vms_service()
        pet = vms.list(search="name=pet-1")[0]
        service = vms.vm_service(pet.id)
        with pytest.raises(sdk.Error) as err:
            service.remove()
        assert err.value.code == 409
        assert "[Cannot remove VM. VM is running.]" in str(err.value)
        with pytest.raises(sdk.Error) as err:
            vms.add(
                types.Vm(name="pet-1", cluster=types.Cluster(name="Default"), template=types.Template(name="Blank"))
            )
        assert "name is already in use" in str(err.value)
        with pytest.raises(sdk.Error) as err:
            vms.add(
                types.Vm(name="has space", cluster=types.Cluster(name="Default"), template=types.Template(name="Blank"))
            )
        assert err.value.code == 400
        assert "given name contains special characters" in str(err.value)
        service.stop()
        assert service.get().status == types.VmStatus.POWERING_DOWN  # asynchronous, not instant
        with pytest.raises(sdk.Error) as err:
            service.suspend()
        assert err.value.code == 409
    finally:
        conn.close()


def test_wrong_password_is_an_sso_error(sim: Simulator) -> None:
    conn = sdk.Connection(url=sim.url, username=sim.username, password="nope", ca_file=str(sim.ca_file))
    with pytest.raises(sdk.AuthError) as err:
        conn.system_service().get()
    assert "access_denied" in str(err.value)
    conn.close(logout=False)


def test_standalone_program_serves_the_sdk_and_stops_on_sigterm(tmp_path: pytest.TempPathFactory) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "virtdrivers_ovirt.simulator",
            "--port",
            "0",
            "--pets",
            "3",
            "--state-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        settings = json.loads(proc.stdout.readline())
        conn = sdk.Connection(
            url=settings["url"],
            username=settings["username"],
            password=settings["password"],
            ca_file=settings["ca_file"],
        )
        names = sorted(vm.name for vm in conn.system_service().vms_service().list())
        conn.close()
        assert names == ["pet-1", "pet-2", "pet-3"]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        if proc.stdout is not None:
            proc.stdout.close()
