"""The ``virtdrivers`` command as a person runs it: a real process, real output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

VENDOR_SDKS = {"libvirt", "libvirtmod", "pyVmomi", "pyVim", "winrm", "requests_ntlm", "spnego", "ovirtsdk4", "pycurl"}


def run(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtdrivers.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=cwd,
        timeout=300,
    )


def test_drivers_lists_every_installed_backend_without_importing_a_vendor_sdk() -> None:
    code = textwrap.dedent(
        """
        import json, sys
        from virtdrivers.cli import main
        sys.argv = ["virtdrivers", "drivers", "--json"]
        try:
            main()
        except SystemExit:
            pass
        print(json.dumps(sorted(sys.modules)), file=sys.stderr)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    listed = {e["name"]: e for e in json.loads(result.stdout)}
    assert "fake" in listed
    assert all(e["error"] is None for e in listed.values()), listed
    assert all(e["capabilities"] is not None for e in listed.values())
    imported = {m.split(".")[0] for m in json.loads(result.stderr.strip().splitlines()[-1])}
    assert not imported & VENDOR_SDKS, f"listing drivers imported {imported & VENDOR_SDKS}"


@pytest.mark.parametrize("width", [80, 200])
def test_drivers_table_never_exceeds_the_terminal_width(width: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "virtdrivers.cli", "drivers"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": str(width)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= width, result.stdout
    fake_row = next(line for line in lines if line.startswith("│ fake "))
    if width == 200:  # wide: the full table, every capability named in the driver's row
        assert "adopt, aggregates, attach_disk" in fake_row
        assert len(lines) < 30
    else:  # narrow: a count in the row, the names in a wrapped paragraph below
        from virtdrivers.fake import FakeDriver

        assert fake_row.rstrip("│ ").endswith(f" {len(FakeDriver.capabilities)}")
        paragraph = " ".join(lines[lines.index(next(x for x in lines if x.startswith("fake: "))) :])
        assert "adopt aggregates attach_disk" in paragraph
        assert "suspend" in paragraph


def test_vm_commands_against_the_embedded_fake() -> None:
    created = run("vm", "create", "--driver", "fake", "web-1", "--vcpus", "2", "--disk", "4:raw", "--meta", "a=b")
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    assert (info["name"], info["vcpus"], info["power_state"], info["metadata"]) == ("web-1", 2, "running", {"a": "b"})
    assert info["disks"][0]["format"] == "raw"
    assert "100%" in created.stderr  # progress on stderr
    listed = run("vm", "list", "--driver", "fake", "--embedded", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [i["name"] for i in json.loads(listed.stdout)] == []  # embedded pets are unmanaged: not listed


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (("vm", "create", "--driver", "fake", "x", "--vcpus", "0"), "error: invalid_spec: InstanceSpec.vcpus"),
        (
            ("vm", "create", "--driver", "fake", "x", "--disk", "1:vdi"),
            "error: invalid_spec: InstanceSpec.disks.0.format",
        ),
        (("vm", "show", "--driver", "fake", "ghost"), "error: instance_not_found"),
        (("vm", "list", "--driver", "nope"), "error: driver_not_found"),
        (("vm", "list", "--driver", "fake", "--setting", "nodes=0"), "error: invalid_spec: fake.nodes"),
    ],
)
def test_errors_are_one_clear_line(args: tuple[str, ...], start: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.startswith(start), result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback() -> None:
    result = run("--debug", "vm", "show", "--driver", "fake", "ghost")
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "InstanceNotFound" in result.stderr


def test_endpoint_from_config_file_reads_secrets_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "endpoints.toml"
    config.write_text('[endpoints.lab]\ndriver = "fake"\nnodes = 3\nbackend_env = "VD_TEST_BACKEND"\n')
    missing = run("vm", "list", "--config", str(config), "--endpoint", "lab")
    assert missing.returncode == 2
    assert "VD_TEST_BACKEND" in missing.stderr
    result = subprocess.run(
        [sys.executable, "-m", "virtdrivers.cli", "vm", "list", "--config", str(config), "--endpoint", "lab", "--json"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "VD_TEST_BACKEND": "from-env"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
