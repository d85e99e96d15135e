"""The driver module lists its capabilities without importing pywinrm or its auth stack."""

from __future__ import annotations

import json
import subprocess
import sys

CHECK = """
import json, sys
from virtdrivers_hyperv.driver import HypervDriver
heavy = sorted(m for m in ("winrm", "requests_ntlm", "spnego", "requests", "cryptography") if m in sys.modules)
print(json.dumps({"heavy": heavy, "caps": sorted(HypervDriver.capabilities),
                  "endpoints": [e.name for e in HypervDriver.embedded_endpoints()]}))
"""


def test_importing_the_driver_does_not_import_the_sdk() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True, timeout=60)
    result = json.loads(out.stdout)
    assert result["heavy"] == []
    assert "disk_vhdx" in result["caps"]
    assert "live_migrate" in result["caps"]
    assert result["endpoints"] == ["https-basic", "ntlm"]
