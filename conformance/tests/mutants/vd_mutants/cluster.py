"""Mutants of the cluster: nodes, host resources, aggregates, high availability and failover."""

from __future__ import annotations

from virtdrivers.driver import ProgressCallback
from virtdrivers.fake import FakeDriver
from virtdrivers.objects import Aggregate, HAPriority, HAState, HostResources, InstanceInfo, InstanceSpec, PowerState


class HostResourcesIgnoresNode(FakeDriver):
    """host_resources(node) queries the default host and labels the answer with node. Feature: host_resources."""

    name = "mut-host-resources-ignores-node"

    def host_resources(self, node: str | None = None) -> HostResources:
        res = super().host_resources(None)
        return res.model_copy(update={"node": node}) if node else res


class HostResourcesNoUsage(FakeDriver):
    """host_resources reports capacity but reads usage from a counter that is never filled. Feature: host_resources."""

    name = "mut-host-resources-no-usage"

    def host_resources(self, node: str | None = None) -> HostResources:
        res = super().host_resources(node)
        return res.model_copy(update={"vcpus_used": 0, "memory_mb_used": 0, "disk_gib_used": 0})


class HostUsageClusterWide(FakeDriver):
    """host_resources(node) reports the usage of the whole cluster, not of that node. Feature: host_resources."""

    name = "mut-host-usage-cluster-wide"

    def host_resources(self, node: str | None = None) -> HostResources:
        res = super().host_resources(node)
        with self._b.lock:
            insts = list(self._b.instances.values())
        running = [i for i in insts if i.power_state in (PowerState.RUNNING, PowerState.PAUSED)]
        return res.model_copy(
            update={
                "vcpus_used": sum(i.vcpus for i in running),
                "memory_mb_used": sum(i.memory_mb for i in running),
                "disk_gib_used": sum(d.size_gib for i in insts for d in i.disks),
            }
        )


class NodesFqdn(FakeDriver):
    """Instances name their node by FQDN while list_nodes uses short names. Feature: nodes."""

    name = "mut-nodes-fqdn"

    def _fqdn(self, info: InstanceInfo) -> InstanceInfo:
        return info.model_copy(update={"node": f"{info.node}.cluster.local"})

    def list_instances(self) -> list[InstanceInfo]:
        return [self._fqdn(i) for i in super().list_instances()]

    def get_instance(self, instance_id: str) -> InstanceInfo:
        return self._fqdn(super().get_instance(instance_id))

    def create(self, spec: InstanceSpec, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        return self._fqdn(super().create(spec, progress=progress))


class AggregatesNoHosts(FakeDriver):
    """list_aggregates leaves out the member hosts (a property not fetched). Feature: aggregates."""

    name = "mut-aggregates-no-hosts"

    def list_aggregates(self) -> list[Aggregate]:
        return [a.model_copy(update={"hosts": ()}) for a in super().list_aggregates()]


class HaPriorityIgnored(FakeDriver):
    """set_high_availability never sends the priority, so it stays the backend default. Feature: high_availability."""

    name = "mut-ha-priority-ignored"

    def set_high_availability(
        self, instance_id: str, enabled: bool, *, priority: HAPriority = HAPriority.MEDIUM
    ) -> HAState:
        return super().set_high_availability(instance_id, enabled)


class HaDisableIgnored(FakeDriver):
    """set_high_availability(False) is a no-op: only enabling reaches the backend. Feature: high_availability."""

    name = "mut-ha-disable-ignored"

    def set_high_availability(
        self, instance_id: str, enabled: bool, *, priority: HAPriority = HAPriority.MEDIUM
    ) -> HAState:
        if not enabled:
            return self.get_high_availability(instance_id).model_copy(update={"enabled": False, "state": None})
        return super().set_high_availability(instance_id, enabled, priority=priority)


class FailoverNoMove(FakeDriver):
    """failover reports the new owner the cluster chose, but the VM never moves there. Feature: ha_failover."""

    name = "mut-failover-no-move"

    def failover(self, instance_id: str, node: str | None = None) -> HAState:
        with self._b.lock:
            inst = self._get(instance_id)
            state = self._ha(inst)
            if not inst.ha_enabled:
                return super().failover(instance_id, node)  # raises InvalidState
            _, target = self._move(instance_id, node, None, *PowerState)
            return state.model_copy(update={"owner_node": target})


class FailoverIgnoresNode(FakeDriver):
    """failover never passes the asked node, so the cluster picks the owner. Feature: ha_failover."""

    name = "mut-failover-ignores-node"

    def failover(self, instance_id: str, node: str | None = None) -> HAState:
        return super().failover(instance_id, None)
