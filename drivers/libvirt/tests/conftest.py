"""Fixtures for the libvirt backend's tests: the two embedded endpoints and drivers on them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from virtdrivers_libvirt.driver import LibvirtDriver

ENDPOINTS = {e.name: e for e in LibvirtDriver.embedded_endpoints()}


@pytest.fixture(scope="session")
def test_settings() -> Iterator[Mapping[str, Any]]:
    with ENDPOINTS["test"].start() as settings:
        yield settings


@pytest.fixture(scope="session")
def qemu_settings() -> Iterator[Mapping[str, Any]]:
    with ENDPOINTS["qemu"].start() as settings:
        yield settings


@pytest.fixture(params=["test", "qemu"])
def endpoint(request: pytest.FixtureRequest) -> tuple[str, Mapping[str, Any]]:
    name: str = request.param
    return name, request.getfixturevalue(f"{name}_settings")


@pytest.fixture
def driver(endpoint: tuple[str, Mapping[str, Any]]) -> Iterator[LibvirtDriver]:
    name, settings = endpoint
    d = LibvirtDriver(settings)
    d.narrow_capabilities(ENDPOINTS[name].unavailable)
    with d:
        yield d
        for info in d.list_instances():
            d.destroy(info.id)


@pytest.fixture
def qemu(qemu_settings: Mapping[str, Any]) -> Iterator[LibvirtDriver]:
    with LibvirtDriver(qemu_settings) as d:
        yield d
        for info in d.list_instances():
            d.destroy(info.id)
