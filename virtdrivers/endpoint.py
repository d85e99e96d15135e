"""Embedded endpoints: the peers a driver package can start by itself, and how real they are.

A package offers :class:`EmbeddedEndpoint` objects from ``Driver.embedded_endpoints()``
so that the conformance runner, the CLI's ``--embedded`` and a user's own tests
can run against a peer without any set-up. Each endpoint says how real its
evidence is (:class:`Evidence`), which the parity matrix shows per column, and
offers :class:`EndpointHooks`: the few ways the suite needs to make the peer
misbehave (a create that fails half-way, a guest that ignores ACPI, a node that
dies) so that error paths are exercised, not assumed.

Everything here is plain data: listing endpoints must stay cheap and must not
import a vendor SDK.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from virtdrivers.capabilities import Capability

if TYPE_CHECKING:
    from virtdrivers.driver import Driver

__all__ = ["EmbeddedEndpoint", "EndpointHooks", "Evidence"]


class Evidence(enum.StrEnum):
    """How real the peer is that a column of the parity matrix was earned against."""

    REAL = "real"
    """A real hypervisor or manager (QEMU running a guest, a real vCenter, a Windows host)."""
    VENDOR_SIMULATOR = "vendor-simulator"
    """The vendor's own simulator (govmomi's vcsim, libvirt's test driver)."""
    PROJECT_SIMULATOR = "project-simulator"
    """A simulator this project or the plugin's author wrote: it shows what its author believes."""
    IN_MEMORY = "in-memory"
    """A fake inside the test process, with no wire protocol at all."""

    @property
    def doc(self) -> str:
        return _EVIDENCE_DOCS[self]


_EVIDENCE_DOCS = {
    Evidence.REAL: "a real hypervisor or manager answered",
    Evidence.VENDOR_SIMULATOR: "the vendor's own simulator answered (its fidelity is the vendor's)",
    Evidence.PROJECT_SIMULATOR: "a simulator the plugin's own project wrote answered: its reading of the product",
    Evidence.IN_MEMORY: "an in-memory fake inside the test process, no wire protocol",
}

#: ``(settings, driver) -> None``: settings are what the endpoint's ``start`` yielded.
CreateFaultHook = Callable[[Mapping[str, Any], "Driver"], None]
#: ``(settings, driver, instance_id) -> None``.
InstanceHook = Callable[[Mapping[str, Any], "Driver", str], None]
#: ``(settings, driver, node, down) -> None``.
NodeHook = Callable[[Mapping[str, Any], "Driver", str, bool], None]
#: ``(settings, driver, instance_id) -> user data or None``.
UserDataHook = Callable[[Mapping[str, Any], "Driver", str], "str | None"]


@dataclass(frozen=True)
class EndpointHooks:
    """Ways the conformance suite may make an endpoint misbehave. Each is optional.

    A hook acts on the peer (a simulator's fault knob, a file the hypervisor reads)
    wherever it can; where the peer offers no such knob it may act on the driver
    object it is given, at the narrowest seam that still runs the driver's own
    clean-up code against the real peer. A test that needs a hook the endpoint
    lacks is skipped with the reason, so a missing hook is visible in the matrix.
    """

    fail_next_create: CreateFaultHook | None = None
    """Make the next ``create`` through this driver fail *after* validation and after the
    backend has begun making the instance (a disk or a VM record exists), so the suite can
    check that nothing is left behind."""
    ignore_acpi: InstanceHook | None = None
    """Make this instance's guest ignore graceful shutdown (an ACPI-deaf guest), so that
    ``power_off`` must force it after its timeout. Endpoints whose guests never listen
    (no operating system) may pass a hook that does nothing."""
    fail_node: NodeHook | None = None
    """Mark a node down (``down=True``) or up again, as a dead host would be seen by the
    backend, so that evacuation is exercised from a failed node."""
    read_user_data: UserDataHook | None = None
    """The user data exactly as a guest of this instance would read it from its carrier,
    read from the peer itself and not through the driver under test: guestinfo keys decoded
    by their ``.encoding``, the seed or config drive on the host, the manager's cloud-init
    field. None when the instance has no carrier. This is how an endpoint on which no guest
    boots still shows that user data arrives where a guest looks for it."""


@dataclass(frozen=True)
class EmbeddedEndpoint:
    """A real or simulated peer a driver package can start by itself, for tests and the parity run.

    ``start`` is a context manager factory: entering it starts the peer (a simulator,
    a scratch directory for an in-process URI) and yields the settings to load the
    driver with; leaving it stops the peer and removes what it made. It must import
    vendor SDKs lazily so that listing endpoints stays cheap.

    What the suite expects of an endpoint: at least three compute nodes where the
    backend can have them (two at the very least for migration), one unmanaged
    instance for ``adopt`` when the driver declares it, a setting that holds a secret
    (a password) so that secret handling is checked, and the :class:`EndpointHooks`.
    """

    name: str
    description: str
    start: Callable[[], AbstractContextManager[Mapping[str, Any]]]
    #: Capabilities this endpoint cannot serve although the driver class declares them.
    unavailable: frozenset[Capability] = field(default_factory=frozenset)
    #: How real this peer is. Embedded peers are simulators unless they say otherwise.
    evidence: Evidence = Evidence.PROJECT_SIMULATOR
    #: For a simulator: its own name and version, reported as the column's backend
    #: instead of what the simulator claims to be over the wire.
    backend: str | None = None
    backend_version: str | None = None
    #: For a simulator: the product and version it imitates ("oVirt Engine 4.5"). When
    #: None and ``backend`` is set, the runner uses what the peer reported over the wire.
    imitates: str | None = None
    hooks: EndpointHooks = field(default_factory=EndpointHooks)
    #: Whether the peer checks the secret-bearing setting, so a wrong one must be refused.
    #: False only for a local peer with nothing to authenticate (an in-process hypervisor).
    authenticates: bool = True
    #: Seconds a guest on this peer may take from its start until it has read its user data and
    #: reported its addresses: minutes for a real OS under emulation, a blink for a simulated one.
    guest_boot_timeout: float = 180.0
    #: How this endpoint earns a capability's cell when the behaviour is simulated rather than
    #: shown by a guest or a product ("addresses are set by the launcher at power-on, as
    #: VMware Tools would report them"): shown on that cell in every matrix rendering.
    notes: Mapping[Capability, str] = field(default_factory=dict)
