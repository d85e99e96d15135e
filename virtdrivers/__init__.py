"""virtdrivers: drive any hypervisor through one versioned, capability-flagged interface.

>>> import virtdrivers
>>> with virtdrivers.load("fake") as driver:
...     info = driver.create({"name": "web-1", "vcpus": 2, "memory_mb": 2048})
...     driver.supports(virtdrivers.Capability.LIVE_MIGRATE)
True

Every public name is imported on first use (PEP 562 module ``__getattr__``), not
when the package is: ``import virtdrivers`` happens in every plugin and every
``virtdrivers`` command, and listing drivers must not pay for the contract's
objects, the loader and the error hierarchy all at once. ``from virtdrivers
import X`` and ``virtdrivers.X`` work as before; type checkers see the eager
imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        ConsoleConnection,
        DiskInfo,
        DiskSpec,
        EventType,
        Flavor,
        GuestAddress,
        HAPriority,
        HAState,
        HostResources,
        Image,
        ImageMode,
        InstanceInfo,
        InstanceMetrics,
        InstanceSpec,
        Leftover,
        LifecycleEvent,
        Network,
        NicInfo,
        NicSpec,
        NodeInfo,
        PowerState,
        SnapshotInfo,
        UserData,
    )
    from virtdrivers.version import CONTRACT_VERSION, ContractVersion

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_HOMES: dict[str, str] = {
    **dict.fromkeys(("Capability", "DiskFormat"), "virtdrivers.capabilities"),
    **dict.fromkeys(
        ("Driver", "DriverSettings", "EmbeddedEndpoint", "EndpointHooks", "Evidence", "Subscription"),
        "virtdrivers.driver",
    ),
    **dict.fromkeys(
        (
            "AuthenticationFailed",
            "BackendUnavailable",
            "Conflict",
            "ContractMismatch",
            "DriverError",
            "DriverNotFound",
            "InstanceNotFound",
            "InvalidSpec",
            "InvalidState",
            "NotFound",
            "NotSupported",
            "PluginLoadError",
            "Timeout",
        ),
        "virtdrivers.errors",
    ),
    **dict.fromkeys(("DriverEntry", "driver_class", "list_drivers", "load"), "virtdrivers.loader"),
    **dict.fromkeys(
        (
            "Aggregate",
            "ConsoleConnection",
            "GuestAddress",
            "Image",
            "ImageMode",
            "InstanceMetrics",
            "Network",
            "NicInfo",
            "NicSpec",
            "UserData",
            "BackendInfo",
            "DiskInfo",
            "DiskSpec",
            "EventType",
            "Flavor",
            "HAPriority",
            "HAState",
            "HostResources",
            "InstanceInfo",
            "InstanceSpec",
            "Leftover",
            "LifecycleEvent",
            "NodeInfo",
            "PowerState",
            "SnapshotInfo",
        ),
        "virtdrivers.objects",
    ),
    **dict.fromkeys(("CONTRACT_VERSION", "ContractVersion"), "virtdrivers.version"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'virtdrivers' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__all__ = [
    "CONTRACT_VERSION",
    "Aggregate",
    "AuthenticationFailed",
    "BackendInfo",
    "BackendUnavailable",
    "Capability",
    "Conflict",
    "ConsoleConnection",
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
    "GuestAddress",
    "HAPriority",
    "HAState",
    "HostResources",
    "Image",
    "ImageMode",
    "InstanceInfo",
    "InstanceMetrics",
    "InstanceNotFound",
    "InstanceSpec",
    "InvalidSpec",
    "InvalidState",
    "Leftover",
    "LifecycleEvent",
    "Network",
    "NicInfo",
    "NicSpec",
    "NodeInfo",
    "NotFound",
    "NotSupported",
    "PluginLoadError",
    "PowerState",
    "SnapshotInfo",
    "Subscription",
    "Timeout",
    "UserData",
    "__version__",
    "driver_class",
    "list_drivers",
    "load",
]
