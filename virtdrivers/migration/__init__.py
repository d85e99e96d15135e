"""Migrations for every backend through one resumable orchestrator.

Cold migrate, resize, live migrate and evacuate all run through one state
machine (:mod:`virtdrivers.migration.engine`) whose state lives in a SQL store
(:mod:`virtdrivers.migration.store`), never in a driver or on a compute host.
Drivers only provide primitives, chosen by capability. Orchestrators share the
store through leases, resume each other's migrations after a crash, and write
what they share at the lowest object version any live peer reads, so a fleet can
be upgraded one orchestrator at a time.

Typical use::

    with load("libvirt", uri=...) as driver, Orchestrator(MigrationStore(url), driver) as orch:
        record = orch.start(MigrationSpec(kind="live", instance_id=vm_id, node="kvm2"))
        orch.run(record.id)
"""

from virtdrivers.migration.engine import (
    BOUNDARIES,
    FORWARD_STEPS,
    REVERT_STEPS,
    MigrationBusy,
    MigrationFailed,
    Orchestrator,
    endpoint_key,
)
from virtdrivers.migration.objects import MigrationKind, MigrationPlan, MigrationSpec, TransferMethod
from virtdrivers.migration.store import ACTIVE, TERMINAL, LeaseLost, MigrationRecord, MigrationStore, default_url

__all__ = [
    "ACTIVE",
    "BOUNDARIES",
    "FORWARD_STEPS",
    "REVERT_STEPS",
    "TERMINAL",
    "LeaseLost",
    "MigrationBusy",
    "MigrationFailed",
    "MigrationKind",
    "MigrationPlan",
    "MigrationRecord",
    "MigrationSpec",
    "MigrationStore",
    "Orchestrator",
    "TransferMethod",
    "default_url",
    "endpoint_key",
]
