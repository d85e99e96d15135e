"""The suite bound to the driver chosen on the command line (``--vd-driver``); the runner points pytest here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from virtdrivers import Driver
from virtdrivers_conformance.plugin import SESSION_KEY
from virtdrivers_conformance.suite import ConformanceSuite


class TestSelectedDriver(ConformanceSuite):
    @pytest.fixture(scope="class")
    @classmethod
    def driver(cls, request: pytest.FixtureRequest) -> Iterator[Driver]:
        session = request.config.stash[SESSION_KEY]
        with session.connected_driver() as driver:
            yield driver
