"""The embedded endpoints: a simulator subprocess per endpoint, on 127.0.0.1 with a free port.

``https-basic`` serves HTTPS with a CA made at start (the driver verifies against it)
and Basic authentication; ``ntlm`` serves plain HTTP with NTLM and MS-WSMV message
encryption. Each start makes its own scratch directory and random password, and each
stop ends exactly the process it started (by PID) and removes the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from virtdrivers.driver import EmbeddedEndpoint
from virtdrivers.errors import BackendUnavailable
from virtdrivers.testing.process import stop_child
from virtdrivers_hyperv.simulator.app import PASSWORD_ENV

__all__ = ["embedded_endpoints", "run_simulator", "set_node_state"]

_START_TIMEOUT = 30.0
_USER = "vd-admin"


@contextlib.contextmanager
def run_simulator(
    *, https: bool, inventory: dict[str, Any] | None = None, extra_args: Sequence[str] = ()
) -> Iterator[dict[str, Any]]:
    """Start ``python -m virtdrivers_hyperv.simulator`` and yield driver settings for it."""
    scratch = Path(tempfile.mkdtemp(prefix="vd-hyperv-ep-"))
    password = secrets.token_urlsafe(18)
    cmd = [
        sys.executable, "-m", "virtdrivers_hyperv.simulator",
        "--host", "127.0.0.1", "--port", "0", "--user", _USER,
        "--dir", str(scratch), "--exit-on-stdin-eof", *extra_args,
    ]  # fmt: skip
    if https:
        cmd.append("--https")
    if inventory is not None:
        inv = scratch / "inventory.json"
        inv.write_text(json.dumps(inventory))
        cmd += ["--inventory", str(inv)]
    env = {**os.environ, PASSWORD_ENV: password}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        info = _first_line(proc)
        yield {
            "host": "127.0.0.1",
            "port": info["port"],
            "https": https,
            "transport": "basic" if https else "ntlm",
            "user": _USER,
            "password": password,
            "ca_file": info.get("ca_file"),
            "operation_timeout": 5,
        }
    finally:
        stop_child(proc)
        shutil.rmtree(scratch, ignore_errors=True)


def _first_line(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + _START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=deadline - time.monotonic()):
                line = proc.stdout.readline()
                if not line:
                    break
                info: dict[str, Any] = json.loads(line)
                return info
    finally:
        sel.close()
    raise BackendUnavailable(f"the Hyper-V simulator did not start (exit code {proc.poll()})")


@contextlib.contextmanager
def _https_basic() -> Iterator[Mapping[str, Any]]:
    with run_simulator(https=True) as settings:
        yield settings


@contextlib.contextmanager
def _ntlm() -> Iterator[Mapping[str, Any]]:
    with run_simulator(https=False) as settings:
        yield settings


def embedded_endpoints() -> Sequence[EmbeddedEndpoint]:
    return (
        EmbeddedEndpoint(
            "https-basic",
            "Hyper-V simulator (2-node failover cluster) over HTTPS with Basic auth, CA verified",
            _https_basic,
        ),
        EmbeddedEndpoint(
            "ntlm",
            "Hyper-V simulator (2-node failover cluster) over HTTP with NTLM and MS-WSMV message encryption",
            _ntlm,
        ),
    )


def set_node_state(settings: Mapping[str, Any], node: str, down: bool) -> None:
    """Fail (``down``) or recover a cluster node of a running simulator, through its test knob.

    ``settings`` are the driver settings the endpoint yielded (host, port, https, ca_file), so
    any process that can reach the simulator can fail a node, as a real outage would.
    """
    import ssl
    import urllib.request

    scheme = "https" if settings.get("https", True) else "http"
    url = f"{scheme}://{settings['host']}:{settings['port']}/_sim/nodes/{node}/{'fail' if down else 'recover'}"
    context = ssl.create_default_context(cafile=settings.get("ca_file")) if scheme == "https" else None
    request = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(request, context=context, timeout=10) as reply:
        if reply.status != 204:
            raise BackendUnavailable(f"the simulator refused to change node {node!r}: HTTP {reply.status}")
