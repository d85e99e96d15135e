"""Fixtures for the oVirt backend's tests: a simulator on a free port and a driver connected to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from virtdrivers_ovirt.driver import OvirtDriver
from virtdrivers_ovirt.simulator import Simulator


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(pets=2) as simulator:
        yield simulator


@pytest.fixture
def driver(sim: Simulator) -> Iterator[OvirtDriver]:
    with OvirtDriver(sim.settings(), event_interval=0.05, reconnect_timeout=5) as drv:
        yield drv
