"""Harness for the migration tests: backends, scenarios, killed children, a real PostgreSQL.

Kill tests fork a child process that runs a migration and SIGKILLs itself at a
named step boundary, then a fresh orchestrator in the test process resumes or
reverts it. Forking (rather than spawning a new interpreter) keeps the hundreds
of kills cheap; the child still holds its own database connections, its own
driver and its own lease, and dies without running any cleanup.

A backend is one :class:`Backend` entry: adding a real one (libvirt between two
daemons, vcsim, the Hyper-V or oVirt simulators) means adding an entry whose
``start`` yields driver settings that every process can connect with.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from virtdrivers.capabilities import Capability
from virtdrivers.driver import Driver
from virtdrivers.loader import driver_class
from virtdrivers.migration import MigrationRecord, MigrationSpec, MigrationStore, Orchestrator
from virtdrivers.objects import InstanceInfo, InstanceSpec, PowerState

CHILD = Path(__file__).with_name("orchestrator_child.py")

# -- backends -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """A hypervisor endpoint every process of a test can reach."""

    name: str
    driver: str
    start: Callable[[Path], contextlib.AbstractContextManager[Mapping[str, Any]]]
    """Given a scratch directory, starts the endpoint and yields driver settings."""
    source: str
    dest: str
    unavailable: frozenset[Capability] = frozenset()
    """Capabilities withdrawn from the driver, to exercise the paths built from primitives."""
    fail_node: Callable[[Driver, str, bool], None] | None = None
    """Marks a node down (True) or up (False) for evacuation; None when the backend cannot."""
    shared: bool = False
    """Start the endpoint once per session (real daemons, simulators); tests keep apart by instance name."""
    smoke: tuple[tuple[str, str], ...] | None = None
    forkable: bool = True
    """Whether a child forked from the test process can drive it: libvirt's event loop cannot run
    again in a child forked while it ran, so libvirt's kill children are new interpreters."""
    """Boundaries run by default; the rest of the matrix is marked slow. None runs all by default."""

    def connect(self, settings: Mapping[str, Any]) -> Driver:
        driver = driver_class(self.driver)(**settings)
        driver.connect()
        driver.narrow_capabilities(self.unavailable)
        return driver


@contextlib.contextmanager
def _fake_file(tmp: Path) -> Iterator[Mapping[str, Any]]:
    yield {"state_file": str(tmp / "fake-hypervisor.json")}


def _fake_fail_node(driver: Driver, node: str, down: bool) -> None:
    driver.fail_node(node, down)  # type: ignore[attr-defined]


BACKENDS = [
    Backend("fake", "fake", _fake_file, "fake-node-1", "fake-node-2", fail_node=_fake_fail_node),
    # A backend that declares no cold_migrate: cold moves and resizes across nodes are built
    # from live_migrate plus power and resize primitives.
    Backend(
        "fake-no-cold",
        "fake",
        _fake_file,
        "fake-node-1",
        "fake-node-2",
        unavailable=frozenset({Capability.COLD_MIGRATE}),
        fail_node=_fake_fail_node,
    ),
]


def _embedded(driver: str, endpoint: str) -> Callable[[Path], contextlib.AbstractContextManager[Mapping[str, Any]]]:
    def start(_scratch: Path) -> contextlib.AbstractContextManager[Mapping[str, Any]]:
        return _endpoint(driver, endpoint).start()

    return start


def _endpoint(driver: str, endpoint: str) -> Any:
    return next(e for e in driver_class(driver).embedded_endpoints() if e.name == endpoint)


#: Where a real backend is killed in the default run (resume tests only): after the primitive acted and
#: before that was recorded, the point that needs the step to be idempotent. ``./dev test --slow``
#: runs every boundary, and the kill-then-revert tests, for every real backend.
REAL_SMOKE = (("transfer", "acted"), ("revert_transfer", "acted"))

#: Real backends through their entry points and embedded endpoints: libvirt migrating between two
#: real libvirtd/QEMU daemons, vcsim (RelocateVM across clusters), the Hyper-V simulator (Move-VM)
#: and the oVirt simulator (migrate). Each simulator serves every process over 127.0.0.1.
REAL = [
    ("libvirt-pair", "libvirt", "qemu-pair", "node-a", "node-b"),
    ("vmware-vcsim", "vmware", "vcsim", "DC0_C0", "DC0_C1"),
    ("hyperv-sim", "hyperv", "https-basic", "HV-NODE1", "HV-NODE2"),
    ("ovirt-sim", "ovirt", "simulator", "host1", "host2"),
]


def _hyperv_fail_node(driver: Driver, node: str, down: bool) -> None:
    from virtdrivers_hyperv.simulator.endpoint import set_node_state

    set_node_state(driver.settings.model_dump(), node, down)


#: Backends whose simulator can fail a node from any process, for evacuation.
FAIL_NODE: dict[str, Callable[[Driver, str, bool], None]] = {"hyperv": _hyperv_fail_node}


def _real_backends() -> list[Backend]:
    """Entries for the real backends that are installed and offer the endpoint; others are left out."""
    from virtdrivers.loader import list_drivers

    usable = {e.name for e in list_drivers() if e.ok}
    found = []
    for name, driver, endpoint, source, dest in REAL:
        if driver not in usable:
            continue
        try:
            unavailable = frozenset(_endpoint(driver, endpoint).unavailable)
        except StopIteration:
            continue
        found.append(
            Backend(
                name,
                driver,
                _embedded(driver, endpoint),
                source,
                dest,
                unavailable=unavailable,
                fail_node=FAIL_NODE.get(driver),
                shared=True,
                smoke=REAL_SMOKE,
                forkable=driver != "libvirt",
            )
        )
    return found


BACKENDS += _real_backends()


# -- scenarios ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One flavour, with the instance it starts from and where it must end up."""

    name: str
    kind: str
    running: bool = True
    resize: dict[str, int] = field(default_factory=dict)
    same_node: bool = False
    needs: frozenset[Capability] = frozenset()

    def spec(self, instance: InstanceInfo, backend: Backend) -> MigrationSpec:
        node = backend.source if self.same_node else backend.dest
        # An evacuation carries the instance as the caller last saw it: some backends cannot see an
        # instance whose node is down. Test guests have no OS to answer a clean shutdown: force them off.
        last_known = instance if self.kind == "evacuate" else None
        return MigrationSpec(
            kind=self.kind,
            instance_id=instance.id,
            node=node,
            shutdown_timeout=0,
            last_known=last_known,
            **self.resize,
        )


VCPUS, MEMORY = 1, 512

SCENARIOS = [
    Scenario("cold", "cold"),
    Scenario("cold-stopped", "cold", running=False),
    Scenario("resize", "resize", resize={"vcpus": 2, "memory_mb": 1024}),
    Scenario("resize-same-node", "resize", resize={"vcpus": 3}, same_node=True),
    Scenario("live", "live", needs=frozenset({Capability.LIVE_MIGRATE})),
    Scenario("evacuate", "evacuate", needs=frozenset({Capability.EVACUATE})),
]


def supported(backend: Backend, scenario: Scenario) -> bool:
    """Whether the backend can do the scenario at all, from its declared capabilities only."""
    cls = driver_class(backend.driver)
    caps = cls.capabilities - backend.unavailable
    if not scenario.needs <= caps:
        return False
    if scenario.kind == "evacuate" and backend.fail_node is None:
        return False
    if scenario.resize and not {Capability.RESIZE_CPU, Capability.RESIZE_MEMORY} <= caps:
        return False
    moves = not scenario.same_node and scenario.kind in ("cold", "resize")
    if moves and Capability.COLD_MIGRATE not in caps:
        return scenario.running and Capability.LIVE_MIGRATE in caps
    return True


def cases() -> list[tuple[Backend, Scenario]]:
    return [(b, s) for b in BACKENDS for s in SCENARIOS if supported(b, s)]


# -- the world as it must be afterwards ---------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    node: str
    power: PowerState
    vcpus: int
    memory_mb: int


def original(backend: Backend, scenario: Scenario) -> Placement:
    power = PowerState.RUNNING if scenario.running else PowerState.SHUTDOWN
    return Placement(backend.source, power, VCPUS, MEMORY)


def migrated(backend: Backend, scenario: Scenario) -> Placement:
    node = backend.source if scenario.same_node else backend.dest
    power = PowerState.RUNNING if scenario.running else PowerState.SHUTDOWN
    vcpus = scenario.resize.get("vcpus", VCPUS)
    memory = scenario.resize.get("memory_mb", MEMORY)
    return Placement(node, power, vcpus, memory)


class World:
    """One backend endpoint plus one store, as every process of a test sees them."""

    def __init__(self, backend: Backend, settings: Mapping[str, Any], db_url: str) -> None:
        self.backend = backend
        self.settings = dict(settings)
        self.db_url = db_url
        self.store = MigrationStore(db_url)
        self.created: set[str] = set()

    def driver(self) -> Driver:
        return self.backend.connect(self.settings)

    def orchestrator(self, driver: Driver, **kwargs: Any) -> Orchestrator:
        kwargs.setdefault("lease_seconds", 60.0)
        return Orchestrator(self.store, driver, **kwargs)

    def create(self, scenario: Scenario, name: str | None = None) -> InstanceInfo:
        name = name or f"m-{uuid.uuid4().hex[:10]}"
        self.created.add(name)
        driver = self.driver()
        try:
            spec = InstanceSpec(name=name, vcpus=VCPUS, memory_mb=MEMORY, node=self.backend.source)
            info = driver.create(spec.model_copy(update={"start": scenario.running}))
            if scenario.kind == "evacuate":
                assert self.backend.fail_node is not None
                self.backend.fail_node(driver, self.backend.source, True)
            return info
        finally:
            driver.close()

    def start(self, scenario: Scenario, instance: InstanceInfo) -> MigrationRecord:
        driver = self.driver()
        try:
            with self.orchestrator(driver) as orch:
                return orch.start(scenario.spec(instance, self.backend))
        finally:
            driver.close()

    def census(self, name: str) -> list[InstanceInfo]:
        driver = self.driver()
        try:
            return [i for i in driver.list_instances() if i.name == name]
        finally:
            driver.close()

    def assert_placed(self, name: str, want: Placement) -> None:
        found = self.census(name)
        assert len(found) == 1, f"{name}: want exactly one instance, found {len(found)}: {found}"
        running = [i for i in found if i.power_state == PowerState.RUNNING]
        assert len(running) <= 1, f"{name} runs {len(running)} times"
        got = found[0]
        assert Placement(got.node or "", got.power_state, got.vcpus, got.memory_mb) == want

    def set_node(self, node: str, down: bool) -> None:
        assert self.backend.fail_node is not None
        driver = self.driver()
        try:
            self.backend.fail_node(driver, node, down)
        finally:
            driver.close()

    def run(self, migration_id: str, *, revert: bool = False) -> MigrationRecord:
        driver = self.driver()
        try:
            with self.orchestrator(driver) as orch:
                if revert:
                    orch.revert(migration_id)
                return orch.run(migration_id)
        finally:
            driver.close()

    def kill_at(
        self,
        migration_id: str,
        crash: tuple[str, str],
        *,
        revert_at: tuple[str, str] | None = None,
        on_revert: Callable[[Driver], None] | None = None,
    ) -> None:
        """Run the migration in a forked child that SIGKILLs itself at ``crash``.

        With ``revert_at`` the child asks for a revert at that boundary (after calling
        ``on_revert`` with its driver, to change the world the revert meets).
        """
        if not self.backend.forkable:
            assert on_revert is None, "a new-interpreter child cannot take a callable"
            self._kill_in_new_interpreter(migration_id, crash, revert_at)
            return
        self.store.engine.dispose()  # no pooled connection may cross the fork
        ctx = multiprocessing.get_context("fork")
        child = ctx.Process(target=_killed_child, args=(self, migration_id, crash, revert_at, on_revert))
        child.start()
        child.join(timeout=120)
        if child.exitcode is None:
            # Where it hangs is the whole diagnosis: the child dumps every thread's stack on SIGUSR1.
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid or 0, signal.SIGUSR1)
            child.join(timeout=2)
            child.kill()
            child.join()
            pytest.fail(f"child running {migration_id} did not reach {crash} in 120 s")
        assert child.exitcode == -signal.SIGKILL, (
            f"child should have died by SIGKILL at {crash[0]}:{crash[1]}, exited {child.exitcode}"
        )

    def _kill_in_new_interpreter(
        self, migration_id: str, crash: tuple[str, str], revert_at: tuple[str, str] | None
    ) -> None:
        args = ["--db", self.db_url, "--driver", self.backend.driver, "--migration", migration_id]
        args += ["--unavailable", ",".join(c.value for c in self.backend.unavailable)]
        if revert_at is not None:
            args += ["--revert-at", ":".join(revert_at)]
        child = spawn_child(*args, "kill", ":".join(crash))
        settings = json.dumps(self.settings) + "\n"  # secrets on a pipe, not on the command line
        try:
            _out, err = child.communicate(settings, timeout=120)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGUSR1)  # its stacks: where it hangs is the whole diagnosis
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=2)
            child.kill()
            _out, err = child.communicate()
            pytest.fail(f"child running {migration_id} did not reach {crash} in 120 s:\n{err}")
        assert child.returncode == -signal.SIGKILL, (
            f"child should have died by SIGKILL at {crash[0]}:{crash[1]}, exited {child.returncode}:\n{err}"
        )

    def close(self) -> None:
        """Remove what the test created (shared endpoints outlive it), then let go of the store."""
        try:
            if self.created:
                driver = self.driver()
                try:
                    if self.backend.fail_node is not None and self.backend.shared:
                        # A shared endpoint outlives the test: bring back the node an evacuation failed.
                        self.backend.fail_node(driver, self.backend.source, False)
                    for info in driver.list_instances():
                        if info.name in self.created:
                            driver.destroy(info.id)
                finally:
                    driver.close()
        finally:
            self.store.close()


def _killed_child(
    world: World,
    migration_id: str,
    crash: tuple[str, str],
    revert_at: tuple[str, str] | None,
    on_revert: Callable[[Driver], None] | None,
) -> None:
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        store = MigrationStore(world.db_url)
        driver = world.driver()
        orch: Orchestrator

        def hook(mid: str, step: str, phase: str) -> None:
            if revert_at == (step, phase):
                if on_revert is not None:
                    on_revert(driver)
                orch.revert(mid)
            if crash == (step, phase):
                os.kill(os.getpid(), signal.SIGKILL)

        orch = Orchestrator(store, driver, lease_seconds=60.0, on_boundary=hook)
        orch.open()
        orch.run(migration_id)
    except BaseException:
        traceback.print_exc()
        os._exit(4)
    os._exit(3)  # finished without reaching the crash point


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'migrations.db'}"


class SharedEndpoints:
    """Endpoints started once per session, on first use, and stopped at its end."""

    def __init__(self, stack: contextlib.ExitStack, factory: pytest.TempPathFactory) -> None:
        self.stack, self.factory = stack, factory
        self.started: dict[str, Mapping[str, Any]] = {}

    def settings(self, backend: Backend) -> Mapping[str, Any]:
        if backend.name not in self.started:
            scratch = self.factory.mktemp(backend.name)
            self.started[backend.name] = self.stack.enter_context(backend.start(scratch))
        return self.started[backend.name]


@pytest.fixture(scope="session")
def shared_endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedEndpoints]:
    with contextlib.ExitStack() as stack:
        yield SharedEndpoints(stack, tmp_path_factory)


@pytest.fixture
def make_world(tmp_path: Path, shared_endpoints: SharedEndpoints) -> Iterator[Callable[[Backend, str], World]]:
    with contextlib.ExitStack() as stack:

        def make(backend: Backend, db_url: str) -> World:
            if backend.shared:
                settings = shared_endpoints.settings(backend)
            else:
                scratch = Path(tempfile.mkdtemp(dir=tmp_path))
                settings = stack.enter_context(backend.start(scratch))
            world = World(backend, settings, db_url)
            stack.callback(world.close)
            return world

        yield make


# -- a real PostgreSQL server --------------------------------------------------------------------


def _pg_bindir() -> Path | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        if (Path(out) / "initdb").exists():
            return Path(out)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    return found[0].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    url: str
    """Admin URL (database ``postgres``)."""
    pid: int

    def new_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of its own on 127.0.0.1, stopped by PID at the end of the session."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries not found: install the Debian package 'postgresql'")
    base = Path(tempfile.mkdtemp(prefix="vd-pg-"))
    base.chmod(0o755)
    data, sock = base / "data", base / "sock"
    data.mkdir()
    sock.mkdir()
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        run_as = {"user": "postgres", "group": "postgres"}
        for path in (base, data, sock):
            shutil.chown(path, "postgres", "postgres")
    initdb = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        capture_output=True,
        text=True,
        **run_as,
    )
    if initdb.returncode != 0:
        pytest.fail(f"initdb failed: {initdb.stderr.strip()[-2000:]}")
    port = _free_port()
    log = open(base / "server.log", "wb")  # noqa: SIM115 - closed after the server stops
    options = {
        "listen_addresses": "127.0.0.1",
        "fsync": "off",  # a throwaway cluster: durability across power loss is not under test
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "300",
    }
    argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sock)]
    for key, value in options.items():
        argv += ["-c", f"{key}={value}"]
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **run_as)
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    try:
        _wait_for_postgres(server, url, base / "server.log")
        yield PostgresServer(url, server.pid)
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def _wait_for_postgres(server: subprocess.Popen[bytes], url: str, log: Path) -> None:
    import psycopg

    deadline = time.monotonic() + 60
    plain = url.replace("postgresql+psycopg", "postgresql")
    while True:
        if server.poll() is not None:
            pytest.fail(f"PostgreSQL exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            with psycopg.connect(plain, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL did not accept connections within 60 s: {log.read_text()[-2000:]}")
            time.sleep(0.05)


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """A fresh database of its own, for tests that look at the whole store."""
    return postgres.new_database()


@pytest.fixture(scope="session")
def pg_shared_url(postgres: PostgresServer) -> str:
    """One database for the many kill tests; each test's endpoint (its own fake) keeps them apart."""
    return postgres.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each kill test runs on an embedded SQLite file and on the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'migrations.db'}"
    return str(request.getfixturevalue("pg_shared_url"))


def spawn_child(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """A separate orchestrator process (a real new interpreter, not a fork)."""
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


# -- parametrization ------------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``case`` is every (backend, scenario) the backend supports; ``boundary`` every kill point."""
    from virtdrivers.migration.engine import FORWARD_STEPS, REVERT_STEPS, boundaries

    if "case" in metafunc.fixturenames:
        chosen = cases()
        metafunc.parametrize("case", chosen, ids=[f"{b.name}-{s.name}" for b, s in chosen])
    if "forward_boundary" in metafunc.fixturenames:
        points = boundaries(FORWARD_STEPS)
        metafunc.parametrize("forward_boundary", points, ids=[f"{s}:{p}" for s, p in points])
    if "revert_boundary" in metafunc.fixturenames:
        points = boundaries(REVERT_STEPS)
        metafunc.parametrize("revert_boundary", points, ids=[f"{s}:{p}" for s, p in points])


@pytest.fixture
def harness() -> Any:
    """The module's helpers, for test files (which cannot import conftest under importlib mode)."""
    return sys.modules[__name__]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the real backends' full kill matrix slow; skip slow migration tests unless -m asks for them."""
    here = Path(__file__).parent
    asked = bool(config.option.markexpr)
    skip = pytest.mark.skip(reason="slow: run with ./dev test --slow (or -m slow)")
    for item in items:
        if here not in Path(str(item.path)).parents:
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "case" in callspec.params:
            backend = callspec.params["case"][0]
            point = callspec.params.get("forward_boundary") or callspec.params.get("revert_boundary")
            if backend.smoke is not None and point is not None:
                name = getattr(item, "originalname", "")
                if point not in backend.smoke or name == "test_killed_then_reverted_restores_the_original":
                    item.add_marker(pytest.mark.slow)
        if not asked and item.get_closest_marker("slow") is not None:
            item.add_marker(skip)
