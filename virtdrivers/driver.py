"""The driver contract.

A backend subclasses :class:`Driver`, implements the small mandatory core and
overrides the optional operations it can do, declaring each in
:attr:`Driver.capabilities`. The base class guards every optional operation:
calling one whose capability the driver does not declare raises
:class:`~virtdrivers.errors.NotSupported` before the backend is touched, and
inputs are validated into contract objects first, so bad input is an
:class:`~virtdrivers.errors.InvalidSpec` and never a backend call.

The conformance suite can lift the guard with :meth:`Driver.probing` to find
operations that work although they are not declared.
"""

from __future__ import annotations

import functools
import inspect
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from virtdrivers.capabilities import Capability, DiskFormat
from virtdrivers.endpoint import EmbeddedEndpoint, EndpointHooks, Evidence
from virtdrivers.errors import InstanceNotFound, InvalidSpec, NotSupported
from virtdrivers.objects import (
    Aggregate,
    BackendInfo,
    ConsoleConnection,
    DiskInfo,
    DiskSpec,
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
    SnapshotInfo,
)
from virtdrivers.objects.compute import MAX_MEMORY_MB, MAX_VCPUS, MIN_MEMORY_MB
from virtdrivers.version import CONTRACT_VERSION, ContractVersion

__all__ = [
    "Driver",
    "DriverSettings",
    "EmbeddedEndpoint",
    "EndpointHooks",
    "EventCallback",
    "Evidence",
    "ProgressCallback",
    "Subscription",
]

#: Called with a fraction in [0, 1] and a short human message during long operations.
ProgressCallback = Callable[[float, str], None]
EventCallback = Callable[[LifecycleEvent], None]


class DriverSettings(BaseModel):
    """Connection settings of a driver. Backends subclass it with their own fields.

    Secrets belong in :class:`pydantic.SecretStr` fields, which never print.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)  # built on first load(), not at import

    def redacted(self) -> dict[str, Any]:
        """Settings as shown to people: secrets masked."""
        return {k: ("***" if isinstance(v, SecretStr) else v) for k, v in self.__dict__.items()}

    def secrets(self) -> list[str]:
        return [v.get_secret_value() for v in self.__dict__.values() if isinstance(v, SecretStr)]


class Subscription:
    """A handle on an event subscription; close it to stop the callbacks."""

    def __init__(self, on_close: Callable[[], None]) -> None:
        self._on_close: Callable[[], None] | None = on_close
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._on_close is None

    def close(self) -> None:
        with self._lock:
            on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Guards: which capabilities each optional operation needs, given its bound arguments.


def _formats_needed(disks: Sequence[DiskSpec], default: DiskFormat | None) -> set[Capability]:
    formats = {d.format or default for d in disks}
    return {Capability.for_disk_format(f) for f in formats if f is not None}


def _needs_create(self: Driver, args: dict[str, Any]) -> set[Capability]:
    spec = args["spec"]
    self.check_name(spec.name)
    needed = _formats_needed(spec.disks, self.default_disk_format)
    if spec.image is not None:
        needed.add(Capability.IMAGES)
        if spec.image_mode == ImageMode.COPY:
            needed.add(Capability.IMAGE_COPY)
        elif spec.image_mode == ImageMode.COW or Capability.IMAGE_COPY not in self.capabilities:
            needed.add(Capability.IMAGE_COW)  # unasked, copy-on-write where the backend can
    if spec.nics:
        needed.add(Capability.NETWORKS)
    if spec.user_data is not None:
        needed.add(Capability.USER_DATA)
    return needed


def _needs_attach(self: Driver, args: dict[str, Any]) -> set[Capability]:
    return {Capability.ATTACH_DISK} | _formats_needed([args["disk"]], self.default_disk_format)


def _check_range(field: str, value: object, low: int, high: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidSpec(f"must be an integer from {low} to {high}, got {value!r}", field=field)


def _needs_resize(self: Driver, args: dict[str, Any]) -> set[Capability]:
    if args.get("vcpus") is None and args.get("memory_mb") is None:
        raise InvalidSpec("give vcpus, memory_mb or both", field="resize")
    _check_range("vcpus", args.get("vcpus"), 1, MAX_VCPUS)
    _check_range("memory_mb", args.get("memory_mb"), MIN_MEMORY_MB, MAX_MEMORY_MB)
    needed = set()
    if args.get("vcpus") is not None:
        needed.add(Capability.RESIZE_CPU)
    if args.get("memory_mb") is not None:
        needed.add(Capability.RESIZE_MEMORY)
    return needed


def _needs_snapshot(self: Driver, args: dict[str, Any]) -> set[Capability]:
    return {Capability.SNAPSHOT} | ({Capability.SNAPSHOT_MEMORY} if args.get("with_memory") else set())


def _fixed(*caps: Capability) -> Callable[[Driver, dict[str, Any]], set[Capability]]:
    return lambda self, args: set(caps)


#: Operation name -> function giving the capabilities a call needs.
_GUARDS: dict[str, Callable[[Driver, dict[str, Any]], set[Capability]]] = {
    "create": _needs_create,
    "pause": _fixed(Capability.PAUSE),
    "unpause": _fixed(Capability.PAUSE),
    "suspend": _fixed(Capability.SUSPEND),
    "resume": _fixed(Capability.SUSPEND),
    "resize": _needs_resize,
    "attach_disk": _needs_attach,
    "detach_disk": _fixed(Capability.DETACH_DISK),
    "create_snapshot": _needs_snapshot,
    "list_snapshots": _fixed(Capability.SNAPSHOT),
    "revert_snapshot": _fixed(Capability.SNAPSHOT),
    "delete_snapshot": _fixed(Capability.SNAPSHOT),
    "live_migrate": _fixed(Capability.LIVE_MIGRATE),
    "cold_migrate": _fixed(Capability.COLD_MIGRATE),
    "evacuate": _fixed(Capability.EVACUATE),
    "list_aggregates": _fixed(Capability.AGGREGATES),
    "set_high_availability": _fixed(Capability.HIGH_AVAILABILITY),
    "get_high_availability": _fixed(Capability.HIGH_AVAILABILITY),
    "failover": _fixed(Capability.HA_FAILOVER),
    "list_unmanaged": _fixed(Capability.ADOPT),
    "adopt": _fixed(Capability.ADOPT),
    "subscribe": _fixed(Capability.EVENTS),
    "reap": _fixed(Capability.REAP),
    "list_images": _fixed(Capability.IMAGES),
    "register_image": _fixed(Capability.IMAGE_UPLOAD),
    "delete_image": _fixed(Capability.IMAGE_UPLOAD),
    "list_networks": _fixed(Capability.NETWORKS),
    "attach_nic": _fixed(Capability.NIC_HOTPLUG),
    "detach_nic": _fixed(Capability.NIC_HOTPLUG),
    "guest_addresses": _fixed(Capability.GUEST_ADDRESSES),
    "console_output": _fixed(Capability.CONSOLE_OUTPUT),
    "console_connection": _fixed(Capability.CONSOLE_CONNECT),
    "instance_metrics": _fixed(Capability.METRICS),
}

#: Arguments validated into contract objects before any guard or backend call.
_COERCE: dict[str, type[Any]] = {"spec": InstanceSpec, "disk": DiskSpec, "nic": NicSpec}


def _guarded(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    sig = inspect.signature(func)
    needs = _GUARDS[name]

    @functools.wraps(func)
    def wrapper(self: Driver, /, *args: Any, **kwargs: Any) -> Any:
        try:
            bound = sig.bind(self, *args, **kwargs)
        except TypeError as exc:
            raise InvalidSpec(str(exc), field=name) from None
        for arg, cls in _COERCE.items():
            if arg in bound.arguments:
                bound.arguments[arg] = cls.validate_input(bound.arguments[arg])
        needed = needs(self, bound.arguments)
        if not self._probe_active():
            missing = needed - self.capabilities
            if missing:
                names = ", ".join(sorted(missing))
                raise NotSupported(f"{self.name}: {name} needs {names}", capability=sorted(missing)[0])
        return func(*bound.args, **bound.kwargs)

    wrapper.__vd_guarded__ = True  # type: ignore[attr-defined]
    return wrapper


class Driver(ABC):
    """Base of every backend driver.

    Class data a plugin sets (all readable without connecting or importing a vendor SDK):

    - ``name``: the entry-point name it registers under.
    - ``capabilities``: the optional features it implements.
    - ``contract_version``: the contract ``MAJOR.MINOR`` it was written against.
    - ``settings_model``: a :class:`DriverSettings` subclass for its connection settings.
    - ``default_disk_format``: the format used when a :class:`DiskSpec` names none.
    - ``unique_names``: whether the backend forbids duplicate instance names.
    - ``name_pattern`` / ``name_rule``: a backend's own rule for instance names, if stricter.

    Drivers are used as context managers (``with load("fake") as d: ...``) or with
    explicit :meth:`connect` and :meth:`close`. Instances are referred to by the
    ``id`` a driver reports in :class:`InstanceInfo`.
    """

    name: ClassVar[str] = "abstract"
    capabilities: frozenset[Capability] = frozenset()
    contract_version: ClassVar[str] = str(CONTRACT_VERSION)
    settings_model: ClassVar[type[DriverSettings]] = DriverSettings
    default_disk_format: ClassVar[DiskFormat | None] = None
    #: Whether the backend forbids two instances with one name (create then raises InvalidSpec on ``name``).
    unique_names: ClassVar[bool] = True
    #: A regular expression every instance name must match in full on this backend, beyond the
    #: contract's own rules (for example oVirt's letters, digits, '_', '-' and '.'); None for no more.
    name_pattern: ClassVar[str | None] = None
    #: How to say ``name_pattern`` to a person, for the InvalidSpec message.
    name_rule: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for op in _GUARDS:
            impl = cls.__dict__.get(op)
            if impl is not None and not getattr(impl, "__vd_guarded__", False):
                setattr(cls, op, _guarded(op, impl))
        # Operations the plugin's contract minor predates count as not declared.
        declared = frozenset(Capability(c) for c in cls.__dict__.get("capabilities", cls.capabilities))
        cls.capabilities = declared & cls.known_capabilities()

    @classmethod
    def known_capabilities(cls) -> frozenset[Capability]:
        """Capabilities that exist in the contract version this plugin was written for."""
        return Capability.known_in(ContractVersion.parse(cls.contract_version))

    @classmethod
    def embedded_endpoints(cls) -> Sequence[EmbeddedEndpoint]:
        """Peers this package can start by itself. Empty when it needs a real one."""
        return ()

    def __init__(self, settings: DriverSettings | Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        if isinstance(settings, DriverSettings):
            if kwargs:
                settings = settings.model_copy(update=kwargs)
        else:
            try:
                settings = self.settings_model(**{**(settings or {}), **kwargs})
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err["loc"]) or "settings"
                # Never echo input values: they may be passwords.
                raise InvalidSpec(err["msg"], field=f"{self.name}.{loc}") from None
        self.settings = settings
        # Instance copy so an endpoint can narrow what the class declares.
        self.capabilities = type(self).capabilities
        self._probe = threading.local()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.settings.redacted()}>"

    def check_name(self, name: str) -> None:
        """Refuse, before any backend call, a name this backend would refuse."""
        if self.name_pattern is not None and re.fullmatch(self.name_pattern, name) is None:
            rule = self.name_rule or f"must match {self.name_pattern}"
            raise InvalidSpec(f"{self.name} instance names {rule}", field="name")

    # -- capabilities and probing ---------------------------------------------------------

    def supports(self, capability: Capability | str) -> bool:
        return Capability(capability) in self.capabilities

    def narrow_capabilities(self, unavailable: frozenset[Capability] | set[Capability]) -> None:
        """Withdraw capabilities the connected endpoint cannot serve (for example libvirt's test driver)."""
        self.capabilities = self.capabilities - frozenset(unavailable)

    def _probe_active(self) -> bool:
        return bool(getattr(self._probe, "active", False))

    @contextmanager
    def probing(self) -> Iterator[None]:
        """Lift the capability guard in this thread, so undeclared operations reach the implementation.

        Used by the conformance suite to catch operations that work but are not declared.
        Operations a driver does not implement at all still raise NotSupported.
        """
        previous = self._probe_active()
        self._probe.active = True
        try:
            yield
        finally:
            self._probe.active = previous

    # -- connection -----------------------------------------------------------------------

    @abstractmethod
    def connect(self) -> None:
        """Open the connection to the backend. Idempotent."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection and any threads. Idempotent."""

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def backend_info(self) -> BackendInfo:
        """What this driver is connected to, with versions."""

    # -- mandatory core ---------------------------------------------------------------------

    @abstractmethod
    def list_instances(self) -> list[InstanceInfo]:
        """Every instance on the endpoint, in as few backend round trips as the backend allows."""

    @abstractmethod
    def get_instance(self, instance_id: str) -> InstanceInfo:
        """One instance by id; InstanceNotFound if it does not exist."""

    def find_instance(self, name: str) -> InstanceInfo:
        """One instance by name. Drivers with a cheaper lookup may override."""
        for info in self.list_instances():
            if info.name == name:
                return info
        raise InstanceNotFound(name)

    @abstractmethod
    def create(self, spec: InstanceSpec, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        """Create an instance from ``spec`` (and start it if ``spec.start``).

        A failed create removes everything it made. Duplicate names raise InvalidSpec
        (field ``name``) where the backend forbids them.
        """

    @abstractmethod
    def destroy(self, instance_id: str) -> None:
        """Stop the instance if needed and remove it with the disks it owns."""

    @abstractmethod
    def power_on(self, instance_id: str) -> InstanceInfo: ...

    @abstractmethod
    def power_off(self, instance_id: str, *, timeout: float = 60.0, force: bool = False) -> InstanceInfo:
        """Ask the guest to shut down, wait up to ``timeout`` seconds, then force it off.

        ``force=True`` (or ``timeout=0``) powers off at once.
        """

    @abstractmethod
    def reboot(self, instance_id: str, *, hard: bool = False) -> InstanceInfo:
        """Soft reboot asks the guest; hard reboot resets it."""

    @abstractmethod
    def list_nodes(self) -> list[NodeInfo]: ...

    @abstractmethod
    def host_resources(self, node: str | None = None) -> HostResources:
        """Capacity and use of ``node`` (the only node when None)."""

    # -- optional operations: override and declare the capability ---------------------------

    def _unsupported(self, op: str, capability: Capability) -> NotSupported:
        return NotSupported(f"{self.name} does not implement {op}", capability=capability)

    def pause(self, instance_id: str) -> InstanceInfo:
        """Freeze a running instance in memory (PAUSE)."""
        raise self._unsupported("pause", Capability.PAUSE)

    def unpause(self, instance_id: str) -> InstanceInfo:
        raise self._unsupported("unpause", Capability.PAUSE)

    def suspend(self, instance_id: str) -> InstanceInfo:
        """Save memory to disk and stop (SUSPEND)."""
        raise self._unsupported("suspend", Capability.SUSPEND)

    def resume(self, instance_id: str) -> InstanceInfo:
        raise self._unsupported("resume", Capability.SUSPEND)

    def resize(self, instance_id: str, *, vcpus: int | None = None, memory_mb: int | None = None) -> InstanceInfo:
        """Change vCPUs (RESIZE_CPU) and/or memory (RESIZE_MEMORY)."""
        raise self._unsupported("resize", Capability.RESIZE_CPU)

    def attach_disk(self, instance_id: str, disk: DiskSpec) -> DiskInfo:
        """Create a disk from ``disk`` and attach it (ATTACH_DISK plus the disk's format)."""
        raise self._unsupported("attach_disk", Capability.ATTACH_DISK)

    def detach_disk(self, instance_id: str, disk_id: str, *, delete: bool = True) -> None:
        """Detach a disk (DETACH_DISK); ``delete`` also removes its storage."""
        raise self._unsupported("detach_disk", Capability.DETACH_DISK)

    def create_snapshot(self, instance_id: str, name: str, *, with_memory: bool = False) -> SnapshotInfo:
        raise self._unsupported("create_snapshot", Capability.SNAPSHOT)

    def list_snapshots(self, instance_id: str) -> list[SnapshotInfo]:
        raise self._unsupported("list_snapshots", Capability.SNAPSHOT)

    def revert_snapshot(self, instance_id: str, snapshot_id: str) -> InstanceInfo:
        """Restore the configuration and disks of a snapshot of this instance.

        A snapshot with memory comes back in the power state it was taken in; one without
        memory comes back powered off, since there is no running state to restore.
        """
        raise self._unsupported("revert_snapshot", Capability.SNAPSHOT)

    def delete_snapshot(self, instance_id: str, snapshot_id: str) -> None:
        raise self._unsupported("delete_snapshot", Capability.SNAPSHOT)

    def live_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        """Move a running instance to ``node`` (or the backend's choice) without stopping it."""
        raise self._unsupported("live_migrate", Capability.LIVE_MIGRATE)

    def cold_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        """Move a stopped instance to ``node`` (or the backend's choice)."""
        raise self._unsupported("cold_migrate", Capability.COLD_MIGRATE)

    def evacuate(self, instance_id: str, node: str, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        """Rebuild a stopped instance on ``node`` because its own node is down or leaving."""
        raise self._unsupported("evacuate", Capability.EVACUATE)

    def list_aggregates(self) -> list[Aggregate]:
        raise self._unsupported("list_aggregates", Capability.AGGREGATES)

    def set_high_availability(
        self, instance_id: str, enabled: bool, *, priority: HAPriority = HAPriority.MEDIUM
    ) -> HAState:
        raise self._unsupported("set_high_availability", Capability.HIGH_AVAILABILITY)

    def get_high_availability(self, instance_id: str) -> HAState:
        raise self._unsupported("get_high_availability", Capability.HIGH_AVAILABILITY)

    def failover(self, instance_id: str, node: str | None = None) -> HAState:
        """Move an HA instance's ownership to another node (HA_FAILOVER)."""
        raise self._unsupported("failover", Capability.HA_FAILOVER)

    def list_unmanaged(self) -> list[InstanceInfo]:
        """Instances that exist on the backend but were not created by virtdrivers (ADOPT)."""
        raise self._unsupported("list_unmanaged", Capability.ADOPT)

    def adopt(self, instance_id: str) -> InstanceInfo:
        """Take an existing instance under management, intact and without a restart (ADOPT)."""
        raise self._unsupported("adopt", Capability.ADOPT)

    def subscribe(self, callback: EventCallback) -> Subscription:
        """Deliver lifecycle events to ``callback`` from a driver thread until closed (EVENTS)."""
        raise self._unsupported("subscribe", Capability.EVENTS)

    def reap(self, *, dry_run: bool = False, grace_s: float = 3600.0) -> list[Leftover]:
        """Find, and unless ``dry_run`` remove, what interrupted creates left behind (REAP).

        A driver declaring REAP writes an operation token (:class:`virtdrivers.reaping.CreateToken`)
        before a create's first backend change and marks it complete as the create's last step.
        Reaped are instances and disks whose token's create is over without completing: the
        owning process is gone (same host), or the token is older than ``grace_s`` seconds.
        Nothing an instance refers to, and nothing of a create still running, is ever removed.
        Returns what was found (and removed).
        """
        raise self._unsupported("reap", Capability.REAP)

    # -- workloads (contract 1.2) -------------------------------------------------------------

    def list_images(self) -> list[Image]:
        """Images instances can boot from (IMAGES)."""
        raise self._unsupported("list_images", Capability.IMAGES)

    def register_image(self, path: str, name: str, *, disk_format: DiskFormat | None = None) -> Image:
        """Copy a local image file into the backend's image store (IMAGE_UPLOAD)."""
        raise self._unsupported("register_image", Capability.IMAGE_UPLOAD)

    def delete_image(self, image_id: str) -> None:
        """Remove an image; Conflict while an instance's disk still depends on it (IMAGE_UPLOAD)."""
        raise self._unsupported("delete_image", Capability.IMAGE_UPLOAD)

    def list_networks(self) -> list[Network]:
        """Networks NICs can be put on (NETWORKS)."""
        raise self._unsupported("list_networks", Capability.NETWORKS)

    def attach_nic(self, instance_id: str, nic: NicSpec) -> NicInfo:
        """Add a NIC to a running instance (NIC_HOTPLUG)."""
        raise self._unsupported("attach_nic", Capability.NIC_HOTPLUG)

    def detach_nic(self, instance_id: str, nic_id: str) -> None:
        """Remove a NIC from a running instance (NIC_HOTPLUG)."""
        raise self._unsupported("detach_nic", Capability.NIC_HOTPLUG)

    def guest_addresses(self, instance_id: str) -> list[GuestAddress]:
        """The guest's addresses per NIC (GUEST_ADDRESSES). Empty means "not reported yet", not an error."""
        raise self._unsupported("guest_addresses", Capability.GUEST_ADDRESSES)

    def console_output(self, instance_id: str, *, max_bytes: int = 64 * 1024) -> str:
        """The last ``max_bytes`` of the serial console, decoded leniently (CONSOLE_OUTPUT)."""
        raise self._unsupported("console_output", Capability.CONSOLE_OUTPUT)

    def console_connection(self, instance_id: str) -> ConsoleConnection:
        """How to reach the interactive console of a running instance (CONSOLE_CONNECT)."""
        raise self._unsupported("console_connection", Capability.CONSOLE_CONNECT)

    def instance_metrics(self, instance_id: str) -> InstanceMetrics:
        """Cumulative counters now; two readings give rates (METRICS)."""
        raise self._unsupported("instance_metrics", Capability.METRICS)
