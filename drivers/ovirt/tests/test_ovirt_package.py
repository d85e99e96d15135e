"""The package as the loader sees it: lazy SDK import, declared capabilities, settings hygiene."""

from __future__ import annotations

import subprocess
import sys

import pytest

import virtdrivers
from virtdrivers.capabilities import Capability
from virtdrivers.errors import InvalidSpec
from virtdrivers_ovirt.driver import OvirtDriver

#: What listing drivers must not load for this plugin: the SDK and its transport, TLS and HTTP
#: stacks, process machinery, and the simulator (its server, model, certificates).
HEAVY = (
    "ovirtsdk4",
    "pycurl",
    "cryptography",
    "ssl",
    "http.client",
    "http.server",
    "urllib.request",
    "subprocess",
    "xml.etree",
    "virtdrivers_ovirt.simulator.model",
    "virtdrivers_ovirt.simulator.server",
)


def test_listing_the_driver_and_its_endpoints_stays_light() -> None:
    """What ``virtdrivers drivers`` does with this plugin: import the module, read capabilities,
    name the embedded endpoints and their evidence."""
    code = (
        "import sys, virtdrivers_ovirt.driver as d\n"
        "assert d.OvirtDriver.capabilities\n"
        "(e,) = d.OvirtDriver.embedded_endpoints()\n"
        "assert e.backend and e.imitates and e.hooks.fail_next_create\n"
        f"print(sorted(m for m in sys.modules if m.startswith({HEAVY!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_registered_under_its_entry_point() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="virtdrivers.drivers") if e.name == "ovirt"]
    assert ep.load() is OvirtDriver
    assert OvirtDriver.name == "ovirt"
    assert Capability.ADOPT in OvirtDriver.capabilities
    assert Capability.REAP in OvirtDriver.capabilities
    assert Capability.PAUSE not in OvirtDriver.capabilities
    assert [e.name for e in OvirtDriver.embedded_endpoints()] == ["simulator"]
    assert virtdrivers.Driver in OvirtDriver.__mro__


def test_settings_keep_the_password_secret_and_refuse_bad_urls() -> None:
    drv = OvirtDriver(url="https://engine.example/ovirt-engine/api", password="s3cret-pw")
    assert "s3cret-pw" not in repr(drv)
    assert drv.settings.redacted()["password"] == "***"
    assert drv.settings.insecure is False
    with pytest.raises(InvalidSpec) as err:
        OvirtDriver(url="engine.example", password="s3cret-pw")
    assert "s3cret-pw" not in str(err.value)
    with pytest.raises(InvalidSpec):
        OvirtDriver(url="https://engine.example/ovirt-engine/api", password="x", colour="blue")


def test_embedded_endpoint_starts_and_stops_its_own_simulator() -> None:
    (endpoint,) = OvirtDriver.embedded_endpoints()
    with endpoint.start() as settings, OvirtDriver(settings) as drv:
        assert {p.name for p in drv.list_unmanaged()} == {"pet-1", "pet-2"}
        ca_file = settings["ca_file"]
    import os

    assert not os.path.exists(ca_file)
