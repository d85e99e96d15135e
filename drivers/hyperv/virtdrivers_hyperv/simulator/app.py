"""Starting and stopping the simulator, in-process or as ``python -m virtdrivers_hyperv.simulator``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import ssl
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from virtdrivers.testing.tls import make_certificates
from virtdrivers_hyperv.simulator.model import Model
from virtdrivers_hyperv.simulator.server import SimulatorServer

__all__ = ["PASSWORD_ENV", "Simulator", "main"]

#: Where the password is read from when ``--password`` is not given (keeps it out of ``ps``).
PASSWORD_ENV = "VD_HYPERV_SIM_PASSWORD"


def _write_ntlm_users(directory: Path, user: str, password: str) -> Path:
    """pyspnego's NTLM acceptor reads accounts from NTLM_USER_FILE (smbpasswd format: hashes, not the password)."""
    from spnego._ntlm_raw.crypto import lmowfv1, ntowfv1  # pyspnego has no public hash helper

    path = directory / "ntlm-users"
    line = f"{user}:1000:{lmowfv1(password).hex().upper()}:{ntowfv1(password).hex().upper()}:[U]:LCT-00000000\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(line)
    return path


class Simulator:
    """One simulated cluster behind one WinRM listener, running in a background thread."""

    def __init__(
        self,
        *,
        user: str,
        password: str,
        host: str = "127.0.0.1",
        port: int = 0,
        https: bool = False,
        inventory: dict[str, Any] | None = None,
        allow_unencrypted: bool = False,
        receive_chunk: int = 65536,
        directory: Path | None = None,
    ) -> None:
        self._own_dir = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="vd-hyperv-sim-"))
        # Process-wide: one simulator per process when NTLM is used (the standalone way); restored on stop.
        self._previous_user_file = os.environ.get("NTLM_USER_FILE")
        self._user_file = _write_ntlm_users(self.directory, user, password)
        os.environ["NTLM_USER_FILE"] = str(self._user_file)
        self.ca_file: Path | None = None
        context = None
        if https:
            self.ca_file, cert, key = make_certificates(self.directory, "virtdrivers Hyper-V simulator CA")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(cert, key)
        self.model = Model(inventory)
        self.server = SimulatorServer(
            (host, port),
            model=self.model,
            user=user,
            password=password,
            ssl_context=context,
            allow_unencrypted=allow_unencrypted,
            receive_chunk=receive_chunk,
        )
        self.https = https
        self.host = host
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> Simulator:
        self._thread = threading.Thread(target=self.server.serve_forever, name="hyperv-sim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._previous_user_file is None:
            os.environ.pop("NTLM_USER_FILE", None)
        else:
            os.environ["NTLM_USER_FILE"] = self._previous_user_file
        self._user_file.unlink(missing_ok=True)
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "https": self.https,
            "ca_file": str(self.ca_file) if self.ca_file else None,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m virtdrivers_hyperv.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", help=f"default: the {PASSWORD_ENV} environment variable")
    parser.add_argument("--https", action="store_true", help="serve HTTPS with a fresh CA (its file is printed)")
    parser.add_argument("--inventory", type=Path, help="JSON: cluster, nodes, vms, volume_size, migration_seconds")
    parser.add_argument("--allow-unencrypted", action="store_true", help="like WinRM AllowUnencrypted=true")
    parser.add_argument("--receive-chunk", type=int, default=65536, help="stdout bytes per Receive")
    parser.add_argument("--dir", type=Path, help="where certificates and the NTLM user file go (default: temp)")
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when stdin closes (for parents)")
    args = parser.parse_args(argv)
    password = args.password if args.password is not None else os.environ.get(PASSWORD_ENV)
    if not password:
        parser.error(f"give --password or set {PASSWORD_ENV}")
    inventory = json.loads(args.inventory.read_text()) if args.inventory else None
    sim = Simulator(
        user=args.user,
        password=password,
        host=args.host,
        port=args.port,
        https=args.https,
        inventory=inventory,
        allow_unencrypted=args.allow_unencrypted,
        receive_chunk=args.receive_chunk,
        directory=args.dir,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sim.start()
    print(json.dumps(sim.describe()), flush=True)

    def watch_stdin() -> None:
        try:
            while sys.stdin.read(1):
                pass
        except (OSError, ValueError):
            pass
        stop.set()

    if args.exit_on_stdin_eof:
        threading.Thread(target=watch_stdin, daemon=True).start()
    stop.wait()
    sim.stop()
    return 0
