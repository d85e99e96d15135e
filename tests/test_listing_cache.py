"""The listing cache: plugins are imported only when their code changed, and a broken one is never cached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.test_plugins import install_plugin

PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "acme-cached"
version = "1.0.0"
dependencies = ["virtdrivers"]

[project.entry-points."virtdrivers.drivers"]
cached_good = "acme_cached.good:GoodDriver"
cached_broken = "acme_cached.broken:BrokenDriver"

[tool.hatch.build.targets.wheel]
packages = ["acme_cached"]
"""

GOOD = """
from virtdrivers import Capability
from virtdrivers.fake import FakeDriver


class GoodDriver(FakeDriver):
    name = "cached_good"
    capabilities = frozenset({Capability.PAUSE})
"""

#: Run in a child: the listing, which modules it imported, and what it said.
PROBE = """
import json, sys
from virtdrivers.listing import describe_drivers
found = {s.name: {"cached": s.cached, "caps": list(s.capabilities), "error": s.error} for s in describe_drivers()}
imported = sorted(m for m in sys.modules if m.startswith(("acme_cached", "virtdrivers_", "pydantic")))
print(json.dumps({"found": found, "imported": imported}))
"""


def _list(env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    result: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
    return result


def test_unchanged_plugins_are_listed_without_importing_them(tmp_path: Path) -> None:
    files = {
        "pyproject.toml": PYPROJECT,
        "acme_cached/__init__.py": "",
        "acme_cached/good.py": GOOD,
        "acme_cached/broken.py": "raise RuntimeError('broken at import')\n",
    }
    site = tmp_path / "site"
    env = install_plugin(tmp_path / "src", files, site)
    env["VIRTDRIVERS_CACHE"] = str(tmp_path / "cache")

    first = _list(env)
    found = first["found"]
    assert isinstance(found, dict)
    assert found["cached_good"] == {"cached": False, "caps": ["pause"], "error": None}
    assert not found["cached_broken"]["cached"]
    assert "broken at import" in found["cached_broken"]["error"]
    assert "acme_cached.good" in first["imported"]  # type: ignore[operator]

    second = _list(env)
    again = second["found"]
    assert isinstance(again, dict)
    assert again["cached_good"] == {"cached": True, "caps": ["pause"], "error": None}
    assert not again["cached_broken"]["cached"], "a failing plugin is looked at afresh every time"
    assert "acme_cached.good" not in second["imported"]  # type: ignore[operator]
    # The broken plugin is imported again (to show its current error), the unchanged ones are not.
    assert not [m for m in second["imported"] if m.startswith("virtdrivers_")]  # type: ignore[attr-defined]

    # A change to the plugin's code (here: what it declares) is seen at once.
    good = site / "acme_cached" / "good.py"
    good.write_text(GOOD.replace("{Capability.PAUSE}", "{Capability.PAUSE, Capability.SUSPEND}"))
    later = time.time() + 5
    os.utime(good, (later, later))  # a new mtime even on a coarse-grained file system
    changed = _list(env)["found"]
    assert isinstance(changed, dict)
    assert changed["cached_good"] == {"cached": False, "caps": ["pause", "suspend"], "error": None}


def test_fresh_imports_everything_and_the_cli_output_is_the_same(tmp_path: Path) -> None:
    env = dict(os.environ, VIRTDRIVERS_CACHE=str(tmp_path / "cache"))
    cli = [sys.executable, "-m", "virtdrivers.cli", "drivers", "--json"]
    cold = subprocess.run(cli, capture_output=True, text=True, env=env)
    warm = subprocess.run(cli, capture_output=True, text=True, env=env)
    fresh = subprocess.run([*cli, "--fresh"], capture_output=True, text=True, env=env)
    assert cold.returncode == warm.returncode == fresh.returncode
    assert json.loads(cold.stdout) == json.loads(warm.stdout) == json.loads(fresh.stdout)
    assert (tmp_path / "cache" / "drivers.json").exists()
    # A warm listing of healthy plugins imports neither a plugin nor the contract's pydantic models.
    assert _list(env)["imported"] == []
