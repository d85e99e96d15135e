"""The driver class is usable without pyVmomi; the embedded endpoint starts and cleans up."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import virtdrivers
from virtdrivers import Capability
from virtdrivers_vmware import VSphereDriver


def test_importing_the_driver_does_not_import_pyvmomi() -> None:
    code = (
        "import sys\n"
        "import virtdrivers_vmware.driver as d\n"
        "from virtdrivers.loader import list_drivers\n"
        "entries = [e for e in list_drivers() if e.name == 'vmware']\n"
        "assert entries and entries[0].ok, entries\n"
        "assert 'live_migrate' in {c.value for c in entries[0].capabilities}\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('pyVmomi', 'pyVim'))\n"
        "print(','.join(leaked))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_listing_the_plugin_imports_no_tls_http_or_process_modules() -> None:
    """``virtdrivers drivers`` imports the driver module and lists its endpoints: that stays cheap.

    The session (ssl, http.client: about 7 ms) and the simulator's process and HTTPS
    machinery are imported only when a driver connects or an endpoint starts.
    """
    code = (
        "import sys\n"
        "import virtdrivers_vmware.driver as d\n"
        "assert d.VSphereDriver.embedded_endpoints()\n"
        "heavy = ('ssl', 'http.client', 'urllib.request', 'subprocess', 'virtdrivers_vmware.session', 'pyVmomi')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_declared_capabilities() -> None:
    caps = VSphereDriver.capabilities
    assert {Capability.LIVE_MIGRATE, Capability.AGGREGATES, Capability.EVENTS, Capability.DISK_VMDK} <= caps
    assert Capability.REAP in caps
    assert Capability.PAUSE not in caps  # vSphere has no pause
    assert Capability.DISK_QCOW2 not in caps


def test_embedded_endpoint_starts_and_removes_everything() -> None:
    (endpoint,) = VSphereDriver.embedded_endpoints()
    assert endpoint.name == "vcsim"
    with endpoint.start() as settings:
        port = settings["port"]
        ca = Path(settings["ca_file"])
        assert ca.exists()
        assert settings["host"] == "127.0.0.1"
        with virtdrivers.load("vmware", **settings) as driver:
            info = driver.backend_info()
            assert info.backend == "vcsim"
            assert "govmomi" in info.backend_version
            assert "pyvmomi" in info.libraries
            assert settings["password"] not in info.model_dump_json()
    assert not ca.exists()
    assert not ca.parent.exists()
    with socket.socket() as probe:  # the simulator is gone: nothing answers on its port
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_dev_setup_is_quiet_and_idempotent() -> None:
    setup = Path(__file__).resolve().parents[1] / "dev-setup.sh"
    subprocess.run(["bash", str(setup)], check=True, capture_output=True)  # builds if needed
    again = subprocess.run(["bash", str(setup)], check=True, capture_output=True, text=True)
    assert (again.stdout, again.stderr) == ("", "")
    assert (setup.parent / ".cache" / "bin" / "vdvcsim").exists()
