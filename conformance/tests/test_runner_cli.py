"""``virtdrivers parity`` end to end against out-of-tree plugins that misbehave on purpose.

One throwaway distribution (built and installed the way a vendor ships one,
into a private target on PYTHONPATH, as ``tests/test_plugins.py`` does) holds
drivers built on the reference fake, each with one flaw:

- ``leaky`` puts its password in prints to stdout and stderr, in a log record,
  in error messages, in an assertion message and in its backend_info;
- ``hangs``: ``pause`` never returns;
- ``noconnect``: ``connect`` always fails;
- ``lies_works`` / ``lies_fails`` / ``breaks_core``: one lie or bug of each
  kind ``--strict`` must refuse;
- ``teardown_err``: ``destroy`` works, then raises, so tests fail in teardown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from virtdrivers_conformance import runner
from virtdrivers_conformance.matrix import validate

PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "vdtest-misfits"
version = "0.0.1"
dependencies = ["virtdrivers"]

[project.entry-points."virtdrivers.drivers"]
leaky = "vdtest_misfits:LeakyDriver"
hangs = "vdtest_misfits:HangsDriver"
noconnect = "vdtest_misfits:NoConnectDriver"
lies_works = "vdtest_misfits:LiesWorksDriver"
lies_fails = "vdtest_misfits:LiesFailsDriver"
breaks_core = "vdtest_misfits:BreaksCoreDriver"
teardown_err = "vdtest_misfits:TeardownErrDriver"

[tool.hatch.build.targets.wheel]
packages = ["vdtest_misfits"]
"""

DRIVERS = '''
"""Drivers that misbehave on purpose, each built on the reference fake."""
import logging
import sys
import time

from virtdrivers import BackendUnavailable, Capability, Conflict, InstanceNotFound, NotSupported
from virtdrivers.fake import FakeDriver


def _pw(driver):
    return driver.settings.password.get_secret_value() if driver.settings.password else ""


class LeakyDriver(FakeDriver):
    name = "leaky"

    def connect(self):
        pw = _pw(self)
        print("leaky stdout: connecting with", pw)
        print("leaky stderr: connecting with", pw, file=sys.stderr)
        logging.getLogger("leaky").warning("leaky log: connecting with %s", pw)
        super().connect()

    def pause(self, instance_id):
        pw = _pw(self)
        print("leaky stdout during a test:", pw)
        logging.getLogger("leaky").error("leaky log during a test: %s", pw)
        raise BackendUnavailable("leaky: pause refused for " + pw)

    def suspend(self, instance_id):
        secret_local = _pw(self)
        raise AssertionError(f"{secret_local!r} != 'expected'")

    def backend_info(self):
        info = super().backend_info()
        return info.model_copy(update={"libraries": {"leaky-sdk": "1.0+" + _pw(self)}})


class HangsDriver(FakeDriver):
    name = "hangs"

    hung = False

    def pause(self, instance_id):
        if not HangsDriver.hung:  # only the first call hangs: one timeout is enough evidence, and fast
            HangsDriver.hung = True
            time.sleep(120)
        return super().pause(instance_id)


class NoConnectDriver(FakeDriver):
    name = "noconnect"

    def connect(self):
        raise BackendUnavailable("noconnect: no route to host 192.0.2.1")


class LiesWorksDriver(FakeDriver):
    name = "lies_works"
    capabilities = FakeDriver.capabilities - {Capability.PAUSE}


class LiesFailsDriver(FakeDriver):
    name = "lies_fails"

    def suspend(self, instance_id):
        raise NotSupported("lies_fails: this host cannot suspend", capability="suspend")  # yet declares it


class BreaksCoreDriver(FakeDriver):
    name = "breaks_core"

    def get_instance(self, instance_id):
        try:
            return super().get_instance(instance_id)
        except InstanceNotFound:
            raise LookupError(instance_id) from None  # untyped: the contract wants InstanceNotFound


class TeardownErrDriver(FakeDriver):
    name = "teardown_err"

    def destroy(self, instance_id):
        super().destroy(instance_id)
        raise Conflict("teardown_err: destroyed, then complained")
'''

SECRET = "Pw-leak-9d3e1b77c2"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    src = tmp_path_factory.mktemp("misfits-src")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "vdtest_misfits").mkdir()
    (src / "vdtest_misfits" / "__init__.py").write_text(textwrap.dedent(DRIVERS))
    site = tmp_path_factory.mktemp("misfits-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", site, src],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k != "LEAK_PW"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _parity(env: dict[str, str], out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "virtdrivers.cli", "parity", "--output-dir", str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (out / "parity.json").exists(), result.stderr[-3000:]
    matrix = json.loads((out / "parity.json").read_text())
    validate(matrix)
    return result, matrix


def _files_containing(root: Path, needle: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


# -- secrets ------------------------------------------------------------------------------------


def test_the_leaky_driver_really_leaks_without_the_runner(plugin_env: dict[str, str], tmp_path: Path) -> None:
    """The raw child, run by hand, prints the password: so the zero hits below mean the runner scrubbed it."""
    package = Path(runner.__file__).parent
    raw = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-c", str(package / "pytest.ini"), "--rootdir", str(tmp_path)),
            *("-q", "-p", "no:cacheprovider", str(package / "run_selected.py"), "--vd-driver=leaky"),
            *("--vd-setting=backend=leak-raw", f"--vd-setting=password={SECRET}", "-k", "pause or suspend"),
        ],
        env=plugin_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = raw.stdout + raw.stderr
    for leak in (
        "leaky stdout: connecting with",
        "leaky stderr: connecting with",
        "pause refused for",
        "!= 'expected'",
    ):
        assert f"{leak} {SECRET}" in output or f"{leak}{SECRET}" in output or SECRET in output, leak
    assert output.count(SECRET) >= 3, output[-3000:]


@pytest.mark.parametrize("how", ["literal", "env"])
def test_no_file_the_runner_writes_holds_the_secret(plugin_env: dict[str, str], tmp_path: Path, how: str) -> None:
    env = dict(plugin_env)
    if how == "literal":
        given = f"password={SECRET}"
    else:
        env["LEAK_PW"] = SECRET
        given = "password_env=LEAK_PW"
    out = tmp_path / "out"
    result, matrix = _parity(env, out, "--driver", "leaky", "--setting", "backend=leak", "--setting", given)
    (column,) = matrix["columns"]
    assert column["error"] is None, column["error"]
    cells = {c["feature"]: c for c in matrix["cells"]}
    assert cells["pause"]["outcome"] == "declared_but_fails", "the leaky run must really reach the leaking code"
    assert cells["pause"]["message"] == "BackendUnavailable: leaky: pause refused for ***"
    assert cells["suspend"]["outcome"] == "declared_but_fails"
    assert column["libraries"] == {"leaky-sdk": "1.0+***"}
    assert _files_containing(out, SECRET) == []
    assert SECRET not in result.stdout + result.stderr
    (settings_file,) = (out / "logs").glob("*.settings.json")
    written = json.loads(settings_file.read_text())
    assert written["password_env"] == ("LEAK_PW" if how == "env" else "VD_SECRET_PASSWORD")
    assert "password" not in written
    assert result.returncode == 0, "without --strict, failing cells are reported, not fatal"
    log = next((out / "logs").glob("*.log")).read_text()
    assert "leaky stderr: connecting with ***" in log, "stderr is read (and scrubbed) by the runner"


# -- one strict run over the misfits -------------------------------------------------------------

MISFITS = ("lies_works", "lies_fails", "breaks_core", "teardown_err", "noconnect", "leaky")


@pytest.fixture(scope="module")
def misfits_run(
    plugin_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    """One ``parity --strict`` over every misfit on its embedded endpoint (one run keeps the suite fast)."""
    out = tmp_path_factory.mktemp("misfits-run")
    result, matrix = _parity(plugin_env, out, "--strict", *(a for d in MISFITS for a in ("--driver", d)))
    return result, matrix, out


def _cells_of(matrix: dict[str, Any], driver: str) -> dict[str, dict[str, Any]]:
    return {c["feature"]: c for c in matrix["cells"] if c["column"] == f"{driver}@memory"}


def test_embedded_endpoint_secrets_are_scrubbed(misfits_run: tuple[Any, dict[str, Any], Path]) -> None:
    """The fake's embedded endpoint yields a random password the runner never saw: the child announces it."""
    _, matrix, out = misfits_run
    column = next(c for c in matrix["columns"] if c["driver"] == "leaky")
    assert (column["error"], column["evidence"], column["libraries"]) == (None, "in-memory", {"leaky-sdk": "1.0+***"})
    log = (out / "logs" / "leaky-memory.log").read_text()
    assert "leaky stdout: connecting with ***" in log
    assert "leaky stderr: connecting with ***" in log
    assert _files_containing(out, "connecting with fake-") == []


def test_unbuildable_driver_is_one_column_error(tmp_path: Path) -> None:
    result, matrix = _parity(dict(os.environ), tmp_path / "out", "--driver", "fake", "--setting", "bogus=1", "--strict")
    (column,) = matrix["columns"]
    assert "bogus" in column["error"], column
    assert matrix["cells"] == [], "a driver that cannot be built gets no probes"
    assert result.returncode == 1, "--strict refuses a column error"


def test_unconnectable_driver_is_one_column_error(misfits_run: tuple[Any, dict[str, Any], Path]) -> None:
    result, matrix, _ = misfits_run
    column = next(c for c in matrix["columns"] if c["driver"] == "noconnect")
    assert "no route to host 192.0.2.1" in column["error"], column
    assert _cells_of(matrix, "noconnect") == {}, "a driver that cannot connect gets no probes"
    assert "noconnect@memory: column error" in result.stderr


@pytest.mark.parametrize(
    ("driver", "kind"),
    [("lies_works", "not_declared_but_works"), ("lies_fails", "declared_but_fails"), ("breaks_core", "fails")],
)
def test_strict_refuses_every_kind_of_lie(
    misfits_run: tuple[subprocess.CompletedProcess[str], dict[str, Any], Path], driver: str, kind: str
) -> None:
    result, matrix, _ = misfits_run
    cells = _cells_of(matrix, driver)
    bad = {c["outcome"] for c in cells.values() if c["outcome"] != "passes"}
    assert bad == {kind}, [c for c in cells.values() if c["outcome"] != "passes"]
    assert result.returncode == 1, result.stderr[-2000:]
    # --strict names every cell it refuses: each kind on its own is a reason to fail.
    refused = [c for c in cells.values() if c["outcome"] == kind]
    assert all(f"{driver}@memory: {c['feature']} {kind}" in result.stderr for c in refused), result.stderr[-2000:]


def test_teardown_errors_count_against_the_feature(misfits_run: tuple[Any, dict[str, Any], Path]) -> None:
    _, matrix, _ = misfits_run
    pause = _cells_of(matrix, "teardown_err")["pause"]
    # pause's own test passes; only the instance's clean-up in teardown fails.
    assert pause["outcome"] == "declared_but_fails", pause
    message = "teardown: Conflict: teardown_err: destroyed, then complained"
    teardown = [t for t in pause["tests"] if t["message"] == message]
    assert teardown, pause["tests"]
    assert {t["outcome"] for t in teardown} == {"failed"}


# -- timeouts -----------------------------------------------------------------------------------


def test_test_timeout_fails_the_hanging_test_only(plugin_env: dict[str, str], tmp_path: Path) -> None:
    _, matrix = _parity(plugin_env, tmp_path / "out", "--driver", "hangs", "--test-timeout", "1")
    (column,) = matrix["columns"]
    assert column["error"] is None
    cells = {c["feature"]: c for c in matrix["cells"]}
    assert cells["pause"]["outcome"] == "declared_but_fails"
    assert "Timeout" in cells["pause"]["message"]
    assert cells["create"]["outcome"] == "passes"


def test_column_timeout_is_a_column_error_that_keeps_partial_results(
    plugin_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _, matrix = _parity(plugin_env, out, "--driver", "hangs", "--column-timeout", "4")
    (column,) = matrix["columns"]
    assert "timed out after 4s" in column["error"], column
    report = json.loads((out / "logs" / "hangs-memory.report.json").read_text())
    assert report["tests"], "tests that finished before the hang are kept"
    assert report["tests"][0]["outcome"] == "passed"
    assert column["declared"], "the column info reported at start is kept"
