"""The parity runner: the suite over every driver@endpoint, merged into one matrix.

Each column runs in its own pytest process, so a backend that crashes, hangs
or leaks threads cannot spoil the others, and two columns can run at once on
a small machine. The child reports every test as JSON; this module turns the
reports into matrix cells:

=========================  =================================================
outcome                    when
=========================  =================================================
``passes``                 every test of the feature passed
``fails``                  a mandatory feature had a failing test
``declared_but_fails``     the capability is declared and a test failed
``not_declared``           not declared, and the probe did not work
``not_declared_but_works`` not declared, yet every probe passed
=========================  =================================================
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import virtdrivers
from virtdrivers.capabilities import AREAS
from virtdrivers.errors import redact
from virtdrivers_conformance.features import FEATURES
from virtdrivers_conformance.plugin import PROGRESS_PREFIX

__all__ = ["Target", "build_matrix", "cell_outcome", "default_targets", "run_parity", "run_target"]

_PACKAGE = Path(__file__).parent

#: Called with (target id, event) where event is {"total": n} or {"test": id, "outcome": o}.
ProgressSink = Callable[[str, dict[str, Any]], None]


@dataclass
class Target:
    """One column: a driver and either one of its embedded endpoints or explicit settings."""

    driver: str
    endpoint: str | None = None
    settings: dict[str, Any] | None = None
    error: str | None = None
    """Set when the column cannot run at all (plugin broken, no endpoint)."""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.driver}@{self.endpoint or 'configured'}"


def default_targets(drivers: Sequence[str] | None = None) -> list[Target]:
    """Every installed driver on each of its embedded endpoints; broken plugins as error columns."""
    targets: list[Target] = []
    wanted = set(drivers or ())
    for entry in virtdrivers.list_drivers():
        if wanted and entry.name not in wanted:
            continue
        extra = {"distribution": entry.distribution, "driver_version": entry.version}
        if entry.driver_class is None:
            targets.append(Target(entry.name, "unloadable", error=entry.error, extra=extra))
            continue
        endpoints = entry.driver_class.embedded_endpoints()
        if not endpoints:
            err = "has no embedded endpoint: run it with --setting KEY=VALUE against a real one"
            targets.append(Target(entry.name, "none", error=err, extra=extra))
        for endpoint in endpoints:
            targets.append(Target(entry.name, endpoint.name, description=endpoint.description, extra=extra))
    missing = wanted - {t.driver for t in targets}
    for name in sorted(missing):
        targets.append(Target(name, "unknown", error=f"no driver named {name!r} is installed"))
    return targets


def run_target(
    target: Target, workdir: Path, progress: ProgressSink | None = None, timeout: float = 1800.0
) -> dict[str, Any]:
    """Run the suite for one column in a child pytest and return its report."""
    if target.error:
        column = {"driver": target.driver, "endpoint": target.endpoint, "error": target.error, **target.extra}
        return {"column": column, "tests": []}
    slug = target.id.replace("@", "-").replace("/", "_")
    report = workdir / f"{slug}.report.json"
    log = workdir / f"{slug}.log"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(_PACKAGE / "pytest.ini"),
        "--rootdir",
        str(workdir),
        "-p",
        "no:cacheprovider",
        "-q",
        "--timeout=600",
        str(_PACKAGE / "run_selected.py"),
        f"--vd-driver={target.driver}",
        f"--vd-report={report}",
        "--vd-progress",
    ]
    if target.endpoint and target.settings is None:
        cmd.append(f"--vd-endpoint={target.endpoint}")
    if target.settings:
        settings_file = workdir / f"{slug}.settings.json"
        settings_file.touch(mode=0o600)
        settings_file.write_text(json.dumps(target.settings))
        cmd.append(f"--vd-settings-file={settings_file}")
    with log.open("w") as log_fh:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log_fh,
            text=True,
            start_new_session=True,  # its own process group, so a timeout can end exactly what it started
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        killer = threading.Timer(timeout, lambda: _end_group(proc))
        killer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(PROGRESS_PREFIX):
                    if progress:
                        progress(target.id, json.loads(line[len(PROGRESS_PREFIX) :]))
                else:
                    log_fh.write(line)
            proc.wait()
        finally:
            killer.cancel()
    if report.exists():
        result: dict[str, Any] = json.loads(report.read_text())
        if settings := target.settings:
            secrets = [str(v) for v in settings.values() if isinstance(v, str)]
            result = json.loads(redact(json.dumps(result), [s for s in secrets if len(s) >= 4]))
    else:
        tail = log.read_text()[-2000:] if log.exists() else ""
        result = {
            "column": {"driver": target.driver, "error": f"suite did not report (exit {proc.returncode}): {tail}"}
        }
        result["tests"] = []
    result["column"].setdefault("endpoint", target.endpoint or "configured")
    result["column"].setdefault("endpoint_description", target.description)
    for key, value in target.extra.items():
        result["column"].setdefault(key, value)
    return result


def _end_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def cell_outcome(mandatory: bool, declared: bool, tests: Iterable[dict[str, Any]]) -> str | None:
    """The matrix outcome of one feature on one column, or None when no test of it ran."""
    outcomes = [t["outcome"] for t in tests]
    ran = [o for o in outcomes if o != "skipped"]
    if mandatory:
        if not outcomes:
            return None
        return "fails" if "failed" in outcomes else "passes"
    if declared:
        if not outcomes:
            return None
        return "declared_but_fails" if "failed" in outcomes or not ran else "passes"
    # Undeclared: failed probes were turned into skips by the plugin.
    if not outcomes:
        return None
    return "not_declared_but_works" if ran and len(ran) == len(outcomes) else "not_declared"


def _column(report: dict[str, Any], target_id: str) -> dict[str, Any]:
    col = report["column"]
    return {
        "id": target_id,
        "driver": col.get("driver"),
        "endpoint": col.get("endpoint") or "configured",
        "endpoint_description": col.get("endpoint_description") or "",
        "distribution": col.get("distribution"),
        "driver_version": col.get("driver_version"),
        "contract_version": col.get("contract_version"),
        "backend": col.get("backend"),
        "backend_version": col.get("backend_version"),
        "libraries": col.get("libraries") or {},
        "declared": col.get("declared") or [],
        "duration_s": col.get("duration_s"),
        "error": col.get("error"),
    }


def build_matrix(reports: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The parity matrix (see ``matrix/schema.json``) from ``(column id, report)`` pairs."""
    columns, cells = [], []
    for target_id, report in reports:
        column = _column(report, target_id)
        columns.append(column)
        if column["error"]:
            continue
        declared = set(column["declared"])
        by_feature: dict[str, list[dict[str, Any]]] = {}
        for test in report.get("tests", []):
            if test.get("feature"):
                by_feature.setdefault(test["feature"], []).append(test)
        for feat in FEATURES.values():
            tests = by_feature.get(feat.id, [])
            is_declared = feat.capability is not None and feat.capability.value in declared
            outcome = cell_outcome(feat.mandatory, is_declared, tests)
            if outcome is None:
                continue
            failing = [t for t in tests if t["outcome"] == "failed"] or [t for t in tests if t["outcome"] == "skipped"]
            message = failing[0]["message"] if failing and outcome != "passes" else None
            cells.append(
                {
                    "column": target_id,
                    "feature": feat.id,
                    "outcome": outcome,
                    "message": message,
                    "tests": [
                        {
                            "id": t["id"],
                            "outcome": t["outcome"],
                            "message": t.get("message"),
                            "duration_s": t.get("duration_s"),
                        }
                        for t in tests
                    ],
                }
            )
    return {
        "format": "virtdrivers-parity-matrix",
        "format_version": "1.0",
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "virtdrivers_version": virtdrivers.__version__,
        "contract_version": str(virtdrivers.CONTRACT_VERSION),
        "areas": [{"id": k, "title": v} for k, v in AREAS.items()],
        "features": [f.as_dict() for f in FEATURES.values()],
        "columns": columns,
        "cells": cells,
    }


def run_parity(
    targets: Sequence[Target], *, jobs: int = 2, progress: ProgressSink | None = None, workdir: Path | None = None
) -> dict[str, Any]:
    """Run every target (``jobs`` at a time) and return the matrix. Logs stay in ``workdir``."""
    with tempfile.TemporaryDirectory(prefix="vd-parity-") as tmp:
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [(t.id, pool.submit(run_target, t, work, progress)) for t in targets]
            reports = [(tid, f.result()) for tid, f in futures]
    return build_matrix(reports)
