"""The plugin as a package: lazy SDK import, entry point, settings hygiene, error translation."""

from __future__ import annotations

import subprocess
import sys

import libvirt
import pytest

import virtdrivers
from virtdrivers.capabilities import Capability
from virtdrivers.errors import BackendUnavailable, InstanceNotFound, InvalidSpec, NotSupported
from virtdrivers_libvirt.driver import LibvirtDriver
from virtdrivers_libvirt.session import Session, translate_error


def test_importing_the_driver_does_not_import_libvirt() -> None:
    code = (
        "import sys, virtdrivers_libvirt.driver as d\n"
        "d.LibvirtDriver.capabilities; [e.name for e in d.LibvirtDriver.embedded_endpoints()]\n"
        "print('libvirt' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registered_under_its_entry_point_with_capabilities() -> None:
    assert virtdrivers.driver_class("libvirt") is LibvirtDriver
    caps = LibvirtDriver.capabilities
    assert {Capability.LIVE_MIGRATE, Capability.EVENTS, Capability.SNAPSHOT, Capability.DISK_QCOW2} <= caps
    assert Capability.DISK_VHDX not in caps  # libvirt's disk XML has no vhdx format
    endpoints = {e.name: e for e in LibvirtDriver.embedded_endpoints()}
    assert set(endpoints) == {"test", "qemu", "qemu-pair"}
    assert Capability.LIVE_MIGRATE in endpoints["test"].unavailable & endpoints["qemu"].unavailable
    assert not endpoints["qemu-pair"].unavailable


def test_password_never_shows() -> None:
    d = LibvirtDriver(uri="qemu+tcp://h/system", username="u", password="s3cr3t-pw")
    assert "s3cr3t-pw" not in repr(d)
    assert "s3cr3t-pw" not in str(d.settings.redacted())
    with pytest.raises(InvalidSpec) as err:
        LibvirtDriver(uri="qemu:///system", bogus=1)
    assert "bogus" in str(err.value)


def test_tls_verification_opt_out_must_be_explicit(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(InvalidSpec) as err:
        LibvirtDriver(uri="qemu+tls://127.0.0.1:1/system?no_verify=1").connect()
    assert err.value.field == "uri"
    d = LibvirtDriver(uri="qemu+tls://127.0.0.1:1/system?no_verify=1", insecure=True)
    with pytest.raises(BackendUnavailable):
        d.connect()  # nothing listens there; the point is the warning before trying
    assert any("verification is OFF" in r.getMessage() for r in caplog.records)


def test_unreachable_daemon_is_backend_unavailable(tmp_path: object) -> None:
    d = LibvirtDriver(uri=f"qemu+unix:///system?socket={tmp_path}/none.sock")
    with pytest.raises(BackendUnavailable) as err:
        d.connect()
    assert isinstance(err.value.__cause__, libvirt.libvirtError)
    d.close()


def test_real_libvirt_errors_translate(test_settings: dict[str, str]) -> None:
    session = Session(test_settings["uri"], credentials=(test_settings["username"], test_settings["password"]))
    session.open()
    try:
        with pytest.raises(InstanceNotFound) as err:
            session.call(lambda c: c.lookupByName("nope"), ref="nope")
        assert isinstance(err.value.__cause__, libvirt.libvirtError)
        dom = session.call(lambda c: c.lookupByName("pet-1"))
        with pytest.raises(NotSupported):
            session.call(lambda _c: dom.migrateSetMaxSpeed(1, 0))
        try:
            session.call(lambda c: c.lookupByName("nope"))
        except InstanceNotFound as exc:
            assert "password" not in str(translate_error(exc.__cause__, ref="x"))  # type: ignore[arg-type]
    finally:
        session.close()
