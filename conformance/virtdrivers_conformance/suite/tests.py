"""The conformance tests, written once against the public contract.

Each test names its feature; a feature with a capability is checked only
through the contract, so the same test serves every backend. A green cell is a
claim, so tests pin behaviour rather than success: after every operation they
read the state back through every read path (``get_instance`` and the bulk
``list_instances`` must agree field by field), round-trip every field of what
they asked for, move instances to a node that is not the scheduler's obvious
choice, and exercise the error paths (unknown ids, wrong states, a create that
fails half-way, concurrent callers, a guest that ignores ACPI, secrets) through
the endpoint's hooks (:class:`virtdrivers.EndpointHooks`).

The tests live in one module per area (``lifecycle``, ``operations``,
``cluster``, ``workloads``) with their read-back helpers in ``checks``; this
module gathers them, as :class:`~virtdrivers_conformance.suite.ConformanceSuite` does.
"""

from __future__ import annotations

from virtdrivers_conformance.suite.cluster import TestCluster, TestEvents, TestMigration, TestPets
from virtdrivers_conformance.suite.lifecycle import (
    TestHostileInput,
    TestLifecycle,
    TestReap,
    TestSecrets,
    TestUnknownInstances,
)
from virtdrivers_conformance.suite.operations import TestFormats, TestPower, TestResize, TestSnapshots, TestStorage
from virtdrivers_conformance.suite.workloads import TestWorkloads

__all__ = [
    "TestCluster",
    "TestEvents",
    "TestFormats",
    "TestHostileInput",
    "TestLifecycle",
    "TestMigration",
    "TestPets",
    "TestPower",
    "TestReap",
    "TestResize",
    "TestSecrets",
    "TestSnapshots",
    "TestStorage",
    "TestUnknownInstances",
    "TestWorkloads",
]
