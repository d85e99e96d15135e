"""What several mutants share: the fake's private pieces they build on, and storage that outlives its owner.

Mutants are subclasses of the reference fake, so they reach into its in-memory
hypervisor (``self._b``) the way a real driver talks to its backend. A few bugs
leave storage behind (a destroy or a detach that forgets the volume): the
backend then still counts that space, which :func:`leak_storage` records per
in-memory backend and :func:`with_leaked_storage` adds to ``host_resources``.
"""

from __future__ import annotations

import weakref

from virtdrivers.fake.driver import _Backend, _Disk, _Instance
from virtdrivers.objects import HostResources

__all__ = ["_Backend", "_Disk", "_Instance", "leak_storage", "with_leaked_storage"]

_LEAKED: weakref.WeakKeyDictionary[_Backend, dict[str, int]] = weakref.WeakKeyDictionary()


def leak_storage(backend: _Backend, node: str, gib: int) -> None:
    """Record ``gib`` of storage left on ``node`` with no instance owning it."""
    per_node = _LEAKED.setdefault(backend, {})
    per_node[node] = per_node.get(node, 0) + gib


def with_leaked_storage(backend: _Backend, res: HostResources) -> HostResources:
    """``res`` with the leaked storage of its node counted as used, as the datastore would report it."""
    leaked = _LEAKED.get(backend, {}).get(res.node, 0)
    return res.model_copy(update={"disk_gib_used": res.disk_gib_used + leaked}) if leaked else res
