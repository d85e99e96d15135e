"""An orchestrator in a process of its own, driven by a test.

    orchestrator_child.py --db URL --state-file PATH [--old] compete
    orchestrator_child.py --db URL --state-file PATH [--old] serve

``compete`` prints ``ready``, waits for ``go`` on stdin, then runs every
unfinished migration of its endpoint that no peer holds, until none is left.

``serve`` answers one JSON request per stdin line with one JSON line on stdout:
``{"op": "start", "spec": {...}}``, ``{"op": "run", "id": ...}``, ``{"op": "read", "id": ...}``,
``{"op": "target", "name": ...}``, ``{"op": "crash_run", "id": ..., "at": "step:phase"}``,
``{"op": "quit"}``.

    orchestrator_child.py --db URL --driver NAME [--unavailable CAP,...] kill STEP:PHASE [--revert-at STEP:PHASE]

``kill`` reads the driver's settings as one JSON line on stdin, runs ``--migration`` and SIGKILLs
itself at STEP:PHASE (after asking for a revert at ``--revert-at``): the kill tests' child for
backends that cannot be forked from the test process (libvirt's event loop cannot run again in a
child forked while it ran). SIGUSR1 dumps every thread's stack, for a child that hangs.

``--old`` makes this process an orchestrator of an older virtdrivers release, whose
MigrationSpec is still at 1.0 (without ``allow_cold_fallback``): the class is
replaced before anything uses it, as a mixed-version fleet would have it.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
import time
from typing import Any

from pydantic import Field

import virtdrivers.migration.objects as migration_objects
from virtdrivers.capabilities import Capability
from virtdrivers.errors import DriverError
from virtdrivers.fake import FakeDriver
from virtdrivers.loader import driver_class
from virtdrivers.migration import ACTIVE, MigrationBusy, MigrationStore, Orchestrator
from virtdrivers.migration.objects import MigrationKind
from virtdrivers.objects import VersionedObject


def _install_old_spec() -> None:
    class MigrationSpec(VersionedObject):
        """MigrationSpec as virtdrivers released it at 1.0."""

        VERSION = "1.0"

        kind: MigrationKind
        instance_id: str = Field(min_length=1, max_length=255)
        node: str | None = Field(default=None, max_length=255)
        vcpus: int | None = Field(default=None, ge=1)
        memory_mb: int | None = Field(default=None, ge=16)
        shutdown_timeout: float = Field(default=60.0, ge=0, le=3600)

    migration_objects.MigrationSpec = MigrationSpec  # type: ignore[misc,assignment]


def _compete(orch: Orchestrator) -> None:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(5)
    deadline = time.monotonic() + 120
    while True:
        active = orch.store.list_migrations(endpoint=orch.endpoint, statuses=ACTIVE)
        if not active:
            break
        for record in active:
            try:
                orch.run(record.id)
            except MigrationBusy:
                continue
        if time.monotonic() > deadline:
            sys.exit(6)
        time.sleep(0.02)  # poll: what is left is held by the peer
    print("finished", flush=True)


def _serve(orch: Orchestrator) -> None:
    print(json.dumps({"ready": orch.id}), flush=True)
    for line in sys.stdin:
        request: dict[str, Any] = json.loads(line)
        op = request["op"]
        reply: dict[str, Any]
        try:
            if op == "quit":
                break
            if op == "start":
                reply = {"id": orch.start(request["spec"]).id}
            elif op == "run":
                reply = {"status": orch.run(request["id"]).status}
            elif op == "read":
                record = orch.store.get(request["id"])
                spec = migration_objects.MigrationSpec.from_primitive(record.spec)
                reply = {"spec": spec.model_dump(mode="json")}
            elif op == "target":
                reply = {"version": orch.target_version(request["name"])}
            elif op == "crash_run":
                crash_at = tuple(request["at"].split(":"))

                def hook(mid: str, step: str, phase: str, crash_at: tuple[str, ...] = crash_at) -> None:
                    if (step, phase) == crash_at:
                        os.kill(os.getpid(), signal.SIGKILL)

                orch.on_boundary = hook
                orch.run(request["id"])
                reply = {"error": "crash point not reached"}
            else:
                reply = {"error": f"unknown op {op}"}
        except DriverError as exc:
            reply = {"error": f"{exc.code}: {exc}"}
        print(json.dumps(reply), flush=True)


def _kill(args: argparse.Namespace) -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    settings = json.loads(sys.stdin.readline())
    crash = tuple(args.crash.split(":"))
    revert_at = tuple(args.revert_at.split(":")) if args.revert_at else None
    store = MigrationStore(args.db)
    driver = driver_class(args.driver)(**settings)
    driver.connect()
    driver.narrow_capabilities(frozenset(Capability(c) for c in args.unavailable.split(",") if c))
    orch: Orchestrator

    def hook(mid: str, step: str, phase: str) -> None:
        if revert_at == (step, phase):
            orch.revert(mid)
        if crash == (step, phase):
            os.kill(os.getpid(), signal.SIGKILL)

    orch = Orchestrator(store, driver, lease_seconds=60.0, on_boundary=hook)
    orch.open()
    orch.run(args.migration)
    sys.exit(3)  # finished without reaching the crash point


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--state-file")
    parser.add_argument("--old", action="store_true")
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--driver", default="fake")
    parser.add_argument("--unavailable", default="")
    parser.add_argument("--migration")
    parser.add_argument("--revert-at")
    parser.add_argument("command", choices=["compete", "serve", "kill"])
    parser.add_argument("crash", nargs="?")
    args = parser.parse_args()
    if args.command == "kill":
        _kill(args)
        return
    if args.old:
        _install_old_spec()
    store = MigrationStore(args.db)
    with (
        FakeDriver(state_file=args.state_file) as driver,
        Orchestrator(store, driver, lease_seconds=args.lease) as orch,
    ):
        if args.command == "compete":
            _compete(orch)
        else:
            _serve(orch)
    store.close()


if __name__ == "__main__":
    main()
