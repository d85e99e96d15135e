"""Lifecycle events from the PropertyCollector (WaitForUpdatesEx), on a thread with its own session.

vCenter pushes property changes to a collector's long poll; we watch each VM's
name, power state and host and turn changes into :class:`LifecycleEvent`. The
watcher logs in separately so its long poll never holds up the driver's calls,
and after a broken connection or an expired session it logs in again, compares
the fresh state with the last it saw, and reports what changed meanwhile.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
from typing import Any

from virtdrivers.driver import EventCallback
from virtdrivers.errors import DriverError
from virtdrivers.objects import EventType, LifecycleEvent
from virtdrivers_vmware import mapping
from virtdrivers_vmware._sdk import sdk
from virtdrivers_vmware.session import Session, VSphereSettings

log = logging.getLogger(__name__)

_VM_PATHS = ("name", "runtime.powerState", "runtime.host")
_HOST_PATHS = ("name", "parent")
_CLUSTER_PATHS = ("name",)
#: Seconds one WaitForUpdatesEx may block: how long stop() can take at worst.
_POLL_SECONDS = 1
#: Pause before logging in again after the server went away.
_RETRY_SECONDS = 1.0


def transition_events(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[EventType]:
    """The events that take a VM from state ``old`` to ``new`` (None: it did not exist)."""
    if old is None and new is None:
        return []
    if new is None:
        return [EventType.DESTROYED]
    events: list[EventType] = []
    before = old.get("runtime.powerState") if old is not None else None
    after = new.get("runtime.powerState")
    if old is None:
        events.append(EventType.CREATED)
    if after != before and after is not None:
        if after == "poweredOn":
            events.append(EventType.RESUMED if before == "suspended" else EventType.STARTED)
        elif after == "poweredOff" and before is not None:
            events.append(EventType.STOPPED)
        elif after == "suspended":
            events.append(EventType.SUSPENDED)
    if old is not None and mapping.moid(old.get("runtime.host")) != mapping.moid(new.get("runtime.host")):
        events.append(EventType.MIGRATED)
    return events


class EventWatcher:
    def __init__(self, settings: VSphereSettings, callback: EventCallback, *, scope: str | None, name: str) -> None:
        self._session = Session(settings, name=f"{name} events")
        self._callback = callback
        self._scope = scope
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vsphere-events", daemon=True)
        self._collector: Any = None
        self._vms: dict[str, dict[str, Any]] = {}
        self._hosts: dict[str, tuple[str, str | None]] = {}
        self._clusters: dict[str, str] = {}
        self._baselined = False

    def start(self) -> None:
        self._thread.start()
        # Subscribers expect events for what they do next: return once the baseline is taken.
        self._ready.wait(timeout=self._session.settings.http_timeout)

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        collector = self._collector
        if collector is not None:
            with contextlib.suppress(Exception):
                collector.CancelWaitForUpdates()
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(timeout=_POLL_SECONDS + 10)
        self._session.close()

    # -- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session.call("watch events", self._watch, idempotent=True)
            except DriverError as exc:
                if self._stop.is_set():
                    break
                log.info("vsphere events: %s; reconnecting", exc)
            except Exception as exc:
                if self._stop.is_set():
                    break
                log.warning("vsphere events: unexpected %s; reconnecting", type(exc).__name__, exc_info=True)
            self._ready.set()
            self._stop.wait(_RETRY_SECONDS)

    def _watch(self, content: Any) -> None:
        vim, vmodl = sdk()

        pcls = vmodl.query.PropertyCollector
        view = self._session.view(content, ("VirtualMachine", "HostSystem", "ClusterComputeResource"))
        collector = content.propertyCollector.CreatePropertyCollector()
        self._collector = collector
        try:
            spec = pcls.FilterSpec(
                objectSet=[
                    pcls.ObjectSpec(
                        obj=view,
                        skip=True,
                        selectSet=[pcls.TraversalSpec(name="v", path="view", skip=False, type=vim.view.ContainerView)],
                    )
                ],
                propSet=[
                    pcls.PropertySpec(type=vim.VirtualMachine, pathSet=list(_VM_PATHS)),
                    pcls.PropertySpec(type=vim.HostSystem, pathSet=list(_HOST_PATHS)),
                    pcls.PropertySpec(type=vim.ClusterComputeResource, pathSet=list(_CLUSTER_PATHS)),
                ],
            )
            collector.CreateFilter(spec, partialUpdates=True)
            version = ""
            fresh: dict[str, dict[str, Any]] = {}
            first = True
            while not self._stop.is_set():
                options = pcls.WaitOptions(maxWaitSeconds=_POLL_SECONDS)
                try:
                    update = collector.WaitForUpdatesEx(version, options)
                except vmodl.fault.RequestCanceled:
                    return
                if update is None:
                    if first:  # nothing at all in the inventory
                        first = False
                        self._rebaseline(fresh)
                    continue
                version = update.version
                changes = self._apply(update, fresh if first else None)
                if first:
                    first = False
                    self._rebaseline(fresh)
                else:
                    for oid, old, new in changes:
                        self._emit(oid, old, new)
        finally:
            self._collector = None
            with contextlib.suppress(Exception):
                collector.DestroyPropertyCollector()

    def _apply(
        self, update: Any, fresh: dict[str, dict[str, Any]] | None
    ) -> list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]:
        """Fold one UpdateSet into our state; the VM transitions it makes, in order."""
        changes: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]] = []
        target = fresh if fresh is not None else self._vms
        for fs in update.filterSet or ():
            for ou in fs.objectSet or ():
                kind, oid = mapping.type_name(ou.obj), mapping.moid(ou.obj) or ""
                if kind == "HostSystem":
                    name, parent = self._hosts.get(oid, (oid, None))
                    for ch in ou.changeSet or ():
                        if ch.name == "name":
                            name = str(ch.val)
                        elif ch.name == "parent":
                            parent = mapping.moid(ch.val)
                    self._hosts[oid] = (name, parent)
                    continue
                if kind == "ClusterComputeResource":
                    for ch in ou.changeSet or ():
                        if ch.name == "name":
                            self._clusters[oid] = str(ch.val)
                    continue
                if kind != "VirtualMachine":
                    continue
                old = target.get(oid)
                if ou.kind == "leave":
                    target.pop(oid, None)
                    changes.append((oid, old, None))
                    continue
                new = dict(old or {})
                for ch in ou.changeSet or ():
                    if ch.op in ("remove", "indirectRemove"):
                        new.pop(ch.name, None)
                    else:
                        new[ch.name] = ch.val
                target[oid] = new
                changes.append((oid, old if ou.kind != "enter" else None, new))
        return changes

    def _rebaseline(self, fresh: dict[str, dict[str, Any]]) -> None:
        """Adopt a fresh full state, reporting what changed since the last one we saw."""
        if self._baselined:
            for oid in set(self._vms) | set(fresh):
                self._emit(oid, self._vms.get(oid), fresh.get(oid))
        self._vms = fresh
        self._baselined = True
        self._ready.set()

    def _emit(self, oid: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        state = new if new is not None else old
        if state is None:
            return
        host_name, cluster_id = self._hosts.get(mapping.moid(state.get("runtime.host")) or "", (None, None))
        cluster = self._clusters.get(cluster_id or "")
        if self._scope is not None and cluster != self._scope:
            return
        for kind in transition_events(old, new):
            event = LifecycleEvent(
                instance_id=oid,
                type=kind,
                timestamp=datetime.datetime.now(datetime.UTC),
                name=str(state.get("name")) if state.get("name") is not None else None,
                node=cluster or host_name,
            )
            try:
                self._callback(event)
            except Exception:  # a subscriber's bug must not stop the stream
                log.exception("vsphere events: subscriber raised")
