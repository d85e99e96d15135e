"""Pure translation functions, on real pyVmomi data objects built without a server."""

from __future__ import annotations

import datetime
from types import SimpleNamespace
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from virtdrivers import (
    AuthenticationFailed,
    BackendUnavailable,
    DiskSpec,
    DriverError,
    EventType,
    InstanceNotFound,
    InstanceSpec,
    InvalidSpec,
    InvalidState,
    NotFound,
    NotSupported,
    PowerState,
)
from virtdrivers_vmware import listing, mapping
from virtdrivers_vmware.events import transition_events
from virtdrivers_vmware.session import VSphereSettings

Props = list[tuple[str, Any]]


def content(obj: Any, props: Props) -> Any:
    """An ObjectContent as RetrievePropertiesEx returns it (plain lists where pyVmomi has typed arrays)."""
    return SimpleNamespace(obj=obj, propSet=[SimpleNamespace(name=n, val=v) for n, v in props])


def two_cluster_objects() -> list[Any]:
    dc = vim.Datacenter("datacenter-1")
    c0, c1 = vim.ClusterComputeResource("c-0"), vim.ClusterComputeResource("c-1")
    ds = vim.Datastore("ds-1")
    hosts = [vim.HostSystem(f"host-{i}") for i in range(4)]
    config = vim.cluster.ConfigInfoEx(
        drsConfig=vim.cluster.DrsConfigInfo(enabled=True, defaultVmBehavior="fullyAutomated"),
        dasConfig=vim.cluster.DasConfigInfo(enabled=False),
    )
    objs = [
        content(dc, [("name", "DC0"), ("vmFolder", vim.Folder("folder-vm")), ("hostFolder", vim.Folder("folder-h"))]),
        content(ds, [("name", "LocalDS_0"), ("summary.capacity", 100 * 1024**3), ("summary.freeSpace", 60 * 1024**3)]),
    ]
    for i, cluster in enumerate((c0, c1)):
        objs.append(
            content(
                cluster,
                [
                    ("name", f"C{i}"),
                    ("host", hosts[2 * i : 2 * i + 2]),
                    ("resourcePool", vim.ResourcePool(f"rp-{i}")),
                    ("datastore", [ds]),
                    ("configurationEx", config),
                    ("parent", vim.Folder("folder-h")),
                ],
            )
        )
    for i, host in enumerate(hosts):
        objs.append(
            content(
                host,
                [
                    ("name", f"H{i}"),
                    ("parent", c0 if i < 2 else c1),
                    ("summary.hardware.numCpuThreads", 8),
                    ("summary.hardware.memorySize", 16 * 1024**3),
                    ("runtime.connectionState", "connected" if i != 3 else "disconnected"),
                    ("runtime.inMaintenanceMode", False),
                ],
            )
        )
    extra = [vim.option.OptionValue(key=mapping.MANAGED_KEY, value="true")]
    extra += [vim.option.OptionValue(key=mapping.metadata_key("owner team"), value="a&b")]
    objs.append(
        content(
            vim.VirtualMachine("vm-1"),
            [
                ("name", "web%2f1"),
                ("runtime.powerState", "poweredOn"),
                ("config.hardware.numCPU", 2),
                ("config.hardware.memoryMB", 2048),
                ("runtime.host", hosts[1]),
                ("config.extraConfig", extra),
            ],
        )
    )
    objs.append(
        content(
            vim.VirtualMachine("vm-2"),
            [
                ("name", "pet"),
                ("runtime.powerState", "poweredOff"),
                ("config.hardware.numCPU", 4),
                ("config.hardware.memoryMB", 4096),
                ("runtime.host", hosts[0]),
            ],
        )
    )
    return objs


def test_power_states() -> None:
    assert mapping.power_state("poweredOn") == PowerState.RUNNING
    assert mapping.power_state("poweredOff") == PowerState.SHUTDOWN
    assert mapping.power_state("suspended") == PowerState.SUSPENDED
    assert mapping.power_state(None) == PowerState.NOSTATE


def test_inventory_maps_clusters_as_nodes_with_host_sums() -> None:
    inv = mapping.build_inventory(two_cluster_objects())
    c0 = inv.cluster_named("C0")
    c1 = inv.cluster_named("C1")
    assert c0 is not None
    assert c1 is not None
    assert c0.metadata == {
        "drs_enabled": "true",
        "drs_behavior": "fullyAutomated",
        "ha_enabled": "false",
        "datacenter": "DC0",
    }
    res = mapping.host_resources(c0, inv, "6.5.0")
    assert (res.node, res.vcpus_total, res.memory_mb_total) == ("C0", 16, 32 * 1024)
    assert (res.vcpus_used, res.memory_mb_used) == (2, 2048)  # the running VM only
    assert (res.disk_gib_total, res.disk_gib_used) == (100, 40)
    # A disconnected host does not add capacity.
    assert mapping.host_resources(c1, inv).vcpus_total == 8
    agg = mapping.aggregate(c1, inv)
    assert (agg.name, agg.hosts) == ("C1", ("H2", "H3"))


def test_instance_info_names_cluster_and_host_and_decodes() -> None:
    inv = mapping.build_inventory(two_cluster_objects())
    info = listing.instance_info("vm-1", inv.vms["vm-1"], inv)
    assert (info.node, info.host) == ("C0", "H1")
    assert info.name == "web/1"  # vCenter escapes '/' in names as %2f
    assert info.metadata == {"owner team": "a&b"}
    assert info.managed
    pet = listing.instance_info("vm-2", inv.vms["vm-2"], inv)
    assert not pet.managed
    assert pet.power_state == PowerState.SHUTDOWN


@pytest.mark.parametrize("key", ["owner", "a.b-c_d", "with space", "<&>", "é", ".leading"])
def test_metadata_keys_round_trip(key: str) -> None:
    stored = mapping.metadata_key(key)
    assert stored.startswith("virtdrivers.")
    assert all(c.isalnum() or c in "._-" for c in stored)
    assert mapping.metadata_of({stored: "v", "unrelated": "x"}) == {key: "v"}


def test_pick_host_prefers_least_loaded_and_excludes_current() -> None:
    inv = mapping.build_inventory(two_cluster_objects())
    c0 = inv.cluster_named("C0")
    assert c0 is not None
    assert mapping.pick_host(c0, inv).name == "H0"  # type: ignore[union-attr]  # H1 runs vm-1
    assert mapping.pick_host(c0, inv, exclude="host-0").name == "H1"  # type: ignore[union-attr]
    c1 = inv.cluster_named("C1")
    assert c1 is not None
    assert mapping.pick_host(c1, inv, exclude="host-2") is None  # H3 is disconnected


def _disk(key: int, unit: int, name: str, gib: int, thin: bool) -> Any:
    return vim.vm.device.VirtualDisk(
        key=key,
        controllerKey=1000,
        unitNumber=unit,
        capacityInKB=gib * 1024 * 1024,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName=name, thinProvisioned=thin),
    )


def test_disks_and_free_slots() -> None:
    devices = [
        vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0),
        vim.vm.device.VirtualCdrom(key=3000, controllerKey=200, unitNumber=0),
        _disk(2000, 0, "[ds] vm/vm_1.vmdk", 10, True),
        _disk(2001, 1, "[ds] vm/vm_2.vmdk", 20, False),
    ]
    labels = {mapping.LABEL_PREFIX + mapping.label_key("[ds] vm/vm_1.vmdk"): "root"}
    disks = mapping.disks_of(devices, labels)
    assert [(d.id, d.size_gib, d.thin, d.label) for d in disks] == [
        ("2000", 10, True, "root"),
        ("2001", 20, False, None),
    ]
    controller, free = mapping.free_scsi_slots(devices)
    assert controller == 1000
    assert free[0] == 2
    assert 7 not in free  # the controller's own unit


def test_new_disk_change_thin_and_thick() -> None:
    thin = mapping.new_disk_change(
        DiskSpec(size_gib=3), datastore="ds", file_path="vm/vm_1.vmdk", controller_key=-100, unit=0, key=-1
    )
    thick = mapping.new_disk_change(
        DiskSpec(size_gib=3, thin=False), datastore="ds", file_path="vm/vm_2.vmdk", controller_key=-100, unit=1, key=-2
    )
    assert (thin.operation, thin.fileOperation) == ("add", "create")
    assert thin.device.capacityInKB == 3 * 1024 * 1024
    assert thin.device.backing.fileName == "[ds] vm/vm_1.vmdk"
    assert (thin.device.backing.thinProvisioned, thick.device.backing.thinProvisioned) == (True, False)
    assert thick.device.backing.eagerlyScrub


def test_create_spec_marks_and_names() -> None:
    spec = InstanceSpec(
        name="a <b>",
        vcpus=2,
        memory_mb=512,
        disks=[DiskSpec(size_gib=1, label="root")],
        metadata={"k": "v"},
    )
    config = mapping.create_spec(spec, datastore="LocalDS_0")
    assert (config.name, config.numCPUs, config.memoryMB) == ("a <b>", 2, 512)
    assert config.files.vmPathName == "[LocalDS_0]"
    extra = {o.key: o.value for o in config.extraConfig}
    assert extra[mapping.MANAGED_KEY] == "true"
    assert extra["virtdrivers.meta.k"] == "v"
    assert "root" in extra.values()
    kinds = [type(c.device).__name__ for c in config.deviceChange]
    assert kinds == ["vim.vm.device.ParaVirtualSCSIController", "vim.vm.device.VirtualDisk"]


def test_snapshot_tree_flattens_depth_first() -> None:
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    child = vim.vm.SnapshotTree(
        snapshot=vim.vm.Snapshot("snapshot-2"), name="b", createTime=when, state="poweredOn", description="", id=2
    )
    root = vim.vm.SnapshotTree(
        snapshot=vim.vm.Snapshot("snapshot-1"),
        name="a",
        createTime=when,
        state="poweredOn",
        description=mapping.MEMORY_MARK,
        childSnapshotList=[child],
        id=1,
    )
    rows = mapping.flatten_snapshots([root])
    assert [(r.moid, r.name, r.with_memory) for r in rows] == [("snapshot-1", "a", True), ("snapshot-2", "b", False)]


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (vim.fault.InvalidPowerState(msg="The attempted operation cannot be performed"), InvalidState),
        (vim.fault.InvalidLogin(msg="Cannot complete login"), AuthenticationFailed),
        (vmodl.fault.NotImplemented(msg="nope"), NotSupported),
        (vmodl.fault.MethodNotFound(msg="does not implement: RebootGuest"), NotSupported),
        (vim.fault.NotFound(msg="gone"), NotFound),
        (vmodl.fault.SystemError(msg="boom"), BackendUnavailable),  # the server failed, not the request
    ],
)
def test_faults_map_to_contract_errors(fault: BaseException, expected: type[DriverError]) -> None:
    err = mapping.error_from_fault(fault, context="vmware: op")
    assert type(err) is expected
    assert getattr(fault, "msg", "") in str(err)  # vSphere's own text is kept
    assert type(fault).__name__ in str(err)


def test_managed_object_not_found_is_instance_not_found_only_for_an_instance() -> None:
    fault = vmodl.fault.ManagedObjectNotFound(msg="The object has already been deleted", obj=vim.VirtualMachine("x"))
    err = mapping.error_from_fault(fault, context="get", ref="vm-9")
    assert isinstance(err, InstanceNotFound)
    assert err.ref == "vm-9"
    other = mapping.error_from_fault(fault, context="get")
    assert isinstance(other, NotFound)
    assert not isinstance(other, InstanceNotFound)


def test_duplicate_name_is_invalid_spec_on_name() -> None:
    err = mapping.error_from_fault(vim.fault.DuplicateName(name="x", msg="exists"), context="create")
    assert isinstance(err, InvalidSpec)
    assert err.field == "name"


def test_fault_text_loses_credentials() -> None:
    fault = vim.fault.InvalidLogin(msg="login failed for password=hunter2 and s3cr3t")
    err = mapping.error_from_fault(fault, context="connect", secrets=["s3cr3t"])
    assert "hunter2" not in str(err)
    assert "s3cr3t" not in str(err)


def test_datastore_paths() -> None:
    assert mapping.split_datastore_path("[LocalDS_0] vm/vm.vmx") == ("LocalDS_0", "vm/vm.vmx")
    assert mapping.vm_directory("[LocalDS_0] a b/a b.vmx") == ("LocalDS_0", "a b")
    with pytest.raises(InvalidSpec):
        mapping.split_datastore_path("no brackets")


def test_transition_events() -> None:
    on = {"runtime.powerState": "poweredOn", "runtime.host": vim.HostSystem("h1")}
    off = {"runtime.powerState": "poweredOff", "runtime.host": vim.HostSystem("h1")}
    moved = {"runtime.powerState": "poweredOn", "runtime.host": vim.HostSystem("h2")}
    assert transition_events(None, on) == [EventType.CREATED, EventType.STARTED]
    assert transition_events(None, off) == [EventType.CREATED]
    assert transition_events(on, off) == [EventType.STOPPED]
    assert transition_events({"runtime.powerState": "suspended"}, {"runtime.powerState": "poweredOn"}) == [
        EventType.RESUMED
    ]
    assert transition_events(on, moved) == [EventType.MIGRATED]
    assert transition_events(on, None) == [EventType.DESTROYED]


def test_settings_keep_secrets_and_normalize_thumbprints() -> None:
    s = VSphereSettings(host="vc", user="u", password="hunter2", thumbprint="AB:" * 31 + "AB")
    assert s.thumbprint == "ab" * 32
    assert "hunter2" not in repr(s)
    assert s.redacted()["password"] == "***"
    with pytest.raises(ValueError, match="SHA-256"):
        VSphereSettings(host="vc", user="u", password="p", thumbprint="12:34")
    assert not VSphereSettings(host="vc", user="u", password="p").insecure  # verification is the default
