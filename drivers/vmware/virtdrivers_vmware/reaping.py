"""Crash-safe creation's other half: finding and removing what interrupted creates left.

A create writes its operation token into everything it makes (the VM's extraConfig, the
name of every vmdk); ``reap`` removes VMs whose token outlived its create, then token-named
vmdk files no VM refers to. A mixin of the driver (see :mod:`virtdrivers_vmware._ops`).
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from virtdrivers.errors import Conflict, InstanceNotFound, InvalidState, NotFound
from virtdrivers.objects import Leftover
from virtdrivers_vmware import mapping
from virtdrivers_vmware._ops import VSphereOps
from virtdrivers_vmware._sdk import sdk

if TYPE_CHECKING:
    from virtdrivers.reaping import CreateToken

log = logging.getLogger("virtdrivers_vmware.driver")


def _why(token: CreateToken) -> str:
    """Why a token's create counts as over, for the operator reading a dry run."""
    if token.owner_alive() is False:
        return f"its create never completed and its process ({token.pid} on {token.host}) is gone"
    return f"its create never completed and started more than the grace period ago (on {token.host})"


class ReapOps(VSphereOps):
    """``reap`` and the disk search a failed create also uses."""

    def reap(self, *, dry_run: bool = False, grace_s: float = 3600.0) -> list[Leftover]:
        """VMs whose create token outlived their create, then vmdk files of creates that no VM refers to.

        Instances go first: Destroy_Task takes their disks with them, so the disk search
        that follows finds only what no VM holds (a CreateVM_Task that failed after making
        a disk, a cleanup cut short). Each removal is its own call, so one that fails (the
        VM is busy) leaves the others to go, and a dry run reports exactly what a real run
        would remove.
        """
        found = self._call("reap: find instances", lambda c: self._leftover_vms(c, grace_s), idempotent=True)
        removed: list[Leftover] = []
        for item in found:
            if dry_run:
                removed.append(item)
                continue
            try:
                gone = self._call(
                    f"reap {item.ref}",
                    functools.partial(self._destroy_leftover, vm_id=item.ref, token=item.token),
                    ref=item.ref,
                )
            except InstanceNotFound:
                gone = True  # removed meanwhile: nothing left
            except (InvalidState, Conflict) as exc:
                log.warning("vsphere: could not reap %s (%s): %s", item.ref, item.name, exc)
                continue
            if gone:
                removed.append(item)
        disks = self._call("reap: find disks", lambda c: self._leftover_disks(c, grace_s), idempotent=True)
        for item, datacenter in disks:
            if not dry_run:
                try:
                    self._call(
                        f"reap {item.ref}", functools.partial(self._delete_disk, path=item.ref, datacenter=datacenter)
                    )
                except NotFound:
                    pass  # gone already
                except (InvalidState, Conflict) as exc:
                    log.warning("vsphere: could not reap %s: %s", item.ref, exc)
                    continue
            removed.append(item)
        return removed

    def _leftover_vms(self, content: Any, grace_s: float) -> list[Leftover]:
        """Managed VMs in scope whose create token is abandoned (pets never carry one we honour)."""
        from virtdrivers.reaping import CreateToken

        inv = self._inventory(content)
        out = []
        for oid, props in inv.vms.items():
            text = mapping.create_token_of(props)
            token = CreateToken.decode(text)
            if token is None or not mapping.is_managed(props) or not self._in_scope(props, inv):
                continue
            if not token.abandoned(grace_s):
                continue
            cluster = inv.cluster_of_host(mapping.moid(props.get("runtime.host")))
            out.append(
                Leftover(
                    kind="instance",
                    ref=oid,
                    name=mapping.vm_name(props.get("name")),
                    node=cluster.name if cluster else None,
                    token=text,
                    reason=_why(token),
                )
            )
        return out

    def _destroy_leftover(self, content: Any, vm_id: str, token: str | None) -> bool:
        """Power off and destroy a leftover VM, unless its create completed since it was found."""
        vm = self._ref(content, "VirtualMachine", vm_id)
        objs = self._s.retrieve_objects(content, [vm], ["runtime.powerState", "config.extraConfig"])
        if not objs:
            return True
        props = mapping.props_of(objs[0])
        if token is None or mapping.create_token_of(props) != token:
            log.info("vsphere: %s completed its create meanwhile; not reaped", vm_id)
            return False
        if props.get("runtime.powerState") != "poweredOff":
            self._task(content, vm.PowerOffVM_Task(), "power off a leftover")
        self._task(content, vm.Destroy_Task(), "destroy a leftover")
        log.info("vsphere: reaped %s, left by an interrupted create (%s)", vm_id, token)
        return True

    def _leftover_disks(
        self, content: Any, grace_s: float, *, only: str | None = None
    ) -> list[tuple[Leftover, str | None]]:
        """vmdk files named with an abandoned create token (``only``: with this token) that no VM refers to.

        One SearchDatastoreSubFolders_Task per datastore in scope finds the candidates by name.
        Only if there are any are the references read: every VM of the vCenter (a VM of another
        cluster may use a shared datastore), with its devices, its file layout and the devices
        of each of its snapshots, so a disk a snapshot still holds is never taken.
        Returns each leftover with the datacenter its datastore belongs to.
        """
        from virtdrivers.reaping import CreateToken

        vim, _ = sdk()
        inv = self._inventory(content, with_vms=False)
        stores: dict[str, tuple[str, str | None]] = {}
        for cluster in self._scope(inv):
            for ds in cluster.datastores:
                if ds in inv.datastores:
                    stores.setdefault(ds, (inv.datastores[ds].name, cluster.datacenter))
        if not stores:
            return []
        refs = [self._ref(content, "Datastore", ds) for ds in sorted(stores)]
        browsers = {
            mapping.moid(o.obj): mapping.props_of(o).get("browser")
            for o in self._s.retrieve_objects(content, refs, ["browser"])
        }
        spec = vim.host.DatastoreBrowser.SearchSpec(
            query=[vim.host.DatastoreBrowser.VmDiskQuery()],
            matchPattern=[f"{only}_*.vmdk" if only else "vdc1-*.vmdk"],
        )
        candidates: dict[tuple[str, str], tuple[str, CreateToken, str | None]] = {}
        for ds, (name, datacenter) in sorted(stores.items()):
            browser = browsers.get(ds)
            if browser is None:
                continue
            results = self._task(
                content, browser.SearchDatastoreSubFolders_Task(f"[{name}]", spec), f"search datastore {name}"
            )
            for result in results or ():
                for f in result.file or ():
                    text = mapping.disk_token(str(f.path))
                    token = CreateToken.decode(text)
                    if text is None or token is None:
                        continue
                    if only is not None and text != only:
                        continue
                    if only is None and not token.abandoned(grace_s):
                        continue
                    path = mapping.datastore_file(f"{result.folderPath}/{f.path}")
                    if path is not None:
                        candidates[path] = (text, token, datacenter)
        if not candidates:
            return []
        referenced, creators = self._references(content)
        out = []
        for (ds_name, rel), (text, token, datacenter) in sorted(candidates.items()):
            if (ds_name, rel) in referenced or text in creators:
                continue
            out.append(
                (
                    Leftover(
                        kind="disk",
                        ref=f"[{ds_name}] {rel}",
                        name=rel.rsplit("/", 1)[-1],
                        token=text,
                        reason=_why(token) + "; no VM refers to it",
                    ),
                    datacenter,
                )
            )
        return out

    def _references(self, content: Any) -> tuple[set[tuple[str, str]], set[str]]:
        """Every datastore file any VM of the vCenter, or any of its snapshots, refers to; and the
        tokens of the creates that made the VMs (a disk of theirs detached and kept is still theirs)."""
        paths = ("config.hardware.device", "layoutEx.file", "layoutEx.snapshot", "config.extraConfig")
        view = self._s.view(content, ("VirtualMachine",))
        referenced: set[tuple[str, str]] = set()
        creators: set[str] = set()
        snapshots = []
        for oc in self._s.retrieve(content, view, {"VirtualMachine": paths}):
            props = mapping.props_of(oc)
            referenced |= mapping.referenced_files(props)
            creator = mapping.extra_config(props).get(mapping.CREATED_BY_KEY)
            if creator:
                creators.add(creator)
            snapshots += [s.key for s in props.get("layoutEx.snapshot") or () if getattr(s, "key", None) is not None]
        for oc in self._s.retrieve_objects(content, snapshots, ["config.hardware.device"]):
            referenced |= mapping.referenced_files(mapping.props_of(oc))
        return referenced, creators

    def _delete_disk(self, content: Any, path: str, datacenter: str | None) -> None:
        dc = self._ref(content, "Datacenter", datacenter) if datacenter else None
        manager = content.virtualDiskManager
        self._task(content, manager.DeleteVirtualDisk_Task(path, dc), f"delete {path}")
        log.info("vsphere: reaped %s, left by an interrupted create", path)
