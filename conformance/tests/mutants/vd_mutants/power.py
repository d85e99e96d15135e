"""Mutants of power control: off (forced and graceful), on, reboot, pause, suspend."""

from __future__ import annotations

import time

from virtdrivers.capabilities import Capability
from virtdrivers.errors import InstanceNotFound, InvalidState
from virtdrivers.fake import FakeDriver
from virtdrivers.objects import EventType, InstanceInfo, PowerState


class ForceOffWaits(FakeDriver):
    """power_off(force=True) does not pass force down, so it still waits out a deaf guest. Feature: power."""

    name = "mut-force-off-waits"

    def power_off(self, instance_id: str, *, timeout: float = 60.0, force: bool = False) -> InstanceInfo:
        return super().power_off(instance_id, timeout=timeout, force=False)


class GracefulNeverForces(FakeDriver):
    """Graceful power_off of an ACPI-deaf guest times out and returns it still running. Feature: graceful_shutdown."""

    name = "mut-graceful-never-forces"

    def power_off(self, instance_id: str, *, timeout: float = 60.0, force: bool = False) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            deaf = inst.acpi_deaf or inst.metadata.get("fake.ignore_acpi") == "true"
            graceful = not force and timeout > 0 and inst.power_state == PowerState.RUNNING
        if not (graceful and deaf):
            return super().power_off(instance_id, timeout=timeout, force=force)
        time.sleep(timeout)  # the guest ignored the request; the hard stop after it was forgotten
        return self.get_instance(instance_id)


class GracefulFixedTimeout(FakeDriver):
    """Graceful power_off ignores the caller's timeout and waits the backend's own 60 s. Feature: graceful_shutdown."""

    name = "mut-graceful-fixed-timeout"

    def power_off(self, instance_id: str, *, timeout: float = 60.0, force: bool = False) -> InstanceInfo:
        return super().power_off(instance_id, timeout=60.0 if timeout > 0 else 0, force=force)


class PowerOffStaleInfo(FakeDriver):
    """power_off returns the instance as read before the stop task ran. Feature: power."""

    name = "mut-power-off-stale-info"

    def power_off(self, instance_id: str, *, timeout: float = 60.0, force: bool = False) -> InstanceInfo:
        before = self.get_instance(instance_id)
        super().power_off(instance_id, timeout=timeout, force=force)
        return before


class PowerOnNoEvent(FakeDriver):
    """power_on changes the state without the backend's STARTED event. Feature: events."""

    name = "mut-power-on-no-event"

    def power_on(self, instance_id: str) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            if inst.power_state == PowerState.RUNNING:
                return inst.info()
            self._require(inst, PowerState.SHUTDOWN, PowerState.CRASHED)
            inst.power_state = PowerState.RUNNING
            return inst.info()


class PowerOnUnknownValueError(FakeDriver):
    """power_on translates the backend's 'no such VM' fault into ValueError, not InstanceNotFound. Feature: get."""

    name = "mut-power-on-unknown-valueerror"

    def power_on(self, instance_id: str) -> InstanceInfo:
        try:
            return super().power_on(instance_id)
        except InstanceNotFound as exc:
            raise ValueError(f"no VM with id {instance_id!r}") from exc


class RebootLeavesStopped(FakeDriver):
    """Soft reboot is shutdown-then-start; the start goes out before the guest is down, and is lost. Feature: reboot."""

    name = "mut-reboot-leaves-stopped"

    def reboot(self, instance_id: str, *, hard: bool = False) -> InstanceInfo:
        if hard:
            return super().reboot(instance_id, hard=True)
        with self._b.lock:
            inst = self._get(instance_id)
            self._require(inst, PowerState.RUNNING)
            return self._set_power(inst, PowerState.SHUTDOWN, EventType.STOPPED)


class RebootStartsStopped(FakeDriver):
    """reboot of a stopped VM powers it on (the backend's reset starts it) instead of InvalidState. Feature: reboot."""

    name = "mut-reboot-starts-stopped"

    def reboot(self, instance_id: str, *, hard: bool = False) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            if inst.power_state == PowerState.SHUTDOWN:
                return self._set_power(inst, PowerState.RUNNING, EventType.STARTED)
        return super().reboot(instance_id, hard=hard)


class PauseUndeclared(FakeDriver):
    """pause and unpause work but PAUSE is missing from the declared capabilities. Feature: pause."""

    name = "mut-pause-undeclared"
    capabilities = FakeDriver.capabilities - {Capability.PAUSE}


class UnpauseRunningAccepted(FakeDriver):
    """unpause of a running VM is silently accepted instead of InvalidState. Feature: pause."""

    name = "mut-unpause-running-accepted"

    def unpause(self, instance_id: str) -> InstanceInfo:
        with self._b.lock:
            if self._get(instance_id).power_state == PowerState.RUNNING:
                return self.get_instance(instance_id)
        return super().unpause(instance_id)


class SuspendIsPause(FakeDriver):
    """suspend keeps the memory in RAM and reports PAUSED, as the backend's 'suspend' really is. Feature: suspend."""

    name = "mut-suspend-is-pause"

    def suspend(self, instance_id: str) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            self._require(inst, PowerState.RUNNING)
            return self._set_power(inst, PowerState.PAUSED, EventType.SUSPENDED)

    def resume(self, instance_id: str) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id)
            self._require(inst, PowerState.PAUSED)
            return self._set_power(inst, PowerState.RUNNING, EventType.RESUMED)


class SuspendStoppedSwallowed(FakeDriver):
    """suspend of a stopped VM swallows the backend's InvalidState and returns as if done. Feature: suspend."""

    name = "mut-suspend-stopped-swallowed"

    def suspend(self, instance_id: str) -> InstanceInfo:
        try:
            return super().suspend(instance_id)
        except InvalidState:
            return self.get_instance(instance_id)
