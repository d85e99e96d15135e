"""Versioned value objects of the driver contract."""

from virtdrivers.objects.base import IncompatibleObjectVersion, VersionedObject, object_registry
from virtdrivers.objects.compute import (
    Aggregate,
    BackendInfo,
    DiskInfo,
    DiskSpec,
    EventType,
    Flavor,
    HAPriority,
    HAState,
    HostResources,
    InstanceInfo,
    InstanceSpec,
    Leftover,
    LifecycleEvent,
    NodeInfo,
    PowerState,
    SnapshotInfo,
)

__all__ = [
    "Aggregate",
    "BackendInfo",
    "DiskInfo",
    "DiskSpec",
    "EventType",
    "Flavor",
    "HAPriority",
    "HAState",
    "HostResources",
    "IncompatibleObjectVersion",
    "InstanceInfo",
    "InstanceSpec",
    "Leftover",
    "LifecycleEvent",
    "NodeInfo",
    "PowerState",
    "SnapshotInfo",
    "VersionedObject",
    "object_registry",
]
