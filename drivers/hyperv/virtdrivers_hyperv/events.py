"""Lifecycle events for Hyper-V over WinRM.

A WinRM shell cannot carry WMI event subscriptions back to us, so events come from
two sources: the driver reports what it just did (at once, exactly), and a poller
thread with its own WinRM session runs the bulk listing script (all VMs, managed or
not, so that an adoption is not mistaken for a creation) every
``event_poll_interval`` seconds to catch changes made elsewhere (Hyper-V Manager,
cluster failover). Both feed one table of last-known states, so a change is reported
once whichever source sees it first. Callbacks run on a dispatcher thread.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import queue
import threading
from collections.abc import Callable

from virtdrivers.driver import EventCallback, Subscription
from virtdrivers.errors import DriverError
from virtdrivers.objects import EventType, InstanceInfo, LifecycleEvent, PowerState

__all__ = ["EventHub", "transitions"]

log = logging.getLogger(__name__)

_INTO: dict[PowerState, EventType] = {
    PowerState.SHUTDOWN: EventType.STOPPED,
    PowerState.PAUSED: EventType.PAUSED,
    PowerState.SUSPENDED: EventType.SUSPENDED,
    PowerState.CRASHED: EventType.STOPPED,
}


def transitions(old: InstanceInfo | None, new: InstanceInfo | None) -> list[EventType]:
    """The lifecycle events that lead from ``old`` to ``new`` (None: not there)."""
    if old is None and new is None:
        return []
    if old is None:
        assert new is not None
        return [EventType.CREATED] + ([EventType.STARTED] if new.power_state == PowerState.RUNNING else [])
    if new is None:
        return [EventType.DESTROYED]
    events: list[EventType] = []
    if old.power_state != new.power_state:
        if new.power_state == PowerState.RUNNING:
            resumed = old.power_state in (PowerState.PAUSED, PowerState.SUSPENDED)
            events.append(EventType.RESUMED if resumed else EventType.STARTED)
        elif new.power_state in _INTO:
            events.append(_INTO[new.power_state])
    if old.node != new.node:
        events.append(EventType.MIGRATED)
    return events


class EventHub:
    """Subscribers, the last-known state table, the dispatcher and the poller."""

    def __init__(self, lister: Callable[[], list[InstanceInfo]], interval: float) -> None:
        self._lister = lister
        self._interval = interval
        self._lock = threading.Lock()
        self._known: dict[str, InstanceInfo] | None = None
        #: Bumped by every observation, so a listing that raced with one is dropped as stale.
        self._generation = 0
        self._subscribers: dict[int, EventCallback] = {}
        self._ids = itertools.count(1)
        self._queue: queue.SimpleQueue[LifecycleEvent | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def active(self) -> bool:
        return bool(self._subscribers)

    def subscribe(self, callback: EventCallback) -> Subscription:
        with self._lock:
            sid = next(self._ids)
            self._subscribers[sid] = callback
            start = not self._threads
        if start:
            self._baseline()
            self._threads = [
                threading.Thread(target=self._dispatch, name="hyperv-events", daemon=True),
                threading.Thread(target=self._poll, name="hyperv-poller", daemon=True),
            ]
            for t in self._threads:
                t.start()

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.pop(sid, None)

        return Subscription(unsubscribe)

    def _baseline(self) -> None:
        try:
            listed = self._lister()
        except DriverError as exc:
            log.warning("hyperv events: first listing failed, retrying on the next poll: %s", exc)
            return
        with self._lock:
            self._known = {i.id: i for i in listed}

    def observe(self, instance_id: str, info: InstanceInfo | None) -> None:
        """Record a state the driver has just caused or seen, emitting what changed."""
        if not self.active:
            return
        with self._lock:
            if self._known is None:
                return
            self._generation += 1
            old = self._known.get(instance_id)
            if info is None:
                self._known.pop(instance_id, None)
            else:
                self._known[instance_id] = info
        self._emit(instance_id, old, info)

    def _emit(self, instance_id: str, old: InstanceInfo | None, new: InstanceInfo | None) -> None:
        """Queue the events from ``old`` to ``new``, for managed instances only.

        The table holds unmanaged VMs too, so that adopting a pet (its Notes gain the
        marker, nothing else changes) is a change of management and not a "created"
        and "started": the guest was never restarted.
        """
        ref = new or old
        if ref is None or not ref.managed:
            return
        for event in transitions(old, new):
            self._queue.put(
                LifecycleEvent(
                    instance_id=instance_id,
                    type=event,
                    timestamp=datetime.datetime.now(datetime.UTC),
                    name=ref.name if ref else None,
                    node=ref.node if ref else None,
                )
            )

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                generation = self._generation
            try:
                listed = {i.id: i for i in self._lister()}
            except DriverError as exc:
                log.debug("hyperv events: polling failed, retrying: %s", exc)
                continue
            with self._lock:
                if self._known is None:
                    self._known = listed
                    continue
                if generation != self._generation:
                    continue  # the driver changed something meanwhile: this listing may predate it
                known, self._known = self._known, listed
            for vid in known.keys() | listed.keys():
                self._emit(vid, known.get(vid), listed.get(vid))

    def _dispatch(self) -> None:
        while (event := self._queue.get()) is not None:
            with self._lock:
                callbacks = list(self._subscribers.values())
            for callback in callbacks:
                with contextlib.suppress(Exception):  # one subscriber's bug must not stop the others
                    callback(event)

    def close(self) -> None:
        self._stop.set()
        self._queue.put(None)
        for t in self._threads:
            t.join(timeout=10)
        with self._lock:
            self._subscribers.clear()
