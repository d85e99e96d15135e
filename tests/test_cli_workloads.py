"""The workload commands end to end on the fake, whose state file outlives each command's process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _cli(state: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtdrivers.cli", *args, "--driver", "fake", "--setting", f"state_file={state}"],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )


def test_boot_an_image_on_a_network_with_user_data_then_read_it_back(tmp_path: Path) -> None:
    state = tmp_path / "fake.json"
    images = _cli(state, "images", "--json")
    assert images.returncode == 0, images.stderr
    assert "fake-linux" in {i["name"] for i in json.loads(images.stdout)}
    nets = _cli(state, "networks")
    assert "default" in nets.stdout
    user_data = "#cloud-config\n#vd-marker from-the-cli\n"
    created = _cli(
        state,
        "vm",
        "create",
        "web-1",
        "--image",
        "fake-linux",
        "--network",
        "default,mac=52:54:00:00:00:21",
        "--user-data",
        "-",
        "--hostname",
        "web-1",
        stdin=user_data,
    )
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    assert info["image"] == "img-fake-linux"
    assert [n["mac"] for n in info["nics"]] == ["52:54:00:00:00:21"]
    addresses = _cli(state, "vm", "addresses", "web-1", "--wait", "10")
    assert addresses.returncode == 0, addresses.stderr
    assert addresses.stdout.startswith("52:54:00:00:00:21  10.")
    console = _cli(state, "vm", "console", "web-1")
    assert "#vd-marker from-the-cli" in console.stdout
    assert "VIRTDRIVERS-HOSTNAME web-1" in console.stdout
    metrics = json.loads(_cli(state, "vm", "metrics", "web-1").stdout)
    assert metrics["instance_id"] == info["id"]
    assert metrics["cpu_time_ns"] >= 0


def test_bad_workload_input_is_one_typed_line(tmp_path: Path) -> None:
    state = tmp_path / "fake.json"
    bad_mac = _cli(state, "vm", "create", "x", "--network", "default,mac=zz")
    assert bad_mac.returncode == 2
    assert bad_mac.stderr.startswith("error: invalid_spec: InstanceSpec.nics.0.mac:")
    bad_image = _cli(state, "vm", "create", "x", "--image", "nope")
    assert bad_image.returncode == 2
    assert bad_image.stderr.startswith("error: invalid_spec: image:")
    assert json.loads(_cli(state, "vm", "list", "--json").stdout) == []
