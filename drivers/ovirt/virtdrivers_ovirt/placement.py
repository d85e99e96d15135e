"""Where the engine may run a VM and move it (oVirt specific, beyond the contract).

Affinity ``migratable`` (the scheduler moves it), ``user_migratable`` (only an administrator
does) or ``pinned`` (never; needs a preferred host), with preferred hosts by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from virtdrivers.errors import InvalidSpec
from virtdrivers_ovirt import mapping

if TYPE_CHECKING:
    from virtdrivers_ovirt.driver import OvirtDriver

AFFINITIES = ("migratable", "pinned", "user_migratable")


def get_placement(drv: OvirtDriver, instance_id: str) -> tuple[str, tuple[str, ...]]:
    """The VM's affinity (migratable, pinned, user_migratable) and its preferred hosts by name."""
    vm = drv._vm(instance_id)
    policy = vm.placement_policy
    if policy is None:
        return "migratable", ()
    names = drv._host_names()
    hosts = tuple(names.get(h.id, h.id) for h in policy.hosts or ())
    return mapping.value(policy.affinity) or "migratable", hosts


def set_placement(
    drv: OvirtDriver, instance_id: str, affinity: str, hosts: Sequence[str] = ()
) -> tuple[str, tuple[str, ...]]:
    """Set how the engine may move the VM: ``pinned`` needs at least one host."""
    if affinity not in AFFINITIES:
        raise InvalidSpec(f"must be one of {', '.join(AFFINITIES)}", field="affinity")
    if affinity == "pinned" and not hosts:
        raise InvalidSpec("a pinned VM needs a host", field="hosts")
    types = drv._types()
    drv._vm(instance_id)
    host_refs = [types.Host(id=drv._host_id(h)) for h in hosts]
    policy = types.VmPlacementPolicy(affinity=types.VmAffinity(affinity), hosts=host_refs)
    drv._call(lambda s: drv._vm_service(s, instance_id).update(types.Vm(placement_policy=policy)), idempotent=False)
    return get_placement(drv, instance_id)
