"""virtdrivers: drive any hypervisor through one versioned, capability-flagged interface.

>>> import virtdrivers
>>> with virtdrivers.load("fake") as driver:
...     info = driver.create({"name": "web-1", "vcpus": 2, "memory_mb": 2048})
...     driver.supports(virtdrivers.Capability.LIVE_MIGRATE)
True
"""

from virtdrivers.capabilities import Capability, DiskFormat
from virtdrivers.driver import Driver, DriverSettings, EmbeddedEndpoint, EndpointHooks, Evidence, Subscription
from virtdrivers.errors import (
    AuthenticationFailed,
    BackendUnavailable,
    Conflict,
    ContractMismatch,
    DriverError,
    DriverNotFound,
    InstanceNotFound,
    InvalidSpec,
    InvalidState,
    NotFound,
    NotSupported,
    PluginLoadError,
    Timeout,
)
from virtdrivers.loader import DriverEntry, driver_class, list_drivers, load
from virtdrivers.objects import (
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
    LifecycleEvent,
    NodeInfo,
    PowerState,
    SnapshotInfo,
)
from virtdrivers.version import CONTRACT_VERSION, ContractVersion

__version__ = "0.1.0"

__all__ = [
    "CONTRACT_VERSION",
    "Aggregate",
    "AuthenticationFailed",
    "BackendInfo",
    "BackendUnavailable",
    "Capability",
    "Conflict",
    "ContractMismatch",
    "ContractVersion",
    "DiskFormat",
    "DiskInfo",
    "DiskSpec",
    "Driver",
    "DriverEntry",
    "DriverError",
    "DriverNotFound",
    "DriverSettings",
    "EmbeddedEndpoint",
    "EndpointHooks",
    "EventType",
    "Evidence",
    "Flavor",
    "HAPriority",
    "HAState",
    "HostResources",
    "InstanceInfo",
    "InstanceNotFound",
    "InstanceSpec",
    "InvalidSpec",
    "InvalidState",
    "LifecycleEvent",
    "NodeInfo",
    "NotFound",
    "NotSupported",
    "PluginLoadError",
    "PowerState",
    "SnapshotInfo",
    "Subscription",
    "Timeout",
    "__version__",
    "driver_class",
    "list_drivers",
    "load",
]
