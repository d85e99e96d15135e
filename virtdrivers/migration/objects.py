"""What orchestrators write into the shared store for each other.

A migration record outlives the orchestrator that started it and is read back by
whichever orchestrator resumes it, which during a rolling upgrade may be older
or newer. So the request and the plan are versioned objects, stored as
primitives rendered at the lowest version every live orchestrator can read.
"""

from __future__ import annotations

import enum

from pydantic import Field

from virtdrivers.objects import InstanceInfo, VersionedObject
from virtdrivers.objects.compute import MAX_MEMORY_MB, MAX_VCPUS, MIN_MEMORY_MB

__all__ = ["MigrationKind", "MigrationPlan", "MigrationSpec", "TransferMethod"]


class MigrationKind(enum.StrEnum):
    """The flavours one state machine serves."""

    COLD = "cold"
    """Move to another node, stopping the instance for the move and restoring its power after."""
    RESIZE = "resize"
    """Change vCPUs/memory offline, on the same node or while moving to another one."""
    LIVE = "live"
    """Move a running instance without stopping it."""
    EVACUATE = "evacuate"
    """Rebuild on another node because the instance's own node is down."""


class TransferMethod(enum.StrEnum):
    """Which driver primitive the transfer step uses; chosen once, at precheck, from capabilities."""

    LIVE_MIGRATE = "live_migrate"
    COLD_MIGRATE = "cold_migrate"
    EVACUATE = "evacuate"
    NONE = "none"
    """Same-node resize: nothing moves."""


class MigrationSpec(VersionedObject):
    """What was asked for. Written once at start; never changes."""

    VERSION = "1.3"
    FIELD_SINCE = {"allow_cold_fallback": "1.1", "last_known": "1.2"}
    #: 1.3 carries the instance as contract 1.2 describes it (with its image and NICs).
    CHILD_VERSIONS = {"last_known": [("1.3", "1.2"), ("1.2", "1.1")]}

    kind: MigrationKind
    instance_id: str = Field(min_length=1, max_length=255)
    node: str | None = Field(default=None, max_length=255)
    """Destination node; None lets precheck choose (required for evacuate only when several qualify)."""
    vcpus: int | None = Field(default=None, ge=1, le=MAX_VCPUS)
    """Resize target; None keeps the current value."""
    memory_mb: int | None = Field(default=None, ge=MIN_MEMORY_MB, le=MAX_MEMORY_MB)
    shutdown_timeout: float = Field(default=60.0, ge=0, le=3600)
    """Seconds a guest gets to shut down cleanly before it is forced off."""
    allow_cold_fallback: bool = False
    """A live migration may stop, move and restart the instance when the backend cannot move it live."""
    last_known: InstanceInfo | None = None
    """The instance as the caller last saw it. An evacuation needs it where the backend cannot see an
    instance whose node is down (Hyper-V: a non-clustered VM vanishes with its host), as Nova's
    evacuate works from its database record rather than from the dead host."""


class MigrationPlan(VersionedObject):
    """What precheck decided, so every later step (and every resuming orchestrator) does the same."""

    VERSION = "1.1"
    #: 1.1 carries the source as contract 1.2 describes it (with its image and NICs).
    CHILD_VERSIONS = {"source": [("1.1", "1.2"), ("1.0", "1.1")]}

    source: InstanceInfo
    """The instance as it was before anything was touched: what a revert restores."""
    dest_node: str
    method: TransferMethod
    vcpus: int = Field(ge=0, le=MAX_VCPUS)
    """Size after the migration (unchanged unless resizing)."""
    memory_mb: int = Field(ge=0, le=MAX_MEMORY_MB)
    stop_for_transfer: bool
    """Whether prepare powers the instance off (cold moves and offline resizes)."""
