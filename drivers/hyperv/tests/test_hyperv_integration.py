"""The real pywinrm over real HTTP(S) to the simulator: both embedded endpoints, and in-process variants.

The simulator runs as its own process (as the parity run starts it) for the two
embedded endpoints, and in-process where a test needs a particular inventory or
server setting. Every simulator is started and stopped by these tests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from virtdrivers.errors import (
    AuthenticationFailed,
    BackendUnavailable,
    InstanceNotFound,
    InvalidSpec,
    InvalidState,
    NotFound,
    NotSupported,
    Timeout,
)
from virtdrivers.objects import HAPriority, InstanceSpec, PowerState
from virtdrivers_hyperv.driver import HA_METADATA_KEY, HypervDriver
from virtdrivers_hyperv.simulator import Simulator
from virtdrivers_hyperv.simulator.endpoint import run_simulator

HOSTILE_NAMES = [
    "x'; Remove-VM * -Force; '",
    'q"; Stop-Computer -Force; "',
    "$(Stop-Computer) @{a=1} `$b",
    "semi;colon & pipe | <angle> 100%",
    "é ü 漢字 🙂",
    "back`tick `n not-a-newline",
]


def _state(settings: dict[str, Any]) -> dict[str, Any]:
    """The simulator's model, read over its inspection page (not through the driver)."""
    scheme = "https" if settings["https"] else "http"
    context = ssl.create_default_context(cafile=settings["ca_file"]) if settings["https"] else None
    url = f"{scheme}://127.0.0.1:{settings['port']}/_sim/state"
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        state: dict[str, Any] = json.load(response)
        return state


@pytest.fixture(scope="module", params=["https-basic", "ntlm"])
def endpoint(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    with run_simulator(https=request.param == "https-basic") as settings:
        yield dict(settings)


@pytest.fixture
def driver(endpoint: dict[str, Any]) -> Iterator[HypervDriver]:
    with HypervDriver(endpoint) as d:
        yield d


@pytest.fixture
def made(driver: HypervDriver) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    for i in ids:
        with contextlib.suppress(NotFound):
            driver.destroy(i)


def _spec(name: str, **kw: Any) -> InstanceSpec:
    fields: dict[str, Any] = {"name": name, "vcpus": 1, "memory_mb": 256, "disks": [{"size_gib": 1}]}
    fields.update(kw)
    return InstanceSpec(**fields)


# -- security ------------------------------------------------------------------------------------


def test_wrong_password_is_authentication_failed_and_never_shown(
    endpoint: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "Wr0ng-" + endpoint["password"][::-1]
    caplog.set_level(logging.DEBUG)
    d = HypervDriver({**endpoint, "password": wrong})
    with pytest.raises(AuthenticationFailed) as err:
        d.connect()
    chain = []
    exc: BaseException | None = err.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    for secret in (wrong, endpoint["password"]):
        assert all(secret not in text for text in chain)
        assert secret not in repr(d)
        assert secret not in caplog.text
    d.close()


def test_right_password_connects_and_reports_backend(driver: HypervDriver, endpoint: dict[str, Any]) -> None:
    info = driver.backend_info()
    assert info.backend == "Hyper-V"
    assert info.libraries["cluster"] == "HVCLUSTER"
    assert endpoint["password"] not in info.model_dump_json()
    assert endpoint["password"] not in repr(driver)


def test_basic_over_plain_http_is_refused_unless_explicit() -> None:
    with pytest.raises(InvalidSpec) as err:
        HypervDriver(host="h", user="u", password="s3cr3t-value", transport="basic", https=False)
    assert "allow_basic_over_http" in str(err.value)
    assert "s3cr3t-value" not in str(err.value)
    HypervDriver(host="h", user="u", password="p", transport="basic", https=False, allow_basic_over_http=True)


def test_tls_is_verified_by_default() -> None:
    with run_simulator(https=True) as settings:
        # Without the simulator's CA the certificate cannot be trusted.
        with pytest.raises(BackendUnavailable) as err:
            HypervDriver({**settings, "ca_file": None}).connect()
        assert "TLS" in str(err.value)
        assert settings["password"] not in str(err.value)


def test_insecure_is_explicit_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with run_simulator(https=True) as settings:
        caplog.set_level(logging.WARNING)
        with HypervDriver({**settings, "ca_file": None, "insecure": True}) as d:
            assert d.list_nodes()
        assert "verification is OFF" in caplog.text


def test_basic_over_http_against_a_winrm_that_refuses_unencrypted() -> None:
    with Simulator(user="admin", password="pw-1", https=False) as sim:
        settings = {"host": "127.0.0.1", "port": sim.port, "user": "admin", "password": "pw-1"}
        d = HypervDriver(settings, transport="basic", https=False, allow_basic_over_http=True)
        with pytest.raises(AuthenticationFailed):
            d.connect()
        # NTLM with sealed messages is accepted by the same listener.
        with HypervDriver(settings, transport="ntlm", https=False) as ntlm:
            assert ntlm.list_nodes()


# -- injection -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_data(driver: HypervDriver, made: list[str], name: str) -> None:
    info = driver.create(_spec(name, start=False, disks=[], metadata={"k;$(x)": "v'\"`"}))
    made.append(info.id)
    assert info.name == name
    assert driver.get_instance(info.id).metadata == {"k;$(x)": "v'\"`"}
    assert driver.find_instance(name).id == info.id
    snap = driver.create_snapshot(info.id, name)
    assert [s.name for s in driver.list_snapshots(info.id)] == [name]
    assert snap.name == name


HOSTILE_IDS = [
    "'; Remove-VM * -Force; '",
    "$(Stop-Computer -Force)",
    "6bc328c0-f2b2-4e44-bbd1-6616623a60da'; Remove-VM *",
    "6bc328c0-f2b2-4e44-bbd1-6616623a60da\n",
    "../../etc/passwd",
    "",
    "x" * 5000,
    "é漢🙂",
]


@pytest.mark.parametrize("bad", HOSTILE_IDS)
def test_hostile_instance_ids_are_instance_not_found_before_any_script(driver: HypervDriver, bad: str) -> None:
    """Hyper-V VM ids are GUIDs: anything else is refused in Python, so no script ever sees it."""
    calls: dict[str, Any] = {
        "get_instance": lambda: driver.get_instance(bad),
        "destroy": lambda: driver.destroy(bad),
        "power_on": lambda: driver.power_on(bad),
        "power_off": lambda: driver.power_off(bad, force=True),
        "reboot": lambda: driver.reboot(bad),
        "pause": lambda: driver.pause(bad),
        "resume": lambda: driver.resume(bad),
        "resize": lambda: driver.resize(bad, vcpus=2),
        "attach_disk": lambda: driver.attach_disk(bad, {"size_gib": 1}),
        "detach_disk": lambda: driver.detach_disk(bad, "C:\\x.vhdx"),
        "create_snapshot": lambda: driver.create_snapshot(bad, "s"),
        "list_snapshots": lambda: driver.list_snapshots(bad),
        "revert_snapshot": lambda: driver.revert_snapshot(bad, "6bc328c0-f2b2-4e44-bbd1-6616623a60da"),
        "delete_snapshot": lambda: driver.delete_snapshot(bad, "6bc328c0-f2b2-4e44-bbd1-6616623a60da"),
        "live_migrate": lambda: driver.live_migrate(bad),
        "cold_migrate": lambda: driver.cold_migrate(bad, "HV-NODE2"),
        "evacuate": lambda: driver.evacuate(bad, "HV-NODE2"),
        "set_high_availability": lambda: driver.set_high_availability(bad, True),
        "get_high_availability": lambda: driver.get_high_availability(bad),
        "failover": lambda: driver.failover(bad),
        "adopt": lambda: driver.adopt(bad),
    }
    before = driver.session.scripts_run
    for op, call in calls.items():
        with pytest.raises(InstanceNotFound):
            call()
        assert driver.session.scripts_run == before, f"{op} sent a script for id {bad!r}"


def test_hostile_checkpoint_ids_and_node_names_are_data_or_not_found(
    driver: HypervDriver, made: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    info = driver.create(_spec("hostile-refs", disks=[]))
    made.append(info.id)
    snap = driver.create_snapshot(info.id, "s1")
    sent: list[str] = []
    run = driver.session.run

    def spy(name: str, args: dict[str, Any] | None = None, **kw: Any) -> Any:  # records, then really runs
        sent.append(name)
        return run(name, args, **kw)

    monkeypatch.setattr(driver.session, "run", spy)
    for bad in HOSTILE_IDS:
        with pytest.raises(NotFound) as err:
            driver.revert_snapshot(info.id, bad)
        assert not isinstance(err.value, InstanceNotFound)
        with pytest.raises(NotFound):
            driver.delete_snapshot(info.id, bad)
    assert set(sent) == {"get"}  # only read-only instance lookups: no checkpoint script saw a bad id
    # A malformed checkpoint id on a missing instance is still InstanceNotFound first.
    with pytest.raises(InstanceNotFound):
        driver.revert_snapshot("00000000-0000-4000-8000-00000000dead", "'; x")
    for node in ("'; Stop-Computer -Force; '", "$(Remove-VM *)", "HV-NODE2`nX"):
        with pytest.raises(NotFound):
            driver.live_migrate(info.id, node)
        with pytest.raises(NotFound):
            driver.host_resources(node)
    # The checkpoint id in upper case or braces is the same GUID.
    assert driver.revert_snapshot(info.id, "{" + snap.id.upper() + "}").id == info.id
    assert [s.id for s in driver.list_snapshots(info.id)] == [snap.id]
    after = driver.get_instance(info.id)
    assert (after.name, after.node) == ("hostile-refs", info.node)


def test_metadata_too_large_for_the_command_line_goes_over_stdin(driver: HypervDriver, made: list[str]) -> None:
    meta = {f"key-{i}": "v" * 1000 for i in range(40)}
    before = driver.session.round_trips["Send"]
    info = driver.create(_spec("big-metadata", start=False, disks=[], metadata=meta))
    made.append(info.id)
    assert driver.session.round_trips["Send"] > before
    assert driver.get_instance(info.id).metadata == meta


# -- lifecycle and failures -------------------------------------------------------------------------


def test_failed_create_leaves_nothing_behind(driver: HypervDriver, endpoint: dict[str, Any]) -> None:
    before = _state(endpoint)
    # VM, two VHDX files and the cluster role are made; Start-VM then fails: not enough host memory.
    spec = _spec(
        "too-big",
        memory_mb=200 * 1024,
        disks=[{"size_gib": 1}, {"size_gib": 2, "thin": False}],
        metadata={HA_METADATA_KEY: "true"},
    )
    with pytest.raises(InvalidState, match="Not enough memory"):
        driver.create(spec)
    after = _state(endpoint)
    assert after == before
    assert "too-big" not in {i.name for i in driver.list_instances()}


def test_failed_create_on_disk_space_leaves_nothing_behind(driver: HypervDriver, endpoint: dict[str, Any]) -> None:
    before = _state(endpoint)
    spec = _spec("no-space", disks=[{"size_gib": 1}, {"size_gib": 60 * 1024, "thin": False}])
    with pytest.raises(InvalidSpec, match="not enough space"):
        driver.create(spec)
    assert _state(endpoint) == before


def test_duplicate_name_is_invalid_spec(driver: HypervDriver, made: list[str]) -> None:
    info = driver.create(_spec("dup", start=False, disks=[]))
    made.append(info.id)
    with pytest.raises(InvalidSpec) as err:
        driver.create(_spec("dup", start=False, disks=[]))
    assert err.value.field == "name"


def test_odd_memory_is_refused_before_the_backend(driver: HypervDriver) -> None:
    before = driver.session.scripts_run
    with pytest.raises(InvalidSpec) as err:
        driver.create(_spec("odd", memory_mb=257))
    assert err.value.field == "memory_mb"
    assert driver.session.scripts_run == before


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "vmdk"])
def test_other_disk_formats_are_refused_not_replaced_by_vhdx(driver: HypervDriver, fmt: str) -> None:
    """Even with the capability guard lifted (a conformance probe), a raw disk is never made as a VHDX."""
    before = driver.session.scripts_run
    with driver.probing():
        with pytest.raises(NotSupported) as err:
            driver.create(_spec("fmt", disks=[{"size_gib": 1, "format": fmt}]))
        assert err.value.capability == f"disk_{fmt}"
        with pytest.raises(NotSupported):
            driver.attach_disk("00000000-0000-4000-8000-00000000dead", {"size_gib": 1, "format": fmt})
    assert driver.session.scripts_run == before


def test_unknown_and_malformed_ids(driver: HypervDriver) -> None:
    with pytest.raises(InstanceNotFound):
        driver.get_instance("00000000-0000-4000-8000-00000000dead")
    before = driver.session.scripts_run
    with pytest.raises(InstanceNotFound):
        driver.get_instance("'; Remove-VM *")
    assert driver.session.scripts_run == before


def test_cpu_change_needs_the_vm_off(driver: HypervDriver, made: list[str]) -> None:
    info = driver.create(_spec("cpu-running"))
    made.append(info.id)
    with pytest.raises(InvalidState):
        driver.resize(info.id, vcpus=2)
    assert driver.resize(info.id, memory_mb=512).memory_mb == 512  # runtime memory resize is allowed
    driver.power_off(info.id, force=True)
    assert driver.resize(info.id, vcpus=2).vcpus == 2


def test_destroy_removes_vm_vhdx_and_role(driver: HypervDriver, endpoint: dict[str, Any]) -> None:
    before = _state(endpoint)
    info = driver.create(_spec("to-destroy", metadata={HA_METADATA_KEY: "true"}, disks=[{"size_gib": 1}] * 2))
    driver.attach_disk(info.id, {"size_gib": 1, "label": "data"})
    driver.create_snapshot(info.id, "s1")
    mid = _state(endpoint)
    assert len(mid["vhds"]) == len(before["vhds"]) + 3
    assert info.id in {g["vm"] for g in mid["groups"].values()}
    driver.destroy(info.id)
    assert _state(endpoint) == before


def test_attach_and_detach_vhdx(driver: HypervDriver, made: list[str], endpoint: dict[str, Any]) -> None:
    info = driver.create(_spec("disks", disks=[{"size_gib": 1, "label": "root"}]))
    made.append(info.id)
    disk = driver.attach_disk(info.id, {"size_gib": 5, "thin": False, "label": "data"})
    assert (disk.size_gib, disk.thin, disk.format, disk.label) == (5, False, "vhdx", "data")
    got = driver.get_instance(info.id)
    assert {d.label for d in got.disks} == {"root", "data"}
    driver.detach_disk(info.id, disk.id, delete=False)
    assert disk.id in _state(endpoint)["vhds"]
    assert disk.id not in {d.id for d in driver.get_instance(info.id).disks}
    with pytest.raises(NotFound):
        driver.detach_disk(info.id, disk.id)


def test_power_states_follow_hyper_v(driver: HypervDriver, made: list[str]) -> None:
    info = driver.create(_spec("power"))
    made.append(info.id)
    with pytest.raises(InvalidState):
        driver.unpause(info.id)
    assert driver.suspend(info.id).power_state == PowerState.SUSPENDED
    with pytest.raises(InvalidState):
        driver.pause(info.id)
    assert driver.power_off(info.id, timeout=5).power_state == PowerState.SHUTDOWN
    with pytest.raises(InvalidState):
        driver.reboot(info.id)


def test_adopt_a_pet_keeps_its_notes(driver: HypervDriver) -> None:
    pets = {p.name: p for p in driver.list_unmanaged()}
    pet = pets["pet-db-1"]
    with pytest.raises(InstanceNotFound):
        driver.get_instance(pet.id)  # not managed yet
    adopted = driver.adopt(pet.id)
    assert adopted.managed
    assert (adopted.vcpus, adopted.memory_mb, len(adopted.disks)) == (4, 4096, 2)
    assert pet.id in {i.id for i in driver.list_instances()}
    with pytest.raises(InvalidState):
        driver.adopt(pet.id)


def test_operations_meant_for_managed_instances_never_touch_a_pet(
    driver: HypervDriver, endpoint: dict[str, Any]
) -> None:
    """A pet's id (a stale or mistaken one) is not ours: InstanceNotFound, and the pet is untouched."""
    pet = {p.name: p for p in driver.list_unmanaged()}["pet-web-1"]
    before = _state(endpoint)
    attempts = {
        "power_off": lambda: driver.power_off(pet.id, force=True),
        "reboot": lambda: driver.reboot(pet.id, hard=True),
        "pause": lambda: driver.pause(pet.id),
        "suspend": lambda: driver.suspend(pet.id),
        "resize": lambda: driver.resize(pet.id, memory_mb=512),
        "attach_disk": lambda: driver.attach_disk(pet.id, {"size_gib": 1}),
        "create_snapshot": lambda: driver.create_snapshot(pet.id, "s"),
        "live_migrate": lambda: driver.live_migrate(pet.id),
        "set_high_availability": lambda: driver.set_high_availability(pet.id, True),
        "destroy": lambda: driver.destroy(pet.id),
    }
    for op, call in attempts.items():
        with pytest.raises(InstanceNotFound):
            call()
        assert _state(endpoint) == before, f"{op} changed the pet"
    assert {p.id for p in driver.list_unmanaged()} >= {pet.id}


# -- migration and HA ---------------------------------------------------------------------------------


def test_live_migration_moves_a_running_vm(driver: HypervDriver, made: list[str]) -> None:
    info = driver.create(_spec("mover", node="HV-NODE1"))
    made.append(info.id)
    moved = driver.live_migrate(info.id, "HV-NODE2")
    assert (moved.node, moved.host, moved.power_state) == ("HV-NODE2", "HV-NODE2", PowerState.RUNNING)
    assert driver.get_instance(info.id).node == "HV-NODE2"
    with pytest.raises(InvalidSpec):
        driver.live_migrate(info.id, "HV-NODE2")
    with pytest.raises(NotFound):
        driver.live_migrate(info.id, "NO-SUCH-NODE")
    back = driver.live_migrate(info.id)  # the backend's choice: the other node
    assert back.node == "HV-NODE1"
    driver.power_off(info.id, force=True)
    with pytest.raises(InvalidState):
        driver.live_migrate(info.id)
    assert driver.cold_migrate(info.id).node == "HV-NODE2"


def test_ha_role_owner_failover_and_removal(driver: HypervDriver, made: list[str], endpoint: dict[str, Any]) -> None:
    info = driver.create(_spec("ha-vm", node="HV-NODE1"))
    made.append(info.id)
    assert not driver.get_high_availability(info.id).enabled
    with pytest.raises(InvalidState):
        driver.failover(info.id)
    ha = driver.set_high_availability(info.id, True, priority=HAPriority.HIGH)
    assert (ha.enabled, ha.owner_node, ha.priority, ha.state) == (True, "HV-NODE1", HAPriority.HIGH, "online")
    assert _state(endpoint)["groups"][info.id]["owner"] == "HV-NODE1"
    after = driver.failover(info.id, "HV-NODE2")
    assert after.owner_node == "HV-NODE2"
    assert driver.get_instance(info.id).host == "HV-NODE2"
    assert driver.get_instance(info.id).power_state == PowerState.RUNNING
    # A clustered VM live-migrates through the cluster (Move-ClusterVirtualMachineRole).
    assert driver.live_migrate(info.id).node == "HV-NODE1"
    assert driver.get_high_availability(info.id).owner_node == "HV-NODE1"
    assert not driver.set_high_availability(info.id, False).enabled
    assert info.id not in _state(endpoint)["groups"]
    assert driver.get_instance(info.id).power_state == PowerState.RUNNING  # removing the role keeps the VM


# -- protocol: timeouts, split output, lost shells -----------------------------------------------------


@pytest.fixture
def slow_sim() -> Iterator[Simulator]:
    inventory = {"migration_seconds": 2.5, "vms": []}
    with Simulator(user="admin", password="pw-2", https=True, inventory=inventory, receive_chunk=256) as sim:
        yield sim


def _inproc(sim: Simulator, **kw: Any) -> HypervDriver:
    return HypervDriver(
        host="127.0.0.1",
        port=sim.port,
        user="admin",
        password="pw-2",
        transport="basic",
        ca_file=str(sim.ca_file),
        **kw,
    )


def test_long_operation_polls_through_operation_timeouts(slow_sim: Simulator) -> None:
    with _inproc(slow_sim, operation_timeout=1) as d:
        info = d.create(_spec("slow-mover", node="HV-NODE1"))
        receives = d.session.round_trips["Receive"]
        faults = slow_sim.server.shells.requests.get("Receive", 0)
        moved = d.live_migrate(info.id)
        assert moved.node == "HV-NODE2"
        # At least two Receives timed out (w:TimedOut fault) before the one with the answer.
        assert d.session.round_trips["Receive"] - receives >= 3
        assert slow_sim.server.shells.requests["Receive"] - faults >= 3


def test_operation_deadline_raises_timeout(slow_sim: Simulator) -> None:
    with _inproc(slow_sim, operation_timeout=1, task_timeout=1.0) as d:
        info = d.create(_spec("late", node="HV-NODE1"))
        with pytest.raises(Timeout):
            d.live_migrate(info.id)
        # The session is still usable afterwards.
        assert d.list_nodes()


def test_output_split_over_several_receives(slow_sim: Simulator) -> None:
    with _inproc(slow_sim) as d:
        for i in range(12):
            d.create(_spec(f"many-{i}", start=False, disks=[]))
        receives = d.session.round_trips["Receive"]
        listed = d.list_instances()
        assert len(listed) == 12
        assert d.session.round_trips["Receive"] - receives > 3  # 256-byte chunks


def test_lost_shell_is_reopened(slow_sim: Simulator) -> None:
    with _inproc(slow_sim) as d:
        assert d.list_nodes()
        slow_sim.server.shells._shells.clear()  # as after a WinRM service restart
        assert d.list_nodes()
        assert d.session.round_trips["Create"] == 2


def test_command_line_limit_and_unknown_scripts_on_the_wire(slow_sim: Simulator) -> None:
    """Drive the simulator's shell directly with pywinrm, as any WinRM client would."""
    import base64

    from winrm.protocol import Protocol

    p = Protocol(
        endpoint=f"https://127.0.0.1:{slow_sim.port}/wsman",
        transport="basic",
        username="admin",
        password="pw-2",
        ca_trust_path=str(slow_sim.ca_file),
    )
    shell = p.open_shell()
    try:
        cid = p.run_command(shell, "powershell -encodedcommand " + "A" * 8200)
        _, err, code = p.get_command_output(shell, cid)
        assert (code, err) == (1, b"The command line is too long.\r\n")
        unknown = base64.b64encode("Get-Process".encode("utf-16-le")).decode()
        cid = p.run_command(shell, f"powershell -encodedcommand {unknown}")
        _, err, code = p.get_command_output(shell, cid)
        assert code == 1
        assert err.startswith(b"#< CLIXML")
    finally:
        p.close_shell(shell)


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_dropped_connections_are_recovered(transport: str) -> None:
    """After the host drops our TCP connections (NTLM context lost with them), the next call still works."""
    https = transport == "basic"
    with Simulator(user="admin", password="pw-3", https=https, inventory={"vms": []}) as sim:
        settings: dict[str, Any] = {"host": "127.0.0.1", "port": sim.port, "user": "admin", "password": "pw-3"}
        with HypervDriver(settings, transport=transport, https=https, ca_file=str(sim.ca_file or "")) as d:
            assert d.list_nodes()
            sim.server.drop_connections()
            assert len(d.list_nodes()) == 3
            # NTLM: the sealed Command fails on the new connection (HTTP 400/401) and is retried on a new session.
            assert d.session.round_trips["Create"] == (2 if transport == "ntlm" else 1)
            sim.server.shells._shells.clear()
            sim.server.drop_connections()
            assert len(d.list_nodes()) == 3


def test_create_cut_off_by_timeout_is_purged() -> None:
    """The deadline kills the create script mid-way (no rollback runs there): the driver purges by token."""
    inventory = {"create_seconds": 3.0, "vms": []}
    with Simulator(user="admin", password="pw-4", https=True, inventory=inventory) as sim:
        settings = {"host": "127.0.0.1", "port": sim.port, "user": "admin", "password": "pw-4"}
        opts: dict[str, Any] = {"transport": "basic", "ca_file": str(sim.ca_file), "operation_timeout": 1}
        with HypervDriver(settings, task_timeout=1.5, **opts) as d:
            spec = _spec("cut-off", disks=[{"size_gib": 1}, {"size_gib": 1}], metadata={HA_METADATA_KEY: "true"})
            with pytest.raises(Timeout):
                d.create(spec)
            state = sim.model.snapshot_state()
            assert state == {"vms": {}, "vhds": [], "groups": {}, "dirs": [], "files": []}
            assert d.session.round_trips["Command"] >= 2  # the create, then the purge
            assert d.list_instances() == []


def test_evacuate_after_a_node_dies() -> None:
    with Simulator(user="admin", password="pw-5", https=True, inventory={"vms": []}) as sim:
        settings = {"host": "127.0.0.1", "port": sim.port, "user": "admin", "password": "pw-5"}
        with HypervDriver(settings, transport="basic", ca_file=str(sim.ca_file)) as d:
            plain = d.create(_spec("plain", node="HV-NODE2", metadata={"owner": "ops"}, disks=[{"size_gib": 3}]))
            ha = d.create(_spec("clustered", node="HV-NODE2", metadata={HA_METADATA_KEY: "true"}))
            stopped = d.create(_spec("stopped", node="HV-NODE2", start=False))
            with pytest.raises(InvalidState):
                d.evacuate(plain.id, "HV-NODE1")  # its node is up and it runs: migrate instead
            assert d.evacuate(stopped.id, "HV-NODE1").node == "HV-NODE1"

            sim.model.fail_node("HV-NODE2")
            assert {n.name: n.state for n in d.list_nodes()} == {"HV-NODE1": "up", "HV-NODE2": "down", "HV-NODE3": "up"}
            # The cluster restarted the clustered role elsewhere by itself.
            moved = d.get_instance(ha.id)
            assert (moved.node, moved.power_state) == ("HV-NODE1", PowerState.RUNNING)
            # The plain VM is gone with its node until it is rebuilt from its configuration on the CSV.
            with pytest.raises(InstanceNotFound):
                d.get_instance(plain.id)
            with pytest.raises(InvalidState):
                d.evacuate(plain.id, "HV-NODE2")  # not onto the dead node
            rebuilt = d.evacuate(plain.id, "HV-NODE1")
            assert (rebuilt.id, rebuilt.node, rebuilt.power_state) == (plain.id, "HV-NODE1", PowerState.SHUTDOWN)
            assert rebuilt.metadata == {"owner": "ops"}
            assert [disk.id for disk in rebuilt.disks] == [disk.id for disk in plain.disks]
            assert d.power_on(plain.id).power_state == PowerState.RUNNING


def test_node_failure_knob_reaches_a_simulator_in_another_process() -> None:
    """Tests of other processes (an orchestrator's evacuation) fail nodes through the HTTP knob."""
    from virtdrivers_hyperv.simulator.endpoint import run_simulator, set_node_state

    with run_simulator(https=True) as settings, HypervDriver(settings) as d:
        set_node_state(settings, "HV-NODE2", down=True)
        assert {n.name: n.state for n in d.list_nodes()} == {"HV-NODE1": "up", "HV-NODE2": "down", "HV-NODE3": "up"}
        set_node_state(settings, "HV-NODE2", down=False)
        assert {n.state for n in d.list_nodes()} == {"up"}
        with pytest.raises(Exception, match="404"):
            set_node_state(settings, "NO-SUCH-NODE", down=True)


@pytest.mark.parametrize("restart", [True, False])
def test_simulator_killed_mid_call_ends_typed_and_the_driver_recovers(restart: bool) -> None:
    """A WinRM service that dies under an in-flight script (the process killed, its sockets reset).

    The call ends as BackendUnavailable at once, not as an AssertionError from signalling a
    shell the lost connection took with it; the same driver object then works against a
    service restarted on the same port, or keeps failing typed while nothing listens.
    """
    import threading
    import time

    from virtdrivers_hyperv.simulator.endpoint import simulator_process

    inventory = {"migration_seconds": 5.0, "vms": []}
    with simulator_process(https=False, inventory=inventory, password="pw-kill") as (proc, settings):
        d = HypervDriver(settings, task_timeout=20)
        d.connect()
        try:
            info = d.create(_spec("in-flight", node="HV-NODE1"))
            outcome: dict[str, Any] = {}

            def migrate() -> None:
                t0 = time.monotonic()
                try:
                    d.live_migrate(info.id, "HV-NODE2")
                except BaseException as exc:
                    outcome["error"] = exc
                outcome["seconds"] = time.monotonic() - t0

            caller = threading.Thread(target=migrate)
            caller.start()
            time.sleep(1.0)  # the Receive loop is waiting on the 5 s migration
            proc.kill()
            proc.wait()
            caller.join(timeout=30)
            assert not caller.is_alive()
            assert isinstance(outcome.get("error"), BackendUnavailable), outcome
            assert outcome["seconds"] < d.settings.task_timeout
            if not restart:
                with pytest.raises(BackendUnavailable):
                    d.list_nodes()
                return
            with simulator_process(https=False, password="pw-kill", port=settings["port"], inventory={"vms": []}):
                assert len(d.list_nodes()) == 3
                assert d.list_instances() == []  # the restarted service's (empty) inventory
        finally:
            d.close()
