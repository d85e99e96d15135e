"""``fake``: the reference in-memory driver.

Complete (every capability), thread-safe and fast, for compute-agent authors'
own unit tests and as the proof that the conformance suite is right. Several
driver objects with the same ``backend`` setting share one in-memory hypervisor,
the way connections to one real endpoint share its state; the default is a
private backend per driver.

Knobs for tests of code that uses a driver:

- ``FakeDriver.inject_fault(op, error)`` makes the next call of ``op`` raise.
- metadata ``{"fake.ignore_acpi": "true"}`` makes a guest ignore graceful shutdown,
  so the timeout-then-force path runs.
- ``unmanaged=N`` seeds N running "pet" instances created outside virtdrivers.
- ``FakeDriver.fail_node(name)`` marks a node down, for evacuation.
- ``state_file=PATH`` keeps the hypervisor in a JSON file under an ``fcntl`` lock
  instead of memory, so several processes share it and it survives any of them
  being killed (multi-process agents, crash and resume tests).
"""

from virtdrivers.fake.driver import FakeDriver, FakeSettings

__all__ = ["FakeDriver", "FakeSettings"]
