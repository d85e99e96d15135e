"""Every installed backend driven from one process, as a compute agent managing mixed hosts would.

Backends share a process's native libraries: libvirt loads Debian's libcurl, and a
pycurl wheel (under ovirtsdk4) carrying its own libcurl then refused to import
("link-time version is older than compile-time version"), so libvirt and oVirt
could not live in one agent. ``./dev`` builds pycurl against Debian's libcurl;
this test holds that, with every backend's embedded endpoint started in this
process and operations interleaved across them.
"""

from __future__ import annotations

import contextlib

import pytest

import virtdrivers
from virtdrivers import Driver, InstanceNotFound, InstanceSpec, PowerState

#: One endpoint per backend: libvirt on real QEMU, since that is where libcurl gets loaded.
ENDPOINTS = {"libvirt": "qemu", "ovirt": "simulator", "vmware": "vcsim", "hyperv": "https-basic", "fake": "memory"}


def _installed() -> list[str]:
    names = {e.name for e in virtdrivers.list_drivers() if e.ok}
    return [n for n in ENDPOINTS if n in names]


def test_every_backend_in_one_process() -> None:
    names = _installed()
    if not {"libvirt", "ovirt"} <= set(names):
        pytest.skip("needs the libvirt and ovirt backends installed")
    with contextlib.ExitStack() as stack:
        drivers: list[Driver] = []
        # libvirt first: it is the one that loads the system libcurl before pycurl is imported.
        for name in sorted(names, key=lambda n: n != "libvirt"):
            cls = virtdrivers.driver_class(name)
            endpoint = {e.name: e for e in cls.embedded_endpoints()}[ENDPOINTS[name]]
            settings = stack.enter_context(endpoint.start())
            driver = stack.enter_context(cls(**settings))
            drivers.append(driver)
        made = {}
        for driver in drivers:  # interleaved: each backend's call follows another backend's
            made[driver.name] = driver.create(InstanceSpec(name=f"mixed-{driver.name}", vcpus=1, memory_mb=128))
        for driver in drivers:
            info = driver.get_instance(made[driver.name].id)
            assert (info.name, info.power_state) == (f"mixed-{driver.name}", PowerState.RUNNING)
            listed = {i.name for i in driver.list_instances() if i.name.startswith("mixed-")}
            assert listed == {f"mixed-{driver.name}"}, f"{driver.name} sees another backend's instances"
        for driver in drivers:
            driver.destroy(made[driver.name].id)
            with pytest.raises(InstanceNotFound):
                driver.get_instance(made[driver.name].id)
        assert {d.name for d in drivers} >= {"libvirt", "ovirt"}
