"""The Hyper-V driver: each contract operation is one fixed PowerShell script over WinRM.

Thin on purpose: arguments are validated and packed as data, the script named after
the operation runs (see :mod:`virtdrivers_hyperv.scripts`), and its JSON answer is
mapped back (see :mod:`virtdrivers_hyperv.mapping`). The vendor SDK (pywinrm) is
imported only by :mod:`virtdrivers_hyperv.session`, when connecting.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

import virtdrivers
from virtdrivers.capabilities import Capability, DiskFormat
from virtdrivers.driver import Driver, EmbeddedEndpoint, EventCallback, ProgressCallback, Subscription
from virtdrivers.errors import (
    BackendUnavailable,
    DriverError,
    InstanceNotFound,
    InvalidSpec,
    InvalidState,
    NotFound,
    NotSupported,
    Timeout,
)
from virtdrivers.objects import (
    Aggregate,
    BackendInfo,
    DiskInfo,
    DiskSpec,
    HAPriority,
    HAState,
    HostResources,
    InstanceInfo,
    InstanceSpec,
    NodeInfo,
    SnapshotInfo,
)
from virtdrivers_hyperv import mapping
from virtdrivers_hyperv.events import EventHub
from virtdrivers_hyperv.session import HypervSession, HypervSettings

__all__ = ["HA_METADATA_KEY", "HypervDriver"]

#: ``spec.metadata[HA_METADATA_KEY] = "true"`` makes create add the VM as a clustered role at once.
HA_METADATA_KEY = "hyperv.ha"


def _check_id(instance_id: str) -> str:
    """Hyper-V VM ids are GUIDs; anything else cannot exist, so it is not sent."""
    try:
        return str(uuid.UUID(instance_id))
    except (ValueError, AttributeError, TypeError):
        raise InstanceNotFound(str(instance_id)) from None


def _check_snapshot_id(snapshot_id: str) -> str:
    """Checkpoint ids are GUIDs too; a malformed one names no checkpoint ("" when malformed)."""
    try:
        return str(uuid.UUID(str(snapshot_id)))
    except ValueError:
        return ""


def _check_memory(memory_mb: int | None) -> None:
    # Hyper-V: "The amount of memory assigned must be a multiple of 2 MB."
    if memory_mb is not None and memory_mb % 2:
        raise InvalidSpec("Hyper-V needs memory in multiples of 2 MB", field="memory_mb")


def _check_formats(disks: Sequence[DiskSpec]) -> None:
    """Every disk this driver makes is a VHDX: another format is refused, never silently replaced.

    The core's capability guard already refuses undeclared formats; this holds when the
    guard is lifted (the conformance suite's probes), so a probe sees the truth.
    """
    for disk in disks:
        if disk.format is not None and disk.format != DiskFormat.VHDX:
            raise NotSupported(
                f"Hyper-V disks are vhdx, not {disk.format.value}", capability=Capability.for_disk_format(disk.format)
            )


class HypervDriver(Driver):
    """Hyper-V hosts and failover clusters through PowerShell over WinRM."""

    name = "hyperv"
    capabilities = frozenset(
        {
            Capability.PAUSE,
            Capability.SUSPEND,
            Capability.RESIZE_CPU,
            Capability.RESIZE_MEMORY,
            Capability.ATTACH_DISK,
            Capability.DETACH_DISK,
            Capability.SNAPSHOT,
            Capability.SNAPSHOT_MEMORY,
            Capability.LIVE_MIGRATE,
            Capability.COLD_MIGRATE,
            Capability.EVACUATE,
            Capability.AGGREGATES,
            Capability.HIGH_AVAILABILITY,
            Capability.HA_FAILOVER,
            Capability.ADOPT,
            Capability.EVENTS,
            Capability.DISK_VHDX,
        }
    )
    settings_model = HypervSettings
    default_disk_format: ClassVar[DiskFormat | None] = DiskFormat.VHDX
    unique_names = True
    settings: HypervSettings

    @classmethod
    def embedded_endpoints(cls) -> Sequence[EmbeddedEndpoint]:
        from virtdrivers_hyperv.simulator.endpoint import embedded_endpoints

        return embedded_endpoints()

    def __init__(self, settings: Any = None, /, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._session: HypervSession | None = None
        self._poll_session: HypervSession | None = None
        self._events: EventHub | None = None

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def session(self) -> HypervSession:
        if self._session is None:
            raise BackendUnavailable("hyperv: not connected")
        return self._session

    def _run(
        self,
        script: str,
        args: dict[str, Any] | None = None,
        *,
        instance_id: str | None = None,
        session: HypervSession | None = None,
        extra_time: float = 0.0,
    ) -> Any:
        """Run one fixed script; ``extra_time`` lengthens its deadline by a wait the caller asked for."""
        timeout = self.settings.task_timeout + extra_time if extra_time else None
        result = (session or self.session).run(script, args, timeout=timeout)
        if result.exit_code != 0 or (result.stderr and not result.stdout):
            raise mapping.error_from(mapping.parse_clixml(result.stderr), instance_id=instance_id)
        return mapping.parse_output(result.stdout)

    def _one(self, script: str, instance_id: str, *, extra_time: float = 0.0, **args: Any) -> Any:
        value = self._run(script, {"id": instance_id, **args}, instance_id=instance_id, extra_time=extra_time)
        items = mapping.as_list(value)
        if not items:
            raise InstanceNotFound(instance_id)
        return items[0]

    def _vm(self, script: str, instance_id: str, *, extra_time: float = 0.0, **args: Any) -> InstanceInfo:
        raw = self._one(script, _check_id(instance_id), extra_time=extra_time, **args)
        return self._seen(mapping.instance_from(raw))

    def _seen(self, info: InstanceInfo) -> InstanceInfo:
        """Tell the event hub (if anyone listens) the state an operation just left."""
        if self._events is not None:
            self._events.observe(info.id, info)
        return info

    def _managed(self, instance_id: str) -> InstanceInfo:
        info = self._vm("get", instance_id)
        if not info.managed:
            raise InstanceNotFound(instance_id)
        return info

    def _disk_dir(self) -> str:
        return f"{self.settings.storage_path}\\vd-{uuid.uuid4()}"

    # -- connection ---------------------------------------------------------------------------------

    def connect(self) -> None:
        if self._session is not None:
            return
        session = HypervSession(self.settings)
        session.connect()
        self._session = session

    def close(self) -> None:
        events, self._events = self._events, None
        if events is not None:
            events.close()
        for session in (self._session, self._poll_session):
            if session is not None:
                session.close()
        self._session = self._poll_session = None

    def backend_info(self) -> BackendInfo:
        import winrm

        info = self._run("info")
        return BackendInfo(
            backend="Hyper-V",
            backend_version=f"Windows {info.get('Os', '')}",
            endpoint=self.settings.endpoint,
            libraries={
                "pywinrm": winrm.__version__,
                "virtdrivers": virtdrivers.__version__,
                "powershell": str(info.get("Ps", "")),
                "cluster": str(info.get("Cluster") or ""),
            },
        )

    # -- mandatory core ---------------------------------------------------------------------------

    def _all(self) -> list[InstanceInfo]:
        return [mapping.instance_from(v) for v in mapping.as_list(self._run("list"))]

    def list_instances(self) -> list[InstanceInfo]:
        return [i for i in self._all() if i.managed]

    def get_instance(self, instance_id: str) -> InstanceInfo:
        return self._managed(instance_id)

    def create(self, spec: InstanceSpec, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        _check_memory(spec.memory_mb)
        _check_formats(spec.disks)
        if progress:
            progress(0.0, "creating the VM, its VHDX disks and settings in one script")
        labels = {f"disk{i}.vhdx": d.label for i, d in enumerate(spec.disks) if d.label}
        token = uuid.uuid4().hex
        directory = self._disk_dir()
        args = {
            "name": spec.name,
            "cpu": spec.vcpus,
            "mem": spec.memory_mb * mapping.MIB,
            "dir": directory,
            "disks": [{"size": d.size_gib * mapping.GIB, "fixed": not d.thin} for d in spec.disks],
            "notes": mapping.encode_notes(dict(spec.metadata), labels, token=token),
            "start": spec.start,
            "ha": spec.metadata.get(HA_METADATA_KEY, "").lower() == "true",
            "node": spec.node,
        }
        try:
            value = self._run("create", args)
        except (Timeout, BackendUnavailable):
            # The script was cut off before its own rollback could run: remove what it made.
            with contextlib.suppress(DriverError):
                self._run("purge", {"token": token, "dir": directory})
            raise
        info = self._seen(mapping.instance_from(mapping.as_list(value)[0]))
        if progress:
            progress(1.0, "created")
        return info

    def destroy(self, instance_id: str) -> None:
        vid = _check_id(instance_id)
        self._run("destroy", {"id": vid}, instance_id=instance_id)
        if self._events is not None:
            self._events.observe(vid, None)

    def power_on(self, instance_id: str) -> InstanceInfo:
        return self._vm("start", instance_id)

    def power_off(self, instance_id: str, *, timeout: float = 60.0, force: bool = False) -> InstanceInfo:
        # The guest gets ``timeout`` seconds (Wait-Job on Stop-VM -AsJob) before TurnOff; the
        # script's own deadline grows by that wait so a patient caller is not cut off as late.
        wait = 0 if force else max(0, math.ceil(timeout))
        return self._vm("stop", instance_id, extra_time=wait, timeout=wait, force=force or wait == 0)

    def reboot(self, instance_id: str, *, hard: bool = False) -> InstanceInfo:
        return self._vm("reboot", instance_id, hard=hard)

    def list_nodes(self) -> list[NodeInfo]:
        return mapping.nodes_from(self._run("nodes"))

    def host_resources(self, node: str | None = None) -> HostResources:
        value = self._run("host", {"node": node, "path": self.settings.storage_path})
        return mapping.host_from(value)

    # -- power extras -------------------------------------------------------------------------------

    def pause(self, instance_id: str) -> InstanceInfo:
        return self._vm("pause", instance_id)

    def unpause(self, instance_id: str) -> InstanceInfo:
        return self._vm("unpause", instance_id)

    def suspend(self, instance_id: str) -> InstanceInfo:
        return self._vm("suspend", instance_id)

    def resume(self, instance_id: str) -> InstanceInfo:
        return self._vm("resume", instance_id)

    def resize(self, instance_id: str, *, vcpus: int | None = None, memory_mb: int | None = None) -> InstanceInfo:
        _check_memory(memory_mb)
        mem = memory_mb * mapping.MIB if memory_mb is not None else None
        return self._vm("resize", instance_id, cpu=vcpus, mem=mem)

    # -- storage ------------------------------------------------------------------------------------

    def attach_disk(self, instance_id: str, disk: DiskSpec) -> DiskInfo:
        _check_formats([disk])
        raw = self._one("get", _check_id(instance_id))
        info = mapping.instance_from(raw)
        if not info.managed:
            raise InstanceNotFound(instance_id)
        _, metadata, labels = mapping.decode_notes(raw.get("Notes"))
        file = f"disk-{uuid.uuid4().hex[:12]}.vhdx"
        notes = mapping.encode_notes(metadata, {**labels, file: disk.label}) if disk.label else None
        args = {
            "id": info.id,
            "root": self.settings.storage_path,
            "file": file,
            "size": disk.size_gib * mapping.GIB,
            "fixed": not disk.thin,
            "notes": notes,
        }
        value = self._run("attach", args, instance_id=instance_id)
        return mapping.disk_from(value, {file: disk.label} if disk.label else None)

    def detach_disk(self, instance_id: str, disk_id: str, *, delete: bool = True) -> None:
        self._run("detach", {"id": _check_id(instance_id), "path": disk_id, "delete": delete}, instance_id=instance_id)

    # -- snapshots ------------------------------------------------------------------------------------

    def create_snapshot(self, instance_id: str, name: str, *, with_memory: bool = False) -> SnapshotInfo:
        vid = _check_id(instance_id)
        value = self._run("checkpoint", {"id": vid, "name": name, "memory": with_memory}, instance_id=vid)
        return mapping.snapshot_from(value, vid)

    def list_snapshots(self, instance_id: str) -> list[SnapshotInfo]:
        vid = _check_id(instance_id)
        value = self._run("snapshots", {"id": vid}, instance_id=vid)
        return [mapping.snapshot_from(s, vid) for s in mapping.as_list(value)]

    def _snapshot_id(self, instance_id: str, snapshot_id: str) -> tuple[str, str]:
        """(instance id, checkpoint id), both in Hyper-V's grammar, or the right NotFound before any script.

        A malformed checkpoint id is not sent; the instance is still looked up (read-only)
        so that a missing instance is reported as InstanceNotFound, as for any other call.
        """
        vid = _check_id(instance_id)
        sid = _check_snapshot_id(snapshot_id)
        if not sid:
            self._managed(vid)
            raise NotFound(f"Hyper-V: no checkpoint {snapshot_id!r} on instance {vid}")
        return vid, sid

    def revert_snapshot(self, instance_id: str, snapshot_id: str) -> InstanceInfo:
        vid, sid = self._snapshot_id(instance_id, snapshot_id)
        return self._vm("revert", vid, sid=sid)

    def delete_snapshot(self, instance_id: str, snapshot_id: str) -> None:
        vid, sid = self._snapshot_id(instance_id, snapshot_id)
        self._run("unsnapshot", {"id": vid, "sid": sid}, instance_id=vid)

    # -- migration ------------------------------------------------------------------------------------

    def _move(self, instance_id: str, node: str | None, live: bool, progress: ProgressCallback | None) -> InstanceInfo:
        if progress:
            progress(0.0, f"{'live' if live else 'cold'} migration to {node or 'another node'}")
        info = self._vm("move", instance_id, node=node, live=live)
        if progress:
            progress(1.0, f"on {info.node}")
        return info

    def live_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        return self._move(instance_id, node, True, progress)

    def cold_migrate(
        self, instance_id: str, node: str | None = None, *, progress: ProgressCallback | None = None
    ) -> InstanceInfo:
        return self._move(instance_id, node, False, progress)

    def evacuate(self, instance_id: str, node: str, *, progress: ProgressCallback | None = None) -> InstanceInfo:
        if progress:
            progress(0.0, f"rebuilding on {node}")
        info = self._vm("evacuate", instance_id, node=node)
        if progress:
            progress(1.0, f"on {info.node}")
        return info

    # -- cluster ------------------------------------------------------------------------------------------

    def list_aggregates(self) -> list[Aggregate]:
        return mapping.aggregates_from(self._run("aggregates"))

    def set_high_availability(
        self, instance_id: str, enabled: bool, *, priority: HAPriority = HAPriority.MEDIUM
    ) -> HAState:
        vid = _check_id(instance_id)
        args = {"id": vid, "enabled": bool(enabled), "priority": mapping.priority_value(priority)}
        return mapping.ha_from(self._run("ha_set", args, instance_id=vid), vid)

    def get_high_availability(self, instance_id: str) -> HAState:
        vid = _check_id(instance_id)
        return mapping.ha_from(self._run("ha_get", {"id": vid}, instance_id=vid), vid)

    def failover(self, instance_id: str, node: str | None = None) -> HAState:
        vid = _check_id(instance_id)
        return mapping.ha_from(self._run("failover", {"id": vid, "node": node}, instance_id=vid), vid)

    # -- pets ------------------------------------------------------------------------------------------------

    def list_unmanaged(self) -> list[InstanceInfo]:
        return [i for i in self._all() if not i.managed]

    def adopt(self, instance_id: str) -> InstanceInfo:
        vid = _check_id(instance_id)
        raw = self._one("get", vid, any=True)  # the one lookup that may see a VM that is not ours
        info = mapping.instance_from(raw)
        if info.managed:
            raise InvalidState(f"{info.name!r} is managed already")
        notes = raw.get("Notes")
        original = notes if isinstance(notes, str) else None
        return self._vm("set_notes", vid, any=True, notes=mapping.encode_notes({}, {}, original))

    # -- events ------------------------------------------------------------------------------------------

    def _poll_list(self) -> list[InstanceInfo]:
        """The poller's listing of every VM, managed or not, on its own WinRM session.

        Its own session so it never waits behind the caller's; unmanaged VMs included so
        the hub knows a pet before it is adopted (see :class:`EventHub`).
        """
        if self._poll_session is None:
            self._poll_session = HypervSession(self.settings)
        value = self._run("list", session=self._poll_session)
        return [mapping.instance_from(v) for v in mapping.as_list(value)]

    def subscribe(self, callback: EventCallback) -> Subscription:
        self.session  # noqa: B018  # refuse before starting threads when not connected
        if self._events is None:
            self._events = EventHub(self._poll_list, self.settings.event_poll_interval)
        return self._events.subscribe(callback)
