"""The embedded endpoint as the conformance suite sees it: honest evidence, three hosts, a secret,
and hooks that make the simulator (the peer, in another process) misbehave over the wire."""

from __future__ import annotations

import time
from typing import Any

import pytest

from virtdrivers.endpoint import Evidence
from virtdrivers.errors import AuthenticationFailed, InvalidState, NotFound
from virtdrivers.objects import InstanceSpec, PowerState
from virtdrivers_ovirt.driver import OvirtDriver
from virtdrivers_ovirt.endpoint import control
from virtdrivers_ovirt.simulator import Simulator


def _disks(drv: OvirtDriver) -> set[str]:
    return {d.id for d in drv.session.call(lambda s: s.disks_service().list())}


def _vm_names(drv: OvirtDriver) -> set[str]:
    return {vm.name for vm in drv.session.call(lambda s: s.vms_service().list())}


def test_endpoint_declares_a_project_simulator_of_an_engine() -> None:
    (endpoint,) = OvirtDriver.embedded_endpoints()
    assert endpoint.evidence is Evidence.PROJECT_SIMULATOR
    assert endpoint.backend == "virtdrivers oVirt REST simulator"
    assert endpoint.backend_version
    assert endpoint.imitates == "oVirt Engine 4.5.6-1.el8"
    hooks = endpoint.hooks
    assert hooks.fail_next_create
    assert hooks.ignore_acpi
    assert hooks.fail_node
    assert endpoint.unavailable == frozenset()


def test_endpoint_hooks_act_on_the_simulator_process() -> None:
    (endpoint,) = OvirtDriver.embedded_endpoints()
    hooks = endpoint.hooks
    assert hooks.fail_next_create
    assert hooks.ignore_acpi
    assert hooks.fail_node
    with endpoint.start() as settings, OvirtDriver(settings, event_interval=0.05) as drv:
        # Backend facts the simulator claims over the wire are what it imitates.
        assert (drv.backend_info().backend, drv.backend_info().backend_version) == ("oVirt Engine", "4.5.6-1.el8")
        nodes = [n.name for n in drv.list_nodes()]
        assert len(nodes) == 3
        assert len(drv.list_unmanaged()) == 2
        # A random password nobody could find in a text by accident.
        assert len(settings["password"]) > 20
        assert settings["password"] not in ("simulator", "admin")

        # fail_next_create: the VM and its disk exist, then the disk fails; nothing is left.
        vms, disks = _vm_names(drv), _disks(drv)
        hooks.fail_next_create(settings, drv)
        with pytest.raises(InvalidState, match="illegal"):
            drv.create(InstanceSpec(name="doomed", vcpus=1, memory_mb=256, disks=[{"size_gib": 3}]))
        assert (_vm_names(drv), _disks(drv)) == (vms, disks)
        # Without a disk, the armed fault fails the launch instead; again nothing is left.
        hooks.fail_next_create(settings, drv)
        with pytest.raises(InvalidState, match="down"):
            drv.create(InstanceSpec(name="doomed", vcpus=1, memory_mb=256, disks=[]))
        assert _vm_names(drv) == vms
        # Armed once means once.
        ok = drv.create(InstanceSpec(name="fine", vcpus=1, memory_mb=256, disks=[{"size_gib": 1}]))
        assert ok.power_state is PowerState.RUNNING

        # ignore_acpi: a graceful stop waits out its timeout, then forces.
        hooks.ignore_acpi(settings, drv, ok.id)
        began = time.monotonic()
        assert drv.power_off(ok.id, timeout=1.5).power_state is PowerState.SHUTDOWN
        assert time.monotonic() - began >= 1.5

        # fail_node: the host goes non_responsive and its VMs unknown; the scheduler avoids it.
        on = drv.power_on(ok.id)
        assert on.node is not None
        hooks.fail_node(settings, drv, on.node, True)
        state = {n.name: n.state for n in drv.list_nodes()}
        assert state[on.node] == "non_responsive"
        assert drv.get_instance(ok.id).power_state is PowerState.NOSTATE
        hooks.fail_node(settings, drv, on.node, False)
        assert {n.name: n.state for n in drv.list_nodes()}[on.node] == "up"
        back = drv.get_instance(ok.id)
        assert (back.power_state, back.node) == (PowerState.SHUTDOWN, None)  # the host came back rebooted
        with pytest.raises(NotFound):
            hooks.fail_node(settings, drv, "no-such-host", True)
        with pytest.raises(NotFound):
            hooks.ignore_acpi(settings, drv, "00000000-0000-4000-8000-000000000000")


def test_wrong_password_names_neither_password() -> None:
    with Simulator(password="right-pw-0d9f8a7b") as sim:
        settings: dict[str, Any] = sim.settings() | {"password": "wrong-pw-5c4b3a21"}
        with pytest.raises(AuthenticationFailed) as err:
            OvirtDriver(settings).connect()
        texts = [str(err.value), repr(err.value)]
        cause: BaseException | None = err.value
        while cause is not None:
            texts += [str(cause), repr(cause)]
            cause = cause.__cause__ or cause.__context__
        for text in texts:
            assert "right-pw-0d9f8a7b" not in text
            assert "wrong-pw-5c4b3a21" not in text


def test_control_knobs_refuse_bad_arguments(sim: Simulator) -> None:
    settings = sim.settings()
    assert control(settings, "fail-next-create", count=2) == {"failing_creates": 2}
    with pytest.raises(Exception, match="400"):
        control(settings, "ignore-acpi")  # no vm
    with pytest.raises(NotFound):
        control(settings, "no-such-knob")
