"""The pytest plugin behind the conformance suite.

Always active (registered under ``pytest11``), it is inert unless a test
carries the ``vd_feature`` marker or one of its options is given:

- a probe of an undeclared capability that fails (in setup, call or teardown)
  is reported as *skipped* ("not declared"); a probe that passes stays passed
  and is recorded as "not declared but works";
- every ``vd_feature`` test without a ``timeout`` marker gets one
  (``--vd-test-timeout``, default 600 s), so a hanging backend call fails one
  test instead of stalling a vendor's CI;
- with ``--vd-driver NAME`` it loads that plugin through its entry point,
  starts one of its embedded endpoints (``--vd-endpoint``) or uses the given
  settings (``--vd-setting key=value``), builds and connects the driver once,
  and reports a column error instead of tests when that fails;
- ``--vd-report`` writes the per-test JSON report the parity runner merges;
  ``--vd-matrix`` writes the validated parity matrix itself, which also works
  for a vendor's own ``ConformanceSuite`` subclass (no ``--vd-driver``): the
  suite's capability gate tells this plugin which driver it is testing
  (:func:`record_driver`).

Secrets never reach what this plugin writes: every value of a secret setting
(by the driver's ``settings_model``, else by name), of the driver's
``settings.secrets()`` and of a secret an embedded endpoint yields is redacted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import traceback
import typing
from collections.abc import Generator, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

import virtdrivers
from virtdrivers import Driver
from virtdrivers.endpoint import EndpointHooks, Evidence
from virtdrivers.errors import redact
from virtdrivers.loader import distribution_of
from virtdrivers_conformance.features import FEATURES

__all__ = [
    "DEFAULT_TEST_TIMEOUT",
    "PROGRESS_PREFIX",
    "SESSION_KEY",
    "ConformanceSession",
    "parse_setting",
    "record_driver",
    "resolve_env_settings",
    "secret_setting_names",
]

PROGRESS_PREFIX = "@@vd-progress "
DEFAULT_TEST_TIMEOUT = 600.0

#: Setting names that hold a secret when the driver's settings model does not say (fallback only).
_SECRET_NAME = re.compile(r"(?i)password|passwd|secret|token|key")

_ORDER = {"passed": 0, "skipped": 1, "failed": 2}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("virtdrivers", "virtdrivers conformance")
    group.addoption("--vd-driver", help="entry-point name of the driver under test")
    group.addoption("--vd-endpoint", help="embedded endpoint of the driver to start (default: its first)")
    group.addoption(
        "--vd-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="driver setting for a configured endpoint (repeatable; VALUE is parsed as JSON when it can be; "
        "KEY_env=VAR reads the value of KEY from environment variable VAR)",
    )
    group.addoption(
        "--vd-settings-file",
        help="JSON object of driver settings (KEY_env entries name environment variables); --vd-setting overrides it",
    )
    group.addoption(
        "--vd-evidence",
        choices=[e.value for e in Evidence],
        default=None,
        help="how real a configured endpoint is (default: real); embedded endpoints state their own",
    )
    group.addoption("--vd-report", help="write the per-test JSON report here")
    group.addoption("--vd-matrix", help="write the parity matrix JSON (validated, one column) here")
    group.addoption("--vd-progress", action="store_true", help="print machine-readable progress lines")
    group.addoption(
        "--vd-test-timeout",
        type=float,
        default=None,
        help=f"seconds each conformance test may take before it fails (0: none; default {DEFAULT_TEST_TIMEOUT:g}, "
        "or pytest-timeout's own --timeout when that is set)",
    )
    parser.addini("vd_test_timeout", "seconds each conformance test may take (see --vd-test-timeout)", default="")


def parse_setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise pytest.UsageError(f"--vd-setting wants KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def resolve_env_settings(settings: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Replace every ``KEY_env: VAR`` by ``KEY: $VAR``, so secrets travel by reference, never on disk."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key.endswith("_env") and isinstance(value, str):
            if value not in environ:
                raise virtdrivers.InvalidSpec(f"names environment variable {value!r}, which is not set", field=key)
            out[key.removesuffix("_env")] = environ[value]
        else:
            out[key] = value
    return out


def _mentions_secret(annotation: Any) -> bool:
    from pydantic import SecretBytes, SecretStr

    if annotation in (SecretStr, SecretBytes):
        return True
    return any(_mentions_secret(arg) for arg in typing.get_args(annotation))


def secret_setting_names(cls: type[Driver] | None, names: Iterable[str]) -> set[str]:
    """Which of ``names`` (settings, ``_env`` suffix ignored) hold secrets.

    The driver's ``settings_model`` decides for the fields it defines (a ``SecretStr``
    is secret, anything else is not); a name the model does not define is judged by
    its spelling (password, secret, token, key), so an unknown driver leaks nothing.
    """
    fields = cls.settings_model.model_fields if cls is not None else {}
    secret = set()
    for name in names:
        base = name.removesuffix("_env")
        known = fields.get(base)
        if (known is not None and _mentions_secret(known.annotation)) or (known is None and _SECRET_NAME.search(base)):
            secret.add(name)
    return secret


def _secret_values(settings: Mapping[str, Any], secret_names: Iterable[str]) -> list[str]:
    values = []
    for name in secret_names:
        value = settings.get(name)
        if value is None:
            continue
        value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        values.append(str(value))
    return [v for v in values if v]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vd_feature(id): the parity-matrix feature a conformance test is evidence for")
    wanted = (config.getoption(o, None) for o in ("vd_driver", "vd_report", "vd_matrix", "vd_progress"))
    if any(wanted):
        session = ConformanceSession(config)
        config.stash[SESSION_KEY] = session
        config.pluginmanager.register(session, "virtdrivers-conformance-session")


def _test_timeout(config: pytest.Config) -> float | None:
    """The per-test timeout to add, or None to leave pytest-timeout's own setting alone."""
    explicit = config.getoption("vd_test_timeout", None)
    if explicit is None and (ini := str(config.getini("vd_test_timeout")).strip()):
        explicit = float(ini)
    if explicit is not None:
        return float(explicit)
    with contextlib.suppress(ValueError):
        if config.getoption("timeout", None) is not None or str(config.getini("timeout") or "").strip():
            return None  # the user configured pytest-timeout for the whole run: that wins
    return DEFAULT_TEST_TIMEOUT


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    timeout = _test_timeout(config)
    if timeout is None:
        return
    for item in items:
        if item.get_closest_marker("vd_feature") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(timeout))


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
        if call.when != "call":
            message = f"{call.when}: {message}"  # an error in a fixture is still evidence against the feature
    elif call.excinfo is not None:
        message = str(call.excinfo.value)
    report.user_properties.append(("vd_message", message))
    if probed and report.failed:
        # An undeclared capability's probe that failed anywhere (setup, call, teardown) just did not work.
        reason = f"not declared: {probed} (probe: {message})"
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, reason)
    return report


SESSION_KEY = pytest.StashKey["ConformanceSession"]()


def record_driver(config: pytest.Config, driver: Driver) -> None:
    """Tell the session which driver the suite is testing (called by the suite's capability gate).

    A vendor's own ``ConformanceSuite`` subclass builds its driver in its own
    ``driver`` fixture; this is how ``--vd-report``/``--vd-matrix`` learn what it
    declares and what it talked to without a ``--vd-driver``.
    """
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.observe(driver)


class ConformanceSession:
    """One driver@endpoint under test for one pytest session: its column and its test results."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.name: str | None = config.getoption("vd_driver")
        self.endpoint_name: str | None = config.getoption("vd_endpoint")
        self.raw_settings: dict[str, Any] = {}
        settings_file = config.getoption("vd_settings_file")
        if settings_file:
            self.raw_settings = json.loads(Path(settings_file).read_text())
        self.raw_settings.update(parse_setting(s) for s in config.getoption("vd_setting"))
        self.settings: dict[str, Any] = {}
        self.report_path: str | None = config.getoption("vd_report")
        self.matrix_path: str | None = config.getoption("vd_matrix")
        self.progress: bool = config.getoption("vd_progress")
        self.stack = contextlib.ExitStack()
        self.cls: type[Driver] | None = None
        self.driver: Driver | None = None
        #: The embedded endpoint's fault hooks (None for configured settings), for the suite's fixtures.
        self.hooks: EndpointHooks | None = None
        self.authenticates = True
        self.guest_boot_timeout = 180.0
        self.secrets: set[str] = set()
        self.evidence: str = config.getoption("vd_evidence") or Evidence.REAL.value
        self.endpoint_backend: tuple[str | None, str | None] = (None, None)
        self.imitates: str | None = None
        self.column: dict[str, Any] = {"driver": self.name, "error": None, "evidence": self.evidence, "imitates": None}
        self.results: dict[str, dict[str, Any]] = {}
        self.first_error: str | None = None
        self.started = time.monotonic()

    # -- session ------------------------------------------------------------------------------

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.name is None:
            return  # a vendor's own suite: its driver fixture builds the driver (see record_driver)
        try:
            self._start()
        except Exception as exc:
            self.column["error"] = self._redact(f"cannot start {self.name}: {type(exc).__name__}: {exc}")
            self._emit({"column": self.column})
            self._write_outputs()
            with contextlib.suppress(Exception):
                self.stack.close()
            pytest.exit(self.column["error"], returncode=3)

    def _start(self) -> None:
        self.cls = virtdrivers.driver_class(self.name or "")
        distribution, version = distribution_of(self.name or "")
        self.column.update(
            distribution=distribution, driver_version=version, contract_version=self.cls.contract_version
        )
        self.secrets.update(_secret_values(self.raw_settings, secret_setting_names(self.cls, self.raw_settings)))
        unavailable: frozenset[virtdrivers.Capability] = frozenset()
        if not self.raw_settings:
            endpoints = {e.name: e for e in self.cls.embedded_endpoints()}
            if not endpoints:
                raise virtdrivers.InvalidSpec("has no embedded endpoint: give settings", field=self.name)
            endpoint = endpoints.get(self.endpoint_name or next(iter(endpoints)))
            if endpoint is None:
                raise virtdrivers.InvalidSpec(
                    f"no embedded endpoint {self.endpoint_name!r} (has: {', '.join(endpoints)})", field=self.name
                )
            self.endpoint_name = endpoint.name
            self.column["endpoint_description"] = endpoint.description
            self.evidence = Evidence(endpoint.evidence).value
            self.endpoint_backend = (endpoint.backend, endpoint.backend_version)
            self.imitates = endpoint.imitates
            unavailable = endpoint.unavailable
            self.hooks = endpoint.hooks
            self.authenticates = endpoint.authenticates
            self.guest_boot_timeout = endpoint.guest_boot_timeout
            self.column["notes"] = {
                feat.id: note
                for capability, note in endpoint.notes.items()
                for feat in FEATURES.values()
                if feat.capability == capability
            }
            self.settings = dict(self.stack.enter_context(endpoint.start()))
            self.secrets.update(_secret_values(self.settings, secret_setting_names(self.cls, self.settings)))
        else:
            self.settings = resolve_env_settings(self.raw_settings)
            self.secrets.update(_secret_values(self.settings, secret_setting_names(self.cls, self.settings)))
            self.column["endpoint_description"] = "configured endpoint"
        self._announce_secrets()
        self.endpoint_name = self.endpoint_name or "configured"
        self.column.update(endpoint=self.endpoint_name, evidence=self.evidence, imitates=self.imitates)
        # Build and connect once, here: a driver that cannot do either is one column error, not a matrix of probes.
        driver = self.cls(**self.settings)
        self.secrets.update(s for s in driver.settings.secrets() if s)
        self._announce_secrets()
        driver.narrow_capabilities(unavailable)
        driver.connect()
        self.stack.callback(driver.close)
        self.driver = driver
        self.observe(driver)
        self._emit({"column": self.column})

    def observe(self, driver: Driver) -> None:
        """Record what ``driver`` declares and what it talked to, once per session."""
        if self.column.get("declared") is not None:
            return
        name = self.name or type(driver).name
        self.column["driver"] = name
        if "distribution" not in self.column:
            distribution, version = distribution_of(name)
            self.column.update(
                distribution=distribution, driver_version=version, contract_version=type(driver).contract_version
            )
        self.secrets.update(s for s in driver.settings.secrets() if s)
        self.column["declared"] = sorted(c.value for c in driver.capabilities)
        try:
            info = driver.backend_info()
        except Exception as exc:
            self.first_error = self.first_error or self._redact(f"backend_info: {type(exc).__name__}: {exc}")
            info = virtdrivers.BackendInfo(backend="unknown")
        backend: str | None = info.backend
        backend_version: str | None = info.backend_version or None
        imitates = self.imitates
        if self.endpoint_backend[0]:
            # A project simulator names itself; what it reported over the wire is what it imitates.
            imitates = imitates or " ".join(p for p in (info.backend, info.backend_version) if p)
            backend, backend_version = self.endpoint_backend
        self.column.update(
            backend=backend,
            backend_version=backend_version,
            libraries=dict(info.libraries),
            imitates=imitates,
            evidence=self.evidence,
        )
        self.column.setdefault("endpoint", self.endpoint_name or "configured")
        self.column.setdefault("endpoint_description", "configured endpoint")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        try:
            self.stack.close()
        except Exception:
            self.column["error"] = self._redact("endpoint did not stop cleanly: " + traceback.format_exc(limit=3))
        self._write_outputs()

    # -- results --------------------------------------------------------------------------------

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._emit({"total": len(session.items)})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Merge setup, call and teardown into one result per test: the worst phase decides."""
        props = dict(report.user_properties)
        message = props.get("vd_message")
        if report.skipped and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2]).removeprefix("Skipped: ")
        result = self.results.get(report.nodeid)
        if result is None:
            result = self.results[report.nodeid] = {
                "id": report.nodeid.split("::", 1)[-1],
                "feature": props.get("vd_feature"),
                "outcome": "passed",
                "probed": bool(props.get("vd_probed")),
                "message": None,
                "duration_s": 0.0,
            }
        result["duration_s"] = round(result["duration_s"] + report.duration, 3)
        result["probed"] = result["probed"] or bool(props.get("vd_probed"))
        if _ORDER[report.outcome] > _ORDER[result["outcome"]]:
            result.update(outcome=report.outcome, message=self._redact(str(message)) if message else None)
        if report.failed and self.first_error is None:
            self.first_error = self._redact(str(message))
        if report.when == "teardown":
            self._emit({"test": result["id"], "outcome": result["outcome"], "result": result})

    # -- output ---------------------------------------------------------------------------------

    def _announce_secrets(self) -> None:
        # Over the pipe to the parity runner (never to disk), which scrubs the child's output with them.
        if self.secrets:
            self._emit({"secrets": sorted(self.secrets)})

    def _redact(self, text: str) -> str:
        longest_first: list[str] = sorted(self.secrets, key=len, reverse=True)  # a secret inside another goes last
        return redact(text, longest_first)[:4000]

    def _redact_obj(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._redact(value)
        if isinstance(value, dict):
            return {k: self._redact_obj(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._redact_obj(v) for v in value]
        return value

    def _emit(self, payload: dict[str, Any]) -> None:
        if not self.progress:
            return
        out = sys.__stdout__
        if out is None:
            return
        # pytest's progress dots may precede it on the current line: readers look for the prefix anywhere.
        out.write(PROGRESS_PREFIX + json.dumps(payload, default=str) + "\n")
        out.flush()

    def report(self) -> dict[str, Any]:
        column = dict(self.column)
        column["duration_s"] = round(time.monotonic() - self.started, 2)
        if column.get("declared") is None and column["error"] is None:
            column["error"] = "the suite never obtained a driver" + (
                f": {self.first_error}" if self.first_error else " (no vd_feature test ran)"
            )
        return {"column": self._redact_obj(column), "tests": [self._redact_obj(r) for r in self.results.values()]}

    def _write_outputs(self) -> None:
        if not (self.report_path or self.matrix_path):
            return
        payload = self.report()
        if self.report_path:
            Path(self.report_path).write_text(json.dumps(payload, indent=1, default=str))
        if self.matrix_path:
            from virtdrivers_conformance.matrix import validate
            from virtdrivers_conformance.runner import build_matrix

            column_id = f"{payload['column'].get('driver')}@{payload['column'].get('endpoint') or 'configured'}"
            matrix = build_matrix([(column_id, payload)])
            validate(matrix)
            Path(self.matrix_path).write_text(json.dumps(matrix, indent=1))
