"""``virtdrivers migrate`` as a person runs it: real processes, a real store, a file-backed fake."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(tmp_path: Path) -> Run:
    db = f"sqlite:///{tmp_path / 'm.db'}"
    endpoint = ["--driver", "fake", "--setting", f"state_file={tmp_path / 'fake.json'}"]

    def run(*args: str, with_endpoint: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "virtdrivers.cli", *args]
        if args[0] == "migrate":
            argv += ["--db", db]
        if with_endpoint:
            argv += endpoint
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    return run


def test_start_follows_a_live_migration_to_the_end(cli: Run) -> None:
    assert cli("vm", "create", "web", "--memory", "256").returncode == 0
    result = cli("migrate", "start", "web", "--kind", "live", "--to", "fake-node-2", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["status"], record["plan"]["vd_object.data"]["method"]) == ("done", "live_migrate")
    shown = json.loads(cli("vm", "show", "web").stdout)
    assert shown["node"] == "fake-node-2"
    listed = json.loads(cli("migrate", "list", "--json", with_endpoint=False).stdout)
    assert [m["id"] for m in listed] == [record["id"]]
    status = json.loads(cli("migrate", "status", record["id"][:8], "--json", with_endpoint=False).stdout)
    assert [e["step"] for e in status["events"] if e["phase"] == "done"] == [
        "precheck",
        "prepare",
        "transfer",
        "finish",
        "confirm",
    ]


def test_detached_migrations_are_resumed_and_reverted(cli: Run) -> None:
    cli("vm", "create", "a", "--memory", "256")
    cli("vm", "create", "b", "--memory", "256", "--stopped")
    b_home = json.loads(cli("vm", "show", "b").stdout)["node"]
    first = cli("migrate", "start", "a", "--kind", "resize", "--vcpus", "2", "--detach", "--json")
    second = cli("migrate", "start", "b", "--kind", "cold", "--detach", "--json")
    a_id, b_id = json.loads(first.stdout)["id"], json.loads(second.stdout)["id"]
    active = json.loads(cli("migrate", "list", "--active", "--json", with_endpoint=False).stdout)
    assert {m["id"] for m in active} == {a_id, b_id}

    requested = cli("migrate", "revert", b_id, with_endpoint=False)
    assert requested.returncode == 0, requested.stderr
    assert "revert requested" in requested.stderr
    resumed = cli("migrate", "resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert {r["id"]: r["status"] for r in json.loads(resumed.stdout)} == {a_id: "done", b_id: "reverted"}
    assert json.loads(cli("vm", "show", "a").stdout)["vcpus"] == 2
    b_now = json.loads(cli("vm", "show", "b").stdout)
    assert (b_now["node"], b_now["power_state"]) == (b_home, "shutdown")


def test_errors_are_one_line(cli: Run) -> None:
    missing = cli("migrate", "status", "no-such-migration", with_endpoint=False)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == ["error: not_found: migration 'no-such-migration' not found"]
    cli("vm", "create", "c", "--memory", "256")
    cli("migrate", "start", "c", "--kind", "live", "--detach")
    busy = cli("migrate", "start", "c", "--kind", "cold")
    assert busy.returncode == 2
    [line] = busy.stderr.strip().splitlines()
    assert line.startswith("error: conflict: instance ")
    assert line.endswith("in flight already")
