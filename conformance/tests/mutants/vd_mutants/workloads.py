"""Mutants of the workload operations (contract 1.2): images, NICs, user data, addresses, console, metrics."""

from __future__ import annotations

import datetime
import uuid

from pydantic import SecretStr

from vd_mutants._support import leak_storage, with_leaked_storage
from virtdrivers.errors import InvalidSpec
from virtdrivers.fake import FakeDriver
from virtdrivers.fake.driver import _Instance
from virtdrivers.fake.workloads import Nic
from virtdrivers.objects import (
    ConsoleConnection,
    GuestAddress,
    HostResources,
    Image,
    ImageMode,
    InstanceInfo,
    InstanceSpec,
    PowerState,
)
from virtdrivers.objects.workloads import NicSpec


class UserDataStripped(FakeDriver):
    """create stores the user data stripped of its surrounding white space. Feature: user_data."""

    name = "mut-user-data-stripped"

    def create(self, spec: InstanceSpec, **kwargs: object) -> InstanceInfo:
        if spec.user_data is not None and spec.user_data.user_data is not None:
            stripped = spec.user_data.model_copy(update={"user_data": spec.user_data.user_data.strip()})
            spec = spec.model_copy(update={"user_data": stripped})
        return super().create(spec, **kwargs)  # type: ignore[arg-type]


class NicMacIgnored(FakeDriver):
    """Every NIC gets a generated MAC, the asked one is dropped. Feature: networks."""

    name = "mut-nic-mac-ignored"

    def _new_nic(self, nic: NicSpec, field: str) -> Nic:
        return super()._new_nic(nic.model_copy(update={"mac": None}), field)


class DetachNicNoop(FakeDriver):
    """detach_nic finds the NIC and returns without removing it. Feature: nic_hotplug."""

    name = "mut-detach-nic-noop"

    def detach_nic(self, instance_id: str, nic_id: str) -> None:
        with self._b.lock:
            if not any(n.id == nic_id for n in self._get(instance_id).nics):
                super().detach_nic(instance_id, nic_id)  # the NotFound of an unknown NIC


class AddressesWhenStopped(FakeDriver):
    """A stopped guest reports its last lease's address. Feature: guest_addresses."""

    name = "mut-addresses-when-stopped"

    def guest_addresses(self, instance_id: str) -> list[GuestAddress]:
        with self._b.lock:
            inst = self._get(instance_id)
            if inst.power_state != PowerState.RUNNING:
                now = datetime.datetime.now(datetime.UTC)
                return [
                    GuestAddress(mac=n.mac, addresses=("10.0.2.15/24",), source="lease", observed_at=now)
                    for n in inst.nics
                ]
        return super().guest_addresses(instance_id)


class ConsoleHead(FakeDriver):
    """console_output returns the first max_bytes of the log, not the last. Feature: console_output."""

    name = "mut-console-head"

    def console_output(self, instance_id: str, *, max_bytes: int = 64 * 1024) -> str:
        whole = super().console_output(instance_id, max_bytes=1024 * 1024)
        return whole.encode()[:max_bytes].decode(errors="replace") if max_bytes > 0 else whole


class TicketInUrl(FakeDriver):
    """console_connection puts the ticket into the URL, where logs and reprs show it. Feature: console_connect."""

    name = "mut-ticket-in-url"

    def console_connection(self, instance_id: str) -> ConsoleConnection:
        conn = super().console_connection(instance_id)
        secret = conn.ticket.get_secret_value() if conn.ticket else uuid.uuid4().hex
        return conn.model_copy(
            update={"url": f"vnc://{conn.host}:{conn.port}/?ticket={secret}", "ticket": SecretStr(secret)}
        )


class FailedImageCreateLeaks(FakeDriver):
    """A create from an image that fails late removes the instance but not its root disk. Feature: images."""

    name = "mut-failed-image-create-leaks"

    def _discard(self, inst: _Instance) -> None:
        root = [d for d in inst.disks if d.label == "root"] if inst.image_id else []
        super()._discard(inst)
        if root:
            leak_storage(self._b, inst.node, root[0].size_gib)

    def host_resources(self, node: str | None = None) -> HostResources:
        return with_leaked_storage(self._b, super().host_resources(node))


class UnknownImageBlank(FakeDriver):
    """An unknown image is not refused: the instance is made blank. Feature: images."""

    name = "mut-unknown-image-blank"

    def _image(self, ref: str, field: str) -> Image:
        try:
            return super()._image(ref, field)
        except InvalidSpec:
            return next(iter(self._b.images.values()))


class CowWritesTheImage(FakeDriver):
    """A copy-on-write create writes into the image (its child made on the wrong file). Feature: image_cow."""

    name = "mut-cow-writes-the-image"

    def create(self, spec: InstanceSpec, **kwargs: object) -> InstanceInfo:
        info = super().create(spec, **kwargs)  # type: ignore[arg-type]
        if spec.image is not None and spec.image_mode != ImageMode.COPY:
            with self._b.lock:
                image = self._image(spec.image, "image")
                self._b.images[image.id] = image.model_copy(update={"checksum": f"sha256:{uuid.uuid4().hex}"})
        return info
