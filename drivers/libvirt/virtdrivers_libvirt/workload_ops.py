"""Contract 1.2 on libvirt: images from the local image store, libvirt networks, the guest's side.

Addresses come from the guest agent, console output from the serial log file and counters from
``getAllDomainStats``: only a real guest answers them, so libvirt's test driver refuses them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from virtdrivers.capabilities import DiskFormat
from virtdrivers.errors import (
    Conflict,
    InstanceNotFound,
    InvalidSpec,
    NotFound,
    NotSupported,
    Timeout,
)
from virtdrivers.objects import (
    GuestAddress,
    Image,
    ImageMode,
    InstanceMetrics,
    Network,
    NicInfo,
    NicSpec,
    PowerState,
)
from virtdrivers_libvirt import guest_io, mapping, network
from virtdrivers_libvirt.base import LibvirtBase, _Node
from virtdrivers_libvirt.images import ImageStore, StoredImage, root_disk_gib
from virtdrivers_libvirt.storage import MADE_PREFIX, DirStore

log = logging.getLogger(__name__)

# libvirt constants used here, so the module imports without the SDK.
_AFFECT_LIVE, _AFFECT_CONFIG = 1, 2
#: sun_path holds 108 bytes with the terminating NUL.
_SUN_PATH_MAX = 107


class LibvirtWorkloads(LibvirtBase):
    """Images, networks and the guest's side of an instance (addresses, console, counters)."""

    def _image(self, ref: str, field: str) -> StoredImage:
        found = self._images.find(ref) if self._images is not None else None
        if found is None:
            raise InvalidSpec(f"no image {ref!r}", field=field)
        return found

    def _root_disk(
        self, store: DirStore, uid: str, image: StoredImage, mode: ImageMode | None, token: str
    ) -> mapping.DiskRecord:
        """The root disk, first on the bus and first to boot: a copy-on-write child of the image
        unless a copy is asked for."""
        cow = mode != ImageMode.COPY
        size = root_disk_gib(image.image)
        dev = mapping.ROOT_DEV
        path = store.create_from_image(f"{MADE_PREFIX}{uid}-{dev}-{token}", image.path, image.format, size, cow=cow)
        return mapping.DiskRecord(
            dev=dev, path=path, size_gib=size, format=DiskFormat.QCOW2, thin=True, image=image.image.id, cow=cow
        )

    @staticmethod
    def _agent_socket(store: DirStore, uid: str) -> str | None:
        """Our own path for the agent's socket where it fits sun_path; None lets libvirt choose
        (under its state directory, which an embedded root deep in /tmp can push past 108 bytes)."""
        path = os.path.join(os.path.abspath(store.directory), f"{MADE_PREFIX}{uid}.agent")
        return path if len(path.encode()) <= _SUN_PATH_MAX else None

    @staticmethod
    def _delete_files(paths: Sequence[str]) -> None:
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                log.exception("could not remove %s", path)

    def _resolve_nics(
        self, node: _Node, nics: Sequence[Any], field: str, used: set[str] | None = None
    ) -> list[mapping.NicRecord]:
        return network.resolve(self._networks(node), nics, used or set(), field)

    def _networks(self, node: _Node) -> list[Network]:
        return network.list_networks(node.session, self._domain_type_for(node))

    def _image_store(self) -> ImageStore:
        if self._images is None:
            raise NotSupported("no image store: set image_dir")
        return self._images

    def list_images(self) -> list[Image]:
        return [i.image for i in self._images.list()] if self._images is not None else []

    def register_image(self, path: str, name: str, *, disk_format: DiskFormat | None = None) -> Image:
        if not name or len(name) > 255 or mapping.unstorable(name):
            raise InvalidSpec("an image name is 1-255 characters XML can hold", field="name")
        return self._image_store().add(path, name, disk_format=disk_format)

    def delete_image(self, image_id: str) -> None:
        """Conflict while any domain on any node (or any of its snapshots) has a copy-on-write
        child of it: deleting the backing file would corrupt those disks."""
        store = self._image_store()
        if not any(i.image.id == image_id for i in store.list()):
            raise NotFound(f"image {image_id!r} not found")
        users = []
        for node in list(self._nodes.values()):
            for dom in node.session.call(lambda c: c.listAllDomains(0)):
                try:
                    record = self._record(node, dom, fresh=True)
                    disks = (*record.disks, *self._snapshot_disks(node, dom, record.uuid))
                except InstanceNotFound:
                    continue
                if any(d.image == image_id and d.cow for d in disks):
                    users.append(record.name)
        if users:
            raise Conflict(f"image {image_id!r} backs the disks of {', '.join(sorted(users))}")
        store.remove(image_id)

    def list_networks(self) -> list[Network]:
        return self._networks(self._primary)

    def attach_nic(self, instance_id: str, nic: NicSpec) -> NicInfo:
        """Hot-plugs into a running guest (no guest help needed to add a PCI device); a stopped
        one gets it in its definition. Refused before any change when the network is unknown or
        the MAC is taken."""
        node, dom, record = self._managed(instance_id)
        if self._domain_type_for(node) == "test":
            raise NotSupported("libvirt's test driver cannot hot-plug devices")
        record = self._record(node, dom, fresh=True)
        new = self._resolve_nics(node, [nic], "nic", {n.mac for n in record.nics})[0]
        flags = _AFFECT_CONFIG | (_AFFECT_LIVE if self._active(node, dom) else 0)
        node.session.call(lambda _c: dom.attachDeviceFlags(mapping.nic_xml(new), flags), ref=instance_id)
        with self._lock:
            self._records.pop(record.uuid, None)
        return new.info()

    def detach_nic(self, instance_id: str, nic_id: str) -> None:
        """From a running guest, returns once the guest has let the device go (PCI hot-unplug
        needs the guest OS to eject it); a guest that does not within :attr:`nic_unplug_timeout`
        gets :class:`Timeout`, its definition already without the NIC (gone at the next start)."""
        node, dom, record = self._managed(instance_id)
        if self._domain_type_for(node) == "test":
            raise NotSupported("libvirt's test driver cannot hot-unplug devices")
        record = self._record(node, dom, fresh=True)
        found = [n for n in record.nics if n.mac == nic_id.lower()]
        if not found:
            raise NotFound(f"NIC {nic_id!r} not attached to {record.name!r}")
        live = self._active(node, dom)
        flags = _AFFECT_CONFIG | (_AFFECT_LIVE if live else 0)
        try:
            node.session.call(lambda _c: dom.detachDeviceFlags(mapping.nic_xml(found[0]), flags), ref=instance_id)
        finally:
            with self._lock:
                self._records.pop(record.uuid, None)
        if live and not self._wait_unplugged(node, dom, found[0].mac):
            raise Timeout(
                f"the guest of {record.name!r} did not release NIC {found[0].mac} within"
                f" {self.nic_unplug_timeout:g} s; it is out of the definition and goes at the next start"
            )

    #: Seconds a running guest may take to eject a NIC (ACPI hot-unplug) before detach gives up.
    nic_unplug_timeout: float = 30.0

    def _wait_unplugged(self, node: _Node, dom: Any, mac: str) -> bool:
        deadline = time.monotonic() + self.nic_unplug_timeout
        while True:
            live = mapping.parse_domain_xml(node.session.call(lambda _c: dom.XMLDesc(0), ref=dom.UUIDString()))
            if mac not in {n.mac for n in live.nics}:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def _guest_side(self, instance_id: str, what: str) -> tuple[_Node, Any]:
        """The domain, where it runs a real guest to ask: libvirt's test driver runs none, so
        whatever it answered would be made up."""
        node, dom, _ = self._managed(instance_id)
        if self._domain_type_for(node) == "test":
            raise NotSupported(f"libvirt's test driver runs no guest: no {what}")
        return node, dom

    def guest_addresses(self, instance_id: str) -> list[GuestAddress]:
        node, dom = self._guest_side(instance_id, "guest addresses")
        if self._state(node, dom) != PowerState.RUNNING:
            return []
        return network.guest_addresses(node.session, dom, self._record(node, dom))

    def console_output(self, instance_id: str, *, max_bytes: int = 64 * 1024) -> str:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise InvalidSpec("must be a positive number of bytes", field="max_bytes")
        node, dom = self._guest_side(instance_id, "console")
        console = self._record(node, dom).console
        if console is None:
            raise NotSupported("this instance has no serial console log (it needs disk_dir)")
        return guest_io.console_tail(console, max_bytes)

    def instance_metrics(self, instance_id: str) -> InstanceMetrics:
        node, dom = self._guest_side(instance_id, "counters")
        return guest_io.metrics(node.session, dom, instance_id)
