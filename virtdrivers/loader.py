"""Finding and loading drivers through stevedore entry points.

Every backend, in-tree or a vendor's, is a distribution that registers a
:class:`~virtdrivers.driver.Driver` subclass in the ``virtdrivers.drivers``
entry-point group::

    [project.entry-points."virtdrivers.drivers"]
    acme = "acme_virt.driver:AcmeDriver"

Loading a plugin imports its driver module only; vendor SDKs are imported when
a driver connects. So listing every installed driver with its capabilities is
cheap, and a plugin that fails to import is reported without stopping the rest.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

from stevedore import DriverManager, ExtensionManager
from stevedore.exception import MultipleMatches, NoMatches

from virtdrivers.capabilities import Capability
from virtdrivers.driver import Driver
from virtdrivers.errors import ContractMismatch, DriverNotFound, PluginLoadError
from virtdrivers.version import CONTRACT_VERSION, ContractVersion

__all__ = ["NAMESPACE", "DriverEntry", "distribution_of", "driver_class", "list_drivers", "load"]

#: The entry-point group drivers register in.
NAMESPACE = "virtdrivers.drivers"


@dataclass(frozen=True)
class DriverEntry:
    """One installed plugin as the loader sees it."""

    name: str
    target: str
    """``module:attribute`` the entry point names."""
    distribution: str | None
    version: str | None
    driver_class: type[Driver] | None
    error: str | None = None
    """Why the plugin cannot be used; None when it loaded."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def contract_version(self) -> str | None:
        return self.driver_class.contract_version if self.driver_class else None

    @property
    def capabilities(self) -> frozenset[Capability]:
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
    return _distributions().get(name, (None, None))


def _distributions() -> dict[str, tuple[str | None, str | None]]:
    """Entry-point name -> (distribution, version); stevedore's entry-point cache drops ``dist``."""
    found: dict[str, tuple[str | None, str | None]] = {}
    for ep in importlib.metadata.entry_points(group=NAMESPACE):
        dist = ep.dist
        found[ep.name] = (dist.name, dist.version) if dist is not None else (None, None)
    return found


def list_drivers() -> list[DriverEntry]:
    """Every installed plugin, loaded or with the reason it could not be; sorted by name."""
    failures: dict[str, tuple[Any, BaseException]] = {}

    def on_failure(_mgr: Any, ep: Any, exc: BaseException) -> None:
        failures[ep.name] = (ep, exc)

    mgr = ExtensionManager(NAMESPACE, invoke_on_load=False, on_load_failure_callback=on_failure)
    dists = _distributions()
    entries: list[DriverEntry] = []
    for ext in mgr.extensions:
        dist, version = dists.get(ext.name, (None, None))
        try:
            cls = _check_contract(ext.name, ext.plugin)
        except PluginLoadError as refused:
            entries.append(DriverEntry(ext.name, ext.entry_point.value, dist, version, None, str(refused)))
            continue
        entries.append(DriverEntry(ext.name, ext.entry_point.value, dist, version, cls))
    for name, (ep, exc) in failures.items():
        dist, version = dists.get(name, (None, None))
        error = f"plugin {name!r} failed to import: {type(exc).__name__}: {exc}"
        entries.append(DriverEntry(name, ep.value, dist, version, None, error))
    return sorted(entries, key=lambda e: e.name)


def driver_class(name: str) -> type[Driver]:
    """The Driver class registered as ``name``, after contract negotiation."""
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
