"""Several orchestrators share one store without ever running a migration twice."""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from virtdrivers.fake import FakeDriver
from virtdrivers.migration import FORWARD_STEPS, LeaseLost, MigrationBusy, MigrationSpec, MigrationStore, Orchestrator
from virtdrivers.objects import InstanceSpec, PowerState

N = 24


def _seed(state_file: Path, store: MigrationStore) -> tuple[str, list[str]]:
    """N running instances on node 1, each with a pending cold migration to node 2."""
    with FakeDriver(state_file=str(state_file)) as driver, Orchestrator(store, driver) as orch:
        ids = []
        for n in range(N):
            info = driver.create(InstanceSpec(name=f"c{n}", vcpus=1, memory_mb=64, node="fake-node-1"))
            ids.append(orch.start(MigrationSpec(kind="cold", instance_id=info.id, node="fake-node-2")).id)
        return orch.endpoint, ids


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_orchestrator_processes_share_the_work_without_double_running(
    database: str, tmp_path: Path, request: pytest.FixtureRequest, harness: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if database == "sqlite" else request.getfixturevalue("pg_url")
    state_file = tmp_path / "fake.json"
    store = MigrationStore(url)
    _endpoint, ids = _seed(state_file, store)

    children = [harness.spawn_child("--db", url, "--state-file", str(state_file), "compete") for _ in range(2)]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        for child in children:
            out, err = child.communicate(timeout=180)
            assert child.returncode == 0, err
            assert "finished" in out
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    ran_by: dict[str, set[str]] = defaultdict(set)
    for mid in ids:
        record = store.get(mid)
        assert (record.status, record.error, record.owner) == ("done", None, None)
        events = [e for e in store.events(mid) if e.step in FORWARD_STEPS]
        owners = {e.owner for e in events}
        assert len(owners) == 1, f"{mid} was driven by {owners}"
        started = [e.step for e in events if e.phase == "started"]
        assert started == list(FORWARD_STEPS), f"{mid} steps started {started}"
        ran_by[owners.pop() or ""].add(mid)
    assert len(ran_by) == 2, f"one orchestrator did everything ({ {k: len(v) for k, v in ran_by.items()} })"
    with FakeDriver(state_file=str(state_file)) as driver:
        instances = driver.list_instances()
    assert len(instances) == N
    assert {(i.node, i.power_state) for i in instances} == {("fake-node-2", PowerState.RUNNING)}
    store.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_only_one_of_many_claims_wins(database: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if database == "sqlite" else request.getfixturevalue("pg_url")
    store = MigrationStore(url)
    with FakeDriver(state_file=str(tmp_path / "f.json")) as driver, Orchestrator(store, driver) as orch:
        info = driver.create(InstanceSpec(name="x", vcpus=1, memory_mb=64, node="fake-node-1"))
        mid = orch.start(MigrationSpec(kind="live", instance_id=info.id)).id
    barrier = threading.Barrier(8)
    wins: list[int] = []

    def contend(n: int) -> None:
        barrier.wait()
        gen = store.claim(mid, f"contender-{n}", 60.0)
        if gen is not None:
            wins.append(gen)

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins == [1]
    store.close()


def test_a_taken_over_orchestrator_cannot_write_again(sqlite_url: str, tmp_path: Path) -> None:
    """The fencing token: after a takeover the old owner's next boundary matches no row."""
    store = MigrationStore(sqlite_url)
    with FakeDriver(state_file=str(tmp_path / "f.json")) as driver, Orchestrator(store, driver) as orch:
        info = driver.create(InstanceSpec(name="x", vcpus=1, memory_mb=64, node="fake-node-1"))
        mid = orch.start(MigrationSpec(kind="live", instance_id=info.id)).id
    old = store.claim(mid, "slow-orchestrator", 0.0)  # a lease that has already run out
    assert old == 1
    assert store.claim(mid, "new-orchestrator", 60.0) == 2
    with pytest.raises(LeaseLost):
        store.record(mid, "slow-orchestrator", old, 60.0, step="precheck", phase="started")
    assert store.claim(mid, "third", 60.0) is None  # the new owner's lease is live
    store.close()


def test_a_silent_peer_on_another_host_keeps_its_migration_until_its_lease_runs_out(
    sqlite_url: str, tmp_path: Path
) -> None:
    """No PID check across hosts: only the lease frees it, and until then nobody else may run it."""
    store = MigrationStore(sqlite_url)
    state = str(tmp_path / "f.json")
    with FakeDriver(state_file=state) as driver:
        info = driver.create(InstanceSpec(name="x", vcpus=1, memory_mb=64, node="fake-node-1"))
        remote = Orchestrator(store, driver, lease_seconds=1.0, orchestrator_id="remote")
        remote.host_key = "another-host"
        remote.store.register(remote.id, remote.host_key, 1, {}, 1.0)  # registered, then silent (no heartbeat)
        mid = remote.start(MigrationSpec(kind="live", instance_id=info.id)).id
        assert store.claim(mid, "remote", 1.0) == 1
        with Orchestrator(store, driver, lease_seconds=30.0) as local:
            with pytest.raises(MigrationBusy):
                local.run(mid)
            # Poll until the lease has run out; the remote never renews it.
            deadline = threading.Event()
            for _ in range(200):
                try:
                    final = local.run(mid)
                    break
                except MigrationBusy:
                    deadline.wait(0.05)
            else:
                pytest.fail("the lease never expired")
        assert final.status == "done"
        assert driver.get_instance(info.id).node == "fake-node-2"
    assert any(e.detail == "taken over from remote" for e in store.events(mid))
    store.close()


def test_one_orchestrator_does_not_run_a_migration_twice_from_two_threads(sqlite_url: str, tmp_path: Path) -> None:
    store = MigrationStore(sqlite_url)
    with FakeDriver(state_file=str(tmp_path / "f.json")) as driver:
        info = driver.create(InstanceSpec(name="x", vcpus=1, memory_mb=64, node="fake-node-1"))
        inside = threading.Event()
        release = threading.Event()

        def hold(mid: str, step: str, phase: str) -> None:
            if (step, phase) == ("transfer", "before"):
                inside.set()
                assert release.wait(30)

        with Orchestrator(store, driver, on_boundary=hold) as orch:
            mid = orch.start(MigrationSpec(kind="live", instance_id=info.id)).id
            first = threading.Thread(target=orch.run, args=(mid,))
            first.start()
            assert inside.wait(30)
            with pytest.raises(MigrationBusy):
                orch.run(mid)
            release.set()
            first.join()
        assert store.get(mid).status == "done"
    store.close()
