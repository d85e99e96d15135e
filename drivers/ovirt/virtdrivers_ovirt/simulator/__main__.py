"""Run the simulator as a program until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from virtdrivers_ovirt.simulator.model import GRACEFUL_SHUTDOWN_TIMEOUT
from virtdrivers_ovirt.simulator.server import Simulator

#: Environment variable the password may come in, so it is not visible in ``ps``.
PASSWORD_ENV = "VIRTDRIVERS_OVIRT_SIMULATOR_PASSWORD"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m virtdrivers_ovirt.simulator", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1; 0 picks a free one")
    parser.add_argument("--pets", type=int, default=0, help="pre-existing VMs created 'outside', to adopt")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--token-ttl", type=float, default=None, help="seconds an SSO token lives")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds an asynchronous transition takes")
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=GRACEFUL_SHUTDOWN_TIMEOUT,
        help="seconds the engine waits for a guest to act on a shutdown (VmGracefulShutdownTimeout)",
    )
    parser.add_argument(
        "--password",
        default=os.environ.get(PASSWORD_ENV, "simulator"),
        help=f"the admin password (default: ${PASSWORD_ENV}, which keeps it out of the process list)",
    )
    parser.add_argument("--state-dir", type=Path, default=None, help="where the CA and certificates go (kept)")
    parser.add_argument(
        "--state-file",
        type=Path,
        default=None,
        help="the engine's database: the inventory is saved here on every change and loaded at start, "
        "so a restarted (or killed and restarted) simulator keeps its VMs, disks and snapshots",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sim = Simulator(
        port=args.port,
        pets=args.pets,
        hosts=args.hosts,
        token_ttl=args.token_ttl,
        delay=args.delay,
        shutdown_timeout=args.shutdown_timeout,
        password=args.password,
        state_dir=args.state_dir,
        state_file=args.state_file,
    )
    with sim:
        sys.stdout.write(json.dumps(sim.settings()) + "\n")
        sys.stdout.flush()
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
