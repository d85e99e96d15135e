"""Fixtures a driver under test provides, fsspec-style.

A vendor gets the whole suite by subclassing :class:`ConformanceSuite` (which
inherits every test class) and overriding one fixture, ``driver``::

    import pytest, virtdrivers
    from virtdrivers_conformance.suite import ConformanceSuite

    class TestAcme(ConformanceSuite):
        @pytest.fixture(scope="class")
        @classmethod
        def driver(cls):
            with virtdrivers.load("acme", url="https://lab-vc:443", user="ci") as d:
                yield d

Tests name the feature they check with ``@feature("pause")``. When the driver
does not declare a test's capability the test still runs, with the capability
guard lifted (:meth:`Driver.probing`): a failure is then reported as a skip
("not declared") and a pass as "not declared but works".
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from virtdrivers import Capability, Driver, EndpointHooks, InstanceInfo, InstanceSpec, NotFound
from virtdrivers_conformance.features import FEATURES

__all__ = ["PROBED_KEY", "DriverFixtures", "EndpointUnderTest", "feature", "unique_name"]

#: ``item.stash`` key holding the undeclared capability a test ran as a probe of.
PROBED_KEY = pytest.StashKey[str]()

MakeInstance = Callable[..., InstanceInfo]


def feature(feature_id: str) -> pytest.MarkDecorator:
    """Mark a test as evidence for one feature (a row of the parity matrix)."""
    if feature_id not in FEATURES:
        raise ValueError(f"unknown feature {feature_id!r}")
    return pytest.mark.vd_feature(feature_id)


def unique_name(prefix: str = "vdc") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class EndpointUnderTest:
    """The endpoint's fault hooks, bound to the settings its ``start`` yielded.

    A test that needs a hook the endpoint does not offer is skipped with the reason,
    so the gap is visible in the report instead of being a silent pass.
    """

    hooks: EndpointHooks = field(default_factory=EndpointHooks)
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: Whether a wrong secret must be refused (see ``EmbeddedEndpoint.authenticates``).
    authenticates: bool = True
    #: Seconds a guest may take to boot far enough to read user data and report addresses.
    guest_boot_timeout: float = 180.0

    def _need(self, name: str) -> Any:
        hook = getattr(self.hooks, name)
        if hook is None:
            pytest.skip(f"the endpoint offers no {name} hook (EndpointHooks.{name})")
        return hook

    def fail_next_create(self, driver: Driver) -> None:
        self._need("fail_next_create")(self.settings, driver)

    def ignore_acpi(self, driver: Driver, instance_id: str) -> None:
        self._need("ignore_acpi")(self.settings, driver, instance_id)

    def read_user_data(self, driver: Driver, instance_id: str) -> str | None:
        return self._need("read_user_data")(self.settings, driver, instance_id)  # type: ignore[no-any-return]

    def has_fail_node(self) -> bool:
        return self.hooks.fail_node is not None

    def fail_node(self, driver: Driver, node: str, down: bool = True) -> None:
        self._need("fail_node")(self.settings, driver, node, down)


class DriverFixtures:
    """What a driver under test must provide, and the knobs it may turn."""

    #: Seconds a graceful shutdown may take before the driver must force it.
    graceful_timeout: float = 5.0
    #: Seconds to wait for a lifecycle event to arrive.
    event_timeout: float = 30.0
    #: Size of the instances the suite creates: small, so real hypervisors stay fast.
    instance_vcpus: int = 1
    instance_memory_mb: int = 128
    disk_gib: int = 1

    @pytest.fixture(scope="class")
    @classmethod
    def driver(cls) -> Driver:
        """Override: yield a connected driver for the endpoint under test."""
        pytest.fail("the conformance suite needs a `driver` fixture: subclass ConformanceSuite and provide it")

    @pytest.fixture(scope="class")
    @classmethod
    def endpoint(cls) -> EndpointUnderTest:
        """Override to offer the endpoint's fault hooks (see :class:`virtdrivers.EndpointHooks`).

        The default offers none: the tests that need one are skipped, with the reason.
        """
        return EndpointUnderTest()

    @pytest.fixture(autouse=True)
    def _capability_gate(self, request: pytest.FixtureRequest, driver: Driver) -> Iterator[None]:
        # -- recording hook (owned by plugin.py): the report/matrix learns which driver is under test.
        from virtdrivers_conformance.plugin import record_driver

        record_driver(request.config, driver)
        # -- end of recording hook
        marker = request.node.get_closest_marker("vd_feature")
        if marker is None:
            yield
            return
        feat = FEATURES[marker.args[0]]
        if feat.capability is None or driver.supports(feat.capability):
            yield
            return
        request.node.stash[PROBED_KEY] = feat.capability.value
        with driver.probing():
            yield

    @pytest.fixture
    def make_instance(self, driver: Driver) -> Iterator[MakeInstance]:
        """Create instances that are destroyed after the test, whatever happens."""
        made: list[str] = []
        lock = threading.Lock()

        def make(**overrides: Any) -> InstanceInfo:
            fields: dict[str, Any] = {
                "name": unique_name(),
                "vcpus": self.instance_vcpus,
                "memory_mb": self.instance_memory_mb,
                "disks": [{"size_gib": self.disk_gib}],
                "start": True,
            }
            fields.update(overrides)
            info = driver.create(InstanceSpec(**fields))
            with lock:  # tests create from several threads at once
                made.append(info.id)
            return info

        yield make
        for instance_id in reversed(made):
            with contextlib.suppress(NotFound):
                driver.destroy(instance_id)

    @pytest.fixture
    def instance(self, make_instance: MakeInstance) -> InstanceInfo:
        """A running instance with one disk in the driver's default format."""
        return make_instance()

    @pytest.fixture
    def booted_instance(self, driver: Driver, endpoint: EndpointUnderTest, make_instance: MakeInstance) -> InstanceInfo:
        """A running instance with an operating system where the endpoint has an image (so it hears ACPI and
        reboots for real), booted far enough to report an address or console output; a blank one otherwise."""
        images = driver.list_images() if driver.supports(Capability.IMAGES) else []
        if not images:
            return make_instance()
        nics = [{"network": driver.list_networks()[0].id}] if driver.supports(Capability.NETWORKS) else []
        info = make_instance(image=images[0].id, disks=[], nics=nics)
        if nics and driver.supports(Capability.GUEST_ADDRESSES):
            up: Callable[[], object] = lambda: driver.guest_addresses(info.id)  # noqa: E731
        elif driver.supports(Capability.CONSOLE_OUTPUT):
            up = lambda: driver.console_output(info.id)  # noqa: E731
        else:
            return info
        deadline = time.monotonic() + endpoint.guest_boot_timeout
        while not up():
            if time.monotonic() > deadline:
                pytest.fail(f"the guest of {info.name} did not come up within {endpoint.guest_boot_timeout:.0f}s")
            time.sleep(0.2)
        return info

    @pytest.fixture
    def stopped_instance(self, make_instance: MakeInstance) -> InstanceInfo:
        return make_instance(start=False)
