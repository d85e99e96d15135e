"""The engine's clock for asynchronous work: delayed transitions run on one thread, in due order.

Kept apart from :mod:`.model` (the inventory and its rules); the engine owns one scheduler.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable


class Scheduler:
    """Runs delayed transitions on one thread, in due order, under the engine lock."""

    def __init__(self, lock: threading.RLock, after: Callable[[], None] = lambda: None) -> None:
        self._lock = lock
        #: Called under the lock after each transition (the engine saves its inventory there).
        self._after = after
        self._cond = threading.Condition()
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="ovirt-sim-scheduler", daemon=True)
        self._thread.start()

    def later(self, delay: float, func: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._queue, (time.monotonic() + delay, next(self._seq), func))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._queue or self._queue[0][0] > time.monotonic()):
                    timeout = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, func = heapq.heappop(self._queue)
            with self._lock:
                func()
                self._after()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)
