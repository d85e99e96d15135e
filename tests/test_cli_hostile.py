"""Hostile ids, names and metadata through the command line, on every installed backend.

The conformance suite checks the same inputs through the Python API
(``TestHostileInput``); this checks what an operator sees: exit status 2 and
one line ``error: <kind>: <message>`` naming a contract error kind, never a
library exception's class name, a traceback or a backend's raw text over
several lines. Accepted names and metadata come back exactly.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import virtdrivers

#: One embedded endpoint per backend: the one where the hostile inputs did harm (libvirt: real QEMU).
ENDPOINTS = {"fake": "memory", "libvirt": "qemu", "vmware": "vcsim", "hyperv": "https-basic", "ovirt": "simulator"}
CONTRACT_ERROR = re.compile(r"^error: [a-z_]+: ")
CODES = {"instance_not_found", "not_found", "invalid_spec"}


def _cli(driver: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtdrivers.cli", *args, "--driver", driver, "--embedded-endpoint", ENDPOINTS[driver]],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, f"exit {result.returncode}: {result.stderr[-800:]}"
    assert len(lines) == 1, f"want one error line, got: {result.stderr[-800:]}"
    assert "Traceback" not in result.stderr
    assert CONTRACT_ERROR.match(lines[0]), f"not a contract error kind: {lines[0]}"
    return lines[0]


@pytest.fixture(params=list(ENDPOINTS))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name not in {e.name for e in virtdrivers.list_drivers() if e.ok}:
        pytest.skip(f"{name} is not installed")
    return name


def test_hostile_ids_are_one_typed_line(backend: str) -> None:
    for ref in ("../hosts", "a<b>&c", "?x=1#frag", "é日本"):
        line = _error_line(_cli(backend, "vm", "show", ref))
        assert line.split(":")[1].strip() in CODES, line


def test_hostile_name_and_metadata_round_trip_or_one_typed_line(backend: str) -> None:
    for name in ("..", "😀" * 64, "a%25b%2f"):
        result = _cli(backend, "vm", "create", name, "--stopped", "--meta", "esc=\x1b[31mred", "--meta", "crlf=a\r\nb")
        if result.returncode == 0:
            info = json.loads(result.stdout)
            assert info["name"] == name
            assert (info["metadata"].get("esc"), info["metadata"].get("crlf")) == ("\x1b[31mred", "a\r\nb")
        else:
            line = _error_line(result)
            assert line.startswith("error: invalid_spec: "), line
            assert re.match(r"error: invalid_spec: (InstanceSpec\.)?(name|metadata\.(esc|crlf)):", line), line
