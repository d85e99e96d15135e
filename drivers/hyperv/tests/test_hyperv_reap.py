"""Crash-safe creation (REAP) and deadlines, over the real pywinrm to the simulator.

A create whose agent dies keeps running on the host (the agent's SIGKILL does not stop
a remote powershell.exe), so what it leaves is a VM whose Notes still carry the create's
token: the completion step never ran. A create whose *host-side* process dies (a node
reboot, the WinRM plugin host crashing: the simulator's crash knob) leaves whatever it
made up to that cmdlet, with no rollback: here disks in the token folder and no VM, which
no listing shows. ``reap`` must find and remove both, and nothing else.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from virtdrivers.errors import BackendUnavailable, DriverError, Timeout
from virtdrivers.objects import InstanceSpec, PowerState
from virtdrivers.reaping import CreateToken
from virtdrivers_hyperv.driver import HypervDriver
from virtdrivers_hyperv.simulator import Simulator
from virtdrivers_hyperv.simulator.endpoint import simulator_process


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(user="admin", password="pw-reap", https=True, inventory={"vms": []}) as s:
        yield s


def _driver(sim: Simulator, **kw: Any) -> HypervDriver:
    settings = {"host": "127.0.0.1", "port": sim.port, "user": "admin", "password": "pw-reap"}
    return HypervDriver(settings, transport="basic", ca_file=str(sim.ca_file), **kw)


def _dead_token() -> str:
    """A token whose owner process (on this host) has exited: its create is abandoned at once."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return dataclasses.replace(CreateToken.new(), pid=int(child.stdout)).encode()


def _spec(name: str, disks: int = 1, **kw: Any) -> InstanceSpec:
    return InstanceSpec(name=name, vcpus=1, memory_mb=256, disks=[{"size_gib": 1}] * disks, **kw)


def test_reap_takes_what_interrupted_creates_left_and_nothing_else(sim: Simulator) -> None:
    with _driver(sim) as d:
        keep = d.create(_spec("keep", disks=2))
        kept = d.create(_spec("kept-disk"))
        d.detach_disk(kept.id, kept.disks[0].id, delete=False)  # unreferenced now, but the user keeps it

        # The agent died after sending its create (the script ran to its end, the completion never).
        half = _dead_token()
        value = d.session.run("create", d._create_args(_spec("half-made"), half))
        assert value.exit_code == 0
        # The host's powershell.exe died at New-VM: disks made in the token folder, no VM.
        crashed = _dead_token()
        sim.model.arm_crash("New-VM")
        assert d.session.run("create", d._create_args(_spec("crashed", disks=2), crashed)).exit_code == 1
        # A create of a live process, cut the same way: in progress as far as reap can tell.
        live = CreateToken.new().encode()
        sim.model.arm_crash("New-VM")
        assert d.session.run("create", d._create_args(_spec("live"), live)).exit_code == 1

        orphan_disks = [p for p in sim.model.snapshot_state()["vhds"] if crashed in p]
        assert len(orphan_disks) == 2
        assert not any(crashed in v.notes for v in sim.model.vms.values())  # no listing shows them

        found = d.reap(dry_run=True)
        got = {(f.kind, f.token) for f in found}
        assert got == {("instance", half), ("disk", crashed)}, found
        half_vm = next(f for f in found if f.kind == "instance")
        assert half_vm.name == "half-made"
        assert sorted(f.ref for f in found if f.kind == "disk") == sorted(orphan_disks)
        assert {i.name for i in d.list_instances()} >= {"keep", "kept-disk", "half-made"}  # dry run removed nothing

        removed = d.reap()
        assert {(f.kind, f.ref) for f in removed} == {(f.kind, f.ref) for f in found}
        assert d.reap(dry_run=True) == []
        state = sim.model.snapshot_state()
        assert not [p for p in state["vhds"] + state["dirs"] if half in p or crashed in p]
        assert half_vm.ref not in state["vms"]
        # Untouched: finished instances and their disks, the detached disk kept on purpose, the live create.
        assert [disk.id for disk in d.get_instance(keep.id).disks] == [disk.id for disk in keep.disks]
        assert kept.disks[0].id in state["vhds"]
        assert d.get_instance(kept.id).power_state == PowerState.RUNNING
        assert [p for p in state["vhds"] if live in p]

        # With no grace at all, the live process's cut-off create is taken too (the caller asked for it),
        # but still nothing of a create that completed: the kept disk's folder is marked complete.
        assert {f.token for f in d.reap(dry_run=True, grace_s=0)} == {live}
        assert {f.token for f in d.reap(grace_s=0)} == {live}
        assert kept.disks[0].id in sim.model.snapshot_state()["vhds"]
        assert not [p for p in sim.model.snapshot_state()["vhds"] if live in p]


def test_a_create_whose_host_process_dies_is_purged_by_the_driver(sim: Simulator) -> None:
    """A live agent cleans up at once after a host-side crash (no rollback ran there)."""
    with _driver(sim) as d:
        before = sim.model.snapshot_state()
        sim.model.arm_crash("Add-VMHardDiskDrive")  # the VM and both disks exist by then
        with pytest.raises(DriverError, match="pipeline has been stopped"):
            d.create(_spec("crash-mid", disks=2))
        assert sim.model.snapshot_state() == before
        assert d.reap(dry_run=True, grace_s=0) == []


def test_soft_reboot_of_a_deaf_guest_is_bounded(sim: Simulator) -> None:
    with _driver(sim, soft_reboot_timeout=1) as d:
        info = d.create(_spec("deaf"))
        sim.model.vms[info.id].ignores_shutdown = True
        t0 = time.monotonic()
        assert d.reboot(info.id).power_state == PowerState.RUNNING
        assert 1.0 <= time.monotonic() - t0 < 5.0  # the grace, then TurnOff and Start-VM


def test_a_hung_endpoint_ends_calls_by_their_deadline_and_the_driver_recovers() -> None:
    """The WinRM service stops answering (SIGSTOP: connections stay open, nothing replies).

    Every call, the create with its cleanup included, ends as Timeout (or BackendUnavailable)
    within ``task_timeout`` and a small margin, not after pywinrm's own read timeout
    (``operation_timeout + 10`` s per request); once the service answers again, the same
    driver object works, and nothing the create may have started is left behind.
    """
    with simulator_process(https=True, inventory={"vms": []}) as (proc, settings):
        d = HypervDriver({**settings, "operation_timeout": 20}, task_timeout=3)
        with d:
            assert len(d.list_nodes()) == 3
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                for call in (d.list_nodes, lambda: d.create(_spec("hung", disks=1))):
                    t0 = time.monotonic()
                    with pytest.raises((Timeout, BackendUnavailable)):
                        call()
                    elapsed = time.monotonic() - t0
                    assert elapsed < 3 + 4.5, f"took {elapsed:.1f}s against a deadline of 3s"
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            assert len(d.list_nodes()) == 3
            d.reap(grace_s=0)
            assert d.list_instances() == []


def test_a_create_in_flight_when_the_endpoint_dies_ends_typed_and_leaves_nothing_after_restart() -> None:
    """The service is killed under a slow create: BackendUnavailable at once; a restarted service works."""
    with simulator_process(https=False, inventory={"vms": [], "create_seconds": 5.0}, password="pw-k") as (
        proc,
        settings,
    ):
        d = HypervDriver(settings, task_timeout=20)
        d.connect()
        try:
            outcome: dict[str, Any] = {}

            def create() -> None:
                t0 = time.monotonic()
                try:
                    d.create(_spec("doomed"))
                except BaseException as exc:
                    outcome["error"] = exc
                outcome["seconds"] = time.monotonic() - t0

            caller = threading.Thread(target=create)
            caller.start()
            time.sleep(1.0)
            proc.kill()
            proc.wait()
            caller.join(timeout=30)
            assert isinstance(outcome.get("error"), BackendUnavailable), outcome
            assert outcome["seconds"] < d.settings.task_timeout
            with simulator_process(https=False, password="pw-k", port=settings["port"], inventory={"vms": []}):
                assert len(d.list_nodes()) == 3
                assert d.reap(dry_run=True, grace_s=0) == []
        finally:
            d.close()
