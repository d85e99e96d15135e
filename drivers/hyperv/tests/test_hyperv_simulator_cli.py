"""The simulator as users run it: ``python -m virtdrivers_hyperv.simulator`` with an inventory file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from virtdrivers_hyperv.driver import HypervDriver


def test_standalone_simulator_with_inventory(tmp_path: Path) -> None:
    inventory = {
        "cluster": "LAB",
        "nodes": [{"name": "LAB-A", "cpus": 8}, {"name": "LAB-B", "cpus": 8}, {"name": "LAB-C", "cpus": 8}],
        "vms": [{"name": "legacy-app", "host": "LAB-C", "memory_mb": 1024, "cpus": 2}],
    }
    inv = tmp_path / "inventory.json"
    inv.write_text(json.dumps(inventory))
    cmd = [
        sys.executable, "-m", "virtdrivers_hyperv.simulator", "--host", "127.0.0.1", "--port", "0",
        "--user", "lab\\admin", "--password", "P@ss w0rd:;'", "--https", "--inventory", str(inv),
        "--dir", str(tmp_path), "--exit-on-stdin-eof",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["https"] is True
        settings = {
            "host": "127.0.0.1",
            "port": info["port"],
            "user": "lab\\admin",
            "password": "P@ss w0rd:;'",
            "transport": "basic",
            "ca_file": info["ca_file"],
        }
        with HypervDriver(settings) as d:
            assert [n.name for n in d.list_nodes()] == ["LAB-A", "LAB-B", "LAB-C"]
            assert [a.name for a in d.list_aggregates()] == ["LAB"]
            (pet,) = d.list_unmanaged()
            assert (pet.name, pet.node, pet.vcpus) == ("legacy-app", "LAB-C", 2)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
        if proc.stdout is not None:
            proc.stdout.close()
    assert not (tmp_path / "ntlm-users").exists()  # the account file goes with the simulator
