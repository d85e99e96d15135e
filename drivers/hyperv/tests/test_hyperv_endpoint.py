"""The embedded endpoints as the conformance suite sees them: evidence, nodes, pets, secrets and hooks.

Each hook must act on the simulator (the peer) and make the driver's real error path run:
a create that fails after its VM and VHDX exist leaves nothing behind, an ACPI-deaf guest
makes a graceful power_off wait out its timeout and then force, a failed node is seen down.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from virtdrivers.endpoint import EmbeddedEndpoint, Evidence
from virtdrivers.errors import BackendUnavailable, DriverError, InstanceNotFound
from virtdrivers.objects import InstanceSpec, PowerState
from virtdrivers_hyperv.driver import HA_METADATA_KEY, HypervDriver
from virtdrivers_hyperv.simulator.endpoint import arm_fault


def _endpoints() -> dict[str, EmbeddedEndpoint]:
    return {e.name: e for e in HypervDriver.embedded_endpoints()}


def _state(settings: Mapping[str, Any]) -> dict[str, Any]:
    scheme = "https" if settings["https"] else "http"
    context = ssl.create_default_context(cafile=settings["ca_file"]) if settings["https"] else None
    with urllib.request.urlopen(f"{scheme}://127.0.0.1:{settings['port']}/_sim/state", context=context) as reply:
        state: dict[str, Any] = json.load(reply)
        return state


@pytest.fixture(scope="module", params=["https-basic", "ntlm"])
def started(request: pytest.FixtureRequest) -> Iterator[tuple[EmbeddedEndpoint, Mapping[str, Any]]]:
    endpoint = _endpoints()[request.param]
    with endpoint.start() as settings:
        yield endpoint, settings


@pytest.fixture
def driver(started: tuple[EmbeddedEndpoint, Mapping[str, Any]]) -> Iterator[HypervDriver]:
    with HypervDriver(dict(started[1])) as d:
        yield d


def test_endpoints_say_what_they_are_without_starting() -> None:
    endpoints = _endpoints()
    assert set(endpoints) == {"https-basic", "ntlm"}
    for e in endpoints.values():
        assert e.evidence is Evidence.PROJECT_SIMULATOR
        assert e.backend == "virtdrivers Hyper-V simulator"
        assert (e.backend_version or "x")[0].isdigit()
        assert "Windows Server 2022" in (e.imitates or "")
        assert None not in (e.hooks.fail_next_create, e.hooks.ignore_acpi, e.hooks.fail_node)


Started = tuple[EmbeddedEndpoint, Mapping[str, Any]]


def test_three_nodes_pets_and_a_secret(started: Started, driver: HypervDriver) -> None:
    _, settings = started
    assert [n.name for n in driver.list_nodes()] == ["HV-NODE1", "HV-NODE2", "HV-NODE3"]
    assert {p.name for p in driver.list_unmanaged()} >= {"pet-web-1", "pet-db-1"}
    assert driver.settings.password.get_secret_value() == settings["password"]
    assert settings["password"] not in repr(driver)


def test_fail_next_create_leaves_nothing_and_fires_once(
    started: tuple[EmbeddedEndpoint, Mapping[str, Any]], driver: HypervDriver
) -> None:
    endpoint, settings = started
    before = _state(settings)
    spec = InstanceSpec(
        name="hooked",
        vcpus=1,
        memory_mb=256,
        disks=[{"size_gib": 3}, {"size_gib": 1, "thin": False}],
        metadata={HA_METADATA_KEY: "true"},
    )
    assert endpoint.hooks.fail_next_create is not None
    endpoint.hooks.fail_next_create(settings, driver)
    with pytest.raises(DriverError, match="device is not ready"):
        driver.create(spec)
    assert _state(settings) == before
    assert "hooked" not in {i.name for i in driver.list_instances()}
    # One-shot: the same create now succeeds.
    info = driver.create(spec)
    try:
        assert (info.name, len(info.disks)) == ("hooked", 2)
    finally:
        driver.destroy(info.id)
    assert _state(settings) == before


def test_ignore_acpi_waits_out_the_timeout_then_forces(
    started: tuple[EmbeddedEndpoint, Mapping[str, Any]], driver: HypervDriver
) -> None:
    endpoint, settings = started
    info = driver.create(InstanceSpec(name="deaf", vcpus=1, memory_mb=256))
    try:
        assert endpoint.hooks.ignore_acpi is not None
        endpoint.hooks.ignore_acpi(settings, driver, info.id)
        t0 = time.monotonic()
        assert driver.power_off(info.id, timeout=2).power_state == PowerState.SHUTDOWN
        assert time.monotonic() - t0 >= 2.0
        driver.power_on(info.id)
        t0 = time.monotonic()
        assert driver.power_off(info.id, timeout=30, force=True).power_state == PowerState.SHUTDOWN
        assert time.monotonic() - t0 < 1.5
    finally:
        driver.destroy(info.id)


def test_a_guest_that_listens_stops_without_waiting(driver: HypervDriver) -> None:
    info = driver.create(InstanceSpec(name="polite", vcpus=1, memory_mb=256))
    try:
        t0 = time.monotonic()
        assert driver.power_off(info.id, timeout=30).power_state == PowerState.SHUTDOWN
        assert time.monotonic() - t0 < 1.5
    finally:
        driver.destroy(info.id)


def test_fail_node_marks_a_node_down_and_up(
    started: tuple[EmbeddedEndpoint, Mapping[str, Any]], driver: HypervDriver
) -> None:
    endpoint, settings = started
    assert endpoint.hooks.fail_node is not None
    endpoint.hooks.fail_node(settings, driver, "HV-NODE3", True)
    try:
        assert {n.name: n.state for n in driver.list_nodes()}["HV-NODE3"] == "down"
    finally:
        endpoint.hooks.fail_node(settings, driver, "HV-NODE3", False)
    assert {n.state for n in driver.list_nodes()} == {"up"}


def test_knobs_refuse_unknown_targets(started: tuple[EmbeddedEndpoint, Mapping[str, Any]]) -> None:
    endpoint, settings = started
    with pytest.raises(BackendUnavailable, match="404"):
        arm_fault(settings, "Remove-Item")
    assert endpoint.hooks.ignore_acpi is not None
    with pytest.raises(BackendUnavailable, match="404"):
        endpoint.hooks.ignore_acpi(settings, HypervDriver(dict(settings)), "00000000-0000-4000-8000-00000000dead")
    with pytest.raises(InstanceNotFound):
        HypervDriver(dict(settings)).get_instance("not-a-guid")
