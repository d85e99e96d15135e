"""Kill creates at random points and count what they leave behind, before and after ``reap``.

A create killed by SIGKILL cannot clean up; a driver declaring REAP promises that
what it left can be found and removed afterwards (see :mod:`virtdrivers.reaping`).
This harness tests that promise the only way it can be tested: a child process
creates instances in a loop against the endpoint and is SIGKILLed after a random
delay, many times; then a fresh driver counts the leftovers, reaps, and counts
again. A vendor can point it at their own plugin and endpoint::

    report = kill_trials("acme", settings, trials=20)
    assert report.found_after == report.visible_after == 0, report.line()

Only the child's own PID is killed, not its process group: a hypervisor process
the agent started (an embedded QEMU) outlives the agent, as it would in a crash.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import virtdrivers
from virtdrivers import Capability, Driver, InstanceInfo, Leftover

__all__ = ["KillReport", "kill_trials"]

_CHILD = textwrap.dedent(
    """
    import itertools, json, sys, time
    import virtdrivers
    name, settings_path, prefix = sys.argv[1:4]
    settings = json.loads(open(settings_path).read())
    def spec(i):
        return {"name": f"{prefix}{i}", "vcpus": 1, "memory_mb": 128, "disks": [{"size_gib": 1}]}

    with virtdrivers.load(name, **settings) as driver:
        # One create before "ready": the first pays for imports and model building in this
        # process, and a kill timed from "ready" must land in backend work, not in Python's.
        warm = driver.create(spec("w"))
        print("ready", warm.id, flush=True)
        for i in itertools.count():
            info = driver.create(spec(i))
            print("done", info.id, time.monotonic(), flush=True)
    """
)

#: What every create of the child asks for, so a finished instance can be recognised by inspection.
_SHAPE = {"vcpus": 1, "memory_mb": 128, "disk_gib": [1]}


@dataclass
class KillReport:
    """What the kills left, as counted by the listing and by ``reap``, before and after reaping."""

    target: str
    kills: int
    window_s: float
    completed: int
    """Creates that finished before a kill: legitimate instances, not leftovers."""
    visible_before: int
    """Instances of the run that the listings (managed and unmanaged) show although no create reported them."""
    found_before: int
    """What ``reap(dry_run=True)`` found before reaping."""
    found_after: int
    visible_after: int
    """Instances of the run still listed after reaping that are not whole: these are leftovers reap missed."""
    unacknowledged: int = 0
    """Whole instances no create reported: the backend finished the create, the agent died before hearing so."""
    removed: list[Leftover] = field(default_factory=list)

    def line(self) -> str:
        kinds: dict[str, int] = {}
        for item in self.removed:
            kinds[item.kind] = kinds.get(item.kind, 0) + 1
        removed = ", ".join(f"{n} {k}s" for k, n in sorted(kinds.items())) or "nothing"
        return (
            f"{self.target}: {self.kills} kills within {self.window_s:.2f}s, {self.completed} creates completed; "
            f"before reap: {self.visible_before} unfinished instances listed, {self.found_before} leftovers found; "
            f"reaped {removed}; after: {self.visible_after} listed, {self.found_after} found "
            f"(and {self.unacknowledged} whole instances whose create finished unacknowledged)"
        )


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str | None:
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, min(1.0, deadline - time.monotonic())))
        if ready:
            line = proc.stdout.readline()
            return line if line else None
    return None


def _spawn(name: str, settings_path: Path, prefix: str) -> subprocess.Popen[str]:
    errors = settings_path.with_name(f"{prefix}stderr")
    with errors.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, name, str(settings_path), prefix],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    line = _read_line(proc, time.monotonic() + 120)
    if line is None or not line.startswith("ready "):
        proc.kill()
        proc.wait()
        tail = errors.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"the create child for {name!r} did not connect and create (got {line!r}): {tail}")
    proc.warm_id = line.split()[1]  # type: ignore[attr-defined]
    return proc


def _kill(proc: subprocess.Popen[str]) -> list[str]:
    """SIGKILL the child (not its group) and return the ids of the creates it reported done."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.stdout is not None
    done = [line.split()[1] for line in proc.stdout.read().splitlines() if line.startswith("done ")]
    return [proc.warm_id, *done]  # type: ignore[attr-defined]


def _calibrate(name: str, settings_path: Path, prefix: str) -> tuple[float, list[str]]:
    """Seconds one create takes on this endpoint (median of a few), and the ids it made."""
    proc = _spawn(name, settings_path, prefix)
    stamps: list[float] = [time.monotonic()]
    ids: list[str] = []
    deadline = time.monotonic() + 120
    while len(ids) < 3:
        line = _read_line(proc, deadline)
        if line is None:
            break
        if line.startswith("done "):
            ids.append(line.split()[1])
            stamps.append(time.monotonic())
    ids += _kill(proc)
    if len(stamps) < 2:
        raise RuntimeError(f"no create of {name!r} finished within 120 s")
    return statistics.median(b - a for a, b in itertools.pairwise(stamps)), ids


def kill_trials(
    name: str,
    settings: Mapping[str, Any],
    *,
    trials: int = 10,
    seed: int | None = None,
    window_s: float | None = None,
    connect: Callable[[], Driver] | None = None,
) -> KillReport:
    """SIGKILL ``trials`` children of driver ``name`` mid-create, then count, reap and count again.

    ``window_s`` bounds the random delay before each kill; by default it is twice the time
    one create takes, measured first, so kills land anywhere inside a create. ``connect``
    makes the driver that counts and reaps (default: ``virtdrivers.load(name, **settings)``).
    """
    rng = random.Random(seed)
    run = f"kill{uuid.uuid4().hex[:6]}"
    completed: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="vd-kill-") as tmp:
        settings_path = Path(tmp) / "settings.json"
        settings_path.touch(mode=0o600)
        settings_path.write_text(json.dumps(dict(settings), default=str))
        duration, made = _calibrate(name, settings_path, f"{run}-c-")
        completed.update(made)
        window = window_s if window_s is not None else max(0.02, 2 * duration)
        for trial in range(trials):
            proc = _spawn(name, settings_path, f"{run}-{trial}-")
            time.sleep(rng.uniform(0, window))
            completed.update(_kill(proc))
    driver = connect() if connect else virtdrivers.load(name, **settings)
    with driver:

        def unreported() -> list[InstanceInfo]:
            listed = list(driver.list_instances())
            if driver.supports(Capability.ADOPT):
                listed += driver.list_unmanaged()
            return [i for i in listed if i.name.startswith(run) and i.id not in completed]

        def whole(info: InstanceInfo) -> bool:
            return info.managed and (info.vcpus, info.memory_mb, [d.size_gib for d in info.disks]) == (
                _SHAPE["vcpus"],
                _SHAPE["memory_mb"],
                _SHAPE["disk_gib"],
            )

        visible_before = len(unreported())
        found_before = len(driver.reap(dry_run=True))
        removed = driver.reap()
        found_after = len(driver.reap(dry_run=True))
        left = unreported()
        unacknowledged = [i.id for i in left if whole(i)]
        visible_after = len(left) - len(unacknowledged)
        completed.update(unacknowledged)
        for instance_id in completed:
            with contextlib.suppress(virtdrivers.NotFound):
                driver.destroy(instance_id)
    return KillReport(
        target=name,
        kills=trials,
        window_s=window,
        completed=len(completed),
        visible_before=visible_before,
        found_before=found_before,
        found_after=found_after,
        visible_after=visible_after,
        unacknowledged=len(unacknowledged),
        removed=removed,
    )
