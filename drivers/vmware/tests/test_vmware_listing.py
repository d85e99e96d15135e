"""The listing's config cache: every kind of change reaches a listing, and steady state is one retrieval.

The listing re-reads a VM's devices and extraConfig only when its ``config.changeVersion``
moved (see ``listing.py``); vcsim 0.24 keeps no changeVersion, our launcher does
(``vcsim/changeversion.go``). A change the version misses would leave the listing stale, so
each kind of change is made here by one party (the driver under test, or an administrator's
own pyVmomi session: changes outside virtdrivers) and watched by a second driver, the
*observer*, that listed the VM before. The observer never reads the VM alone before listing
it (``get_instance`` warms its cache), so only the changeVersion can tell it the config moved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pyVmomi import vim

from virtdrivers import DiskSpec, InstanceInfo, InstanceSpec, NicSpec
from virtdrivers_vmware import VSphereDriver, listing
from virtdrivers_vmware.simulator import Vcsim
from virtdrivers_vmware.simulator.vcsim import TEMPLATE_NAME, make_template
from virtdrivers_vmware.simulator.wire import count_round_trips


@pytest.fixture(scope="module")
def sim() -> Iterator[Vcsim]:
    with Vcsim(clusters=2, hosts=2, vms=0) as sim:
        make_template(sim.settings())
        yield sim


@pytest.fixture(scope="module")
def actor(sim: Vcsim) -> Iterator[VSphereDriver]:
    with VSphereDriver(sim.settings()) as d:
        yield d


@pytest.fixture
def observer(sim: Vcsim) -> Iterator[VSphereDriver]:
    with VSphereDriver(sim.settings()) as d:
        yield d


@pytest.fixture(scope="module")
def admin(sim: Vcsim) -> Iterator[Any]:
    with sim.admin() as si:
        yield si


@pytest.fixture(scope="module")
def template(actor: VSphereDriver) -> str:
    return next(i.id for i in actor.list_images() if i.name == TEMPLATE_NAME)


def _vm(admin: Any, moid: str) -> Any:
    return vim.VirtualMachine(moid, admin._stub)


def _wait(task: Any) -> None:
    while task.info.state not in ("success", "error"):
        pass
    assert task.info.state == "success", task.info.error


def _reconfigure(admin: Any, moid: str, spec: Any) -> None:
    _wait(_vm(admin, moid).ReconfigVM_Task(spec))


def _listed(driver: VSphereDriver, moid: str) -> tuple[InstanceInfo | None, int]:
    """The VM as the driver lists it, and how many retrievals the listing took."""
    with count_round_trips() as rt:
        entries = {i.id: i for i in driver.list_instances()}
    return entries.get(moid), rt.by_method.get("RetrievePropertiesEx", 0)


def _version(admin: Any, moid: str) -> str:
    return str(_vm(admin, moid).config.changeVersion)


# Each change: what it does (actor, admin, VM id) and what the listing must then show.
Change = Callable[[VSphereDriver, Any, str], None]
Check = Callable[[InstanceInfo], bool]


def _resize(actor: VSphereDriver, admin: Any, moid: str) -> None:
    actor.resize(moid, vcpus=2, memory_mb=512)


def _attach_disk(actor: VSphereDriver, admin: Any, moid: str) -> None:
    actor.attach_disk(moid, DiskSpec(size_gib=1, label="data"))


def _detach_disk(actor: VSphereDriver, admin: Any, moid: str) -> None:
    disk = next(d for d in actor.get_instance(moid).disks if d.label == "scratch")
    actor.detach_disk(moid, disk.id)


def _attach_nic(actor: VSphereDriver, admin: Any, moid: str) -> None:
    actor.attach_nic(moid, NicSpec(network="DC0_DVPG0", mac="00:50:56:01:02:03"))


def _detach_nic(actor: VSphereDriver, admin: Any, moid: str) -> None:
    actor.detach_nic(moid, actor.get_instance(moid).nics[0].id)


def _metadata_outside(actor: VSphereDriver, admin: Any, moid: str) -> None:
    """An administrator edits our metadata key in the vSphere client: extraConfig only."""
    _reconfigure(
        admin, moid, vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key="virtdrivers.meta.owner", value="ops")])
    )


def _mac_outside(actor: VSphereDriver, admin: Any, moid: str) -> None:
    """An administrator gives the NIC a manual MAC: a device edit virtdrivers did not make."""
    card = next(d for d in _vm(admin, moid).config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard))
    card.addressType = "manual"
    card.macAddress = "00:50:56:0a:0b:0c"
    _reconfigure(
        admin, moid, vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=card)])
    )


def _revert(actor: VSphereDriver, admin: Any, moid: str) -> None:
    """Back to a snapshot taken at 1 vCPU (the resize after it was listed, see the case)."""
    snapshot = next(s for s in actor.list_snapshots(moid) if s.name == "small")
    actor.revert_snapshot(moid, snapshot.id)


def _migrate(actor: VSphereDriver, admin: Any, moid: str) -> None:
    actor.live_migrate(moid, "DC0_C1")


def _rename_outside(actor: VSphereDriver, admin: Any, moid: str) -> None:
    _wait(_vm(admin, moid).Rename_Task("lst-renamed"))


CASES: dict[str, tuple[Change, Check]] = {
    "resize": (_resize, lambda i: (i.vcpus, i.memory_mb) == (2, 512)),
    "attach_disk": (_attach_disk, lambda i: [d.label for d in i.disks].count("data") == 1),
    "detach_disk": (_detach_disk, lambda i: "scratch" not in [d.label for d in i.disks]),
    "attach_nic": (_attach_nic, lambda i: "00:50:56:01:02:03" in [n.mac for n in i.nics]),
    "detach_nic": (_detach_nic, lambda i: i.nics == ()),
    "metadata_outside": (_metadata_outside, lambda i: i.metadata.get("owner") == "ops"),
    "mac_outside": (_mac_outside, lambda i: [n.mac for n in i.nics] == ["00:50:56:0a:0b:0c"]),
    "revert_snapshot": (_revert, lambda i: i.vcpus == 1),
    "live_migrate": (_migrate, lambda i: i.node == "DC0_C1"),
    "rename_outside": (_rename_outside, lambda i: i.name == "lst-renamed"),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_every_kind_of_change_reaches_a_warm_listing(
    kind: str, actor: VSphereDriver, observer: VSphereDriver, admin: Any, template: str
) -> None:
    change, check = CASES[kind]
    info = actor.create(
        InstanceSpec(
            name=f"lst-{kind}",
            vcpus=1,
            memory_mb=256,
            image=template,
            nics=[NicSpec(network="DC0_DVPG0")],
            disks=[DiskSpec(size_gib=1, label="scratch")],
        )
    )
    try:
        if kind == "revert_snapshot":
            actor.create_snapshot(info.id, "small")
            actor.resize(info.id, vcpus=3)
        before, _ = _listed(observer, info.id)
        assert before is not None
        assert not check(before)
        _, retrievals = _listed(observer, info.id)
        assert retrievals == 1, "steady state: the light retrieval only"
        version = _version(admin, info.id)

        change(actor, admin, info.id)

        after, retrievals = _listed(observer, info.id)
        assert after is not None
        assert check(after), f"the listing missed the change: {after}"
        assert after == observer.get_instance(info.id), "a listed instance equals the instance read alone"
        # The name and host are light properties, read on every listing. vcsim's relocation and
        # Rename_Task change no config (vCenter's rename changes config.name, its version too).
        if kind not in ("live_migrate", "rename_outside"):
            assert _version(admin, info.id) != version, "a config change moves config.changeVersion"
            assert retrievals == 2, "the moved config is re-read, in one more retrieval"
        _, retrievals = _listed(observer, info.id)
        assert retrievals == 1, "and then the listing is light again"
    finally:
        actor.destroy(info.id)


def test_a_clone_a_template_an_adoption_and_a_destroy_reach_a_warm_listing(
    actor: VSphereDriver, observer: VSphereDriver, admin: Any, template: str
) -> None:
    observer.list_instances()
    # A clone the observer has never seen: listed with its NICs, as read alone.
    made = actor.create(
        InstanceSpec(name="lst-clone", vcpus=1, memory_mb=128, image=template, nics=[NicSpec(network="DC0_DVPG0")])
    )
    try:
        listed, retrievals = _listed(observer, made.id)
        assert listed is not None
        assert len(listed.nics) == 1
        assert listed == observer.get_instance(made.id)
        assert retrievals == 2
        # Marked as a template outside virtdrivers: an image now, never an instance.
        actor.power_off(made.id, force=True)
        _vm(admin, made.id).MarkAsTemplate()
        listed, _ = _listed(observer, made.id)
        assert listed is None
        assert made.id in {i.id for i in observer.list_images()}
    finally:
        _wait(_vm(admin, made.id).Destroy_Task())
    # A pet (our mark removed outside virtdrivers), then adopted by the actor.
    pet = actor.create(InstanceSpec(name="lst-pet", vcpus=1, memory_mb=128))
    try:
        _reconfigure(
            admin, pet.id, vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key="virtdrivers.managed", value="")])
        )
        assert _listed(observer, pet.id)[0] is None
        assert pet.id in {i.id for i in observer.list_unmanaged()}
        actor.adopt(pet.id)
        listed, _ = _listed(observer, pet.id)
        assert listed is not None
        assert listed.managed
        assert pet.id not in {i.id for i in observer.list_unmanaged()}
    finally:
        actor.destroy(pet.id)
    # Destroyed VMs leave the listing and the cache.
    assert _listed(observer, pet.id)[0] is None
    assert pet.id not in observer._config_cache
    assert len(observer._config_cache) == len(observer.list_instances()) + 1  # + the template


def test_power_and_reads_leave_the_config_version_alone(actor: VSphereDriver, admin: Any) -> None:
    info = actor.create(InstanceSpec(name="lst-power", vcpus=1, memory_mb=128))
    try:
        version = _version(admin, info.id)
        actor.power_off(info.id, force=True)
        actor.power_on(info.id)
        actor.list_instances()
        assert _version(admin, info.id) == version
        actor.resize(info.id, memory_mb=256)
        moved = _version(admin, info.id)
        assert moved > version, "versions are UTC times with microseconds, strictly increasing"
    finally:
        actor.destroy(info.id)


def test_a_config_without_a_version_is_never_cached() -> None:
    cache = listing.ConfigCache()
    facts = listing.config_facts({"config.extraConfig": [], "config.hardware.device": []})
    cache.put("vm-1", facts)
    assert cache.get("vm-1", "") is None
    assert cache.get("vm-1", None) is None
    assert len(cache) == 0
    versioned = listing.config_facts({"config.changeVersion": "v1", "config.hardware.device": []})
    cache.put("vm-1", versioned)
    assert cache.get("vm-1", "v1") is versioned
    assert cache.get("vm-1", "v0") is None, "any other version, older included, is a miss"


def test_a_vm_destroyed_between_the_two_retrievals_drops_out_of_the_config_read(actor: VSphereDriver) -> None:
    """The config read names VMs the light read saw; one destroyed meanwhile must not fail the listing."""
    gone = actor.create(InstanceSpec(name="lst-gone", vcpus=1, memory_mb=128))
    kept = actor.create(InstanceSpec(name="lst-kept", vcpus=1, memory_mb=128))
    try:
        actor.destroy(gone.id)

        def read(content: Any) -> list[str]:
            refs = [actor._ref(content, "VirtualMachine", i) for i in (gone.id, kept.id)]
            found = actor._s.retrieve_objects(content, refs, listing.VM_CONFIG_PROPERTIES, report_missing=True)
            return [str(o.obj._moId) for o in found]

        assert actor._call("config read", read) == [kept.id]
    finally:
        actor.destroy(kept.id)


def test_the_collector_pause_nests_survives_errors_and_keeps_a_caller_s_own_setting() -> None:
    import gc
    import threading

    from virtdrivers_vmware._gc import collector_paused

    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        inner_done = threading.Event()

        def other_retrieval() -> None:
            with collector_paused():
                inner_done.wait(5)

        t = threading.Thread(target=other_retrieval)
        t.start()
    assert not gc.isenabled(), "re-enabled while another thread's retrieval still parses"
    inner_done.set()
    t.join()
    assert gc.isenabled(), "the last retrieval to end re-enables the collector"
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a failed retrieval")
    assert gc.isenabled()
    gc.disable()  # an application that runs without the cyclic collector keeps it off
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
