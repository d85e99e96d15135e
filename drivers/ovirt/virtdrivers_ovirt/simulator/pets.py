"""VMs made "outside" virtdrivers, as an administrator left them: what ``adopt`` must keep intact."""

from __future__ import annotations

import uuid

from virtdrivers_ovirt.simulator.model import GIB, Attachment, Disk, Engine, Snapshot, Vm, now


def add_pet(engine: Engine, name: str) -> Vm:
    """A long-lived VM as an administrator made it: running, HA, pinned to preferred hosts, snapshotted."""
    with engine.lock:
        hosts = list(engine.hosts.values())
        host = hosts[len(engine.vms) % len(hosts)]
        sd = next(iter(engine.storage_domains.values()))
        vm = Vm(
            str(uuid.uuid4()),
            name,
            host.cluster_id,
            memory=4 * GIB,
            sockets=2,
            cores=1,
            description=f"{name}: database server, owned by ops",
            comment="do not reboot without a ticket",
            status="up",
            host_id=host.id,
            ha_enabled=True,
            ha_priority=50,
            affinity="user_migratable",
            preferred_host_ids=[host.id],
            start_time=now(),
        )
        from virtdrivers_ovirt.simulator import workloads

        # Made from the cloud image template long ago: a thin child of its disk, grown to 40 GiB,
        # with a NIC on the management network and one on the VM network; it ran its first boot.
        tpl = next(iter(engine.templates.values()))
        parent = engine.disks[tpl.attachments[0].disk_id]
        vm.template_id, vm.initialized = tpl.id, True
        disk = Disk(str(uuid.uuid4()), f"{name}_root", 40 * GIB, "cow", True, sd.id, "ok", 3 * GIB)
        disk.parent_id = parent.id
        engine.disks[disk.id] = disk
        sd.committed += disk.provisioned_size
        sd.used += disk.actual_size
        vm.attachments.append(Attachment(disk.id, bootable=True))
        by_name = {p.name: p.id for p in engine.vnic_profiles.values()}
        for profile in ("ovirtmgmt", "vm-net"):
            mac = workloads.new_mac(engine)
            vm.nics.append(workloads.Nic(str(uuid.uuid4()), f"nic{len(vm.nics) + 1}", mac, by_name[profile]))
        vm.snapshots.append(engine._active_snapshot())
        base = Snapshot(str(uuid.uuid4()), "before upgrade", now(), False, "ok", image=engine._image(vm))
        vm.snapshots.append(base)
        engine.vms[vm.id] = vm
        return vm
