"""Two real libvirtd daemons (private mount namespaces, own host UUIDs): live migration of a
running QEMU guest between them and back, and reconnecting after a daemon is killed.

Where daemons cannot run (not root, no namespaces, no libvirtd), the tests are skipped with the
reason printed; never silently.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from virtdrivers.errors import AuthenticationFailed, BackendUnavailable, InstanceNotFound
from virtdrivers.objects import EventType, LifecycleEvent, PowerState
from virtdrivers_libvirt.daemon import LibvirtDaemon, unavailable_reason
from virtdrivers_libvirt.driver import LibvirtDriver

REASON = unavailable_reason()
if REASON:
    print(f"\nlibvirt daemon tests skipped: {REASON}")  # the reason must show in CI logs
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=f"libvirtd cannot run here: {REASON}"),
    pytest.mark.timeout(180, method="thread"),
]


_POLL_SYSCALLS = {"7", "271"}  # poll, ppoll on x86_64


def _blocked_in_poll(thread: threading.Thread, timeout: float = 10.0) -> bool:
    """Wait until ``thread`` sits in poll(): its request is sent and it waits for the reply."""
    deadline = time.monotonic() + timeout
    path = Path(f"/proc/self/task/{thread.native_id}/syscall")
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if path.read_text().split()[0] in _POLL_SYSCALLS:
                return True
        time.sleep(0.005)  # polling the thread's state: there is no event for "blocked"
    return False


@pytest.fixture
def pair() -> Iterator[tuple[LibvirtDaemon, LibvirtDaemon, str]]:
    shared = tempfile.mkdtemp(prefix="vd-libvirt-shared-")
    try:
        with LibvirtDaemon() as a, LibvirtDaemon() as b:
            yield a, b, shared
    finally:
        for f in os.listdir(shared):
            os.unlink(os.path.join(shared, f))
        os.rmdir(shared)


def test_live_migration_there_and_back(pair: tuple[LibvirtDaemon, LibvirtDaemon, str]) -> None:
    a, b, shared = pair
    assert a.host_uuid != b.host_uuid
    settings = {
        "uri": a.uri(),
        "node_name": "node-a",
        "peers": {"node-b": b.uri()},
        "migration_uri": "tcp://127.0.0.1",
        "migrate_unsafe": True,  # one directory both see: shared, but libvirt cannot tell
        "disk_dir": shared,
        "domain_type": "qemu",
    }
    with LibvirtDriver(settings) as d:
        events: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
        d.subscribe(events.put)
        info = d.create({"name": "traveller", "vcpus": 1, "memory_mb": 64, "disks": [{"size_gib": 1}]})
        assert info.node == "node-a"
        assert {n.name for n in d.list_nodes()} == {"node-a", "node-b"}
        steps: list[float] = []
        moved = d.live_migrate(info.id, "node-b", progress=lambda f, _m: steps.append(f))
        assert (moved.node, moved.power_state, moved.id) == ("node-b", PowerState.RUNNING, info.id)
        assert steps[0] == 0.0
        assert steps[-1] == 1.0
        # Really moved: the source daemon no longer has it, the destination runs it.
        with libvirt.open(a.uri()) as ca, libvirt.open(b.uri()) as cb:
            assert info.id not in {dom.UUIDString() for dom in ca.listAllDomains(0)}
            assert cb.lookupByUUIDString(info.id).state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert [(i.id, i.node) for i in d.list_instances()] == [(info.id, "node-b")]
        back = d.live_migrate(info.id)  # no node named: the only other one
        assert (back.node, back.power_state) == ("node-a", PowerState.RUNNING)
        assert d.get_instance(info.id).node == "node-a"
        seen = []
        while len(seen) < 2:
            event = events.get(timeout=30)
            if event.type == EventType.MIGRATED:
                seen.append(event.node)
        assert seen == ["node-b", "node-a"]
        d.destroy(info.id)
        assert os.listdir(shared) == []


def test_reconnect_after_the_daemon_is_killed(tmp_path: Path) -> None:
    daemon = LibvirtDaemon(tmp_path / "d").start()
    try:
        uri = daemon.uri("test", "/default")
        with LibvirtDriver(uri=uri, keepalive_interval=1, keepalive_count=2) as d:
            events: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
            d.subscribe(events.put)
            before = d.create({"name": "before", "vcpus": 1, "memory_mb": 64})
            session = d._primary.session

            # A call in flight when the daemon dies fails with BackendUnavailable, it does not hang.
            pid = daemon.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            outcome: queue.SimpleQueue[BaseException | object] = queue.SimpleQueue()

            def in_flight() -> None:
                try:
                    outcome.put(d.list_instances())
                except BaseException as exc:
                    outcome.put(exc)

            caller = threading.Thread(target=in_flight)
            caller.start()
            assert _blocked_in_poll(caller), "the call never reached the stopped daemon"
            daemon.kill()
            caller.join(timeout=60)
            assert not caller.is_alive()
            assert isinstance(outcome.get_nowait(), BackendUnavailable)
            with pytest.raises(BackendUnavailable):
                d.list_instances()  # still down: refused at once

            daemon.restart()
            # The next call reconnects by itself (the test driver's state went with the daemon).
            with pytest.raises(InstanceNotFound):
                d.get_instance(before.id)
            assert session.reconnects >= 1

            # Event subscriptions survived: a domain made by another client is reported.
            while not events.empty():
                events.get_nowait()
            with libvirt.open(uri) as other:
                other.defineXML(
                    "<domain type='test'><name>outsider</name><memory>65536</memory><os><type>hvm</type></os></domain>"
                )
            event = events.get(timeout=30)
            assert (event.type, event.name) == (EventType.CREATED, "outsider")
            after = d.create({"name": "after", "vcpus": 1, "memory_mb": 64})
            assert after.id in {i.id for i in d.list_instances()}
    finally:
        daemon.stop()


def test_background_reconnect_restores_events_without_a_call(tmp_path: Path) -> None:
    daemon = LibvirtDaemon(tmp_path / "d").start()
    try:
        uri = daemon.uri("test", "/default")
        with LibvirtDriver(uri=uri) as d:
            events: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
            d.subscribe(events.put)
            daemon.kill()
            daemon.restart()
            # No call on the driver: only the background reconnect can bring events back.
            # Keep defining until one is reported (the reconnect may land after the first).
            with libvirt.open(uri) as other:
                for n in range(200):
                    other.defineXML(
                        f"<domain type='test'><name>probe-{n}</name><memory>65536</memory>"
                        "<os><type>hvm</type></os></domain>"
                    )
                    try:
                        event = events.get(timeout=0.1)
                        break
                    except queue.Empty:
                        continue
                else:
                    pytest.fail("no event after the daemon came back")
            assert event.type == EventType.CREATED
            assert d._primary.session.reconnects == 1
    finally:
        daemon.stop()


def test_daemon_stop_ends_only_what_it_started(tmp_path: Path) -> None:
    daemon = LibvirtDaemon(tmp_path / "d").start()
    pid = daemon.pid
    assert pid is not None
    assert Path(f"/proc/{pid}").exists()
    daemon.stop()
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    assert daemon.pid is None


@pytest.mark.slow
def test_soak_kill_and_restart_while_calling(tmp_path: Path) -> None:
    """Twenty daemon crashes under a steady caller: every call succeeds or is BackendUnavailable."""
    daemon = LibvirtDaemon(tmp_path / "d").start()
    try:
        uri = daemon.uri("test", "/default")
        with LibvirtDriver(uri=uri, keepalive_interval=1, keepalive_count=2) as d:
            events: queue.SimpleQueue[LifecycleEvent] = queue.SimpleQueue()
            d.subscribe(events.put)
            stop = threading.Event()
            outcomes: list[str] = []

            def caller() -> None:
                while not stop.is_set():
                    try:
                        d.list_instances()
                        outcomes.append("ok")
                    except BackendUnavailable:
                        outcomes.append("unavailable")
                    except BaseException as exc:
                        outcomes.append(repr(exc))

            thread = threading.Thread(target=caller)
            thread.start()
            for _ in range(20):
                daemon.kill()
                daemon.restart()
            stop.set()
            thread.join(timeout=60)
            assert set(outcomes) <= {"ok", "unavailable"}
            assert "ok" in outcomes
            d.create({"name": "survivor", "vcpus": 1, "memory_mb": 64})
            seen = {events.get(timeout=30).name for _ in range(1)}
            assert "survivor" in seen
    finally:
        daemon.stop()


@pytest.mark.slow
def test_bulk_list_of_1000_domains_is_one_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from virtdrivers_libvirt import mapping
    from virtdrivers_libvirt.session import Session

    with LibvirtDaemon(tmp_path / "d") as daemon:
        uri = daemon.uri("test", "/default")
        with libvirt.open(uri) as keep:  # test:///default lives while a connection is open
            for n in range(1000):
                keep.defineXML(
                    mapping.domain_xml(
                        uuid=str(uuid.uuid4()), name=f"s{n}", vcpus=1, memory_mb=64, domain_type="test", machine=None
                    )
                )
            with LibvirtDriver(uri=uri) as d:
                assert len(d.list_instances()) == 1000
                calls: list[object] = []
                real = Session.call

                def counting(self: Session, fn: object, **kw: object) -> object:
                    calls.append(fn)
                    return real(self, fn, **kw)  # type: ignore[arg-type]

                monkeypatch.setattr(Session, "call", counting)
                assert len(d.list_instances()) == 1000
                assert len(calls) == 1


def test_a_peer_that_is_down_does_not_stop_the_driver(tmp_path: Path, test_settings: dict[str, str]) -> None:
    peer = LibvirtDaemon(tmp_path / "peer")  # not started yet: its socket does not exist
    settings = {**test_settings, "peers": {**test_settings["peers"], "late": peer.uri("test", "/default")}}
    with LibvirtDriver(settings) as d:
        nodes = {"test-a": "up", "test-b": "up", "test-c": "up"}
        assert {n.name: n.state for n in d.list_nodes()} == {**nodes, "late": "down"}
        mine = d.create({"name": "here", "vcpus": 1, "memory_mb": 64, "start": False})
        assert mine.id in {i.id for i in d.list_instances()}  # the reachable node still lists
        with pytest.raises(BackendUnavailable):
            d.get_instance("00000000-0000-4000-8000-000000000001")  # might be on the down node
        with peer:
            assert {n.name: n.state for n in d.list_nodes()} == {**nodes, "late": "up"}
            with pytest.raises(InstanceNotFound):
                d.get_instance("00000000-0000-4000-8000-000000000001")


def _texts(exc: BaseException) -> list[str]:
    """Every text an error and the errors chained to it show."""
    out: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        out += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return out


def test_a_sasl_daemon_refuses_a_wrong_password_and_neither_password_shows(tmp_path: Path) -> None:
    right = f"right-{uuid.uuid4().hex}"
    with LibvirtDaemon(tmp_path / "d", sasl_user=("vd", right)) as daemon:
        with LibvirtDriver(uri=daemon.uri(), username="vd", password=right) as d:
            assert d.list_nodes()[0].state == "up"
        wrong = f"wrong-{uuid.uuid4().hex}"
        for settings in ({"username": "vd", "password": wrong}, {"username": "intruder", "password": right}, {}):
            with pytest.raises(AuthenticationFailed) as err, LibvirtDriver(uri=daemon.uri(), **settings):
                pass
            assert not [t for t in _texts(err.value) if right in t or wrong in t]
        assert right not in (tmp_path / "d" / "sasl" / "libvirt.conf").read_text()


def test_pair_endpoint_fail_node_kills_and_restarts_that_daemon_only() -> None:
    endpoint = next(e for e in LibvirtDriver.embedded_endpoints() if e.name == "qemu-pair")
    assert endpoint.hooks.fail_node is not None
    with endpoint.start() as settings, LibvirtDriver(settings) as d:
        assert [n.name for n in d.list_nodes()] == ["node-a", "node-b", "node-c"]
        endpoint.hooks.fail_node(settings, d, "node-b", True)
        assert {n.name: n.state for n in d.list_nodes()} == {"node-a": "up", "node-b": "down", "node-c": "up"}
        endpoint.hooks.fail_node(settings, d, "node-b", False)
        assert {n.state for n in d.list_nodes()} == {"up"}
