"""Workload conformance (contract 1.2): images, NICs, user data, addresses, console, metrics."""

from __future__ import annotations

import hashlib
import ipaddress
import uuid
from pathlib import Path
from typing import Any

import pytest

from virtdrivers import (
    Capability,
    DiskFormat,
    Driver,
    DriverError,
    ImageMode,
    InstanceNotFound,
    InstanceSpec,
    InvalidSpec,
    NicSpec,
    NotFound,
    PowerState,
)
from virtdrivers_conformance.suite.checks import (
    agreed,
    image_for,
    up_nodes,
    wait_for,
)
from virtdrivers_conformance.suite.fixtures import (
    DriverFixtures,
    EndpointUnderTest,
    MakeInstance,
    feature,
    unique_name,
)

__all__ = ["TestWorkloads"]


class TestWorkloads(DriverFixtures):
    """Instances that run workloads: images, NICs, user data, addresses, console, metrics (contract 1.2)."""

    def _nics(self, driver: Driver) -> list[dict[str, Any]]:
        if not driver.supports(Capability.NETWORKS):
            return []
        return [{"network": driver.list_networks()[0].id}]

    @pytest.mark.parametrize(
        "mode",
        [
            pytest.param(ImageMode.COW, marks=feature("image_cow"), id="cow"),
            pytest.param(ImageMode.COPY, marks=feature("image_copy"), id="copy"),
        ],
    )
    def test_create_from_an_image_leaves_the_image_unchanged(
        self, driver: Driver, endpoint: EndpointUnderTest, make_instance: MakeInstance, mode: ImageMode
    ) -> None:
        image = image_for(driver)
        info = make_instance(image=image.id, image_mode=mode, disks=[{"size_gib": self.disk_gib}])
        got = agreed(driver, info.id)
        assert got.image == image.id
        root = got.disks[0]
        assert root.size_gib * 1024**3 >= image.virtual_size_bytes, "the root disk is smaller than its image"
        assert len(got.disks) == 2, "the image's root disk comes first, then the spec's disks"
        if driver.supports(Capability.METRICS):  # let the guest run (and write) a little before looking
            wait_for(
                "the guest running", endpoint.guest_boot_timeout, lambda: driver.instance_metrics(info.id).cpu_time_ns
            )
        after = {i.id: i for i in driver.list_images()}[image.id]
        assert after.model_dump() == image.model_dump(), "the image changed while an instance ran from it"

    @feature("images")
    def test_a_create_from_an_image_that_fails_late_leaves_nothing(
        self, driver: Driver, endpoint: EndpointUnderTest, make_instance: MakeInstance
    ) -> None:
        """The image path makes more than a blank create (a clone or child disk, a user-data
        carrier, NICs): all of it goes when the create fails after the backend began."""
        name = unique_name()
        image = image_for(driver)
        before = {i.id for i in driver.list_instances()}
        disks = {n: driver.host_resources(n).disk_gib_used for n in up_nodes(driver)}
        extra: dict[str, Any] = {"nics": self._nics(driver)}
        if driver.supports(Capability.USER_DATA):
            extra["user_data"] = {"user_data": "#cloud-config\n# vd failed create\n"}
        endpoint.fail_next_create(driver)
        with pytest.raises(DriverError):
            make_instance(name=name, image=image.id, disks=[{"size_gib": self.disk_gib}], **extra)
        assert {i.id for i in driver.list_instances()} == before, "a failed create from an image left an instance"
        with pytest.raises(InstanceNotFound):
            driver.find_instance(name)
        assert {n: driver.host_resources(n).disk_gib_used for n in up_nodes(driver)} == disks, "disks left behind"
        if driver.supports(Capability.REAP):
            left = driver.reap(dry_run=True, grace_s=0)
            assert not left, f"a failed create from an image left {[(f.kind, f.ref) for f in left]}"
        assert {i.id: i for i in driver.list_images()}[image.id].model_dump() == image.model_dump()
        info = make_instance(name=name, image=image.id, disks=[], **extra)  # the name is free again
        assert agreed(driver, info.id).image == image.id

    @feature("images")
    def test_images_are_listed_and_unknown_ones_refused_up_front(self, driver: Driver) -> None:
        images = driver.list_images()
        assert images
        assert all(i.id and i.name for i in images)
        assert len({i.id for i in images}) == len(images)
        before = {i.id for i in driver.list_instances()}
        with pytest.raises(InvalidSpec) as err:
            driver.create(InstanceSpec(name=unique_name(), vcpus=1, memory_mb=128, image=unique_name("no-image")))
        assert err.value.field == "image"
        assert {i.id for i in driver.list_instances()} == before

    @feature("image_upload")
    def test_register_boot_and_delete_an_image(
        self, driver: Driver, make_instance: MakeInstance, tmp_path: Path
    ) -> None:
        path = tmp_path / "disk.raw"
        with path.open("wb") as f:
            f.truncate(16 * 1024 * 1024)
        name = unique_name("img")
        image = driver.register_image(str(path), name, disk_format=DiskFormat.RAW)
        assert (image.name, image.disk_format, image.virtual_size_bytes) == (name, DiskFormat.RAW, 16 * 1024 * 1024)
        assert image.id in {i.id for i in driver.list_images()}
        driver.delete_image(image.id)
        assert image.id not in {i.id for i in driver.list_images()}
        with pytest.raises(NotFound):
            driver.delete_image(image.id)

    @feature("networks")
    def test_nics_round_trip_through_every_read_path(self, driver: Driver, make_instance: MakeInstance) -> None:
        networks = driver.list_networks()
        assert networks
        assert all(n.id and n.name for n in networks)
        net = networks[-1]
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:3])
        info = make_instance(start=False, disks=[], nics=[{"network": net.id, "mac": mac}, {"network": net.name}])
        got = agreed(driver, info.id)
        assert len(got.nics) == 2
        assert got.nics[0].mac == mac, f"asked for MAC {mac}, got {got.nics[0].mac}"
        assert {n.network for n in got.nics} <= {net.id, net.name}
        assert len({n.mac for n in got.nics}) == 2
        assert [n.model_dump() for n in info.nics] == [n.model_dump() for n in got.nics]

    @feature("networks")
    def test_bad_nics_are_refused_up_front(self, driver: Driver) -> None:
        before = {i.id for i in driver.list_instances()}
        spec = {"name": unique_name(), "vcpus": 1, "memory_mb": 128}
        with pytest.raises(InvalidSpec) as err:
            driver.create({**spec, "nics": [{"network": unique_name("no-net")}]})  # type: ignore[arg-type]
        assert err.value.field is not None
        assert "nics.0.network" in err.value.field
        with pytest.raises(InvalidSpec) as err:
            driver.create({**spec, "nics": [{"network": "x", "mac": "not-a-mac"}]})  # type: ignore[arg-type]
        assert err.value.field is not None
        assert "mac" in err.value.field
        assert {i.id for i in driver.list_instances()} == before

    @feature("nic_hotplug")
    def test_attach_and_detach_a_nic_on_a_running_instance(
        self, driver: Driver, endpoint: EndpointUnderTest, make_instance: MakeInstance
    ) -> None:
        # PCI hot-unplug is a request the guest OS grants: where there is an image, boot it and
        # let it come up (report an address) before asking it to give the NIC back.
        image = {"image": image_for(driver).id} if driver.supports(Capability.IMAGES) else {}
        info = make_instance(disks=[], nics=self._nics(driver), **image)
        if image and driver.supports(Capability.GUEST_ADDRESSES):
            wait_for("the guest up", endpoint.guest_boot_timeout, lambda: driver.guest_addresses(info.id))
        net = driver.list_networks()[0]
        nic = driver.attach_nic(info.id, NicSpec(network=net.id))
        got = agreed(driver, info.id)
        assert nic.id in {n.id for n in got.nics}
        assert got.power_state == PowerState.RUNNING
        driver.detach_nic(info.id, nic.id)
        assert nic.id not in {n.id for n in agreed(driver, info.id).nics}
        with pytest.raises(NotFound):
            driver.detach_nic(info.id, nic.id)

    @feature("user_data")
    def test_the_guest_reads_its_user_data(
        self, driver: Driver, endpoint: EndpointUnderTest, make_instance: MakeInstance
    ) -> None:
        if not driver.supports(Capability.CONSOLE_OUTPUT):
            pytest.skip("needs console_output to see what the guest read")
        marker = f"#vd-marker {uuid.uuid4().hex}"
        user_data = f"#cloud-config\n{marker}\n"
        digest = hashlib.sha256(user_data.encode()).hexdigest()
        image = {"image": image_for(driver).id} if driver.supports(Capability.IMAGES) else {}
        info = make_instance(disks=[], nics=self._nics(driver), user_data={"user_data": user_data}, **image)

        def read() -> str:
            out = driver.console_output(info.id)
            return out if f"VIRTDRIVERS-USERDATA {digest}" in out else ""

        console = wait_for("the user-data marker on the console", endpoint.guest_boot_timeout, read)
        assert marker in console, "the guest echoed the digest but not the marker line"

    @feature("user_data")
    def test_user_data_reaches_the_guests_carrier(
        self, driver: Driver, endpoint: EndpointUnderTest, make_instance: MakeInstance
    ) -> None:
        """Where no guest boots to echo it, the peer itself must hold the exact bytes a guest would read."""
        if endpoint.hooks.read_user_data is None:
            pytest.skip("the endpoint offers no read_user_data hook (EndpointHooks.read_user_data)")
        user_data = f"#cloud-config\n# vd {uuid.uuid4().hex}\nruncmd:\n  - [echo, 'quotes \" < & ünïcode']\n"
        image = {"image": image_for(driver).id} if driver.supports(Capability.IMAGES) else {}
        plain = make_instance(start=False, disks=[], nics=self._nics(driver), **image)
        assert endpoint.read_user_data(driver, plain.id) is None, "an instance created without user data has a carrier"
        info = make_instance(
            disks=[], nics=self._nics(driver), user_data={"user_data": user_data, "hostname": "vd-guest"}, **image
        )
        assert endpoint.read_user_data(driver, info.id) == user_data

    @feature("user_data")
    def test_oversized_user_data_is_refused_up_front(self, driver: Driver) -> None:
        before = {i.id for i in driver.list_instances()}
        spec = {"name": unique_name(), "vcpus": 1, "memory_mb": 128, "user_data": {"user_data": "x" * (64 * 1024 + 1)}}
        with pytest.raises(InvalidSpec) as err:
            driver.create(spec)  # type: ignore[arg-type]
        assert err.value.field is not None
        assert "user_data" in err.value.field
        assert {i.id for i in driver.list_instances()} == before

    @feature("guest_addresses")
    def test_addresses_appear_after_boot_for_the_instances_nics(
        self, driver: Driver, endpoint: EndpointUnderTest, make_instance: MakeInstance
    ) -> None:
        image = {"image": image_for(driver).id} if driver.supports(Capability.IMAGES) else {}
        stopped = make_instance(start=False, disks=[], nics=self._nics(driver), **image)
        assert driver.guest_addresses(stopped.id) == [], "a stopped guest reports no address (and no error)"
        info = make_instance(disks=[], nics=self._nics(driver), **image)
        found = wait_for("a guest address", endpoint.guest_boot_timeout, lambda: driver.guest_addresses(info.id))
        macs = {n.mac for n in agreed(driver, info.id).nics}
        for entry in found:
            assert not macs or entry.mac in macs, f"address on {entry.mac}, not one of the instance's NICs {macs}"
            assert entry.source
            for address in entry.addresses:
                ipaddress.ip_interface(address)  # CIDR notation, or this raises

    @feature("console_output")
    def test_console_output_is_the_tail_of_the_log(
        self, driver: Driver, endpoint: EndpointUnderTest, make_instance: MakeInstance
    ) -> None:
        image = {"image": image_for(driver).id} if driver.supports(Capability.IMAGES) else {}
        info = make_instance(disks=[], **image)
        text = wait_for("console output", endpoint.guest_boot_timeout, lambda: driver.console_output(info.id))
        tail = driver.console_output(info.id, max_bytes=16)
        assert 0 < len(tail.encode()) <= 16
        assert text.endswith(tail) or driver.console_output(info.id).endswith(tail)

    @feature("console_connect")
    def test_console_connection_says_where_and_hides_its_ticket(
        self, driver: Driver, make_instance: MakeInstance
    ) -> None:
        info = make_instance(disks=[])
        conn = driver.console_connection(info.id)
        assert conn.kind
        assert conn.url or (conn.host and conn.port)
        if conn.ticket is not None:
            secret = conn.ticket.get_secret_value()
            assert secret not in repr(conn)
            assert secret not in str(conn)

    @feature("metrics")
    def test_counters_grow_while_the_guest_runs(self, driver: Driver, make_instance: MakeInstance) -> None:
        info = make_instance(disks=[{"size_gib": self.disk_gib}], nics=self._nics(driver))
        first = driver.instance_metrics(info.id)
        assert first.instance_id == info.id

        def grown() -> Any:
            now = driver.instance_metrics(info.id)
            return now if (now.cpu_time_ns or 0) > (first.cpu_time_ns or 0) else None

        second = wait_for("CPU time growing", 60, grown)
        assert second.timestamp > first.timestamp
        for counter in ("cpu_time_ns", "disk_read_bytes", "disk_write_bytes", "net_rx_bytes", "net_tx_bytes"):
            a, b = getattr(first, counter), getattr(second, counter)
            if a is not None and b is not None:
                assert b >= a, f"{counter} went down from {a} to {b}"
