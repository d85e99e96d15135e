"""The Driver base class: capability guards, probing, validation, contract versions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import virtdrivers
from virtdrivers import Capability, DiskSpec, InvalidSpec, NotSupported, PowerState
from virtdrivers.driver import Driver
from virtdrivers.fake import FakeDriver
from virtdrivers.objects import BackendInfo, HostResources, InstanceInfo, InstanceSpec, NodeInfo


class MinimalDriver(Driver):
    """Only the mandatory core, declaring nothing optional."""

    name = "minimal"
    calls: list[str]

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.calls = []

    def connect(self) -> None: ...
    def close(self) -> None: ...
    def backend_info(self) -> BackendInfo:
        return BackendInfo(backend="minimal")

    def list_instances(self) -> list[InstanceInfo]:
        self.calls.append("list")
        return []

    def get_instance(self, instance_id: str) -> InstanceInfo:
        raise virtdrivers.InstanceNotFound(instance_id)

    def create(self, spec: InstanceSpec, *, progress: Any = None) -> InstanceInfo:
        self.calls.append("create")
        return InstanceInfo(id="1", name=spec.name, power_state=PowerState.SHUTDOWN, vcpus=1, memory_mb=64)

    def destroy(self, instance_id: str) -> None: ...
    def power_on(self, instance_id: str) -> InstanceInfo:
        raise NotImplementedError

    def power_off(self, instance_id: str, *, timeout: float = 60.0, force: bool = False) -> InstanceInfo:
        raise NotImplementedError

    def reboot(self, instance_id: str, *, hard: bool = False) -> InstanceInfo:
        raise NotImplementedError

    def list_nodes(self) -> list[NodeInfo]:
        return [NodeInfo(name="n", hypervisor_type="x")]

    def host_resources(self, node: str | None = None) -> HostResources:
        raise NotImplementedError


@pytest.fixture
def fake() -> Iterator[FakeDriver]:
    with FakeDriver() as driver:
        yield driver


def test_undeclared_optional_operation_raises_typed_not_supported() -> None:
    driver = MinimalDriver()
    with pytest.raises(NotSupported) as err:
        driver.pause("x")
    assert err.value.capability == Capability.PAUSE
    assert not isinstance(err.value, NotImplementedError)


def test_unimplemented_operation_stays_unsupported_while_probing() -> None:
    driver = MinimalDriver()
    with driver.probing(), pytest.raises(NotSupported):
        driver.create_snapshot("x", "s")


def test_guard_refuses_implemented_but_undeclared_operation_until_probing(fake: FakeDriver) -> None:
    info = fake.create(InstanceSpec(name="a", vcpus=1, memory_mb=64))
    fake.narrow_capabilities({Capability.PAUSE})
    assert not fake.supports(Capability.PAUSE)
    assert FakeDriver.capabilities >= {Capability.PAUSE}, "narrowing must not touch the class"
    with pytest.raises(NotSupported, match="pause"):
        fake.pause(info.id)
    assert fake.get_instance(info.id).power_state == PowerState.RUNNING
    with fake.probing():
        assert fake.pause(info.id).power_state == PowerState.PAUSED
    with pytest.raises(NotSupported):
        fake.unpause(info.id)


def test_disk_format_is_a_capability_checked_before_the_backend() -> None:
    class QcowOnly(MinimalDriver):
        name = "qcow-only"
        capabilities = frozenset({Capability.DISK_QCOW2})
        default_disk_format = virtdrivers.DiskFormat.QCOW2

    driver = QcowOnly()
    spec = InstanceSpec(name="a", vcpus=1, memory_mb=64, disks=[DiskSpec(size_gib=1, format="vhdx")])
    with pytest.raises(NotSupported, match="disk_vhdx"):
        driver.create(spec)
    assert driver.calls == []
    driver.create(InstanceSpec(name="a", vcpus=1, memory_mb=64, disks=[DiskSpec(size_gib=1)]))
    assert driver.calls == ["create"]


def test_mappings_are_validated_into_objects_before_the_backend() -> None:
    driver = MinimalDriver()
    with pytest.raises(InvalidSpec, match="vcpus"):
        driver.create({"name": "a", "vcpus": 0, "memory_mb": 64})  # type: ignore[arg-type]
    with pytest.raises(InvalidSpec):
        driver.create(42)  # type: ignore[arg-type]
    assert driver.calls == []


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"vcpus": 0}, "vcpus"), ({"memory_mb": 1}, "memory_mb"), ({}, "resize")]
)
def test_resize_arguments_are_validated(fake: FakeDriver, kwargs: dict[str, int], field: str) -> None:
    info = fake.create(InstanceSpec(name="a", vcpus=1, memory_mb=64))
    with pytest.raises(InvalidSpec) as err:
        fake.resize(info.id, **kwargs)
    assert err.value.field == field
    assert fake.get_instance(info.id).vcpus == 1


def test_capabilities_are_class_data_readable_without_connecting() -> None:
    assert Capability.LIVE_MIGRATE in FakeDriver.capabilities
    assert MinimalDriver.capabilities == frozenset()
    assert MinimalDriver().supports("pause") is False


def test_older_minor_contract_drops_capabilities_it_predates() -> None:
    class OldPlugin(MinimalDriver):
        name = "old"
        contract_version = "1.0"
        capabilities = frozenset({Capability.PAUSE, Capability.ADOPT})

    assert Capability.ADOPT.since == virtdrivers.ContractVersion(1, 1)
    assert OldPlugin.capabilities == {Capability.PAUSE}


def test_settings_are_validated_and_secrets_hidden() -> None:
    from pydantic import SecretStr

    from virtdrivers.driver import DriverSettings

    class S(DriverSettings):
        user: str
        password: SecretStr

    class WithSecrets(MinimalDriver):
        name = "secretive"
        settings_model = S

    driver = WithSecrets(user="u", password="hunter2-secret")
    assert "hunter2-secret" not in repr(driver)
    assert driver.settings.secrets() == ["hunter2-secret"]
    with pytest.raises(InvalidSpec) as err:
        WithSecrets(user="u", password="hunter2-secret", bogus=1)
    assert "hunter2-secret" not in str(err.value)
    assert err.value.field == "secretive.bogus"


def test_redact_removes_common_secret_shapes() -> None:
    from virtdrivers.errors import redact

    text = (
        "POST https://admin:s3cret@vc.lab/sdk password=s3cret&user=x "
        '{"access_token": "tok123"} Authorization: Basic dXNlcjpwYXNz'
    )
    out = redact(text, ["s3cret"])
    for secret in ("s3cret", "tok123", "dXNlcjpwYXNz"):
        assert secret not in out
    assert "vc.lab" in out


def test_backend_name_rule_is_checked_before_the_backend() -> None:
    class Strict(MinimalDriver):
        name = "strict"
        name_pattern = r"[A-Za-z0-9_.-]+"
        name_rule = "may contain only letters, digits, '_', '-' and '.'"

    driver = Strict()
    with pytest.raises(InvalidSpec) as err:
        driver.create(InstanceSpec(name="has space", vcpus=1, memory_mb=64))
    assert err.value.field == "name"
    assert "only letters" in str(err.value)
    assert driver.calls == []
    driver.create(InstanceSpec(name="ok_name-1.2", vcpus=1, memory_mb=64))
    assert driver.calls == ["create"]
