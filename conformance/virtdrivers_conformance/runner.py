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
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import virtdrivers
from virtdrivers.capabilities import AREAS
from virtdrivers.endpoint import Evidence
from virtdrivers.errors import redact
from virtdrivers_conformance.features import FEATURES
from virtdrivers_conformance.plugin import DEFAULT_TEST_TIMEOUT, PROGRESS_PREFIX, secret_setting_names

__all__ = [
    "DEFAULT_COLUMN_TIMEOUT",
    "DEFAULT_TEST_TIMEOUT",
    "Target",
    "build_matrix",
    "cell_outcome",
    "default_targets",
    "run_parity",
    "run_target",
]

_PACKAGE = Path(__file__).parent

#: Seconds one column's child may run before it is killed and reported as a column error.
DEFAULT_COLUMN_TIMEOUT = 1800.0

#: Called with (target id, event) where event is {"total": n} or {"test": id, "outcome": o}.
ProgressSink = Callable[[str, dict[str, Any]], None]


@dataclass
class Target:
    """One column: a driver and either one of its embedded endpoints or explicit settings.

    ``settings`` may hold literal values or ``KEY_env: VAR`` references; the runner
    hands secrets to the child through its environment, never through a file.
    """

    driver: str
    endpoint: str | None = None
    settings: dict[str, Any] | None = None
    error: str | None = None
    """Set when the column cannot run at all (plugin broken, no endpoint)."""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    evidence: str | None = None
    """How real the peer is (an :class:`~virtdrivers.endpoint.Evidence` value); None: the endpoint says, or real."""

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
            targets.append(
                Target(
                    entry.name,
                    endpoint.name,
                    description=endpoint.description,
                    extra=extra,
                    evidence=Evidence(endpoint.evidence).value,
                )
            )
    missing = wanted - {t.driver for t in targets}
    for name in sorted(missing):
        targets.append(Target(name, "unknown", error=f"no driver named {name!r} is installed"))
    return targets


@dataclass
class _ChildSettings:
    """What the child gets: a file of values and ``*_env`` references, the environment behind them."""

    file: dict[str, Any]
    env: dict[str, str]
    secrets: set[str]


def _child_settings(target: Target) -> _ChildSettings:
    """Split the target's settings so that no secret value is ever written to a file.

    A secret given literally moves into an environment variable set for this child
    only, and the file names it (``password_env``); a ``KEY_env`` reference stays a
    reference. Secrecy follows the driver's ``settings_model`` (``SecretStr``), else the name.
    """
    settings = dict(target.settings or {})
    try:
        cls: type[virtdrivers.Driver] | None = virtdrivers.driver_class(target.driver)
    except Exception:
        cls = None  # the child reports why it cannot load; the name heuristic still guards the file
    secret = secret_setting_names(cls, settings)
    out = _ChildSettings({}, {}, set())
    for key, value in settings.items():
        if key not in secret:
            out.file[key] = value
        elif key.endswith("_env"):
            out.file[key] = value
            if isinstance(value, str) and os.environ.get(value):
                out.secrets.add(os.environ[value])
        else:
            var = "VD_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", key).upper()
            text = value if isinstance(value, str) else json.dumps(value)
            out.env[var] = text
            out.file[f"{key}_env"] = var
            out.secrets.add(text)
            out.secrets.add(str(value))
    return out


class _ChildOutput:
    """Reads a child's merged stdout and stderr: progress events out, every secret scrubbed before disk.

    Lines are held back until the child has announced the secrets it learned at start
    (an embedded endpoint's password), so not even the endpoint's own start-up chatter
    reaches the log unscrubbed.
    """

    def __init__(self, log: IO[str], secrets: set[str], progress: ProgressSink | None, target_id: str) -> None:
        self.log = log
        self.secrets = set(secrets)
        self.progress = progress
        self.target_id = target_id
        self.held: list[str] | None = []
        self.column: dict[str, Any] | None = None
        self.tests: list[dict[str, Any]] = []

    def scrub(self, text: str) -> str:
        longest_first: list[str] = sorted((s for s in self.secrets if s), key=len, reverse=True)
        return redact(text, longest_first)

    def feed(self, line: str) -> None:
        text, sep, payload = line.partition(PROGRESS_PREFIX)
        if sep:
            self._event(json.loads(payload))
            line = text  # pytest's progress dots that preceded the event stay on the log's current line
        if not line:
            return
        if self.held is not None:
            self.held.append(line)
        else:
            self.log.write(self.scrub(line))

    def _event(self, event: dict[str, Any]) -> None:
        if "secrets" in event:
            self.secrets.update(str(s) for s in event["secrets"])
        elif "column" in event:
            self.column = event["column"]
            self.release()
        elif "result" in event:
            self.tests.append(event["result"])
        if self.progress and ("total" in event or "test" in event):
            self.progress(self.target_id, {k: v for k, v in event.items() if k in ("total", "test", "outcome")})

    def release(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            self.log.write(self.scrub("".join(held)))

    def scrub_obj(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self.scrub_obj(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub_obj(v) for v in value]
        return value


def run_target(
    target: Target,
    workdir: Path,
    progress: ProgressSink | None = None,
    *,
    test_timeout: float = DEFAULT_TEST_TIMEOUT,
    column_timeout: float = DEFAULT_COLUMN_TIMEOUT,
) -> dict[str, Any]:
    """Run the suite for one column in a child pytest and return its report.

    ``test_timeout`` bounds each test (it then fails), ``column_timeout`` the whole
    child (it is killed, with its process group, and the column becomes an error
    that keeps the tests it had reported).
    """
    if target.error:
        column = {
            "driver": target.driver,
            "endpoint": target.endpoint,
            "error": target.error,
            "evidence": target.evidence,
            "imitates": None,
            **target.extra,
        }
        return {"column": column, "tests": []}
    slug = target.id.replace("@", "-").replace("/", "_")
    report = workdir / f"{slug}.report.json"
    report.unlink(missing_ok=True)
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
        "--tb=short",  # short tracebacks, and never --showlocals: locals are where secrets live
        f"--timeout={test_timeout:g}",
        f"--vd-test-timeout={test_timeout:g}",
        str(_PACKAGE / "run_selected.py"),
        f"--vd-driver={target.driver}",
        f"--vd-report={report}",
        "--vd-progress",
    ]
    if target.evidence and target.settings:
        cmd.append(f"--vd-evidence={target.evidence}")
    if target.endpoint and target.settings is None:
        cmd.append(f"--vd-endpoint={target.endpoint}")
    child = _child_settings(target)
    if target.settings:
        settings_file = workdir / f"{slug}.settings.json"
        settings_file.unlink(missing_ok=True)
        settings_file.touch(mode=0o600)
        settings_file.write_text(json.dumps(child.file))
        cmd.append(f"--vd-settings-file={settings_file}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    env.update(child.env, PYTHONUNBUFFERED="1")
    timed_out = threading.Event()
    with log.open("w") as log_fh:
        output = _ChildOutput(log_fh, child.secrets, progress, target.id)
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one ordered stream, read and scrubbed here before it reaches disk
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group, so a timeout can end exactly what it started
            env=env,
        )

        def expire() -> None:
            timed_out.set()
            _end_group(proc)

        killer = threading.Timer(column_timeout, expire)
        killer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                output.feed(line)
            proc.wait()
        finally:
            killer.cancel()
            output.release()
    result: dict[str, Any]
    if report.exists() and not timed_out.is_set():
        result = json.loads(report.read_text())
    else:
        column = dict(output.column or {"driver": target.driver})
        if timed_out.is_set():
            column["error"] = (
                f"column timed out after {column_timeout:g}s (--column-timeout) with {len(output.tests)} "
                "test(s) reported; their results are kept"
            )
        else:
            tail = log.read_text()[-2000:] if log.exists() else ""
            column["error"] = f"suite did not report (exit {proc.returncode}): {tail}"
        result = {"column": column, "tests": output.tests}
    if not result["column"].get("error") and not result.get("tests") and proc.returncode not in (0, 1):
        # The suite itself did not load (a syntax or import error in it): a column of dashes would
        # read as "nothing applies" when nothing was tried.
        tail = log.read_text()[-2000:] if log.exists() else ""
        result["column"]["error"] = f"suite ran no test (pytest exit {proc.returncode}): {tail}"
    result = output.scrub_obj(result)
    report.write_text(json.dumps(result, indent=1))  # scrubbed, and also when the child could not write it
    result["column"].setdefault("endpoint", target.endpoint or "configured")
    result["column"].setdefault("endpoint_description", target.description)
    result["column"].setdefault("evidence", target.evidence or Evidence.REAL.value)
    result["column"].setdefault("imitates", None)
    for key, value in target.extra.items():
        result["column"].setdefault(key, value)
    return result


def _end_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def cell_outcome(mandatory: bool, declared: bool, tests: Iterable[dict[str, Any]]) -> str | None:
    """The matrix outcome of one feature on one column, or None when no test of it ran.

    Nothing flatters: a feature whose every test was skipped has no evidence of working
    (mandatory: ``fails``; declared: ``declared_but_fails``), and an undeclared feature
    only ``works`` when every one of its probes passed.
    """
    outcomes = [t["outcome"] for t in tests]
    if not outcomes:
        return None
    ran = [o for o in outcomes if o != "skipped"]
    if mandatory:
        return "fails" if "failed" in outcomes or not ran else "passes"
    if declared:
        return "declared_but_fails" if "failed" in outcomes or not ran else "passes"
    # Undeclared: failed probes were turned into skips by the plugin; a failure that was not a probe still counts.
    return "not_declared_but_works" if all(o == "passed" for o in outcomes) else "not_declared"


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
        # An error column may not know how real its peer is; a column that ran always does.
        "evidence": col.get("evidence") or (None if col.get("error") else Evidence.REAL.value),
        "imitates": col.get("imitates"),
        "notes": dict(col.get("notes") or {}),
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
                    "note": column["notes"].get(feat.id),
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
        "format_version": "1.1",
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "virtdrivers_version": virtdrivers.__version__,
        "contract_version": str(virtdrivers.CONTRACT_VERSION),
        "areas": [{"id": k, "title": v} for k, v in AREAS.items()],
        "features": [f.as_dict() for f in FEATURES.values()],
        "columns": columns,
        "cells": cells,
    }


def run_parity(
    targets: Sequence[Target],
    *,
    jobs: int = 2,
    progress: ProgressSink | None = None,
    workdir: Path | None = None,
    test_timeout: float = DEFAULT_TEST_TIMEOUT,
    column_timeout: float = DEFAULT_COLUMN_TIMEOUT,
) -> dict[str, Any]:
    """Run every target (``jobs`` at a time) and return the matrix. Logs stay in ``workdir``."""
    with tempfile.TemporaryDirectory(prefix="vd-parity-") as tmp:
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        limits = {"test_timeout": test_timeout, "column_timeout": column_timeout}
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [(t.id, pool.submit(run_target, t, work, progress, **limits)) for t in targets]
            reports = [(tid, f.result()) for tid, f in futures]
    return build_matrix(reports)
