"""Operation tokens and the fake's reap: what counts as left over, and what never does."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from virtdrivers import InstanceSpec
from virtdrivers.fake import FakeDriver
from virtdrivers.reaping import CreateToken


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_token_round_trips_inside_other_text() -> None:
    token = CreateToken.new()
    assert CreateToken.decode(f"/pool/{token}-disk0.qcow2") == token
    assert CreateToken.decode("vdc1-nothex-1-2-3-h") is None
    assert CreateToken.decode(None) is None


def test_owner_liveness_tells_a_reused_pid_from_its_first_owner() -> None:
    token = CreateToken.new()
    assert token.owner_alive() is True
    assert not token.abandoned(grace_s=3600)
    assert dataclasses.replace(token, pid=_dead_pid()).owner_alive() is False
    # Same PID, other start time: a new process wearing the old PID, so the creator is gone.
    assert dataclasses.replace(token, pid_start=token.pid_start + 1).owner_alive() is False
    # Another host: liveness unknown, so only age decides.
    remote = dataclasses.replace(token, host="elsewhere.example")
    assert remote.owner_alive() is None
    assert not remote.abandoned(grace_s=60)
    assert remote.abandoned(grace_s=60, now=time.time() + 61)


def test_fake_reaps_only_creates_whose_owner_is_gone(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with FakeDriver(state_file=str(state), unmanaged=1) as driver:
        done = driver.create(InstanceSpec(name="done", vcpus=1, memory_mb=64))
        running = driver.create(InstanceSpec(name="running", vcpus=1, memory_mb=64))
    data = json.loads(state.read_text())
    by_name = {i["name"]: i for i in data["instances"]}
    # As a SIGKILL mid-create would leave them: one by a dead process, one by this live one.
    by_name["done"]["create_token"] = dataclasses.replace(CreateToken.new(), pid=_dead_pid()).encode()
    by_name["running"]["create_token"] = CreateToken.new().encode()
    state.write_text(json.dumps(data))
    with FakeDriver(state_file=str(state)) as driver:
        found = driver.reap(dry_run=True)
        assert [(f.kind, f.ref) for f in found] == [("instance", done.id)]
        assert {i.id for i in driver.list_instances()} == {done.id, running.id}  # dry run removes nothing
        assert [f.ref for f in driver.reap()] == [done.id]
        assert {i.id for i in driver.list_instances()} == {running.id}
        assert len(driver.list_unmanaged()) == 1  # never reaped: not made by a create
        assert [f.ref for f in driver.reap(grace_s=0)] == [running.id]  # past its grace, even if alive


def test_cli_reap_lists_then_removes(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with FakeDriver(state_file=str(state)) as driver:
        left = driver.create(InstanceSpec(name="half-made", vcpus=1, memory_mb=64))
    data = json.loads(state.read_text())
    data["instances"][0]["create_token"] = dataclasses.replace(CreateToken.new(), pid=_dead_pid()).encode()
    state.write_text(json.dumps(data))
    base = [sys.executable, "-m", "virtdrivers.cli", "vm", "reap", "--driver", "fake", "--setting"]
    dry = subprocess.run([*base, f"state_file={state}", "--dry-run"], capture_output=True, text=True, check=True)
    assert f"would remove instance half-made ({left.id})" in dry.stdout
    assert "1 leftover(s) found" in dry.stderr
    done = subprocess.run([*base, f"state_file={state}", "--json"], capture_output=True, text=True, check=True)
    assert [item["ref"] for item in json.loads(done.stdout)] == [left.id]
    with FakeDriver(state_file=str(state)) as driver:
        assert driver.list_instances() == []
