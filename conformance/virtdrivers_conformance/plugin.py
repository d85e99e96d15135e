"""The pytest plugin behind the conformance suite.

Always active (registered under ``pytest11``), it is inert unless a test
carries the ``vd_feature`` marker:

- a probe of an undeclared capability that fails is reported as *skipped*
  ("not declared"), a probe that passes stays passed and is recorded as
  "not declared but works";
- with ``--vd-driver NAME`` it loads that plugin through its entry point,
  starts one of its embedded endpoints (``--vd-endpoint``) or uses the given
  settings (``--vd-setting key=value``), and writes a JSON report of every
  test (``--vd-report``) for the parity matrix.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import traceback
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

import virtdrivers
from virtdrivers import Driver
from virtdrivers.errors import redact
from virtdrivers.loader import distribution_of

__all__ = ["SESSION_KEY", "ConformanceSession", "parse_setting"]

PROGRESS_PREFIX = "@@vd-progress "


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("virtdrivers", "virtdrivers conformance")
    group.addoption("--vd-driver", help="entry-point name of the driver under test")
    group.addoption("--vd-endpoint", help="embedded endpoint of the driver to start (default: its first)")
    group.addoption(
        "--vd-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="driver setting for a configured endpoint (repeatable; VALUE is parsed as JSON when it can be)",
    )
    group.addoption(
        "--vd-settings-file",
        help="JSON object of driver settings (keeps secrets out of the process list); --vd-setting overrides it",
    )
    group.addoption("--vd-report", help="write the per-test JSON report here")
    group.addoption("--vd-progress", action="store_true", help="print machine-readable progress lines")


def parse_setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise pytest.UsageError(f"--vd-setting wants KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vd_feature(id): the parity-matrix feature a conformance test is evidence for")
    if config.getoption("vd_driver", None):
        session = ConformanceSession(config)
        config.stash[SESSION_KEY] = session
        config.pluginmanager.register(session, "virtdrivers-conformance-session")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report: pytest.TestReport = yield
    from virtdrivers_conformance.suite.fixtures import PROBED_KEY

    marker = item.get_closest_marker("vd_feature")
    probed = item.stash.get(PROBED_KEY, None)
    report.user_properties.append(("vd_feature", marker.args[0] if marker else None))
    report.user_properties.append(("vd_probed", probed))
    message = None
    if call.excinfo is not None and not call.excinfo.errisinstance(pytest.skip.Exception):
        message = f"{call.excinfo.typename}: {call.excinfo.value}"
    elif call.excinfo is not None:
        message = str(call.excinfo.value)
    report.user_properties.append(("vd_message", message))
    if probed and report.failed:
        reason = f"not declared: {probed} (probe: {message})"
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, reason)
    return report


SESSION_KEY = pytest.StashKey["ConformanceSession"]()


class ConformanceSession:
    """One driver@endpoint under test for one pytest session."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.name: str = config.getoption("vd_driver")
        self.endpoint_name: str | None = config.getoption("vd_endpoint")
        settings_file = config.getoption("vd_settings_file")
        self.settings: dict[str, Any] = json.loads(Path(settings_file).read_text()) if settings_file else {}
        self.settings.update(parse_setting(s) for s in config.getoption("vd_setting"))
        self.report_path: str | None = config.getoption("vd_report")
        self.progress: bool = config.getoption("vd_progress")
        self.stack = contextlib.ExitStack()
        self.cls: type[Driver] | None = None
        self.endpoint_description = "configured endpoint"
        self.unavailable: frozenset[virtdrivers.Capability] = frozenset()
        self.column: dict[str, Any] = {"driver": self.name, "error": None}
        self.results: list[dict[str, Any]] = []
        self.started = time.monotonic()

    # -- session ------------------------------------------------------------------------------

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        try:
            self._start()
        except Exception as exc:
            self.column["error"] = self._redact(f"{type(exc).__name__}: {exc}")
            self._write_report()
            self.stack.close()
            pytest.exit(f"cannot start {self.name}: {self.column['error']}", returncode=3)

    def _start(self) -> None:
        self.cls = virtdrivers.driver_class(self.name)
        distribution, version = distribution_of(self.name)
        self.column.update(
            distribution=distribution, driver_version=version, contract_version=self.cls.contract_version
        )
        if not self.settings:
            endpoints = {e.name: e for e in self.cls.embedded_endpoints()}
            if not endpoints:
                raise virtdrivers.InvalidSpec("has no embedded endpoint: give settings", field=self.name)
            endpoint = endpoints.get(self.endpoint_name or next(iter(endpoints)))
            if endpoint is None:
                raise virtdrivers.InvalidSpec(
                    f"no embedded endpoint {self.endpoint_name!r} (has: {', '.join(endpoints)})", field=self.name
                )
            self.endpoint_name = endpoint.name
            self.endpoint_description = endpoint.description
            self.unavailable = endpoint.unavailable
            self.settings = dict(self.stack.enter_context(endpoint.start()))
        self.endpoint_name = self.endpoint_name or "configured"
        self.column.update(endpoint=self.endpoint_name, endpoint_description=self.endpoint_description)

    @contextlib.contextmanager
    def connected_driver(self) -> Iterator[Driver]:
        assert self.cls is not None
        driver = self.cls(**self.settings)
        driver.narrow_capabilities(self.unavailable)
        self.column["declared"] = sorted(c.value for c in driver.capabilities)
        with driver:
            info = driver.backend_info()
            self.column.update(backend=info.backend, backend_version=info.backend_version, libraries=info.libraries)
            yield driver

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        try:
            self.stack.close()
        except Exception:
            self.column["error"] = self._redact("endpoint did not stop cleanly: " + traceback.format_exc(limit=3))
        self._write_report()

    # -- results --------------------------------------------------------------------------------

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self.progress:
            self._emit({"total": len(session.items)})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not (report.when == "call" or report.outcome != "passed"):
            return
        props = dict(report.user_properties)
        if report.when == "teardown" and report.failed:
            # A teardown failure after a passed call turns that result into a failure.
            for result in self.results:
                if result["id"] == report.nodeid and result["outcome"] == "passed":
                    result.update(outcome="failed", message=self._redact(f"teardown: {props.get('vd_message')!s}"))
            return
        message = props.get("vd_message")
        if report.skipped and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2]).removeprefix("Skipped: ")
        result = {
            "id": report.nodeid.split("::", 1)[-1],
            "feature": props.get("vd_feature"),
            "outcome": report.outcome,
            "probed": bool(props.get("vd_probed")),
            "message": self._redact(str(message)) if message else None,
            "duration_s": round(report.duration, 3),
        }
        self.results.append(result)
        if self.progress:
            self._emit({"test": result["id"], "outcome": result["outcome"]})

    def _redact(self, text: str) -> str:
        secrets = [
            str(v.get_secret_value()) if hasattr(v, "get_secret_value") else None for v in self.settings.values()
        ]
        secrets += [str(v) for k, v in self.settings.items() if "password" in k or "secret" in k or "token" in k]
        return redact(text, secrets)[:4000]

    def _emit(self, payload: dict[str, Any]) -> None:
        sys.__stdout__.write(PROGRESS_PREFIX + json.dumps(payload) + "\n")  # type: ignore[union-attr]
        sys.__stdout__.flush()  # type: ignore[union-attr]

    def _write_report(self) -> None:
        if not self.report_path:
            return
        self.column["duration_s"] = round(time.monotonic() - self.started, 2)
        payload = {"column": self.column, "tests": self.results}
        Path(self.report_path).write_text(json.dumps(payload, indent=1, default=str))
