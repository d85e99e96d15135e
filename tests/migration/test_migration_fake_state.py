"""The fake's file-backed mode, which the kill tests stand on: one hypervisor shared by processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from virtdrivers.fake import FakeDriver
from virtdrivers.objects import InstanceSpec, PowerState

WORKER = textwrap.dedent(
    """
    import sys
    from virtdrivers.errors import InvalidSpec
    from virtdrivers.fake import FakeDriver
    from virtdrivers.objects import InstanceSpec
    with FakeDriver(state_file=sys.argv[1]) as d:
        for i in range(30):
            info = d.create(InstanceSpec(name=f"{sys.argv[2]}-{i}", vcpus=1, memory_mb=64))
            d.power_off(info.id, force=True)
        try:
            d.create(InstanceSpec(name="contended", vcpus=1, memory_mb=64))
            print("won")
        except InvalidSpec:
            print("lost")
    """
)


def test_processes_share_one_fake_and_its_name_uniqueness(tmp_path: Path) -> None:
    state = str(tmp_path / "hv.json")
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, state, f"p{n}"], stdout=subprocess.PIPE, text=True)
        for n in range(3)
    ]
    outcomes = sorted(w.communicate(timeout=120)[0].strip() for w in workers)
    assert [w.returncode for w in workers] == [0, 0, 0]
    assert outcomes == ["lost", "lost", "won"]
    with FakeDriver(state_file=state) as driver:
        instances = driver.list_instances()
    assert len(instances) == 3 * 30 + 1
    assert sum(i.power_state == PowerState.SHUTDOWN for i in instances) == 90


def test_state_outlives_the_driver_including_node_failures_and_snapshots(tmp_path: Path) -> None:
    state = str(tmp_path / "hv.json")
    with FakeDriver(state_file=state, unmanaged=1) as first:
        info = first.create(InstanceSpec(name="keep", vcpus=2, memory_mb=128, disks=[{"size_gib": 3}]))
        snap = first.create_snapshot(info.id, "s1")
        first.fail_node("fake-node-2")
    with FakeDriver(state_file=state, unmanaged=5) as second:  # seeding applies only to a new file
        again = second.get_instance(info.id)
        assert (again.vcpus, again.disks[0].size_gib) == (2, 3)
        assert [s.id for s in second.list_snapshots(info.id)] == [snap.id]
        assert {n.name: n.state for n in second.list_nodes()}["fake-node-2"] == "down"
        assert len(second.list_unmanaged()) == 1
