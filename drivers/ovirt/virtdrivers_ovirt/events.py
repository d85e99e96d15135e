"""Lifecycle events for subscribers, from the engine's VM statuses.

The SDK has no push channel, so one thread looks at every VM in bulk (one paged
search per look, as :meth:`OvirtDriver.list_instances` does) at a fixed cadence
and turns the differences into :class:`~virtdrivers.objects.LifecycleEvent`
objects with :func:`virtdrivers_ovirt.mapping.lifecycle_events`.

A look every half second misses a VM that starts and stops in between. So the
driver also reports every state it waits for (:meth:`StatusPoller.observe`): the
transitions this driver makes are never missed, those made by others are seen
at the polling cadence. Both go through the same diff, so nothing is reported twice.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable

from virtdrivers.driver import EventCallback
from virtdrivers.errors import DriverError
from virtdrivers.objects import EventType, LifecycleEvent
from virtdrivers_ovirt import mapping

log = logging.getLogger(__name__)

#: Returns every VM as ``{id: Seen}`` and the host names by id.
Look = Callable[[], tuple[dict[str, mapping.Seen], dict[str, str]]]


class StatusPoller:
    """One thread per driver, running while anyone is subscribed."""

    def __init__(self, look: Look, interval: float) -> None:
        self._look = look
        self._interval = interval
        self._lock = threading.Lock()
        self._callbacks: dict[int, EventCallback] = {}
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[str, mapping.Seen] = {}
        self._observed: dict[str, float] = {}
        self._state = threading.Lock()
        self._pending: queue.SimpleQueue[list[tuple[str, mapping.Seen | None, EventType]]] = queue.SimpleQueue()
        self._hosts: dict[str, str] = {}
        #: Held while callbacks run: ``remove`` waits for a delivery in progress, so a closed
        #: subscription never sees another event (re-entrant: a callback may close its own).
        self._delivering = threading.RLock()

    def add(self, callback: EventCallback) -> int:
        with self._lock:
            sid = next(self._ids)
            self._callbacks[sid] = callback
            if self._thread is None:
                # The first look is the baseline: only what changes after subscribing is reported.
                last, self._hosts = self._look()
                with self._state:
                    self._last, self._observed = last, {}
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="ovirt-events", daemon=True)
                self._thread.start()
            return sid

    def remove(self, sid: int) -> None:
        with self._lock:
            self._callbacks.pop(sid, None)
            idle = not self._callbacks
        with self._delivering:
            pass  # a delivery that copied the callbacks before the pop has ended
        if idle:
            self.stop()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._callbacks.clear()
        self._stop.set()
        self._pending.put([])
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    @property
    def active(self) -> bool:
        return self._thread is not None

    def observe(self, vm_id: str, seen: mapping.Seen | None) -> None:
        """The driver saw ``vm_id`` in this state (None: gone) while waiting on it."""
        if self._thread is None:
            return
        with self._state:
            before = {vm_id: self._last[vm_id]} if vm_id in self._last else {}
            after = {vm_id: seen} if seen is not None else {}
            events = mapping.lifecycle_events(before, after)
            if seen is None:
                self._last.pop(vm_id, None)
            else:
                self._last[vm_id] = seen
            self._observed[vm_id] = time.monotonic()
        if events:
            # The newer look names where the VM is now (a migrated VM's destination); the older
            # one only serves a VM that is gone.
            self._pending.put([(i, after.get(i) or before.get(i), k) for i, k in events])

    def _poll(self) -> None:
        started = time.monotonic()
        now, self._hosts = self._look()
        with self._state:
            # A VM the driver observed during this look is newer in _last than in the look.
            fresh = {i for i, t in self._observed.items() if t >= started}
            before = {i: v for i, v in self._last.items() if i not in fresh}
            after = {i: v for i, v in now.items() if i not in fresh}
            events = mapping.lifecycle_events(before, after)
            for i in fresh:
                if i in self._last:
                    after[i] = self._last[i]
            self._last = after
            self._observed = {i: t for i, t in self._observed.items() if t >= started}
        if events:
            self._pending.put([(i, after.get(i) or before.get(i), k) for i, k in events])

    def _run(self) -> None:
        deadline = time.monotonic() + self._interval
        while not self._stop.is_set():
            try:
                batch = self._pending.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                deadline = time.monotonic() + self._interval
                try:
                    self._poll()
                except DriverError as exc:
                    log.warning("ovirt: event poll failed, will retry: %s", exc)
                continue
            self._deliver(batch)

    def _deliver(self, batch: list[tuple[str, mapping.Seen | None, EventType]]) -> None:
        stamp = datetime.datetime.now(datetime.UTC)
        with self._delivering:
            for vm_id, seen, kind in batch:
                host = seen[1] if seen is not None else None
                event = LifecycleEvent(
                    instance_id=vm_id,
                    type=kind,
                    timestamp=stamp,
                    name=seen[2] if seen is not None else None,
                    node=self._hosts.get(host) if host else None,
                )
                with self._lock:  # looked up per event: one closed meanwhile gets nothing more
                    callbacks = list(self._callbacks.values())
                for callback in callbacks:
                    with contextlib.suppress(Exception):  # one subscriber's bug must not stop the others
                        callback(event)
