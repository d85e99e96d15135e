"""Rolling upgrade: an older and a newer orchestrator drive the same migrations.

The older one runs in a process of its own with MigrationSpec at 1.0 (before
``allow_cold_fallback``); the newer one is this process, at 1.1. While both are
registered, whatever either writes is rendered at 1.0; once the old one leaves,
the new one writes 1.1 again, which the old one could not have read.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from virtdrivers.errors import Conflict
from virtdrivers.fake import FakeDriver
from virtdrivers.migration import MigrationSpec, MigrationStore, Orchestrator
from virtdrivers.objects import InstanceSpec, PowerState


class Peer:
    """The old orchestrator process, spoken to one JSON line at a time."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        line = proc.stdout.readline() if proc.stdout else ""
        assert line, proc.stderr.read() if proc.stderr else ""
        self.id = json.loads(line)["ready"]

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.proc.stdin
        assert self.proc.stdout
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"peer died: {self.proc.stderr.read() if self.proc.stderr else ''}"
        reply: dict[str, Any] = json.loads(line)
        return reply


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def old_peer(url: str, tmp_path: Path, harness: Any) -> Iterator[Peer]:
    proc = harness.spawn_child("--db", url, "--state-file", str(tmp_path / "fake.json"), "--old", "serve")
    try:
        yield Peer(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_old_and_new_orchestrators_read_and_write_the_same_migrations(url: str, tmp_path: Path, old_peer: Peer) -> None:
    store = MigrationStore(url)
    state = str(tmp_path / "fake.json")
    with FakeDriver(state_file=state) as driver, Orchestrator(store, driver) as new:
        a = driver.create(InstanceSpec(name="a", vcpus=1, memory_mb=64, node="fake-node-1"))
        b = driver.create(InstanceSpec(name="b", vcpus=1, memory_mb=64, node="fake-node-1"))
        c = driver.create(InstanceSpec(name="c", vcpus=1, memory_mb=64, node="fake-node-1"))

        # Both registered: the new one clamps what it writes to what the old one reads.
        assert new.target_version("MigrationSpec") == "1.0"
        assert old_peer.ask(op="target", name="MigrationSpec") == {"version": "1.0"}
        m1 = new.start(MigrationSpec(kind="cold", instance_id=a.id, node="fake-node-2"))
        assert m1.spec["vd_object.version"] == "1.0"
        assert old_peer.ask(op="run", id=m1.id) == {"status": "done"}
        assert driver.get_instance(a.id).node == "fake-node-2"

        # The old one starts a migration; the new one reads it (defaults fill what 1.0 lacks) and runs it.
        m2 = old_peer.ask(op="start", spec={"kind": "live", "instance_id": b.id, "node": "fake-node-2"})["id"]
        assert store.get(m2).spec["vd_object.version"] == "1.0"
        assert new.run(m2).status == "done"
        assert driver.get_instance(b.id).node == "fake-node-2"

        # A request 1.0 cannot express is refused rather than silently weakened.
        with pytest.raises(Conflict, match=r"reads MigrationSpec only up to 1\.0"):
            new.start(MigrationSpec(kind="live", instance_id=c.id, allow_cold_fallback=True))

        # A migration handed over mid-flight: the old one dies after moving it, the new one finishes.
        m3 = new.start(MigrationSpec(kind="resize", instance_id=c.id, node="fake-node-2", vcpus=2))
        old_peer.proc.stdin.write(json.dumps({"op": "crash_run", "id": m3.id, "at": "transfer:acted"}) + "\n")
        old_peer.proc.stdin.flush()
        assert old_peer.proc.wait(timeout=60) == -signal.SIGKILL
        final = new.run(m3.id)
        assert (final.status, final.error) == ("done", None)
        got = driver.get_instance(c.id)
        assert (got.node, got.vcpus, got.power_state) == ("fake-node-2", 2, PowerState.RUNNING)

        # The old one is gone: back to the newest version, which it could not have read.
        assert new.target_version("MigrationSpec") == MigrationSpec.VERSION
        d = driver.create(InstanceSpec(name="d", vcpus=1, memory_mb=64, node="fake-node-1"))
        m4 = new.start(MigrationSpec(kind="live", instance_id=d.id, allow_cold_fallback=True))
        assert m4.spec["vd_object.version"] == MigrationSpec.VERSION
        assert MigrationSpec.from_primitive(m4.spec).allow_cold_fallback is True
    store.close()


def test_without_clamping_the_old_orchestrator_could_not_read_the_record(
    url: str, tmp_path: Path, old_peer: Peer
) -> None:
    """The control: a current record (written while no old peer was registered) is unreadable at 1.0."""
    store = MigrationStore(url)
    with FakeDriver(state_file=str(tmp_path / "fake.json")) as driver:
        info = driver.create(InstanceSpec(name="z", vcpus=1, memory_mb=64, node="fake-node-1"))
        spec = MigrationSpec(kind="live", instance_id=info.id)
        with Orchestrator(store, driver) as new:
            clamped = new.start(spec)
        # Written as a lone new orchestrator would have (current version), straight into the store:
        unclamped = store.create("unclamped-1", clamped.endpoint, "live", "other-instance", spec.to_primitive())
    error = old_peer.ask(op="read", id=unclamped.id).get("error", "")
    assert f"MigrationSpec {MigrationSpec.VERSION} is not readable by this version (1.0)" in error
    assert old_peer.ask(op="read", id=clamped.id)["spec"]["instance_id"] == info.id
    store.close()
