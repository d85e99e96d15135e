"""Finding and loading drivers through stevedore entry points.

Every backend, in-tree or a vendor's, is a distribution that registers a
:class:`~virtdrivers.driver.Driver` subclass in the ``virtdrivers.drivers``
entry-point group::

    [project.entry-points."virtdrivers.drivers"]
    acme = "acme_virt.driver:AcmeDriver"

Loading a plugin imports its driver module only; vendor SDKs are imported when
a driver connects. So listing every installed driver with its capabilities is
cheap, and a plugin that fails to import is reported without stopping the rest.

Listing is guarded harder than loading one driver by name, because a listing
imports code from every vendor at once and one bad plugin must not hide the
others: see :func:`list_drivers`. It enumerates entry points with
:mod:`importlib.metadata` directly (stevedore's ExtensionManager can neither
time a plugin out nor survive ``SystemExit``, and its cache drops the
distribution each plugin comes from) and loads each with ``EntryPoint.load``,
which is what stevedore does inside.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from virtdrivers.capabilities import Capability
from virtdrivers.driver import Driver, DriverSettings, EmbeddedEndpoint
from virtdrivers.errors import ContractMismatch, DriverNotFound, PluginLoadError
from virtdrivers.version import CONTRACT_VERSION, ContractVersion

__all__ = [
    "NAMESPACE",
    "PLUGIN_TIME_LIMIT",
    "DriverEntry",
    "distribution_of",
    "driver_class",
    "inspect_entry_points",
    "list_drivers",
    "load",
]

#: The entry-point group drivers register in.
NAMESPACE = "virtdrivers.drivers"

#: Seconds a plugin may take to import and answer the listing's questions before it is
#: reported as hanging. A healthy plugin takes milliseconds; the limit is generous so a
#: slow disk or a loaded machine never turns a good plugin into a reported hang.
PLUGIN_TIME_LIMIT = 5.0


@dataclass(frozen=True)
class DriverEntry:
    """One installed plugin as the loader sees it.

    A usable entry carries what the listing read from the class once, under guard
    (``capabilities``, ``contract_version``, ``endpoints``, ``settings``), so that
    showing it never runs plugin code again.
    """

    name: str
    target: str
    """``module:attribute`` the entry point names."""
    distribution: str | None
    version: str | None
    driver_class: type[Driver] | None
    error: str | None = None
    """Why the plugin cannot be used; None when it loaded."""
    endpoints: tuple[EmbeddedEndpoint, ...] = ()
    """What ``embedded_endpoints()`` returned when the plugin was listed."""
    settings: tuple[str, ...] = ()
    """Field names of the driver's ``settings_model``."""
    declared: frozenset[Capability] | None = field(default=None, repr=False)
    contract: str | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def contract_version(self) -> str | None:
        if self.contract is not None or self.driver_class is None:
            return self.contract
        return self.driver_class.contract_version

    @property
    def capabilities(self) -> frozenset[Capability]:
        if self.declared is not None:
            return self.declared
        return self.driver_class.capabilities if self.driver_class else frozenset()


def _check_contract(name: str, cls: object) -> type[Driver]:
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise PluginLoadError(f"plugin {name!r} does not name a virtdrivers Driver subclass (got {cls!r})")
    try:
        theirs = ContractVersion.parse(cls.contract_version)
    except ValueError as exc:
        raise ContractMismatch(f"plugin {name!r}: {exc}") from None
    if theirs.major != CONTRACT_VERSION.major:
        raise ContractMismatch(
            f"plugin {name!r} was written for driver contract {theirs}, "
            f"but this virtdrivers provides contract {CONTRACT_VERSION}: major versions differ"
        )
    if theirs > CONTRACT_VERSION:
        raise ContractMismatch(
            f"plugin {name!r} needs driver contract {theirs}, "
            f"but this virtdrivers provides only {CONTRACT_VERSION}: upgrade virtdrivers"
        )
    return cls


def distribution_of(name: str) -> tuple[str | None, str | None]:
    """(distribution, version) that registers driver ``name``, without importing it."""
    for ep in importlib.metadata.entry_points(group=NAMESPACE):
        if ep.name == name:
            return _dist(ep)
    return (None, None)


def _dist(ep: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = ep.dist
    return (dist.name, dist.version) if dist is not None else (None, None)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r})"
    return f"{type(exc).__name__}: {exc}"


def _inspect(name: str, ep: importlib.metadata.EntryPoint, dist: str | None, version: str | None) -> DriverEntry:
    """Import one plugin and read everything the listing shows; runs in a worker thread, may raise anything."""
    try:
        plugin = ep.load()
    except BaseException as exc:  # SystemExit at import is a plugin fault too
        error = f"plugin {name!r} failed to import: {_describe(exc)}"
        return DriverEntry(name, ep.value, dist, version, None, error)
    try:
        cls = _check_contract(name, plugin)
    except PluginLoadError as refused:
        return DriverEntry(name, ep.value, dist, version, None, str(refused))
    step = "capabilities"
    try:
        declared = frozenset(Capability(c) for c in cls.capabilities)
        step = "contract_version"
        contract = str(cls.contract_version)
        step = "settings_model"
        settings_model = cls.settings_model
        if not (isinstance(settings_model, type) and issubclass(settings_model, DriverSettings)):
            raise TypeError(f"not a DriverSettings subclass: {settings_model!r}")
        settings = tuple(settings_model.model_fields)
        step = "embedded_endpoints()"
        endpoints = cls.embedded_endpoints()
        if not (isinstance(endpoints, Sequence) and all(isinstance(e, EmbeddedEndpoint) for e in endpoints)):
            raise TypeError(f"not a sequence of EmbeddedEndpoint: {endpoints!r}")
    except BaseException as exc:  # whatever a plugin raises is its fault alone
        error = f"plugin {name!r}: reading {step} failed: {_describe(exc)}"
        return DriverEntry(name, ep.value, dist, version, None, error)
    return DriverEntry(
        name, ep.value, dist, version, cls, None, tuple(endpoints), settings, declared=declared, contract=contract
    )


class _Probe(threading.Thread):
    """Lists one plugin off the main thread, so that the listing can stop waiting for it."""

    def __init__(self, name: str, ep: importlib.metadata.EntryPoint) -> None:
        super().__init__(name=f"virtdrivers-list-{name}", daemon=True)
        self.plugin = name
        self.ep = ep
        self.dist, self.version = _dist(ep)
        self.entry: DriverEntry | None = None

    def run(self) -> None:
        try:
            self.entry = _inspect(self.plugin, self.ep, self.dist, self.version)
        except BaseException as exc:  # last resort: never end the thread silently
            error = f"plugin {self.plugin!r} broke the listing: {_describe(exc)}"
            self.entry = DriverEntry(self.plugin, self.ep.value, self.dist, self.version, None, error)

    def result(self, limit: float) -> DriverEntry:
        if self.entry is not None:
            return self.entry
        error = f"plugin {self.plugin!r} is hanging: no answer within {limit:g}s (still importing or listing)"
        return DriverEntry(self.plugin, self.ep.value, self.dist, self.version, None, error)


def list_drivers(time_limit: float = PLUGIN_TIME_LIMIT) -> list[DriverEntry]:
    """Every installed plugin, loaded or with the reason it could not be; sorted by name.

    No plugin can hide another. Each is imported, and its ``capabilities``,
    ``contract_version``, ``settings_model`` and ``embedded_endpoints()`` read, in
    a thread of its own; all start together and the listing waits at most
    ``time_limit`` seconds in all. So a plugin that raises anything (``SystemExit``
    included) at import or from one of those is reported with the reason, and one
    that hangs is reported as hanging after ``time_limit`` at most, however many hang.
    While plugins load, ``sys.stdout`` points at ``sys.stderr``, so that their
    prints never mix with a caller's machine-readable output (this is process-wide
    for that moment; the CLI goes further and keeps file descriptor 1 on stderr).

    Why threads and not a child process per plugin: a child costs an interpreter
    start plus pydantic's import per plugin, several times the whole listing, and
    the class must be imported here anyway to be used. The price of staying
    in-process: a hanging plugin's thread is abandoned, not killed (it is a daemon
    thread, so it does not keep the process alive), and whatever it holds (the
    import lock of its own module) stays held; a plugin that calls ``os._exit``,
    crashes the interpreter or spins in C while holding the GIL still takes the
    listing down; plugin modules are imported off the main thread, so one that
    installs a signal handler at import fails (and is reported).
    """
    return inspect_entry_points(importlib.metadata.entry_points(group=NAMESPACE), time_limit)


def inspect_entry_points(
    eps: Iterable[importlib.metadata.EntryPoint], time_limit: float = PLUGIN_TIME_LIMIT
) -> list[DriverEntry]:
    """:func:`list_drivers` for the given entry points only (what :mod:`virtdrivers.listing` must import)."""
    probes: dict[str, _Probe] = {}
    entries: list[DriverEntry] = []
    for ep in eps:
        if ep.name in probes:  # two distributions register one name: report it rather than pick one
            dist, version = _dist(ep)
            error = f"more than one installed distribution registers {ep.name!r}"
            entries.append(DriverEntry(ep.name, ep.value, dist, version, None, error))
            continue
        probes[ep.name] = _Probe(ep.name, ep)
    deadline = time.monotonic() + time_limit
    sys.stdout.flush()
    with contextlib.redirect_stdout(sys.stderr):
        for probe in probes.values():
            probe.start()
        for probe in probes.values():
            probe.join(max(0.0, deadline - time.monotonic()))
    entries += (probe.result(time_limit) for probe in probes.values())
    return sorted(entries, key=lambda e: e.name)


def driver_class(name: str) -> type[Driver]:
    """The Driver class registered as ``name``, after contract negotiation.

    One named plugin is loaded through stevedore's DriverManager, unguarded: the
    caller asked for that plugin, so its failure is the answer. (stevedore is
    imported here, not at module level: listing does not need it.)
    """
    from stevedore import DriverManager
    from stevedore.exception import MultipleMatches, NoMatches

    failure: list[BaseException] = []
    try:
        mgr: DriverManager[Any] = DriverManager(
            NAMESPACE,
            name,
            invoke_on_load=False,
            on_load_failure_callback=lambda _m, _ep, exc: failure.append(exc),
        )
    except NoMatches:
        if failure:
            cause = failure[0]
            raise PluginLoadError(f"plugin {name!r} failed to import: {type(cause).__name__}: {cause}") from cause
        available = ", ".join(sorted(_names())) or "none"
        raise DriverNotFound(f"no driver named {name!r} is installed (installed: {available})") from None
    except MultipleMatches as exc:
        raise PluginLoadError(f"more than one installed distribution registers {name!r}: {exc}") from None
    return _check_contract(name, mgr.driver)


def _names() -> list[str]:
    return [ep.name for ep in importlib.metadata.entry_points(group=NAMESPACE)]


def load(name: str, /, **settings: Any) -> Driver:
    """Load the driver registered as ``name`` and configure it with ``settings`` (not yet connected).

    Raises :class:`DriverNotFound`, :class:`PluginLoadError` (including
    :class:`ContractMismatch`) or :class:`InvalidSpec` for bad settings.
    """
    return driver_class(name)(**settings)
