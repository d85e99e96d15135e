"""Mutants of adoption (existing 'pet' VMs) and of lifecycle events."""

from __future__ import annotations

from virtdrivers.driver import EventCallback, ProgressCallback, Subscription
from virtdrivers.fake import FakeDriver
from virtdrivers.fake.driver import MANAGED_KEY
from virtdrivers.objects import EventType, InstanceInfo, LifecycleEvent, PowerState

# -- adopt --------------------------------------------------------------------------------------


class AdoptRestarts(FakeDriver):
    """adopt re-registers the VM, which power-cycles a running guest (STOPPED then STARTED). Feature: adopt."""

    name = "mut-adopt-restarts"

    def adopt(self, instance_id: str) -> InstanceInfo:
        with self._b.lock:
            inst = self._get(instance_id, managed_only=False)
            running = inst.power_state == PowerState.RUNNING
            info = super().adopt(instance_id)
            if running:
                self._set_power(inst, PowerState.SHUTDOWN, EventType.STOPPED)
                info = self._set_power(inst, PowerState.RUNNING, EventType.STARTED)
            return info


class AdoptDropsMetadata(FakeDriver):
    """adopt overwrites the VM's own metadata with the management tag instead of adding it. Feature: adopt."""

    name = "mut-adopt-drops-metadata"

    def adopt(self, instance_id: str) -> InstanceInfo:
        with self._b.lock:
            super().adopt(instance_id)
            inst = self._get(instance_id)
            inst.metadata = {MANAGED_KEY: "true"}
            return inst.info()


class UnmanagedListsManaged(FakeDriver):
    """list_unmanaged filters on a tag the driver never writes, so managed VMs are listed too. Feature: adopt."""

    name = "mut-unmanaged-lists-managed"

    def list_unmanaged(self) -> list[InstanceInfo]:
        with self._b.lock:
            return [i.info() for i in self._b.instances.values() if i.metadata.get(MANAGED_KEY) != "true"]


# -- events -------------------------------------------------------------------------------------


class EventsAfterClose(FakeDriver):
    """Subscription.close() forgets the handle locally but never unregisters the callback. Feature: events."""

    name = "mut-events-after-close"

    def subscribe(self, callback: EventCallback) -> Subscription:
        self._b.add_subscriber(callback)
        sub = Subscription(lambda: self._subscriptions.discard(sub))
        self._subscriptions.add(sub)
        return sub


class EventsNoDestroyed(FakeDriver):
    """destroy emits no DESTROYED event (it comes from undefine, which nobody listens to). Feature: events."""

    name = "mut-events-no-destroyed"

    def destroy(self, instance_id: str) -> None:
        with self._b.lock:
            self._get(instance_id)
            self._fault("destroy")
            del self._b.instances[instance_id]


class EventsNoGracefulStop(FakeDriver):
    """A graceful power_off emits no STOPPED event: only the hard stop's path sends one. Feature: events."""

    name = "mut-events-no-graceful-stop"

    def power_off(self, instance_id: str, *, timeout: float = 60.0, force: bool = False) -> InstanceInfo:
        if force or timeout <= 0:
            return super().power_off(instance_id, timeout=timeout, force=force)
        with self._b.lock:
            inst = self._get(instance_id)
            deaf = inst.acpi_deaf or inst.metadata.get("fake.ignore_acpi") == "true"
        if not deaf:  # the guest shut itself down: nobody reports it
            with self._b.lock:
                inst = self._get(instance_id)
                inst.power_state = PowerState.SHUTDOWN
                return inst.info()
        return super().power_off(instance_id, timeout=timeout, force=force)


class EventsMigratedOldNode(FakeDriver):
    """The MIGRATED event is sent before the move and names the source node. Feature: events."""

    name = "mut-events-migrated-old-node"

    def live_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        with self._b.lock:
            inst, target = self._move(instance_id, node, progress, PowerState.RUNNING)
            self._b.emit(inst, EventType.MIGRATED)
            inst.node = target
            return inst.info()


class EventsIdIsName(FakeDriver):
    """Events carry the VM's name where the contract wants its id. Feature: events."""

    name = "mut-events-id-is-name"

    def subscribe(self, callback: EventCallback) -> Subscription:
        def by_name(event: LifecycleEvent) -> None:
            callback(event.model_copy(update={"instance_id": event.name or event.instance_id}))

        return super().subscribe(by_name)
