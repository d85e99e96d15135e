"""The shared conformance suite, wired the way a vendor wires theirs: each embedded endpoint with
its fault hooks (a create that fails half-way, an ACPI-deaf guest, a dead node).

``test`` runs in about 3 s and always; the QEMU endpoints take a minute each and are ``slow``
(the parity run covers them too: ``virtdrivers parity --driver libvirt --endpoint qemu``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import pytest

from virtdrivers.driver import Driver
from virtdrivers.endpoint import EmbeddedEndpoint
from virtdrivers_conformance.suite import ConformanceSuite
from virtdrivers_conformance.suite.fixtures import EndpointUnderTest
from virtdrivers_libvirt.daemon import unavailable_reason
from virtdrivers_libvirt.driver import LibvirtDriver

ENDPOINTS = {e.name: e for e in LibvirtDriver.embedded_endpoints()}


class _OnEndpoint(ConformanceSuite):
    embedded: ClassVar[EmbeddedEndpoint]

    @pytest.fixture(scope="class")
    @classmethod
    def endpoint_settings(cls) -> Iterator[Mapping[str, Any]]:
        with cls.embedded.start() as settings:
            yield settings

    @pytest.fixture(scope="class")
    @classmethod
    def driver(cls, endpoint_settings: Mapping[str, Any]) -> Iterator[Driver]:
        driver = LibvirtDriver(**endpoint_settings)
        driver.narrow_capabilities(cls.embedded.unavailable)
        with driver:
            yield driver

    @pytest.fixture(scope="class")
    @classmethod
    def endpoint(cls, endpoint_settings: Mapping[str, Any]) -> EndpointUnderTest:
        return EndpointUnderTest(
            hooks=cls.embedded.hooks, settings=endpoint_settings, authenticates=cls.embedded.authenticates
        )


class TestOnTheTestDriver(_OnEndpoint):
    embedded = ENDPOINTS["test"]


@pytest.mark.slow
class TestOnEmbeddedQemu(_OnEndpoint):
    embedded = ENDPOINTS["qemu"]


@pytest.mark.slow
@pytest.mark.skipif(unavailable_reason() is not None, reason=f"libvirtd cannot run here: {unavailable_reason()}")
class TestOnDaemons(_OnEndpoint):
    embedded = ENDPOINTS["qemu-pair"]
