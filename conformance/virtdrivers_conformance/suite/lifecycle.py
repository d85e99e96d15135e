"""Lifecycle conformance: create, list and get agreeing, destroy, unknown ids, secrets, reap, hostile input."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable, Iterable

import pytest
from pydantic import SecretStr

from virtdrivers import (
    AuthenticationFailed,
    Capability,
    DiskSpec,
    Driver,
    DriverError,
    InstanceInfo,
    InstanceNotFound,
    InstanceSpec,
    InvalidSpec,
    NicSpec,
    NotFound,
    PowerState,
)
from virtdrivers_conformance.suite.checks import (
    agreed,
    disk_shape,
    error_texts,
    in_threads,
    untyped,
    up_nodes,
)
from virtdrivers_conformance.suite.fixtures import (
    DriverFixtures,
    EndpointUnderTest,
    MakeInstance,
    feature,
    unique_name,
)

__all__ = ["TestHostileInput", "TestLifecycle", "TestReap", "TestSecrets", "TestUnknownInstances"]


class TestLifecycle(DriverFixtures):
    @feature("connect")
    def test_connect_is_idempotent_and_reports_backend(self, driver: Driver) -> None:
        driver.connect()  # already connected: must be a no-op
        info = driver.backend_info()
        assert info.backend
        assert driver.list_nodes(), "still usable after a second connect"

    @feature("validation")
    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"vcpus": 0}, "vcpus"),
            ({"vcpus": -2}, "vcpus"),
            ({"memory_mb": 0}, "memory_mb"),
            ({"memory_mb": 10**12}, "memory_mb"),
            ({"name": ""}, "name"),
            ({"name": "x" * 300}, "name"),
            ({"name": "bad\x00name"}, "name"),
            ({"name": "tab\there"}, "name"),
            ({"disks": [{"size_gib": 1, "format": "vdi"}]}, "format"),
            ({"disks": [{"size_gib": 0}]}, "size_gib"),
        ],
    )
    def test_invalid_spec_is_refused_before_the_backend(
        self, driver: Driver, fields: dict[str, object], field: str
    ) -> None:
        before = {i.id for i in driver.list_instances()}
        spec = {"name": unique_name(), "vcpus": 1, "memory_mb": 128, **fields}
        with pytest.raises(InvalidSpec) as err:
            driver.create(spec)  # type: ignore[arg-type]  # a plain mapping is accepted and validated
        assert err.value.field is not None
        assert field in err.value.field
        assert {i.id for i in driver.list_instances()} == before

    @feature("create")
    def test_create_running(self, driver: Driver, make_instance: MakeInstance) -> None:
        info = make_instance(vcpus=1, memory_mb=self.instance_memory_mb)
        assert info.power_state == PowerState.RUNNING
        got = agreed(driver, info.id)
        assert (got.name, got.vcpus, got.memory_mb) == (info.name, 1, self.instance_memory_mb)
        assert (got.power_state, got.managed) == (PowerState.RUNNING, True)
        assert len(got.disks) == 1
        assert [disk_shape(d) for d in got.disks] == [disk_shape(d) for d in info.disks]
        assert got.node in up_nodes(driver), f"instance names node {got.node!r}, which list_nodes does not show up"

    @feature("create")
    def test_create_stopped(self, driver: Driver, make_instance: MakeInstance) -> None:
        info = make_instance(start=False, disks=[])
        assert agreed(driver, info.id).power_state == PowerState.SHUTDOWN

    @feature("create")
    def test_create_keeps_every_field(self, driver: Driver, make_instance: MakeInstance) -> None:
        meta = {"role": "db", "note": "two words"}
        size = self.disk_gib
        info = make_instance(
            vcpus=2,
            memory_mb=self.instance_memory_mb * 2,
            start=False,
            metadata=meta,
            disks=[
                {"size_gib": size + 1, "thin": False, "label": "root"},
                {"size_gib": size + 2, "thin": True, "label": "data"},
            ],
        )
        got = agreed(driver, info.id)
        assert (got.vcpus, got.memory_mb, got.power_state) == (2, self.instance_memory_mb * 2, PowerState.SHUTDOWN)
        assert {k: got.metadata.get(k) for k in meta} == meta
        fmt = driver.default_disk_format
        shapes = [disk_shape(d) for d in got.disks]
        want = [(size + 1, fmt, False, "root"), (size + 2, fmt, True, "data")]
        if fmt is None:  # the driver chooses: any one format, but the same for both
            shapes = [(s, None, t, label) for s, _f, t, label in shapes]
        assert shapes == want, "disks do not round-trip (size, format, thin, label)"
        assert [disk_shape(d) for d in info.disks] == [disk_shape(d) for d in got.disks], "create returned other disks"

    @feature("create")
    def test_create_on_the_named_node(self, driver: Driver, make_instance: MakeInstance) -> None:
        # Where the scheduler puts an instance when asked nothing, then every other node by name:
        # a driver that ignores spec.node cannot land on all of them by chance.
        chosen = make_instance(disks=[]).node
        for target in [n for n in up_nodes(driver) if n != chosen] or up_nodes(driver):
            info = make_instance(node=target, disks=[])
            assert info.node == target, f"asked for node {target!r}, create reports {info.node!r}"
            assert agreed(driver, info.id).node == target

    @feature("create")
    def test_failed_create_leaves_nothing(
        self, driver: Driver, endpoint: EndpointUnderTest, make_instance: MakeInstance
    ) -> None:
        name = unique_name()
        before = {i.id for i in driver.list_instances()}
        pets = {i.id for i in driver.list_unmanaged()} if driver.supports(Capability.ADOPT) else set()
        disks = {n: driver.host_resources(n).disk_gib_used for n in up_nodes(driver)}
        endpoint.fail_next_create(driver)
        with pytest.raises(DriverError):
            make_instance(name=name, disks=[{"size_gib": self.disk_gib + 1}])
        assert {i.id for i in driver.list_instances()} == before, "a failed create left an instance behind"
        if driver.supports(Capability.ADOPT):
            assert {i.id for i in driver.list_unmanaged()} == pets, "a failed create left an unmanaged VM behind"
        with pytest.raises(InstanceNotFound):
            driver.find_instance(name)
        assert {n: driver.host_resources(n).disk_gib_used for n in up_nodes(driver)} == disks, "disks left behind"
        if driver.supports(Capability.REAP):
            # Thin disks may not move a usage figure; the create's own token finds what it left.
            left = driver.reap(dry_run=True, grace_s=0)
            assert not left, f"a failed create left {[(f.kind, f.ref) for f in left]}"
        info = make_instance(name=name)  # nothing of the failed attempt holds the name
        assert agreed(driver, info.id).name == name

    @feature("create")
    def test_parallel_creates_of_distinct_instances(self, driver: Driver, make_instance: MakeInstance) -> None:
        names = [unique_name() for _ in range(4)]

        def shape(i: int) -> tuple[str, int, int]:
            return names[i], 1 + i % 2, self.instance_memory_mb * (1 + i // 2)

        def create(i: int) -> InstanceInfo:
            name, vcpus, memory = shape(i)
            return make_instance(name=name, vcpus=vcpus, memory_mb=memory, start=False, disks=[])

        results = in_threads(4, create)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, f"parallel creates failed: {errors}"
        assert len({r.id for r in results}) == 4
        for i, made in enumerate(results):
            got = agreed(driver, made.id)
            assert (got.name, got.vcpus, got.memory_mb) == shape(i)

    @feature("create")
    def test_hostile_name_is_kept_verbatim_or_refused_up_front(
        self, driver: Driver, make_instance: MakeInstance
    ) -> None:
        """Quotes, markup and shell syntax must never change what reaches the backend."""
        name = f"vdc <a&b> 'q' \"d\" $(x) ;`y` é {unique_name('n')[-6:]}"
        if driver.name_pattern is not None and re.fullmatch(driver.name_pattern, name) is None:
            before = {i.id for i in driver.list_instances()}
            with pytest.raises(InvalidSpec) as err:
                make_instance(name=name, start=False, disks=[])
            assert err.value.field == "name"
            assert {i.id for i in driver.list_instances()} == before
            return
        info = make_instance(name=name, start=False, disks=[])
        assert agreed(driver, info.id).name == name
        assert driver.find_instance(name).id == info.id

    @feature("unique_names")
    def test_duplicate_names(self, driver: Driver, make_instance: MakeInstance) -> None:
        first = make_instance(start=False, disks=[])
        if driver.unique_names:
            before = {i.id for i in driver.list_instances()}
            with pytest.raises(InvalidSpec) as err:
                make_instance(name=first.name, start=False, disks=[])
            assert err.value.field == "name"
            assert {i.id for i in driver.list_instances()} == before
        else:
            second = make_instance(name=first.name, start=False, disks=[])
            assert second.id != first.id
            assert [i.name for i in driver.list_instances()].count(first.name) == 2

    @feature("unique_names")
    def test_concurrent_creates_of_one_name(self, driver: Driver, make_instance: MakeInstance) -> None:
        name = unique_name()
        results = in_threads(4, lambda i: make_instance(name=name, start=False, disks=[]))
        made = [r for r in results if isinstance(r, InstanceInfo)]
        errors = [r for r in results if isinstance(r, BaseException)]
        listed = [i.id for i in driver.list_instances() if i.name == name]
        if driver.unique_names:
            assert len(made) == 1, f"{len(made)} of 4 concurrent creates of one name succeeded"
            assert all(isinstance(e, InvalidSpec) and e.field == "name" for e in errors), errors
            assert listed == [made[0].id]
        else:
            assert not errors, errors
            assert sorted(listed) == sorted(i.id for i in made)

    @feature("metadata")
    def test_metadata_round_trip(self, driver: Driver, make_instance: MakeInstance) -> None:
        meta = {"owner": "team-a", "purpose": "conformance <&>", "quote": 'it\'s "q"'}
        info = make_instance(start=False, disks=[], metadata=meta)
        got = agreed(driver, info.id).metadata
        assert {k: got.get(k) for k in meta} == meta

    @feature("list")
    def test_list_reports_every_instance(self, driver: Driver, make_instance: MakeInstance) -> None:
        a = make_instance(disks=[])
        b = make_instance(start=False, vcpus=2, memory_mb=self.instance_memory_mb * 2, metadata={"k": "v"})
        listed = {i.id: i for i in driver.list_instances()}
        assert a.id in listed
        assert b.id in listed
        assert listed[a.id].power_state == PowerState.RUNNING
        assert (listed[b.id].name, listed[b.id].vcpus, listed[b.id].memory_mb) == (
            b.name,
            2,
            self.instance_memory_mb * 2,
        )
        assert listed[b.id].power_state == PowerState.SHUTDOWN
        assert listed[a.id].node is not None
        for info in (a, b):
            assert listed[info.id].model_dump() == driver.get_instance(info.id).model_dump(), (
                f"list_instances and get_instance disagree about {info.name}"
            )
        driver.power_off(a.id, force=True)  # the listing follows a change, not just a create
        assert agreed(driver, a.id).power_state == PowerState.SHUTDOWN

    @feature("get")
    def test_get_unknown_raises_instance_not_found(self, driver: Driver) -> None:
        with pytest.raises(InstanceNotFound):
            driver.get_instance("00000000-0000-4000-8000-00000000dead")
        with pytest.raises(InstanceNotFound):
            driver.find_instance(unique_name("absent"))

    @feature("get")
    def test_every_operation_on_a_destroyed_instance_is_instance_not_found(
        self, driver: Driver, make_instance: MakeInstance
    ) -> None:
        info = make_instance(disks=[])
        driver.destroy(info.id)
        operations: dict[str, Callable[[], object]] = {
            "get_instance": lambda: driver.get_instance(info.id),
            "destroy": lambda: driver.destroy(info.id),
            "power_on": lambda: driver.power_on(info.id),
            "power_off": lambda: driver.power_off(info.id, force=True),
            "reboot": lambda: driver.reboot(info.id, hard=True),
        }
        wrong = {}
        for op, call in operations.items():
            try:
                call()
            except InstanceNotFound:
                continue
            except BaseException as exc:
                wrong[op] = f"{type(exc).__name__}: {exc}"
            else:
                wrong[op] = "returned"
        assert not wrong, f"not InstanceNotFound: {wrong}"

    @feature("destroy")
    def test_destroy_running(self, driver: Driver, make_instance: MakeInstance) -> None:
        node = up_nodes(driver)[-1]
        before = driver.host_resources(node).disk_gib_used
        info = make_instance(node=node, disks=[{"size_gib": self.disk_gib + 1}])
        driver.destroy(info.id)
        with pytest.raises(InstanceNotFound):
            driver.get_instance(info.id)
        assert info.id not in {i.id for i in driver.list_instances()}
        assert driver.host_resources(node).disk_gib_used == before, "destroy left its disks counted on the node"
        with pytest.raises(NotFound):
            driver.destroy(info.id)


#: Optional operations called with a destroyed instance's id, each the evidence of its capability.
_OPTIONAL_OPERATIONS: list[tuple[str, Callable[[Driver, str], object]]] = [
    ("pause", lambda d, i: d.pause(i)),
    ("suspend", lambda d, i: d.suspend(i)),
    ("resize_cpu", lambda d, i: d.resize(i, vcpus=2)),
    ("resize_memory", lambda d, i: d.resize(i, memory_mb=256)),
    ("attach_disk", lambda d, i: d.attach_disk(i, DiskSpec(size_gib=1))),
    ("detach_disk", lambda d, i: d.detach_disk(i, "0")),
    ("snapshot", lambda d, i: d.list_snapshots(i)),
    ("live_migrate", lambda d, i: d.live_migrate(i)),
    ("cold_migrate", lambda d, i: d.cold_migrate(i)),
    ("high_availability", lambda d, i: d.get_high_availability(i)),
    ("ha_failover", lambda d, i: d.failover(i)),
    ("nic_hotplug", lambda d, i: d.attach_nic(i, NicSpec(network="default"))),
    ("guest_addresses", lambda d, i: d.guest_addresses(i)),
    ("console_output", lambda d, i: d.console_output(i)),
    ("console_connect", lambda d, i: d.console_connection(i)),
    ("metrics", lambda d, i: d.instance_metrics(i)),
]


class TestUnknownInstances(DriverFixtures):
    """Every optional operation refuses an id that no longer exists with InstanceNotFound."""

    @pytest.fixture(scope="class")
    @classmethod
    def gone_id(cls, driver: Driver) -> str:
        info = driver.create(InstanceSpec(name=unique_name("gone"), vcpus=1, memory_mb=128, start=False))
        driver.destroy(info.id)
        return info.id

    @pytest.mark.parametrize(
        "operation", [pytest.param(call, marks=feature(cap), id=cap) for cap, call in _OPTIONAL_OPERATIONS]
    )
    def test_unknown_instance(self, driver: Driver, gone_id: str, operation: Callable[[Driver, str], object]) -> None:
        with pytest.raises(InstanceNotFound):
            operation(driver, gone_id)


class TestSecrets(DriverFixtures):
    @staticmethod
    def _secrets(driver: Driver) -> dict[str, str]:
        return {
            k: v.get_secret_value() for k, v in driver.settings if isinstance(v, SecretStr) and v.get_secret_value()
        }

    @staticmethod
    def _leaks(texts: Iterable[str], secrets: Iterable[str]) -> list[int]:
        """Indexes of the texts that show a secret (never the texts: the report must not show it either)."""
        secrets = [s for s in secrets if s]
        return [n for n, text in enumerate(texts) if any(s in text for s in secrets)]

    @feature("secrets")
    def test_wrong_password_is_authentication_failed_without_secrets(
        self, driver: Driver, endpoint: EndpointUnderTest, caplog: pytest.LogCaptureFixture
    ) -> None:
        right = self._secrets(driver)
        if not right:
            pytest.skip("the endpoint's settings hold no secret (SecretStr) to check")
        wrong = {k: f"wrong-{uuid.uuid4().hex}" for k in right}
        other = type(driver)(driver.settings.model_copy(update={k: SecretStr(v) for k, v in wrong.items()}))
        caplog.set_level("DEBUG")
        error: BaseException | None = None
        try:
            other.connect()
            other.list_instances()
        except BaseException as exc:
            error = exc
        finally:
            other.close()
        if error is None:
            if not endpoint.authenticates:
                pytest.skip("the endpoint has nothing to authenticate (a local peer)")
            pytest.fail("a wrong password was accepted")
        assert isinstance(error, AuthenticationFailed), f"a wrong password gave {type(error).__name__}"
        texts = [*error_texts(error), caplog.text, repr(other)]
        assert not self._leaks(texts, [*right.values(), *wrong.values()]), "a password appears in the error or logs"

    @feature("secrets")
    def test_no_secret_in_errors_reprs_logs_or_backend_info(
        self, driver: Driver, make_instance: MakeInstance, caplog: pytest.LogCaptureFixture
    ) -> None:
        secrets = [*self._secrets(driver).values(), *driver.settings.secrets()]
        if not secrets:
            pytest.skip("the endpoint's settings hold no secret (SecretStr) to check")
        caplog.set_level("DEBUG")
        texts = [repr(driver), str(driver), repr(driver.settings), str(driver.settings)]
        texts.append(driver.backend_info().model_dump_json())
        taken = make_instance(start=False, disks=[])
        gone = make_instance(start=False, disks=[])
        driver.destroy(gone.id)
        attempts: list[Callable[[], object]] = [
            lambda: driver.get_instance(gone.id),
            lambda: driver.destroy(gone.id),
            lambda: driver.power_on(gone.id),
            lambda: driver.power_off(gone.id, force=True),
            lambda: driver.host_resources(unique_name("no-such-node")),
            lambda: driver.create(InstanceSpec(name=taken.name, vcpus=1, memory_mb=128, start=False)),
            lambda: driver.create({"name": unique_name(), "vcpus": 0, "memory_mb": 128}),  # type: ignore[arg-type]
        ]
        raised = 0
        for attempt in attempts:
            try:
                attempt()
            except BaseException as exc:
                raised += 1
                texts.extend(error_texts(exc))
        assert raised >= 4, "the failing calls did not fail"
        texts.append(caplog.text)
        leaks = self._leaks(texts, secrets)
        assert not leaks, f"a secret appears in {len(leaks)} error text(s), repr(s) or log lines"


class TestReap(DriverFixtures):
    @feature("reap")
    def test_reap_never_touches_finished_instances_or_pets(self, driver: Driver, make_instance: MakeInstance) -> None:
        """With no grace at all, reap may take only creates still in progress (none here) and leftovers.

        ``grace_s=0`` also removes creates in progress elsewhere on the endpoint, so run the
        suite against an endpoint of its own, as every other test here already requires.
        """
        running = make_instance(disks=[{"size_gib": self.disk_gib}])
        stopped = make_instance(start=False)
        pets = {i.id for i in driver.list_unmanaged()} if driver.supports(Capability.ADOPT) else set()
        before = {i: agreed(driver, i).model_dump() for i in (running.id, stopped.id)}
        found = driver.reap(dry_run=True, grace_s=0)
        assert all(f.kind in ("instance", "disk") for f in found)
        refs = {f.ref for f in found}
        assert not refs & {running.id, stopped.id, *pets}, "reap would remove a finished instance or a pet"
        driver.reap(grace_s=0)
        assert {i: agreed(driver, i).model_dump() for i in (running.id, stopped.id)} == before
        if pets:
            assert pets <= {i.id for i in driver.list_unmanaged()}


#: Ids no backend issues: path tricks, query and fragment syntax, markup, shell and PowerShell syntax,
#: control and non-ASCII characters. Each must be refused as not found (or as an invalid id), never
#: reach a URL, a SOAP body, XML or a script as syntax, and never surface as a library exception.
HOSTILE_IDS = [
    "",
    ".",
    "..",
    "../hosts",
    "?x=1",
    "#frag",
    "a<b>&c",
    "a/b\\c",
    "nul\x00byte",
    "line\r\nbreak",
    "é日本😀",
    "%2e%2e%2f",
    " ",
    "x" * 300,
    "00000000-0000-4000-8000-000000000000\n",
    "vm-1'; Remove-VM -Name * -Force; '",
    "$(reboot)`reboot`",
    '"quoted"',
]

#: Names the contract accepts. A backend keeps each exactly or refuses it up front (field ``name``).
HOSTILE_NAMES = [
    ".",
    "..",
    "😀" * 64,
    "日本" * 32,
    "a%25b%2f",
    "a%b",
    "<script>x</script>",
    "-rf",
    "*",
    "a:b;c|d",
    "CON",
    "a  b",
    "ümlaut-ß",
    "'\"`$(x)",
]

#: Metadata values the contract accepts. Kept exactly, or refused up front naming ``metadata.<key>``.
HOSTILE_METADATA = {
    "nul": "a\x00b",
    "esc": "\x1b[31mred",
    "crlf": "a\r\nb",
    "tab": "a\tb",
    "unicode": "é日本😀",
    "markup": "<>&'\"",
    "shell": "${x}$(y)`z`",
    "lead": " lead",
    "trail": "trail ",
    "empty": "",
    "long": "x" * 1024,
}


class TestHostileInput(DriverFixtures):
    @feature("get")
    def test_hostile_ids_are_not_found(self, driver: Driver) -> None:
        wrong = {}
        for ref in HOSTILE_IDS:
            for op, call in (("get_instance", driver.get_instance), ("destroy", driver.destroy)):
                try:
                    call(ref)
                except InstanceNotFound:
                    continue
                except InvalidSpec as exc:
                    if exc.field != "instance_id":
                        wrong[f"{op}({ref!r})"] = f"InvalidSpec(field={exc.field!r})"
                except BaseException as exc:
                    wrong[f"{op}({ref!r})"] = untyped(exc) or f"{type(exc).__name__}: {exc}"[:300]
                else:
                    wrong[f"{op}({ref!r})"] = "returned"
        assert not wrong, f"hostile ids not refused as InstanceNotFound: {wrong}"

    @feature("create")
    def test_hostile_names_round_trip_or_are_refused_up_front(
        self, driver: Driver, make_instance: MakeInstance
    ) -> None:
        wrong = {}
        for name in HOSTILE_NAMES:
            if driver.unique_names:
                with contextlib.suppress(InstanceNotFound):  # another run's leftover would make it a duplicate
                    driver.destroy(driver.find_instance(name).id)
            before = {i.id for i in driver.list_instances()}
            try:
                info = make_instance(name=name, start=False, disks=[])
            except InvalidSpec as exc:
                if exc.field not in ("name", "InstanceSpec.name"):
                    wrong[name] = f"InvalidSpec(field={exc.field!r})"
                elif {i.id for i in driver.list_instances()} != before:
                    wrong[name] = "refused, but left an instance behind"
                continue
            except BaseException as exc:
                wrong[name] = untyped(exc) or f"{type(exc).__name__} instead of InvalidSpec(field='name'): {exc}"[:300]
                continue
            got = agreed(driver, info.id)
            if got.name != name or info.name != name:
                wrong[name] = f"kept as {got.name!r}"
            elif driver.find_instance(name).id != info.id:
                wrong[name] = "not found by its own name"
        assert not wrong, f"names neither kept exactly nor refused up front: {wrong}"

    @feature("metadata")
    def test_hostile_metadata_round_trips_or_is_refused_up_front(
        self, driver: Driver, make_instance: MakeInstance
    ) -> None:
        meta = dict(HOSTILE_METADATA)
        refused: list[str] = []
        for _ in range(len(HOSTILE_METADATA) + 1):
            before = {i.id for i in driver.list_instances()}
            try:
                info = make_instance(start=False, disks=[], metadata=meta)
                break
            except InvalidSpec as exc:
                key = (exc.field or "").removeprefix("InstanceSpec.").removeprefix("metadata.")
                assert key in meta, f"metadata refused without naming the key: InvalidSpec(field={exc.field!r})"
                assert {i.id for i in driver.list_instances()} == before, "refused metadata left an instance"
                refused.append(key)
                del meta[key]
        got = agreed(driver, info.id).metadata
        changed = {k: got.get(k) for k, v in meta.items() if got.get(k) != v}
        assert not changed, f"metadata values not kept exactly (refused up front: {refused}): {changed}"
