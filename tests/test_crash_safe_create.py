"""Creates killed at random points leave nothing that ``reap`` does not remove, on every backend.

Each backend runs on an embedded endpoint whose state outlives the agent: a
simulator process, vcsim, libvirtd daemons running QEMU, the fake's state file.
A child process creates instances in a loop and is SIGKILLed after a random
delay within about two create durations; then a fresh driver counts what the
kills left (listed instances whose create never finished, what ``reap`` finds),
reaps, and counts again. The figures are printed (``-s``) for the closing notes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import virtdrivers
from virtdrivers import Capability
from virtdrivers_conformance.crash import kill_trials

#: driver -> embedded endpoint whose peer outlives the killed agent (None: the fake with a state file).
TARGETS = {"fake": None, "libvirt": "qemu-pair", "vmware": "vcsim", "hyperv": "https-basic", "ovirt": "simulator"}
TRIALS = int(os.environ.get("VD_KILL_TRIALS", "8"))


@contextlib.contextmanager
def _endpoint(name: str, tmp_path: Path) -> Iterator[Mapping[str, Any]]:
    if TARGETS[name] is None:
        yield {"state_file": str(tmp_path / "fake-state.json"), "nodes": 3}
        return
    cls = virtdrivers.driver_class(name)
    endpoint = {e.name: e for e in cls.embedded_endpoints()}[TARGETS[name]]
    with endpoint.start() as settings:
        yield settings


@pytest.mark.parametrize("name", list(TARGETS))
def test_kill_mid_create_then_reap_leaves_nothing(name: str, tmp_path: Path) -> None:
    installed = {e.name: e for e in virtdrivers.list_drivers()}
    if name not in installed or not installed[name].ok:
        pytest.skip(f"{name} is not installed")
    if Capability.REAP not in installed[name].capabilities:
        pytest.fail(f"{name} does not declare reap: an interrupted create would leave orphans nobody finds")
    with _endpoint(name, tmp_path) as settings:
        report = kill_trials(name, settings, trials=TRIALS, seed=hash(name) & 0xFFFF)
    print(report.line())
    assert (report.found_after, report.visible_after) == (0, 0), report.line()
    # Every listed instance no create reported is either whole (its create finished, the answer was
    # lost with the agent) or a leftover reap found: none may be neither.
    assert report.found_before + report.unacknowledged >= report.visible_before, (
        f"reap does not see every half-made instance the listing shows: {report.line()}"
    )
