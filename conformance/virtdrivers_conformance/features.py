"""The rows of the parity matrix: every feature the suite checks.

Mandatory features are the contract's core, which every driver must pass.
Each optional capability is a feature of its own, with the capability's own
one-line requirement as its description, so the matrix never drifts from the
contract it measures.
"""

from __future__ import annotations

from dataclasses import dataclass

from virtdrivers.capabilities import AREAS, Capability

__all__ = ["FEATURES", "Feature"]


@dataclass(frozen=True)
class Feature:
    id: str
    area: str
    title: str
    doc: str
    capability: Capability | None = None

    @property
    def mandatory(self) -> bool:
        return self.capability is None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "area": self.area,
            "title": self.title,
            "doc": self.doc,
            "capability": self.capability.value if self.capability else None,
            "mandatory": self.mandatory,
        }


_MANDATORY = [
    Feature("connect", "lifecycle", "Connect and close", "Connect, report the backend and versions, close; twice."),
    Feature(
        "secrets",
        "lifecycle",
        "Secrets kept",
        "Refuse a wrong password with AuthenticationFailed; no secret in any error, repr or backend info.",
    ),
    Feature(
        "validation", "lifecycle", "Input validation", "Refuse bad specs with InvalidSpec before any backend call."
    ),
    Feature(
        "create",
        "lifecycle",
        "Create",
        "Create running or stopped on the asked node, keeping every spec field; a failed create leaves nothing.",
    ),
    Feature("unique_names", "lifecycle", "Duplicate names", "Refuse a duplicate name where the backend forbids it."),
    Feature("metadata", "lifecycle", "Metadata", "Keep the key/value metadata given at create."),
    Feature("list", "lifecycle", "Bulk list", "List every instance exactly as get_instance reports it, in bulk."),
    Feature(
        "get",
        "lifecycle",
        "Get one",
        "Get an instance by id, as the listing shows it; InstanceNotFound for unknown ids.",
    ),
    Feature("destroy", "lifecycle", "Destroy", "Destroy a running instance and everything it owns."),
    Feature("power", "power", "Power on / off", "Power off at once and power on again."),
    Feature("graceful_shutdown", "power", "Graceful shutdown", "Shut down gracefully, forcing off after the timeout."),
    Feature("reboot", "power", "Reboot", "Soft and hard reboot leave the instance running."),
    Feature("nodes", "cluster", "Nodes", "List compute nodes; instances name a listed node."),
    Feature(
        "host_resources",
        "cluster",
        "Host resources",
        "Report capacity of a node and the vCPUs and memory its running instances use.",
    ),
]

_TITLES = {
    Capability.PAUSE: "Pause / unpause",
    Capability.SUSPEND: "Suspend / resume",
    Capability.RESIZE_CPU: "Resize vCPUs",
    Capability.RESIZE_MEMORY: "Resize memory",
    Capability.ATTACH_DISK: "Attach disk",
    Capability.DETACH_DISK: "Detach disk",
    Capability.SNAPSHOT: "Snapshots",
    Capability.SNAPSHOT_MEMORY: "Memory snapshots",
    Capability.LIVE_MIGRATE: "Live migration",
    Capability.COLD_MIGRATE: "Cold migration",
    Capability.EVACUATE: "Evacuate",
    Capability.AGGREGATES: "Aggregates",
    Capability.HIGH_AVAILABILITY: "High availability",
    Capability.HA_FAILOVER: "HA failover",
    Capability.ADOPT: "Adopt existing VMs",
    Capability.EVENTS: "Lifecycle events",
    Capability.REAP: "Reap interrupted creates",
    Capability.IMAGES: "Boot from images",
    Capability.IMAGE_COW: "Copy-on-write root disks",
    Capability.IMAGE_COPY: "Full-copy root disks",
    Capability.IMAGE_UPLOAD: "Register images",
    Capability.NETWORKS: "Networks and NICs",
    Capability.NIC_HOTPLUG: "NIC hot-plug",
    Capability.USER_DATA: "User data (cloud-init)",
    Capability.GUEST_ADDRESSES: "Guest addresses",
    Capability.CONSOLE_OUTPUT: "Console output",
    Capability.CONSOLE_CONNECT: "Console connection",
    Capability.METRICS: "Metrics",
    Capability.DISK_RAW: "raw disks",
    Capability.DISK_QCOW2: "qcow2 disks",
    Capability.DISK_VMDK: "vmdk disks",
    Capability.DISK_VHDX: "vhdx disks",
}

_OPTIONAL = [Feature(c.value, c.area, _TITLES[c], c.doc, c) for c in Capability]

#: Every feature, in matrix order: by area (as AREAS orders them), then as declared here.
FEATURES: dict[str, Feature] = {
    f.id: f for f in sorted(_MANDATORY + _OPTIONAL, key=lambda f: list(AREAS).index(f.area))
}
