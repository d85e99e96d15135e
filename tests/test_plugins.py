"""Out-of-tree plugins, built and installed the way a vendor ships one.

A throwaway distribution is built from its own pyproject in a temporary
directory and installed into a private target directory put on PYTHONPATH,
so the project's environment is never modified. It registers:

- ``acme``: a working driver with one lie each way (declares SUSPEND but its
  suspend does nothing; does not declare PAUSE although pause works);
- ``acme_broken``: a module that fails to import;
- ``acme_future``: a driver written for contract 2.0;
- ``acme_old``: a driver written for contract 1.0 that declares ADOPT (a 1.1 capability).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import virtdrivers

PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "acme-virt"
version = "3.1.4"
dependencies = ["virtdrivers"]

[project.entry-points."virtdrivers.drivers"]
acme = "acme_virt:AcmeDriver"
acme_broken = "acme_virt.broken:BrokenDriver"
acme_future = "acme_virt:FutureDriver"
acme_old = "acme_virt:OldDriver"

[tool.hatch.build.targets.wheel]
packages = ["acme_virt"]
"""

DRIVER = '''
"""A vendor's plugin, built on the reference fake so the test needs no hypervisor."""
from virtdrivers import Capability
from virtdrivers.fake import FakeDriver


class AcmeDriver(FakeDriver):
    name = "acme"
    # Lies on purpose: pause works but is not declared; suspend is declared but broken.
    capabilities = FakeDriver.capabilities - {Capability.PAUSE}

    def suspend(self, instance_id):
        return self.get_instance(instance_id)  # claims success, does nothing


class FutureDriver(FakeDriver):
    name = "acme_future"
    contract_version = "2.0"


class OldDriver(FakeDriver):
    name = "acme_old"
    contract_version = "1.0"
    capabilities = frozenset({Capability.PAUSE, Capability.ADOPT})
'''


def install_plugin(src: Path, files: dict[str, str], site: Path) -> dict[str, str]:
    """Build the distribution whose ``pyproject.toml`` and sources are ``files`` (relative path -> text)
    in ``src`` with hatchling, install it into ``site``, and return an environment that sees it.

    ``site`` is a private ``--target`` directory put on PYTHONPATH, so the project's
    environment is never modified. Other test modules build their own plugins with this.
    """
    for rel, text in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", site, src],
        check=True,
        capture_output=True,
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    files = {
        "pyproject.toml": PYPROJECT,
        "acme_virt/__init__.py": DRIVER,
        "acme_virt/broken.py": "import acme_sdk_that_is_not_installed  # noqa: F401\n",
    }
    return install_plugin(tmp_path_factory.mktemp("acme-src"), files, tmp_path_factory.mktemp("acme-site"))


def _cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtdrivers.cli", *args], env=env, capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_installed_plugin_is_listed_and_broken_ones_are_reported(plugin_env: dict[str, str]) -> None:
    result = _cli(plugin_env, "drivers", "--json")
    assert result.returncode == 1, result.stderr  # some plugins are broken
    entries = {e["name"]: e for e in json.loads(result.stdout)}
    assert entries["fake"]["error"] is None
    acme = entries["acme"]
    assert (acme["distribution"], acme["version"], acme["error"]) == ("acme-virt", "3.1.4", None)
    assert "pause" not in acme["capabilities"]
    assert "suspend" in acme["capabilities"]
    assert "acme_sdk_that_is_not_installed" in entries["acme_broken"]["error"]
    assert "failed to import" in entries["acme_broken"]["error"]
    future = entries["acme_future"]["error"]
    assert "acme_future" in future
    assert "2.0" in future
    assert str(virtdrivers.CONTRACT_VERSION) in future
    old = entries["acme_old"]
    assert old["error"] is None
    assert old["contract_version"] == "1.0"
    assert old["capabilities"] == ["pause"], "ADOPT came in contract 1.1, after this plugin's 1.0"


def test_loading_broken_and_future_plugins_raises_typed_errors(plugin_env: dict[str, str]) -> None:
    code = textwrap.dedent(
        """
        import virtdrivers
        for name in ("acme_broken", "acme_future", "nope"):
            try:
                virtdrivers.load(name)
            except virtdrivers.DriverError as exc:
                print(name, type(exc).__name__, exc)
        with virtdrivers.load("acme") as d:
            print("acme", type(d).__name__, d.supports("suspend"))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=plugin_env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0].startswith("acme_broken PluginLoadError")
    assert out[1].startswith("acme_future ContractMismatch plugin 'acme_future' was written for driver contract 2.0")
    assert out[2].startswith("nope DriverNotFound")
    assert "acme" in out[2]
    assert out[3] == "acme AcmeDriver True"


def test_suite_on_the_plugin_exposes_both_lies(plugin_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "parity"
    result = _cli(plugin_env, "parity", "--driver", "acme", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    matrix = json.loads((out / "parity.json").read_text())
    cells = {c["feature"]: c for c in matrix["cells"] if c["column"] == "acme@memory"}
    assert cells["pause"]["outcome"] == "not_declared_but_works"
    assert cells["suspend"]["outcome"] == "declared_but_fails"
    assert "SUSPENDED" in cells["suspend"]["message"] or "suspended" in cells["suspend"]["message"]
    assert cells["create"]["outcome"] == "passes"
    column = next(c for c in matrix["columns"] if c["id"] == "acme@memory")
    assert (column["distribution"], column["driver_version"]) == ("acme-virt", "3.1.4")
    for fmt in ("parity.json", "parity.md", "parity.html", "parity.txt"):
        assert (out / fmt).stat().st_size > 0


def test_cli_errors_are_one_line(plugin_env: dict[str, str]) -> None:
    result = _cli(plugin_env, "vm", "list", "--driver", "acme_future")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: contract_mismatch: plugin 'acme_future'")
    assert "Traceback" not in result.stderr
