"""Integration tests on the real libvirt SDK: the test driver and real QEMU (qemu:///embed).

The conformance suite covers the contract; these cover what is particular to libvirt: cleanup
of a failed create down to the files, bulk listing in one call, live disk hot plug on a running
QEMU guest, events, graceful shutdown of a guest without an OS, adoption.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from virtdrivers.errors import AuthenticationFailed, DriverError, InstanceNotFound, InvalidSpec, InvalidState, NotFound
from virtdrivers.objects import DiskSpec, EventType, LifecycleEvent, PowerState
from virtdrivers.reaping import CreateToken
from virtdrivers_libvirt import mapping
from virtdrivers_libvirt.driver import LibvirtDriver
from virtdrivers_libvirt.session import ChildReaper, EmbedKeeper, EventLoop, Session

ENDPOINTS = {e.name: e for e in LibvirtDriver.embedded_endpoints()}

pytestmark = pytest.mark.timeout(180, method="thread")

SMALL: dict[str, Any] = {"vcpus": 1, "memory_mb": 64}


def _domains(driver: LibvirtDriver) -> set[str]:
    session = driver._primary.session
    return {d.name() for d in session.call(lambda c: c.listAllDomains(0))}


def test_create_reports_and_destroy_removes_disk_files(qemu: LibvirtDriver, qemu_settings: Mapping[str, Any]) -> None:
    info = qemu.create({"name": "files", **SMALL, "disks": [{"size_gib": 1}, {"size_gib": 1, "format": "raw"}]})
    names = sorted(os.listdir(qemu_settings["disk_dir"]))
    # Beside the disks, the running guest's serial console log (see test_libvirt_workloads).
    files = [n for n in names if f"-{mapping.CONSOLE_ROLE}-" not in n]
    assert len(names) - len(files) == 1
    assert len(files) == 2
    assert {f.rsplit(".", 1)[1] for f in files} == {"qcow2", "raw"}
    assert [d.id for d in info.disks] == ["sda", "sdb"]
    qemu.destroy(info.id)
    assert os.listdir(qemu_settings["disk_dir"]) == []
    assert "files" not in _domains(qemu)


def test_failed_disk_leaves_no_domain_volume_or_file(qemu: LibvirtDriver, qemu_settings: Mapping[str, Any]) -> None:
    # The second disk is a raw file beyond ext4's 16 TiB file limit: qemu-img fails for real,
    # after creating an empty file, which must go too.
    spec = {"name": "nodisk", **SMALL, "disks": [{"size_gib": 1}, {"size_gib": 60000, "format": "raw"}]}
    probe = Path(qemu_settings["disk_dir"]) / "probe.raw"
    made = subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(probe), "60000G"], capture_output=True)
    probe.unlink(missing_ok=True)
    if made.returncode == 0:
        pytest.skip("this filesystem takes a 60000 GiB file: no way to make qemu-img fail here")
    with pytest.raises(DriverError, match="cannot create disk"):
        qemu.create(spec)
    assert os.listdir(qemu_settings["disk_dir"]) == []
    assert "nodisk" not in _domains(qemu)


def test_failed_start_leaves_no_domain_or_file(qemu: LibvirtDriver, qemu_settings: Mapping[str, Any]) -> None:
    # QEMU's pc machine allows at most 255 vCPUs: define succeeds, start fails.
    with pytest.raises(DriverError):
        qemu.create({"name": "nostart", "vcpus": 700, "memory_mb": 64, "disks": [{"size_gib": 1}]})
    assert os.listdir(qemu_settings["disk_dir"]) == []
    assert "nostart" not in _domains(qemu)


def test_failed_volume_in_pool_leaves_nothing(test_settings: Mapping[str, Any]) -> None:
    with LibvirtDriver(test_settings) as d:
        spec = {"name": "nopool", **SMALL, "disks": [{"size_gib": 1}, {"size_gib": 5000, "thin": False}]}
        with pytest.raises(DriverError):
            d.create(spec)
        assert "nopool" not in _domains(d)
        pool = d._primary.session.call(lambda c: c.storagePoolLookupByName("default"))
        assert pool.listVolumes() == []


def test_duplicate_name_makes_nothing(driver: LibvirtDriver) -> None:
    driver.create({"name": "dup", **SMALL, "start": False, "disks": [{"size_gib": 1}]})
    before = len(driver.list_instances())
    with pytest.raises(InvalidSpec) as err:
        driver.create({"name": "dup", **SMALL, "disks": [{"size_gib": 1}]})
    assert err.value.field == "name"
    assert len(driver.list_instances()) == before


def test_list_is_one_backend_call_once_definitions_are_known(
    driver: LibvirtDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
    with driver.subscribe(created.put):
        made = {driver.create({"name": f"bulk-{n}", **SMALL, "start": False}).id for n in range(5)}
        # libvirt's DEFINED events drop cached definitions; let ours arrive before counting.
        seen: set[str] = set()
        while seen != made:
            seen.add(created.get(timeout=30).instance_id)
    driver.list_instances()  # first sight of each definition
    calls: list[object] = []
    real = Session.call

    def counting(self: Session, fn: Any, **kw: Any) -> Any:
        calls.append(fn)
        return real(self, fn, **kw)

    monkeypatch.setattr(Session, "call", counting)
    listed = {i.id: i for i in driver.list_instances()}
    assert made <= set(listed)
    assert len(calls) == len(driver.settings.peers) + 1  # one per node, however many domains
    assert all(listed[i].power_state == PowerState.SHUTDOWN for i in made)


def test_resize_of_a_running_guest_applies_to_its_definition(driver: LibvirtDriver) -> None:
    info = driver.create({"name": "grow", **SMALL})
    resized = driver.resize(info.id, vcpus=2, memory_mb=96)
    assert (resized.vcpus, resized.memory_mb, resized.power_state) == (2, 96, PowerState.RUNNING)
    listed = {i.id: i for i in driver.list_instances()}[info.id]
    assert (listed.vcpus, listed.memory_mb) == (2, 96)


def test_hot_attach_and_detach_on_a_running_guest(qemu: LibvirtDriver, qemu_settings: Mapping[str, Any]) -> None:
    info = qemu.create({"name": "hotplug", **SMALL, "disks": [{"size_gib": 1}]})
    dom = qemu._primary.session.call(lambda c: c.lookupByUUIDString(info.id))
    disk = qemu.attach_disk(info.id, {"size_gib": 1, "format": "raw", "label": "data <1>"})
    assert disk.id == "sdb"
    assert "<target dev='sdb'" in dom.XMLDesc(0)  # live definition: QEMU has the device
    got = qemu.get_instance(info.id)
    assert [(d.id, d.label) for d in got.disks] == [("sda", None), ("sdb", "data <1>")]
    qemu.detach_disk(info.id, "sdb")
    assert "<target dev='sdb'" not in dom.XMLDesc(0)
    assert [d.id for d in qemu.get_instance(info.id).disks] == ["sda"]
    assert len([n for n in os.listdir(qemu_settings["disk_dir"]) if n.endswith(".qcow2")]) == 1
    with pytest.raises(NotFound):
        qemu.detach_disk(info.id, "sdz")


def test_graceful_shutdown_of_a_guest_without_os_forces_after_timeout(qemu: LibvirtDriver) -> None:
    info = qemu.create({"name": "noacpi", **SMALL})
    assert qemu.power_off(info.id, timeout=0.5).power_state == PowerState.SHUTDOWN
    assert qemu.get_instance(info.id).power_state == PowerState.SHUTDOWN


def test_suspend_is_a_managed_save(driver: LibvirtDriver) -> None:
    info = driver.create({"name": "saved", **SMALL, "disks": [{"size_gib": 1}]})
    assert driver.suspend(info.id).power_state == PowerState.SUSPENDED
    dom = driver._primary.session.call(lambda c: c.lookupByUUIDString(info.id))
    assert dom.hasManagedSaveImage(0)
    with pytest.raises(InvalidState):
        driver.pause(info.id)
    assert driver.power_off(info.id).power_state == PowerState.SHUTDOWN  # discards the saved state
    assert not dom.hasManagedSaveImage(0)


def test_disk_only_snapshot_of_running_guest_reverts_powered_off(driver: LibvirtDriver) -> None:
    info = driver.create({"name": "snap", **SMALL, "disks": [{"size_gib": 1}]})
    snap = driver.create_snapshot(info.id, "disk <only>")
    assert not snap.with_memory
    assert driver.revert_snapshot(info.id, snap.id).power_state == PowerState.SHUTDOWN
    with pytest.raises(NotFound):
        driver.revert_snapshot(info.id, "missing")


def test_events_arrive_and_stop_on_close(driver: LibvirtDriver) -> None:
    got: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
    sub = driver.subscribe(got.put)
    info = driver.create({"name": "events", **SMALL})
    driver.pause(info.id)
    driver.unpause(info.id)
    driver.destroy(info.id)
    seen = []
    while not seen or seen[-1] != EventType.DESTROYED:
        event = got.get(timeout=30)
        if event.instance_id == info.id:
            seen.append(event.type)
    assert seen == [
        EventType.CREATED,
        EventType.STARTED,
        EventType.PAUSED,
        EventType.RESUMED,
        EventType.STOPPED,
        EventType.DESTROYED,
    ]
    sub.close()
    other = driver.create({"name": "silent", **SMALL, "start": False})
    driver.destroy(other.id)
    # The driver's event thread delivers in order: after close, nothing more for us.
    with pytest.raises(queue.Empty):
        got.get(timeout=0.5)
    driver.close()
    # The driver's own threads stop; the shared event loop and reaper run on only while something
    # of this process uses them (the embedded root's kept connection needs the loop).
    left = sorted(t.name for t in threading.enumerate() if t.name.startswith(("libvirt-", "qemu-reaper")))
    expected = ["libvirt-event-loop"] if EventLoop._users else []
    assert left == sorted(expected + (["qemu-reaper"] if ChildReaper._users else []))


def test_adopt_takes_a_pet_without_restarting_it(driver: LibvirtDriver) -> None:
    pets = {p.name: p for p in driver.list_unmanaged()}
    assert {"pet-1", "pet-2"} <= set(pets)
    pet = pets["pet-2"]
    with pytest.raises(InstanceNotFound):
        driver.get_instance(pet.id)  # unmanaged: not ours until adopted
    adopted = driver.adopt(pet.id)
    assert (adopted.managed, adopted.power_state, adopted.name) == (True, pet.power_state, "pet-2")
    assert pet.id in {i.id for i in driver.list_instances()}
    with pytest.raises(InvalidState):
        driver.adopt(pet.id)


def test_unknown_and_malformed_ids_are_not_found(driver: LibvirtDriver) -> None:
    for ref in ("not-a-uuid", "00000000-0000-4000-8000-000000000000", "'; <x>"):
        with pytest.raises(InstanceNotFound):
            driver.get_instance(ref)


def test_backend_info_names_versions(driver: LibvirtDriver) -> None:
    info = driver.backend_info()
    assert info.libraries["libvirt"].startswith("9.")
    assert "libvirt-python" in info.libraries
    assert info.backend in ("TEST", "QEMU")
    assert info.backend_version.count(".") == 2


def test_endpoint_leaves_nothing_behind() -> None:
    from virtdrivers_libvirt import endpoints

    with endpoints.libvirt_test_endpoint() as settings:
        node = Path(settings["uri"].removeprefix("test://"))
        assert node.exists()
    assert not node.parent.exists()


def test_concurrent_callers_share_one_driver(test_settings: Mapping[str, Any]) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for k in range(5):
                info = d.create({"name": f"t{n}-{k}", **SMALL})
                d.pause(info.id)
                assert d.get_instance(info.id).power_state == PowerState.PAUSED
                d.list_instances()
                if k % 2:
                    d.destroy(info.id)
        except BaseException as exc:
            errors.append(exc)

    with LibvirtDriver(test_settings) as d:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        names = sorted(i.name for i in d.list_instances())
        assert names == sorted(f"t{n}-{k}" for n in range(4) for k in (0, 2, 4))


def test_the_test_driver_refuses_a_wrong_or_missing_password(test_settings: Mapping[str, Any]) -> None:
    right = test_settings["password"]
    wrong = "wrong-" + right[::-1]
    for settings in (
        {**test_settings, "password": wrong},
        {k: v for k, v in test_settings.items() if k not in ("username", "password")},
    ):
        with pytest.raises(AuthenticationFailed) as err, LibvirtDriver(settings):
            pass
        chain: list[BaseException] = [err.value]
        while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None:
            chain.append(nxt)
        assert not [e for e in chain if right in f"{e}{e!r}" or wrong in f"{e}{e!r}"]


@pytest.mark.parametrize("start", [False, True])
def test_fail_next_create_hook_leaves_no_domain_and_no_file(
    qemu: LibvirtDriver, qemu_settings: Mapping[str, Any], start: bool
) -> None:
    hook = ENDPOINTS["qemu"].hooks.fail_next_create
    assert hook is not None
    hook(qemu_settings, qemu)
    with pytest.raises(DriverError, match="injected fault"):
        qemu.create({"name": "doomed", **SMALL, "disks": [{"size_gib": 1}], "start": start})
    assert os.listdir(qemu_settings["disk_dir"]) == []
    assert "doomed" not in _domains(qemu)
    assert qemu.create({"name": "doomed", **SMALL, "start": start}).name == "doomed"  # one-shot


def test_concurrent_creates_of_one_name_on_different_nodes_one_wins(
    test_settings: Mapping[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """libvirt refuses a duplicate name per node only: across nodes the driver must."""
    nodes = [test_settings["node_name"], *test_settings["peers"]]
    barrier = threading.Barrier(len(nodes))
    outcomes: list[object] = []
    real_make_disk = LibvirtDriver._make_disk

    def slow_make_disk(self: LibvirtDriver, *args: Any) -> Any:
        time.sleep(0.2)  # widens the window between the name check and the define, every time
        return real_make_disk(self, *args)

    monkeypatch.setattr(LibvirtDriver, "_make_disk", slow_make_disk)
    with LibvirtDriver(test_settings) as d:

        def make(node: str) -> None:
            barrier.wait()
            try:
                spec = {"name": "contested", **SMALL, "node": node, "start": False, "disks": [{"size_gib": 1}]}
                outcomes.append(d.create(spec))
            except InvalidSpec as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=make, args=(n,)) for n in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        errors = [o for o in outcomes if isinstance(o, InvalidSpec)]
        assert len(outcomes) == len(nodes)
        assert len(errors) == len(nodes) - 1
        assert {e.field for e in errors} == {"name"}
        assert [i.name for i in d.list_instances()] == ["contested"]


def _counting_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    calls: list[object] = []
    real = Session.call

    def counting(self: Session, fn: Any, **kw: Any) -> Any:
        calls.append(fn)
        return real(self, fn, **kw)

    monkeypatch.setattr(Session, "call", counting)
    return calls


@pytest.mark.parametrize(
    "name",
    [
        "😀" * 64,  # 256 bytes: "File name too long" for etc/qemu/NAME.xml.new
        "日" * 64,  # defines, then "UNIX socket path too long" for the monitor at start
        "日" * 16,  # 48 bytes in the socket directory's short name: too long still
        ".",  # defines, and then can never be undefined ("Cannot delete directory")
        "..",
    ],
    ids=["emoji64", "japanese64", "japanese16", "dot", "dotdot"],
)
def test_names_qemu_cannot_hold_are_refused_before_any_call(
    qemu: LibvirtDriver, qemu_settings: Mapping[str, Any], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    calls = _counting_calls(monkeypatch)
    with pytest.raises(InvalidSpec) as err:
        qemu.create({"name": name, **SMALL, "disks": [{"size_gib": 1}]})
    assert err.value.field == "name"
    assert calls == []
    monkeypatch.undo()
    assert os.listdir(qemu_settings["disk_dir"]) == []
    assert name not in _domains(qemu)


@pytest.mark.parametrize("name", ["...", "日" * 13 + "a", "😀" * 10, "a b'\"<>&;$(x)*?~:"])
def test_names_at_the_limits_start_and_round_trip_exactly(qemu: LibvirtDriver, name: str) -> None:
    info = qemu.create({"name": name, **SMALL})
    assert (info.name, info.power_state) == (name, PowerState.RUNNING)
    assert qemu.find_instance(name).id == info.id
    qemu.destroy(info.id)
    assert name not in _domains(qemu)


@pytest.mark.parametrize("value", ["\x00", "\x1b", "a\x08b", "\ufffe"], ids=["nul", "esc", "backspace", "fffe"])
def test_metadata_xml_cannot_hold_is_refused_before_any_call(
    driver: LibvirtDriver, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    calls = _counting_calls(monkeypatch)
    with pytest.raises(InvalidSpec) as err:
        driver.create({"name": "hostile", **SMALL, "start": False, "metadata": {"ok": "fine", "bad": value}})
    assert err.value.field == "metadata.bad"
    assert calls == []


def test_metadata_whitespace_and_markup_round_trip_exactly(driver: LibvirtDriver) -> None:
    meta = {
        "crlf": "line\r\nline\r\n",
        "cr": "\r",
        "space": " ",
        "tab": "\t",
        "markup": "<a href='x'>&amp;</a>]]>",
        "c1": "\x85\u2028",
        "empty": "",
    }
    info = driver.create({"name": "exact", **SMALL, "start": False, "metadata": meta})
    assert info.metadata == meta
    driver.attach_disk(info.id, {"size_gib": 1, "label": "data"})  # rewrites our metadata element
    driver.resize(info.id, vcpus=2)  # rewrites the whole definition
    listed = {i.id: i for i in driver.list_instances()}[info.id]
    assert listed.metadata == driver.get_instance(info.id).metadata == meta


def test_destroy_finishes_when_the_guest_died_after_the_state_was_read(
    qemu: LibvirtDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: destroy saw the domain running, QEMU died, libvirt says "domain is not running"."""
    info = qemu.create({"name": "dying", **SMALL, "start": False, "disks": [{"size_gib": 1}]})
    monkeypatch.setattr(LibvirtDriver, "_active", staticmethod(lambda node, dom: True))  # the stale read
    qemu.destroy(info.id)
    monkeypatch.undo()
    assert "dying" not in _domains(qemu)
    with pytest.raises(InstanceNotFound):
        qemu.get_instance(info.id)


def test_the_embedded_driver_opens_any_number_of_times(qemu_settings: Mapping[str, Any]) -> None:
    """libvirt registers the embedded QEMU driver on every open of its URI and has room for
    about 16 per process: sessions share one kept connection, so drivers come and go for ever."""
    for n in range(40):
        with LibvirtDriver(qemu_settings) as d:
            assert d.list_nodes()[0].state == "up", n
    assert list(EmbedKeeper._held) == [qemu_settings["uri"]]


def test_two_drivers_on_the_embedded_uri_at_once_both_get_events(qemu_settings: Mapping[str, Any]) -> None:
    """Both share the one kept connection; libvirt-python takes one lifecycle callback per
    connection, so the keeper fans events out, and closing one driver leaves the other's."""
    first: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
    second: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
    with LibvirtDriver(qemu_settings) as a, LibvirtDriver(qemu_settings) as b:
        a.subscribe(first.put)
        b.subscribe(second.put)
        info = a.create({"name": "shared", **SMALL, "start": False})
        for got in (first, second):
            assert (got.get(timeout=30).instance_id, info.id) == (info.id, info.id)
        a.close()
        b.destroy(info.id)
        assert second.get(timeout=30).type == EventType.DESTROYED
        assert first.empty()


def _token(*, alive: bool) -> str:
    """A token of this process (alive), or of a process that is gone (same PID, other start)."""
    token = CreateToken.new()
    return token.encode() if alive else dataclasses.replace(token, pid_start=token.pid_start + 1).encode()


def test_reap_removes_what_interrupted_creates_left_and_nothing_else(driver: LibvirtDriver) -> None:
    node = driver._primary
    kept = driver.create({"name": "complete", **SMALL, "start": False, "disks": [{"size_gib": 1}]})
    assert driver.reap(dry_run=True) == []  # a completed create carries no token
    # What a create killed midway leaves, made on the real peer: a defined domain still carrying
    # its token and the disk it got, and a disk file made before the domain was defined.
    dead, live = _token(alive=False), _token(alive=True)
    uid = str(uuid.uuid4())
    disk = driver._make_disk(node, uid, "sda", DiskSpec(size_gib=1), dead)
    xml = mapping.domain_xml(
        uuid=uid,
        name="half-made",
        vcpus=1,
        memory_mb=64,
        domain_type=driver._domain_type_for(node),
        disks=(disk,),
        machine=None if driver._domain_type_for(node) == "test" else "pc",
        create_token=dead,
    )
    node.session.call(lambda c: c.defineXML(xml))
    orphan = driver._make_disk(node, str(uuid.uuid4()), "sda", DiskSpec(size_gib=1), dead)
    running = driver._make_disk(node, str(uuid.uuid4()), "sda", DiskSpec(size_gib=1), live)  # still being made
    assert {i.id for i in driver.list_instances()} == {kept.id, uid}  # visible, though unfinished
    found = driver.reap(dry_run=True)
    assert sorted((f.kind, f.ref) for f in found) == [("disk", orphan.path), ("instance", uid)]
    assert {f.token for f in found} == {dead}
    assert sorted((f.kind, f.ref) for f in driver.reap()) == [("disk", orphan.path), ("instance", uid)]
    assert driver.reap(dry_run=True) == []
    assert [i.id for i in driver.list_instances()] == [kept.id]
    assert set(node.store.made()) == {
        kept_disk.path
        for kept_disk in driver._record(
            node, node.session.call(lambda c: c.lookupByUUIDString(kept.id)), fresh=True
        ).disks
    } | {running.path}
    node.store.delete(running.path)


def test_disks_a_revert_drops_go_once_no_snapshot_holds_them(
    qemu: LibvirtDriver, qemu_settings: Mapping[str, Any]
) -> None:
    def files() -> int:
        return len(os.listdir(qemu_settings["disk_dir"]))

    info = qemu.create({"name": "layers", **SMALL, "start": False, "disks": [{"size_gib": 1}]})
    first = qemu.create_snapshot(info.id, "first")
    qemu.attach_disk(info.id, {"size_gib": 1})  # sdb: held by "second"
    second = qemu.create_snapshot(info.id, "second")
    qemu.attach_disk(info.id, {"size_gib": 1})  # sdc: held by nothing but the definition
    assert files() == 3
    qemu.revert_snapshot(info.id, first.id)
    assert files() == 2  # sdc is gone; sdb stays, "second" brings it back
    assert [d.id for d in qemu.revert_snapshot(info.id, second.id).disks] == ["sda", "sdb"]
    qemu.revert_snapshot(info.id, first.id)
    qemu.delete_snapshot(info.id, second.id)
    assert files() == 1  # the last snapshot holding sdb went
    qemu.attach_disk(info.id, {"size_gib": 1})
    qemu.create_snapshot(info.id, "third")
    qemu.revert_snapshot(info.id, first.id)
    assert files() == 2  # held by "third" only
    qemu.destroy(info.id)
    assert files() == 0  # undefine takes the snapshots, and their disks go too
    assert qemu.reap(dry_run=True, grace_s=0) == []


def test_a_disk_detached_and_kept_is_never_reaped(driver: LibvirtDriver) -> None:
    info = driver.create({"name": "keeper", **SMALL, "start": False, "disks": [{"size_gib": 1}, {"size_gib": 1}]})
    node = driver._primary
    before = set(node.store.made())
    driver.detach_disk(info.id, "sdb", delete=False)
    assert driver.reap(dry_run=True, grace_s=0) == []
    after = set(node.store.made())
    assert len(after) == len(before)  # kept, under a name without the operation's trail
    driver.destroy(info.id)
    (kept,) = set(node.store.made()) - before
    assert driver.reap(dry_run=True, grace_s=0) == []
    node.store.delete(kept)


def _in_forked_child(body: Callable[[], None], *, hold_loop_lock: bool = False) -> int:
    """Run ``body`` in a forked child and return its exit code: 0 it returned, 1 it raised, 2 it hung."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # another thread inside acquire() at the moment of the fork
        with EventLoop._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    if hold_loop_lock:
        holder.start()
        held.wait(10)
    pid = os.fork()
    release.set()
    if hold_loop_lock:
        holder.join()
    if pid == 0:  # the child reports by exit status only and never returns into pytest
        status = 1
        try:
            signal.alarm(30)  # a deadlocked child must not outlive the test
            body()
            status = 0
        except BaseException:
            traceback.print_exc()  # reaches the test's captured output
        finally:
            os._exit(status)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return 2
    return os.waitstatus_to_exitcode(done[1])


def test_a_driver_made_in_a_forked_child_runs_its_own_event_loop(test_settings: Mapping[str, Any]) -> None:
    """Compute agents fork workers (multiprocessing, pre-fork servers). A child forked after the
    parent's drivers closed runs a loop of its own, even if a parent thread held the loop's lock.

    Run in a fresh interpreter: this one may hold the loop for good (an embedded QEMU URI does).
    """
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import test_libvirt_embedded as t
t._forked_child_after_close({dict(test_settings)!r})
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _forked_child_after_close(settings: Mapping[str, Any]) -> None:
    with LibvirtDriver(settings) as parent, parent.subscribe(lambda _event: None):
        assert EventLoop._thread is not None, "the parent's event loop runs while it has a subscriber"
    assert EventLoop._thread is None, "the loop stops with its last user"

    def child() -> None:
        got: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
        with LibvirtDriver(settings) as driver, driver.subscribe(got.put):
            info = driver.create({"name": f"forked-{uuid.uuid4().hex[:8]}", **SMALL, "start": False})
            while got.get(timeout=20).instance_id != info.id:
                pass
            driver.destroy(info.id)

    assert _in_forked_child(child, hold_loop_lock=True) == 0, "the forked child's driver got no event"


def test_a_child_forked_while_the_loop_runs_gets_a_typed_error_not_a_hang(test_settings: Mapping[str, Any]) -> None:
    """libvirt's loop cannot run again in such a child (its owner thread is gone): say so at once."""

    def child() -> None:
        with pytest.raises(DriverError, match="forked while its parent ran libvirt's event loop"):
            LibvirtDriver(test_settings).connect()

    with LibvirtDriver(test_settings) as parent, parent.subscribe(lambda _event: None):
        assert _in_forked_child(child) == 0
