"""One bad plugin never hides the others, never stalls the listing, never garbles its JSON.

A throwaway distribution ``acme-trouble`` is built and installed out of tree (the
way ``test_plugins`` does it) with one good driver and one plugin per way a
vendor's code can misbehave while being listed: ``sys.exit`` at import, an
exception at import, an exception from ``embedded_endpoints()``, an exception
from a class property (``settings_model``), a hang at import, and prints from
the import itself, from a thread during the import and from a thread after the
listing is done. ``virtdrivers drivers`` runs in a child process, as a person runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.test_plugins import install_plugin
from virtdrivers.listing import LISTING_TIME_LIMIT

#: The listing's default time limit: a hanging plugin costs this, once, and the others are listed.
HANG_LIMIT = LISTING_TIME_LIMIT

PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "acme-trouble"
version = "0.0.1"
dependencies = ["virtdrivers"]

[project.entry-points."virtdrivers.drivers"]
trouble_good = "acme_trouble.good:GoodDriver"
trouble_exit = "acme_trouble.exits:ExitDriver"
trouble_raise = "acme_trouble.raises:RaiseDriver"
trouble_endpoints = "acme_trouble.good:EndpointsDriver"
trouble_property = "acme_trouble.good:PropertyDriver"
trouble_hang = "acme_trouble.hang:HangDriver"
trouble_noisy = "acme_trouble.noisy:NoisyDriver"

[tool.hatch.build.targets.wheel]
packages = ["acme_trouble"]
"""

GOOD = """
from virtdrivers.fake import FakeDriver


class GoodDriver(FakeDriver):
    name = "trouble_good"


class EndpointsDriver(FakeDriver):
    name = "trouble_endpoints"

    @classmethod
    def embedded_endpoints(cls):
        raise RuntimeError("endpoint table is corrupt")


class _Exploding:
    def __get__(self, obj, owner):
        raise KeyError("settings model went missing")


class PropertyDriver(FakeDriver):
    name = "trouble_property"
    settings_model = _Exploding()
"""

EXITS = """
import sys

sys.exit(3)
"""

RAISES = """
raise RuntimeError("boom at import")
"""

HANG = """
import time

time.sleep(60)
"""

NOISY = """
import threading
import time

from virtdrivers.fake import FakeDriver

print("NOISE from the import itself")
during = threading.Thread(target=lambda: print("NOISE from a thread during the import"))
during.start()
during.join()


def _later():
    time.sleep(AFTER)  # the hanging plugin holds the listing for the time limit: this prints after it is over
    print("NOISE from a thread after loading", flush=True)


threading.Thread(target=_later, daemon=False).start()  # the process waits for it, so it does print


class NoisyDriver(FakeDriver):
    name = "trouble_noisy"
"""


@pytest.fixture(scope="module")
def trouble_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    files = {
        "pyproject.toml": PYPROJECT,
        "acme_trouble/__init__.py": "",
        "acme_trouble/good.py": GOOD,
        "acme_trouble/exits.py": EXITS,
        "acme_trouble/raises.py": RAISES,
        "acme_trouble/hang.py": HANG,
        "acme_trouble/noisy.py": NOISY.replace("AFTER", str(HANG_LIMIT + 1.5)),
    }
    return install_plugin(tmp_path_factory.mktemp("trouble-src"), files, tmp_path_factory.mktemp("trouble-site"))


def _drivers(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``drivers``; the time returned is until its output is complete (stdout closed), which is what
    a caller waits for: a plugin's own non-daemon thread may keep the process alive longer."""
    start = time.monotonic()
    proc = subprocess.Popen(
        # --fresh: every plugin is imported under the guards, as on the first listing after a change.
        [sys.executable, "-m", "virtdrivers.cli", "drivers", "--fresh", *args],
        env={**env, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    listed = time.monotonic() - start
    _, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), listed


def test_json_lists_good_plugins_reports_each_broken_one_and_stays_clean(trouble_env: dict[str, str]) -> None:
    result, elapsed = _drivers(trouble_env, "--json")
    assert result.returncode == 1, result.stderr  # broken plugins are an error status, not a crash
    entries = {e["name"]: e for e in json.loads(result.stdout)}  # nothing a plugin printed is in it
    assert "NOISE" not in result.stdout
    for good in ("fake", "trouble_good", "trouble_noisy"):
        assert entries[good]["error"] is None, entries[good]
        assert "pause" in entries[good]["capabilities"]
        assert entries[good]["endpoints"] == ["memory"]
    # where the plugins' prints went instead: stderr, all three of them
    assert result.stderr.count("NOISE") == 3, result.stderr
    assert "NOISE from a thread after loading" in result.stderr

    errors = {name: e["error"] for name, e in entries.items() if name.startswith("trouble_")}
    assert "failed to import: SystemExit(3)" in errors["trouble_exit"]
    assert "failed to import: RuntimeError: boom at import" in errors["trouble_raise"]
    assert "embedded_endpoints()" in errors["trouble_endpoints"]
    assert "endpoint table is corrupt" in errors["trouble_endpoints"]
    assert "settings_model" in errors["trouble_property"]
    assert "settings model went missing" in errors["trouble_property"]
    assert "hanging" in errors["trouble_hang"]
    assert f"{HANG_LIMIT:g}s" in errors["trouble_hang"]
    # the hang costs the time limit once, not the plugin's 60 s sleep: the others are listed
    # after it plus the interpreter's start (the allowance is for a loaded machine)
    print(f"listing with a hanging plugin took {elapsed:.2f}s (limit {HANG_LIMIT:g}s)")
    assert elapsed < HANG_LIMIT + 3, f"listing took {elapsed:.1f}s"


def test_table_lists_good_plugins_and_every_broken_one_with_its_reason(trouble_env: dict[str, str]) -> None:
    result, elapsed = _drivers(trouble_env)
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "NOISE" not in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 2}
    for good in ("fake", "trouble_good", "trouble_noisy"):
        assert "adopt, aggregates" in rows[good], rows[good]
    for broken, reason in {
        "trouble_exit": "SystemExit(3)",
        "trouble_raise": "boom at import",
        "trouble_endpoints": "endpoint table is corrupt",
        "trouble_property": "settings model went missing",
        "trouble_hang": "hanging",
    }.items():
        assert broken in rows, out
        assert reason in " ".join(out.split()), f"{broken}: {reason!r} not shown"
    assert elapsed < HANG_LIMIT + 3, f"listing took {elapsed:.1f}s"
