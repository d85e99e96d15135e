"""A parity matrix that exercises every rendering path, for the matrix tests.

It uses the suite's real features and areas, so the views under test look
like a real run, and adds everything a renderer can get wrong: all five
outcomes, one column at each evidence level (with what each simulator
imitates), a missing cell, a column whose endpoint never started, a long
multi-line message, and strings that try to become markup in each output
format (HTML, Markdown tables, rich console markup).
"""

from __future__ import annotations

import copy
from typing import Any

from virtdrivers.capabilities import AREAS
from virtdrivers_conformance.features import FEATURES

SCRIPT = "<script>alert(1)</script>"
HOSTILE = f'{SCRIPT} & "quoted" | piped [bold red]not markup[/] `tick`'

#: The long, multi-line failure behind the declared-but-fails cell; the browser test looks for its first line.
LIE_MESSAGE = (
    "AssertionError: snapshot of a running instance lost its memory state\n"
    f'expected power_state == "running" & memory restored, got "shutoff" | {SCRIPT}\n'
    + "\n".join(f"  frame {i}: virtdrivers_libvirt/driver.py:{100 + i} in snapshot_create" for i in range(12))
)
FAIL_MESSAGE = 'Timeout: graceful shutdown of "vd-test-3" did not finish in 30 s <after 3 ACPI requests> & forced off'
ERROR_MESSAGE = (
    'BackendUnavailable: endpoint "hyperv@winrm" did not start: connection refused to 127.0.0.1:5986\n'
    "<img src=x onerror=alert(2)> | see the column log"
)
#: What the vendor simulator column imitates: hostile too, since it is shown in every view's header.
VCSIM_IMITATES = f"VMware vCenter Server 8.0.2 {SCRIPT} [bold red]not markup[/]"
#: The project simulator column's backend line: the simulator's own name and version.
OVIRT_SIMULATOR = "oVirt REST simulator 0.1"
OVIRT_IMITATES = "oVirt Engine 4.5.6-1.el8"
#: The evidence note on one of the oVirt simulator's passing cells: hostile, since every view shows it.
NOTE = f"reported devices appear 2 s after start, as a guest agent would report them | {SCRIPT} [bold red]x[/]"
NOTED_CELL = ("ovirt@simulator", "create")
SKIP_REASON = "not declared: probe raised NotSupported('live_migrate needs shared storage')"


def _column(cid: str, backend: str | None, version: str | None, declared: list[str], **extra: Any) -> dict[str, Any]:
    driver, endpoint = cid.split("@")
    column: dict[str, Any] = {
        "id": cid,
        "driver": driver,
        "endpoint": endpoint,
        "endpoint_description": f"{endpoint} endpoint",
        "distribution": "virtdrivers" if driver == "fake" else f"virtdrivers-{driver}",
        "driver_version": "0.1.0",
        "contract_version": "1.1",
        "backend": backend,
        "backend_version": version,
        "libraries": {},
        "declared": declared,
        "duration_s": 12.5,
        "error": None,
        "evidence": "real",
        "imitates": None,
    }
    column.update(extra)
    return column


def _test(feature: str, outcome: str, message: str | None = None) -> dict[str, Any]:
    cls = "Test" + feature.title().replace("_", "")
    return {"id": f"{cls}::test_{feature}", "outcome": outcome, "message": message, "duration_s": 0.042}


def _cell(column: str, feature: str, outcome: str, message: str | None = None) -> dict[str, Any]:
    test_outcome = {"passes": "passed", "not_declared_but_works": "passed", "not_declared": "skipped"}.get(
        outcome, "failed"
    )
    tests = [_test(feature, test_outcome, message)]
    if outcome == "declared_but_fails":
        tests.insert(0, _test(feature + "_listed", "passed"))
    return {"column": column, "feature": feature, "outcome": outcome, "message": message, "tests": tests}


def sample_matrix() -> dict[str, Any]:
    """A fresh copy each call, so a test may mutate it."""
    optional = [f.id for f in FEATURES.values() if not f.mandatory]
    fake_declared = [c for c in optional if c not in ("suspend", "disk_vhdx")]
    libvirt_declared = [c for c in optional if c not in ("disk_vmdk", "disk_vhdx", "high_availability", "ha_failover")]
    ovirt_declared = ["snapshot", "disk_raw", "disk_qcow2", "live_migrate", "high_availability", "ha_failover"]
    vmware_declared = ["pause", "suspend", "snapshot", "snapshot_memory", "disk_vmdk", "aggregates"]
    columns = [
        _column(
            "fake@memory",
            "fake",
            "0.1.0",
            fake_declared,
            endpoint_description="in-process memory backend",
            evidence="in-memory",
        ),
        _column(
            "libvirt@qemu",
            "QEMU",
            "8.2.2",
            libvirt_declared,
            endpoint_description="qemu:///session, KVM off",
            libraries={"libvirt-python": "10.0.0", "libvirt": "10.0.0"},
        ),
        _column(
            "vmware@vcsim",
            "vcsim",
            f"0.37.3 {SCRIPT}",
            vmware_declared,
            endpoint_description=HOSTILE,
            libraries={"pyvmomi": "8.0.3.0.1"},
            contract_version="1.0",
            evidence="vendor-simulator",
            imitates=VCSIM_IMITATES,
        ),
        _column(
            "ovirt@simulator",
            "oVirt REST simulator",
            "0.1",
            ovirt_declared,
            endpoint_description="the oVirt REST simulator on 127.0.0.1",
            libraries={"ovirt-engine-sdk-python": "4.6.2"},
            evidence="project-simulator",
            imitates=OVIRT_IMITATES,
        ),
        _column(
            "hyperv@winrm",
            None,
            None,
            [],
            error=ERROR_MESSAGE,
            duration_s=3.0,
            driver_version=None,
            contract_version=None,
            evidence=None,
        ),
    ]
    cells: list[dict[str, Any]] = []
    for column in columns[:4]:
        declared = set(column["declared"])
        for feat in FEATURES.values():
            cid = column["id"]
            if cid == "fake@memory" and feat.id == "events":
                continue  # the missing cell: no test of the feature ran
            if feat.mandatory:
                if cid == "libvirt@qemu" and feat.id == "graceful_shutdown":
                    cells.append(_cell(cid, feat.id, "fails", FAIL_MESSAGE))
                else:
                    cells.append(_cell(cid, feat.id, "passes"))
            elif feat.id in declared:
                if cid == "libvirt@qemu" and feat.id == "snapshot_memory":
                    cells.append(_cell(cid, feat.id, "declared_but_fails", LIE_MESSAGE))
                else:
                    cells.append(_cell(cid, feat.id, "passes"))
            elif cid == "fake@memory" and feat.id == "suspend":
                cells.append(_cell(cid, feat.id, "not_declared_but_works"))
            else:
                cells.append(_cell(cid, feat.id, "not_declared", SKIP_REASON))
    for cell in cells:
        if (cell["column"], cell["feature"]) == NOTED_CELL:
            cell["note"] = NOTE
    columns[3]["notes"] = {NOTED_CELL[1]: NOTE}
    matrix = {
        "format": "virtdrivers-parity-matrix",
        "format_version": "1.1",
        "generated_at": "2026-11-24T12:00:00+00:00",
        "virtdrivers_version": "0.1.0",
        "contract_version": "1.1",
        "areas": [{"id": k, "title": v} for k, v in AREAS.items()],
        "features": [f.as_dict() for f in FEATURES.values()],
        "columns": columns,
        "cells": cells,
    }
    return copy.deepcopy(matrix)
