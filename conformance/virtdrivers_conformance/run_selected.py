"""The suite bound to the driver chosen on the command line (``--vd-driver``); the runner points pytest here."""

from __future__ import annotations

import pytest

from virtdrivers import Driver, EndpointHooks
from virtdrivers_conformance.plugin import SESSION_KEY
from virtdrivers_conformance.suite import ConformanceSuite
from virtdrivers_conformance.suite.fixtures import EndpointUnderTest


class TestSelectedDriver(ConformanceSuite):
    @pytest.fixture(scope="class")
    @classmethod
    def driver(cls, request: pytest.FixtureRequest) -> Driver:
        # The session built and connected it before collection, so a driver that cannot be
        # built or cannot connect is one column error rather than a failure in every test;
        # the session also closes it.
        session = request.config.stash[SESSION_KEY]
        assert session.driver is not None, "the conformance session has no driver (--vd-driver missing?)"
        return session.driver

    @pytest.fixture(scope="class")
    @classmethod
    def endpoint(cls, request: pytest.FixtureRequest) -> EndpointUnderTest:
        """The embedded endpoint's fault hooks with the settings it yielded; none for configured settings."""
        session = request.config.stash[SESSION_KEY]
        return EndpointUnderTest(
            hooks=session.hooks or EndpointHooks(),
            settings=dict(session.settings),
            authenticates=session.authenticates,
            guest_boot_timeout=session.guest_boot_timeout,
        )
