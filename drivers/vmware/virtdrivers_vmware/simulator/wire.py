"""Counting SOAP round trips, for tests and the benchmark.

Every vSphere call pyVmomi makes (methods and property accessors alike) goes
through ``SoapStubAdapter.InvokeMethod``: counting there counts requests on the
wire, whichever library (ours, libcloud, a naive script) drives pyVmomi.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import threading
from collections.abc import Iterator
from typing import Any


class RoundTrips:
    def __init__(self) -> None:
        self.by_method: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return sum(self.by_method.values())

    def add(self, method: str) -> None:
        with self._lock:
            self.by_method[method] += 1


@contextlib.contextmanager
def count_round_trips() -> Iterator[RoundTrips]:
    """Count SOAP requests made by pyVmomi in this process while the block runs."""
    adapter: Any = importlib.import_module("pyVmomi.SoapAdapter").SoapStubAdapter
    original = adapter.InvokeMethod
    counter = RoundTrips()

    def counting(self: Any, mo: Any, info: Any, args: Any, outerStub: Any = None) -> Any:
        counter.add(str(info.wsdlName))
        return original(self, mo, info, args, outerStub)

    adapter.InvokeMethod = counting
    try:
        yield counter
    finally:
        adapter.InvokeMethod = original
