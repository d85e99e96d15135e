"""The simulator PROCESS is killed (SIGKILL) and started again: calls in flight end typed and in time,
the same driver object carries on, and nothing the engine had is lost.

An engine keeps its inventory in a database, so a killed and restarted engine still has
every VM; the simulator keeps it in its state file (:mod:`virtdrivers_ovirt.simulator.persist`).
Without that, a call in flight across a simulator restart ended as ``InstanceNotFound``,
which is what a tester who killed the simulator process saw.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from virtdrivers.errors import BackendUnavailable, Timeout
from virtdrivers.objects import DiskSpec, InstanceSpec, PowerState
from virtdrivers.testing.process import stop_child
from virtdrivers_ovirt.driver import OvirtDriver
from virtdrivers_ovirt.endpoint import PASSWORD_ENV, simulator_command


class Engine:
    """The simulator program as an operator runs it: one process, killed and started by PID."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.env = {**os.environ, PASSWORD_ENV: "vd-" + secrets.token_urlsafe(18)}
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.settings: dict[str, Any] = {}

    def start(self, *extra: str) -> None:
        cmd = [*simulator_command(self.scratch, self.port), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=self.env, text=True)
        assert self.proc.stdout is not None
        self.settings = json.loads(self.proc.stdout.readline())
        self.port = int(self.settings["url"].split(":")[2].split("/")[0])

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def state(self) -> dict[str, Any]:
        """The engine's database as it is on disk now (read while the process runs)."""
        for _ in range(50):
            try:
                loaded: dict[str, Any] = json.loads((self.scratch / "engine.json").read_text())
                return loaded
            except (FileNotFoundError, ValueError):  # replaced between open and read: read again
                time.sleep(0.01)
        raise AssertionError("no state file")

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, grace=10.0)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(tmp_path)
    eng.start("--delay", "0.3")
    try:
        yield eng
    finally:
        eng.stop()


def _timed(func: Callable[[], Any]) -> tuple[float, Any]:
    began = time.monotonic()
    try:
        result: Any = func()
    except Exception as exc:
        result = exc
    return time.monotonic() - began, result


def _when(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.005)


def test_a_call_in_flight_across_a_short_kill_and_restart_completes(engine: Engine) -> None:
    with OvirtDriver(engine.settings, reconnect_timeout=8, operation_timeout=60) as drv:
        info = drv.create(InstanceSpec(name="survivor", vcpus=1, memory_mb=256, disks=[DiskSpec(size_gib=1)]))

        def powering_down() -> bool:
            return any(v["id"] == info.id and v["status"] == "powering_down" for v in engine.state()["vms"])

        def outage() -> None:
            _when(powering_down)  # the stop was accepted; the driver is waiting for "down"
            engine.kill()
            time.sleep(1.5)
            engine.start("--delay", "0.3")

        thread = threading.Thread(target=outage)
        thread.start()
        took, result = _timed(lambda: drv.power_off(info.id, force=True))
        thread.join()
        assert not isinstance(result, Exception), repr(result)
        assert result.power_state is PowerState.SHUTDOWN
        print(f"power_off across a 1.5 s engine outage took {took:.1f} s")  # a figure, not a limit
        # The same driver object, the same VM, its disk: the engine came back with its database.
        again = drv.get_instance(info.id)
        assert (again.name, [d.id for d in again.disks]) == ("survivor", [d.id for d in info.disks])
        assert drv.session.reconnects >= 1


def test_a_call_in_flight_during_a_long_kill_ends_typed_within_the_budget_and_the_driver_recovers(
    engine: Engine,
) -> None:
    # Bounds far from the figures they guard against, so a loaded machine cannot fail them: without
    # the budget the create would wait out its 60 s operation timeout, and a second budget would
    # make the listing wait another 5 s.
    with OvirtDriver(engine.settings, reconnect_timeout=5, operation_timeout=60) as drv:
        info = drv.create(InstanceSpec(name="steady", vcpus=1, memory_mb=256, start=False))
        pets = sorted(p.id for p in drv.list_unmanaged())

        def locked() -> bool:
            return any(v["name"] == "late" and v["status"] == "image_locked" for v in engine.state()["vms"])

        killer = threading.Thread(target=lambda: (_when(locked), engine.kill()))
        killer.start()
        # A create waiting on its new VM's lock when the engine dies for longer than the budget.
        took, result = _timed(lambda: drv.create(InstanceSpec(name="late", vcpus=1, memory_mb=256)))
        killer.join()
        assert isinstance(result, BackendUnavailable | Timeout), repr(result)
        assert took < 30, f"took {took:.1f} s: the 5 s reconnect budget did not bound the call"
        # The same outage: one budget for both calls. The create may fail at once (its request
        # reached the engine, whose reply died with it: not safe to resend), and then the listing
        # is the one that waits; it must never wait a budget of its own after the create's.
        listed, result = _timed(drv.list_instances)
        assert isinstance(result, BackendUnavailable), repr(result)
        assert took + listed < 5 + 2.5, f"create {took:.1f} s + list {listed:.1f} s: a second reconnect budget"
        engine.start("--delay", "0.3")
        # Back: the same driver object works, and the engine kept everything it had.
        assert drv.get_instance(info.id).name == "steady"
        assert sorted(p.id for p in drv.list_unmanaged()) == pets
        # The create that died with the engine left its VM with its token: reap (the creating
        # process is alive, so only after the grace) removes it; the finished instance stays.
        late = [i for i in drv.list_instances() if i.name == "late"]
        assert len(late) == 1
        assert [f.ref for f in drv.reap(dry_run=True)] == []
        time.sleep(1.1)
        assert [f.ref for f in drv.reap(grace_s=0.5)] == [late[0].id]
        assert [i.name for i in drv.list_instances()] == ["steady"]
