"""The driver's plumbing as the operation modules see it.

``driver.py`` holds the session plumbing (``_call``, ``_managed``, ...); the operation
modules (``snapshots``, ``reaping``, ``workloads``) are mixins on :class:`VSphereOps` that use it. For the
type checker this class declares what the driver defines; at run time it adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from virtdrivers.driver import Driver

if TYPE_CHECKING:
    from virtdrivers.objects import InstanceInfo
    from virtdrivers_vmware import mapping
    from virtdrivers_vmware.session import Session
    from virtdrivers_vmware.settings import VSphereSettings

T = TypeVar("T")


class VSphereOps(Driver):
    """Base of the vSphere driver's operation mixins (see the module docstring)."""

    if TYPE_CHECKING:
        settings: VSphereSettings

        @property
        def _s(self) -> Session: ...

        def _call(
            self, what: str, fn: Callable[[Any], T], *, idempotent: bool = False, ref: str | None = None
        ) -> T: ...

        def _ref(self, content: Any, kind: str, moid: str) -> Any: ...

        def _inventory(self, content: Any, *, with_vms: bool = True) -> mapping.Inventory: ...

        def _scope(self, inv: mapping.Inventory) -> list[mapping.ClusterRow]: ...

        def _in_scope(self, props: dict[str, Any], inv: mapping.Inventory) -> bool: ...

        def _managed(
            self, content: Any, instance_id: str, paths: Sequence[str] = ...
        ) -> tuple[dict[str, Any], mapping.Inventory]: ...

        def _info(self, content: Any, instance_id: str) -> InstanceInfo: ...

        def _cluster_node(self, inv: mapping.Inventory, node: str) -> mapping.ClusterRow: ...

        def _task(self, content: Any, task: Any, what: str) -> Any: ...

        def _remove(self, vm_id: str) -> None: ...
