"""The pytest-plugin route: a vendor's own suite module, run in a real child pytest, no ``--vd-driver``.

The vendor module below is what a vendor's CI would hold: its own ``driver``
fixture and a few feature tests whose fixtures err in setup or teardown. It
checks that those errors count against the feature (never a flattering pass),
that the plugin puts a default timeout on every feature test, and that
``--vd-matrix`` writes the same validated matrix the ``parity`` command does,
learning the driver from the vendor's fixture and redacting its secrets.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from virtdrivers_conformance.matrix import validate

SECRET = "vendor-S3cr3t-7f1c2a"

VENDOR_MODULE = f'''
import time

import pytest

from virtdrivers import Capability
from virtdrivers.fake import FakeDriver
from virtdrivers_conformance.suite import DriverFixtures, feature


class VendorDriver(FakeDriver):
    capabilities = FakeDriver.capabilities - {{Capability.PAUSE, Capability.SUSPEND, Capability.ADOPT}}


class TestVendor(DriverFixtures):
    @pytest.fixture(scope="class")
    @classmethod
    def driver(cls):
        with VendorDriver(backend="vendor-route", password="{SECRET}") as d:
            yield d

    @pytest.fixture
    def broken_setup(self, driver):
        raise RuntimeError("setup boom with " + driver.settings.password.get_secret_value())

    @pytest.fixture
    def broken_teardown(self):
        yield
        raise RuntimeError("teardown boom")

    @feature("create")
    def test_mandatory_with_teardown_error(self, driver, broken_teardown):
        pass

    @feature("snapshot")
    def test_declared_with_setup_error(self, broken_setup):
        pass

    @feature("pause")
    def test_undeclared_probe_that_works(self, driver):
        pass

    @feature("suspend")
    def test_undeclared_probe_with_teardown_error(self, broken_teardown):
        pass

    @feature("list")
    def test_default_timeout_is_applied(self, request):
        marker = request.node.get_closest_marker("timeout")
        assert marker is not None and marker.args[0] == float(request.config.getoption("vd_test_timeout") or 600)

    @feature("events")
    def test_hangs(self, request):
        if request.config.getoption("vd_test_timeout") is not None:
            time.sleep(30)
'''


def _run_vendor(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], str]:
    module = tmp_path / "test_vendor.py"
    module.write_text(textwrap.dedent(VENDOR_MODULE))
    matrix_path = tmp_path / "matrix.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            "/dev/null",
            "-q",
            str(module),
            f"--vd-matrix={matrix_path}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert matrix_path.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    text = matrix_path.read_text()
    matrix = json.loads(text)
    validate(matrix)
    return result, matrix, text


def _cells(matrix: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["feature"]: c for c in matrix["cells"]}


def test_vendor_suite_writes_a_validated_matrix_where_fixture_errors_count(tmp_path: Path) -> None:
    result, matrix, text = _run_vendor(tmp_path)
    cells = _cells(matrix)
    # A teardown error after a passing call fails the mandatory feature.
    assert cells["create"]["outcome"] == "fails", cells["create"]
    assert cells["create"]["message"].startswith("teardown: RuntimeError: teardown boom")
    # A setup error fails a declared feature.
    assert cells["snapshot"]["outcome"] == "declared_but_fails", cells["snapshot"]
    assert cells["snapshot"]["message"].startswith("setup: RuntimeError")
    # Probes: passing is "works", a teardown error means the probe did not work.
    assert cells["pause"]["outcome"] == "not_declared_but_works"
    assert cells["suspend"]["outcome"] == "not_declared", cells["suspend"]
    assert cells["suspend"]["message"].startswith("not declared: suspend (probe: teardown: RuntimeError: teardown boom")
    assert [t["outcome"] for t in cells["suspend"]["tests"]] == ["skipped"]
    # Default per-test timeout (600 s) was put on every feature test; the sleeper did not sleep.
    assert cells["list"]["outcome"] == "passes", cells["list"]
    assert cells["events"]["outcome"] == "passes"
    # The column was learned from the vendor's own fixture.
    (column,) = matrix["columns"]
    assert (column["driver"], column["backend"], column["evidence"], column["imitates"]) == (
        "fake",
        "fake",
        "real",
        None,
    )
    assert column["error"] is None
    assert "pause" not in column["declared"]
    assert "snapshot" in column["declared"]
    # The driver's SecretStr password appeared in a setup error; it never reaches the matrix.
    assert SECRET in result.stdout, "the leak this guards against must be real"
    assert SECRET not in text
    assert "setup boom with ***" in text


def test_vd_test_timeout_fails_a_hanging_test_and_evidence_is_recorded(tmp_path: Path) -> None:
    _, matrix, _ = _run_vendor(tmp_path, "--vd-test-timeout=1", "--vd-evidence=vendor-simulator")
    cells = _cells(matrix)
    assert cells["events"]["outcome"] == "declared_but_fails", cells["events"]
    assert "Timeout" in cells["events"]["message"]
    assert cells["list"]["outcome"] == "passes", "the explicit timeout replaces the default on every test"
    assert matrix["columns"][0]["evidence"] == "vendor-simulator"
