"""One state machine for cold migrate, resize, live migrate and evacuate.

Forward: ``precheck → prepare → transfer → finish → confirm``. Revert, from any
point: ``revert_transfer → revert_power``. Drivers contribute primitives only
(power, resize, and whichever of live_migrate / cold_migrate / evacuate their
capabilities offer); precheck picks them once and records the choice in the
plan, so every orchestrator that resumes the migration does the same thing.

Every step is recorded in the store before it acts (``started``) and after
(``done``), and is written to be re-run: it first looks at where the instance
actually is and does only what is still missing. So an orchestrator killed at
any point can be replaced by a fresh one that finishes or reverts cleanly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from virtdrivers.capabilities import Capability
from virtdrivers.driver import Driver
from virtdrivers.errors import (
    BackendUnavailable,
    Conflict,
    DriverError,
    InstanceNotFound,
    InvalidSpec,
    InvalidState,
    NotSupported,
    Timeout,
)
from virtdrivers.migration import objects as mobj
from virtdrivers.migration.objects import MigrationKind, TransferMethod
from virtdrivers.migration.store import ACTIVE, LeaseLost, MigrationRecord, MigrationStore, OrchestratorRecord
from virtdrivers.objects import InstanceInfo, PowerState, VersionedObject, object_registry
from virtdrivers.version import ContractVersion

__all__ = [
    "BOUNDARIES",
    "FORWARD_STEPS",
    "REVERT_STEPS",
    "BoundaryHook",
    "MigrationBusy",
    "MigrationFailed",
    "Orchestrator",
    "ProgressHook",
    "boundaries",
    "endpoint_key",
    "local_object_versions",
]

log = logging.getLogger(__name__)

FORWARD_STEPS = ("precheck", "prepare", "transfer", "finish", "confirm")
REVERT_STEPS = ("revert_transfer", "revert_power")
#: Where a step can be interrupted: recorded as started but not acted, acted but not yet
#: recorded as done, and recorded as done.
PHASES = ("before", "acted", "after")
BOUNDARIES = tuple(f"{s}:{p}" for s in FORWARD_STEPS + REVERT_STEPS for p in PHASES)

#: Called at every boundary with (migration id, step, phase); tests kill the process here.
BoundaryHook = Callable[[str, str, str], None]
#: Called with (migration id, step, overall fraction, message) as a migration advances.
ProgressHook = Callable[[str, str, float, str], None]


class MigrationBusy(Conflict):
    """Another live orchestrator holds this migration's lease."""

    code = "migration_busy"


class MigrationFailed(DriverError):
    """A step failed in a way this orchestrator cannot get past now; the record says where."""

    code = "migration_failed"


#: Errors worth retrying later from the same step rather than reverting.
_TRANSIENT = (BackendUnavailable, Timeout)


def endpoint_key(driver: Driver) -> str:
    """Which hypervisor endpoint a migration belongs to, stable across processes (no secrets)."""
    settings = json.dumps(driver.settings.redacted(), sort_keys=True, default=str)
    return f"{driver.name}:{hashlib.sha256(settings.encode()).hexdigest()[:12]}"


def _host_key() -> str:
    """Identifies a PID namespace on a machine, so a PID seen here means something."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return "/".join(parts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")  # a zombie has stopped running migrations


def local_object_versions() -> dict[str, str]:
    """Versions of every object this process can read, as registered with the store."""
    return {name: cls.VERSION for name, cls in sorted(object_registry.items())}


@dataclass
class _Ctx:
    """What one step sees."""

    record: MigrationRecord
    spec: mobj.MigrationSpec
    plan: mobj.MigrationPlan | None
    gen: int
    step: str


class Orchestrator:
    """Drives migrations of one endpoint, sharing the store with any number of peers.

    Use as a context manager: entering registers this orchestrator (with the object
    versions it reads, for clamping) and starts the heartbeat that keeps its leases;
    leaving stops it and deregisters.

    ``lease_seconds`` is how long a silent orchestrator keeps its migrations before a
    peer may take them over; a peer on the same host takes over at once when the
    owner's process is gone. ``on_boundary`` and ``on_progress`` are observation
    hooks (the kill tests and the CLI's progress display use them).
    """

    def __init__(
        self,
        store: MigrationStore,
        driver: Driver,
        *,
        endpoint: str | None = None,
        lease_seconds: float = 30.0,
        on_boundary: BoundaryHook | None = None,
        on_progress: ProgressHook | None = None,
        orchestrator_id: str | None = None,
    ) -> None:
        self.store = store
        self.driver = driver
        self.endpoint = endpoint or endpoint_key(driver)
        self.lease_seconds = lease_seconds
        self.on_boundary = on_boundary
        self.on_progress = on_progress
        self.id = orchestrator_id or f"{socket.gethostname()[:30]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.host_key = _host_key()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._last_progress = 0.0

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self.store.register(self.id, self.host_key, os.getpid(), local_object_versions(), self.lease_seconds)
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name=f"vd-migration-heartbeat-{self.id}", daemon=True)
        self._heartbeat.start()

    def close(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        with contextlib.suppress(Exception):
            self.store.deregister(self.id)

    def _beat(self) -> None:
        interval = max(self.lease_seconds / 3, 0.05)
        while not self._stop.wait(interval):
            try:
                self.store.heartbeat(self.id, self.lease_seconds)
            except Exception:  # the store may be briefly unreachable; the lease says how long we may be
                log.warning("migration heartbeat failed", exc_info=True)

    # -- peers and version clamping ---------------------------------------------------------

    def _peers(self) -> tuple[list[OrchestratorRecord], set[str]]:
        """Registered orchestrators, and the ids of those known to be gone."""
        now = time.time()
        peers = self.store.orchestrators()
        dead = set()
        for p in peers:
            if p.id == self.id:
                continue
            if p.heartbeat_until < now or (p.host_key == self.host_key and not _pid_alive(p.pid)):
                dead.add(p.id)
        return peers, dead

    def target_version(self, name: str) -> str:
        """The newest version of object ``name`` that every live orchestrator can read."""
        own = ContractVersion.parse(object_registry[name].VERSION)
        peers, dead = self._peers()
        versions = [own]
        for p in peers:
            theirs = p.versions.get(name)
            if p.id in dead or theirs is None:
                continue
            v = ContractVersion.parse(theirs)
            if v.major == own.major:
                versions.append(v)
        return str(min(versions))

    def render(self, obj: VersionedObject) -> dict[str, Any]:
        """``obj`` as a primitive every live peer can read; Conflict if that would lose what it says."""
        name = type(obj).__name__
        target = self.target_version(name)
        primitive = obj.to_primitive(target)
        if target != obj.VERSION and type(obj).from_primitive(primitive) != obj:
            raise Conflict(
                f"a live orchestrator reads {name} only up to {target}, which cannot express this request "
                f"(a field newer than {target} is set); finish the upgrade or leave the newer option unset"
            )
        return primitive

    # -- public operations ------------------------------------------------------------------

    def start(self, spec: mobj.MigrationSpec | dict[str, Any]) -> MigrationRecord:
        """Record a new migration as pending; :meth:`run` (here or in any peer) carries it out."""
        spec = mobj.MigrationSpec.validate_input(spec)
        primitive = self.render(spec)
        return self.store.create(str(uuid.uuid4()), self.endpoint, spec.kind.value, spec.instance_id, primitive)

    def revert(self, migration_id: str) -> MigrationRecord:
        """Ask for a revert; whoever runs the migration reverts it at its next boundary."""
        return self.store.request_revert(migration_id)

    def run(self, migration_id: str) -> MigrationRecord:
        """Drive one migration until it is done, reverted or rejected.

        MigrationBusy if a live peer holds it; MigrationFailed (with the record left
        where it stopped, for a later resume) if a step cannot get past an error.
        """
        record = self.store.get(migration_id)
        if record.endpoint != self.endpoint:
            raise InvalidSpec(
                f"migration {migration_id} belongs to endpoint {record.endpoint}, not {self.endpoint}",
                field="endpoint",
            )
        if not record.active:
            return record
        _peers, dead = self._peers()
        if record.owner and record.owner != self.id and record.owner not in {p.id for p in _peers}:
            dead.add(record.owner)  # deregistered without releasing: it is not coming back
        gen = self.store.claim(migration_id, self.id, self.lease_seconds, dead)
        if gen is None:
            record = self.store.get(migration_id)
            if not record.active:
                return record
            raise MigrationBusy(f"migration {migration_id} is being run by {record.owner}")
        try:
            return self._drive(migration_id, gen)
        finally:
            with contextlib.suppress(Exception):
                self.store.release(migration_id, self.id, gen)

    def run_pending(self) -> list[MigrationRecord]:
        """Run every unfinished migration of this endpoint that no live peer holds."""
        finished = []
        for record in self.store.list_migrations(endpoint=self.endpoint, statuses=ACTIVE):
            try:
                finished.append(self.run(record.id))
            except MigrationBusy:
                continue
        return finished

    # -- the state machine ----------------------------------------------------------------

    def _next(self, rec: MigrationRecord) -> tuple[str, str] | None:
        """(status, step) to run next, or None when the record is terminal."""
        order: tuple[str, ...]
        if rec.status == "running":
            order = FORWARD_STEPS
        elif rec.status == "reverting":
            order = REVERT_STEPS
        else:
            return None
        if rec.step is None or rec.step not in order:
            return rec.status, order[0]
        if rec.phase == "started":
            return rec.status, rec.step
        index = order.index(rec.step) + 1
        return (rec.status, order[index]) if index < len(order) else None

    def _drive(self, migration_id: str, gen: int) -> MigrationRecord:
        rec = self.store.get(migration_id)
        if rec.status == "pending":
            status = "reverting" if rec.revert_requested else "running"
            rec = self._record(rec, gen, None, "status", status, values={"status": status})
        while True:
            if rec.status not in ("running", "reverting"):
                return rec  # rejected at precheck
            if rec.status == "running" and rec.revert_requested:
                rec = self._record(rec, gen, rec.step, "status", "revert requested", values={"status": "reverting"})
            nxt = self._next(rec)
            if nxt is None:
                final = "done" if rec.status == "running" else "reverted"
                return self._record(rec, gen, rec.step, "status", final, values={"status": final}, unlock=True)
            rec = self._run_step(rec, gen, nxt[1])

    def _record(
        self,
        rec: MigrationRecord,
        gen: int,
        step: str | None,
        phase: str,
        detail: str = "",
        *,
        values: dict[str, Any] | None = None,
        unlock: bool = False,
    ) -> MigrationRecord:
        return self.store.record(
            rec.id,
            self.id,
            gen,
            self.lease_seconds,
            step=step,
            phase=phase,
            detail=detail,
            values=values,
            unlock=unlock,
        )

    def _boundary(self, rec: MigrationRecord, step: str, phase: str) -> None:
        if self.on_boundary is not None:
            self.on_boundary(rec.id, step, phase)

    def _run_step(self, rec: MigrationRecord, gen: int, step: str) -> MigrationRecord:
        reverting = step in REVERT_STEPS
        rec = self._record(rec, gen, step, "started", values={"progress": self._overall(step, 0.0), "message": step})
        self._boundary(rec, step, "before")
        spec = mobj.MigrationSpec.from_primitive(rec.spec)
        plan = mobj.MigrationPlan.from_primitive(rec.plan) if rec.plan else None
        ctx = _Ctx(rec, spec, plan, gen, step)
        try:
            detail, values = getattr(self, f"_step_{step}")(ctx)
        except LeaseLost:
            raise
        except _TRANSIENT as exc:
            self._record(rec, gen, step, "error", f"{exc.code}: {exc}", values={"error": f"{step}: {exc}"})
            raise MigrationFailed(f"migration {rec.id} {step}: {exc.code}: {exc} (resume to retry)") from exc
        except DriverError as exc:
            error = f"{step}: {exc.code}: {exc}"
            if step == "precheck":
                return self._record(
                    rec, gen, step, "status", f"rejected: {error}", values={"status": "rejected", "error": error},
                    unlock=True,
                )  # fmt: skip
            if reverting:
                self._record(rec, gen, step, "error", error, values={"error": error})
                raise MigrationFailed(f"migration {rec.id} could not revert: {error} (resume to retry)") from exc
            return self._record(
                rec, gen, step, "status", f"reverting after {error}", values={"status": "reverting", "error": error}
            )
        self._boundary(rec, step, "acted")
        out = {"progress": self._overall(step, 1.0), "message": detail or step, **values}
        rec = self._record(rec, gen, step, "done", detail, values=out)
        self._boundary(rec, step, "after")
        return rec

    @staticmethod
    def _overall(step: str, fraction: float) -> float:
        order = REVERT_STEPS if step in REVERT_STEPS else FORWARD_STEPS
        return (order.index(step) + fraction) / len(order)

    def _progress(self, ctx: _Ctx) -> Callable[[float, str], None]:
        def report(fraction: float, message: str) -> None:
            overall = self._overall(ctx.step, max(0.0, min(fraction, 1.0)))
            now = time.monotonic()
            if now - self._last_progress >= 0.2 or fraction >= 1.0:
                self._last_progress = now
                with contextlib.suppress(Exception):
                    self.store.set_progress(ctx.record.id, self.id, ctx.gen, overall, message)
            if self.on_progress is not None:
                self.on_progress(ctx.record.id, ctx.step, overall, message)

        return report

    # -- forward steps: each returns (detail, values to record) and can be re-run ---------

    def _caps(self) -> frozenset[Capability]:
        return self.driver.capabilities

    def _nodes(self) -> dict[str, str]:
        return {n.name: n.state for n in self.driver.list_nodes()}

    def _observe(self, ctx: _Ctx) -> InstanceInfo:
        """The instance as the driver sees it now; every step starts from this, never from memory.

        During an evacuation the driver may not see the instance at all while its node is down
        (Hyper-V loses a non-clustered VM with its host). Then it is taken as it was last known
        (the plan's source, or the spec's ``last_known`` at precheck), on its dead node.
        """
        try:
            return self.driver.get_instance(ctx.spec.instance_id)
        except InstanceNotFound:
            known = ctx.plan.source if ctx.plan is not None else ctx.spec.last_known
            if ctx.spec.kind != MigrationKind.EVACUATE or known is None:
                raise
            return known

    def _step_precheck(self, ctx: _Ctx) -> tuple[str, dict[str, Any]]:
        spec, d = ctx.spec, self.driver
        info = self._observe(ctx)
        nodes = self._nodes()
        caps = self._caps()
        source = info.node
        vcpus = spec.vcpus if spec.vcpus is not None else info.vcpus
        memory = spec.memory_mb if spec.memory_mb is not None else info.memory_mb
        resizing = (vcpus, memory) != (info.vcpus, info.memory_mb)
        if spec.kind == MigrationKind.RESIZE:
            if spec.vcpus is None and spec.memory_mb is None:
                raise InvalidSpec("a resize needs vcpus, memory_mb or both", field="MigrationSpec.vcpus")
            if vcpus != info.vcpus and Capability.RESIZE_CPU not in caps:
                raise NotSupported(f"{d.name} cannot resize vCPUs", capability=Capability.RESIZE_CPU)
            if memory != info.memory_mb and Capability.RESIZE_MEMORY not in caps:
                raise NotSupported(f"{d.name} cannot resize memory", capability=Capability.RESIZE_MEMORY)
        elif resizing:
            raise InvalidSpec(f"a {spec.kind.value} migration cannot change size; use resize", field="vcpus")
        if spec.kind != MigrationKind.EVACUATE and info.power_state not in (PowerState.RUNNING, PowerState.SHUTDOWN):
            raise InvalidState(f"instance is {info.power_state.value}: start or stop it before migrating")

        if spec.kind == MigrationKind.RESIZE and spec.node in (None, source):
            dest, method = source or "", TransferMethod.NONE
        else:
            if spec.node == source:
                raise InvalidSpec(f"instance is on {source!r} already", field="MigrationSpec.node")
            method = self._choose_method(spec, info, nodes)
            dest = self._choose_dest(spec, info, nodes)
        plan = mobj.MigrationPlan(
            source=info,
            dest_node=dest,
            method=method,
            vcpus=vcpus,
            memory_mb=memory,
            stop_for_transfer=method == TransferMethod.COLD_MIGRATE,
        )
        return f"{method.value} {source} -> {dest}", {"plan": self.render(plan)}

    def _choose_method(self, spec: mobj.MigrationSpec, info: InstanceInfo, nodes: dict[str, str]) -> TransferMethod:
        caps, name = self._caps(), self.driver.name
        running = info.power_state == PowerState.RUNNING
        if spec.kind == MigrationKind.EVACUATE:
            if Capability.EVACUATE not in caps:
                raise NotSupported(f"{name} cannot evacuate", capability=Capability.EVACUATE)
            if nodes.get(info.node or "") == "up":
                raise InvalidState(f"node {info.node!r} is up: use a cold or live migration instead")
            return TransferMethod.EVACUATE
        if spec.kind == MigrationKind.LIVE:
            if not running:
                raise InvalidState(f"instance is {info.power_state.value}: live migration needs it running")
            if Capability.LIVE_MIGRATE in caps:
                return TransferMethod.LIVE_MIGRATE
            if spec.allow_cold_fallback and Capability.COLD_MIGRATE in caps:
                return TransferMethod.COLD_MIGRATE
            raise NotSupported(f"{name} cannot migrate live", capability=Capability.LIVE_MIGRATE)
        # cold, or resize onto another node
        if Capability.COLD_MIGRATE in caps:
            return TransferMethod.COLD_MIGRATE
        if Capability.LIVE_MIGRATE in caps and running:
            # Built from primitives: a running instance moves live, and finish restores size and power.
            return TransferMethod.LIVE_MIGRATE
        raise NotSupported(
            f"{name} declares no cold_migrate, and a stopped instance cannot be moved with live_migrate: "
            "start it first or migrate it live",
            capability=Capability.COLD_MIGRATE,
        )

    def _choose_dest(self, spec: mobj.MigrationSpec, info: InstanceInfo, nodes: dict[str, str]) -> str:
        if spec.node is not None:
            if spec.node not in nodes:
                raise InvalidSpec(f"node {spec.node!r} does not exist", field="MigrationSpec.node")
            if nodes[spec.node] != "up":
                raise InvalidState(f"node {spec.node!r} is {nodes[spec.node]}")
            candidates = [spec.node]
        else:
            candidates = sorted(n for n, state in nodes.items() if state == "up" and n != info.node)
        vcpus = spec.vcpus if spec.vcpus is not None else info.vcpus
        memory = spec.memory_mb if spec.memory_mb is not None else info.memory_mb
        best: tuple[int, str] | None = None
        reasons = []
        for node in candidates:
            res = self.driver.host_resources(node)
            free_mem = res.memory_mb_total - res.memory_mb_used
            free_cpu = res.vcpus_total - res.vcpus_used
            if memory > free_mem or vcpus > free_cpu:
                reasons.append(f"{node} has {free_cpu} vCPUs and {free_mem} MiB free")
                continue
            if best is None or free_mem > best[0]:
                best = (free_mem, node)
        if best is None:
            why = "; ".join(reasons) or "no other node is up"
            raise InvalidState(f"no destination can take {vcpus} vCPUs and {memory} MiB: {why}")
        return best[1]

    def _require_plan(self, ctx: _Ctx) -> mobj.MigrationPlan:
        if ctx.plan is None:
            raise InvalidState(f"migration {ctx.record.id} has no plan: precheck did not finish")
        return ctx.plan

    def _step_prepare(self, ctx: _Ctx) -> tuple[str, dict[str, Any]]:
        plan, d, iid = self._require_plan(ctx), self.driver, ctx.spec.instance_id
        info = self._observe(ctx)
        if plan.method != TransferMethod.NONE and info.node != plan.dest_node:
            state = self._nodes().get(plan.dest_node)
            if state != "up":
                raise InvalidState(f"destination {plan.dest_node!r} is {state or 'gone'}")
        if plan.stop_for_transfer and info.power_state != PowerState.SHUTDOWN:
            d.power_off(iid, timeout=ctx.spec.shutdown_timeout)
            return "stopped for the move", {}
        moving_live = plan.method == TransferMethod.LIVE_MIGRATE and info.node != plan.dest_node
        if moving_live and info.power_state != PowerState.RUNNING:
            raise InvalidState(f"instance is {info.power_state.value} since precheck; a live move needs it running")
        return "", {}

    def _step_transfer(self, ctx: _Ctx) -> tuple[str, dict[str, Any]]:
        plan, d, iid = self._require_plan(ctx), self.driver, ctx.spec.instance_id
        if plan.method == TransferMethod.NONE:
            return "nothing to move", {}
        info = self._observe(ctx)
        if info.node == plan.dest_node:
            return f"on {plan.dest_node} already", {}
        if info.node != plan.source.node:
            raise InvalidState(f"instance is on {info.node!r}, neither the source nor the destination")
        progress = self._progress(ctx)
        if plan.method == TransferMethod.LIVE_MIGRATE:
            d.live_migrate(iid, plan.dest_node, progress=progress)
        elif plan.method == TransferMethod.COLD_MIGRATE:
            d.cold_migrate(iid, plan.dest_node, progress=progress)
        else:
            d.evacuate(iid, plan.dest_node, progress=progress)
        return f"{plan.method.value} to {plan.dest_node}", {}

    def _set_size(self, iid: str, info: InstanceInfo, vcpus: int, memory_mb: int, timeout: float) -> InstanceInfo:
        """Resize offline, the way every backend can: stop, resize; the power step restores power."""
        if (info.vcpus, info.memory_mb) == (vcpus, memory_mb):
            return info
        if info.power_state != PowerState.SHUTDOWN:
            self.driver.power_off(iid, timeout=timeout)
        return self.driver.resize(
            iid,
            vcpus=vcpus if vcpus != info.vcpus else None,
            memory_mb=memory_mb if memory_mb != info.memory_mb else None,
        )

    def _set_power(self, iid: str, info: InstanceInfo, want: PowerState, timeout: float) -> str:
        running = info.power_state == PowerState.RUNNING
        if want == PowerState.RUNNING and not running:
            self.driver.power_on(iid)
            return "started"
        if want != PowerState.RUNNING and running:
            self.driver.power_off(iid, timeout=timeout)
            return "stopped"
        return ""

    @staticmethod
    def _wanted_power(plan: mobj.MigrationPlan) -> PowerState:
        return PowerState.RUNNING if plan.source.power_state == PowerState.RUNNING else PowerState.SHUTDOWN

    def _step_finish(self, ctx: _Ctx) -> tuple[str, dict[str, Any]]:
        plan, iid, timeout = self._require_plan(ctx), ctx.spec.instance_id, ctx.spec.shutdown_timeout
        info = self._observe(ctx)
        resized = (info.vcpus, info.memory_mb) != (plan.vcpus, plan.memory_mb)
        info = self._set_size(iid, info, plan.vcpus, plan.memory_mb, timeout)
        power = self._set_power(iid, info, self._wanted_power(plan), timeout)
        placed = self._ensure_on(ctx, plan.dest_node)
        return " and ".join(x for x in ("resized" if resized else "", power, placed) if x), {}

    def _ensure_on(self, ctx: _Ctx, node: str | None) -> str:
        """Carry a running instance back onto ``node`` if starting it put it elsewhere.

        On backends where a stopped instance belongs to no host (oVirt reports no node),
        powering it on lets the scheduler pick one; the plan's placement still holds.
        """
        iid = ctx.spec.instance_id
        info = self._observe(ctx)
        if node is None or info.node in (None, node) or info.power_state != PowerState.RUNNING:
            return ""
        if Capability.LIVE_MIGRATE not in self._caps():
            raise InvalidState(f"the backend started the instance on {info.node!r}, not {node!r}, and cannot move it")
        self.driver.live_migrate(iid, node, progress=self._progress(ctx))
        return f"moved to {node}"

    def _step_confirm(self, ctx: _Ctx) -> tuple[str, dict[str, Any]]:
        plan = self._require_plan(ctx)
        info = self._observe(ctx)
        want = self._wanted_power(plan)
        problems = []
        floating = info.node is None and info.power_state != PowerState.RUNNING  # stopped, on no host
        if info.node != plan.dest_node and not floating:
            problems.append(f"on {info.node!r}, not {plan.dest_node!r}")
        if (info.vcpus, info.memory_mb) != (plan.vcpus, plan.memory_mb):
            problems.append(f"size {info.vcpus}/{info.memory_mb}, not {plan.vcpus}/{plan.memory_mb}")
        if (info.power_state == PowerState.RUNNING) != (want == PowerState.RUNNING):
            problems.append(f"{info.power_state.value}, not {want.value}")
        if problems:
            raise InvalidState("instance is " + "; ".join(problems))
        return f"on {info.node}, {info.vcpus} vCPUs, {info.memory_mb} MiB, {info.power_state.value}", {}

    # -- revert steps ---------------------------------------------------------------------

    def _step_revert_transfer(self, ctx: _Ctx) -> tuple[str, dict[str, Any]]:
        if ctx.plan is None:
            return "nothing was touched", {}
        plan, iid, timeout = ctx.plan, ctx.spec.instance_id, ctx.spec.shutdown_timeout
        src = plan.source
        info = self._observe(ctx)
        done = []
        if (info.vcpus, info.memory_mb) != (src.vcpus, src.memory_mb):
            info = self._set_size(iid, info, src.vcpus, src.memory_mb, timeout)
            done.append("resized back")
        if info.node is not None and info.node != src.node:
            self._move_back(ctx, info)
            done.append(f"moved back to {src.node}")
        return " and ".join(done), {}

    def _move_back(self, ctx: _Ctx, info: InstanceInfo) -> None:
        plan, d, iid = self._require_plan(ctx), self.driver, ctx.spec.instance_id
        src, caps, progress = plan.source.node or "", self._caps(), self._progress(ctx)
        if self._nodes().get(src) != "up":
            raise InvalidState(f"cannot move back: source node {src!r} is not up (resume once it is)")
        if info.power_state == PowerState.RUNNING and Capability.LIVE_MIGRATE in caps:
            d.live_migrate(iid, src, progress=progress)
            return
        if Capability.COLD_MIGRATE in caps or Capability.EVACUATE in caps:
            if info.power_state != PowerState.SHUTDOWN:
                d.power_off(iid, timeout=ctx.spec.shutdown_timeout)
            if Capability.COLD_MIGRATE in caps:
                d.cold_migrate(iid, src, progress=progress)
            else:
                d.evacuate(iid, src, progress=progress)
            return
        if Capability.LIVE_MIGRATE in caps:
            # Only live moves exist: start it to carry it back; revert_power sets the power it had.
            if d.power_on(iid).node != src:
                d.live_migrate(iid, src, progress=progress)
            return
        raise NotSupported(f"{d.name} has no primitive to move the instance back", capability=Capability.COLD_MIGRATE)

    def _step_revert_power(self, ctx: _Ctx) -> tuple[str, dict[str, Any]]:
        if ctx.plan is None:
            return "", {}
        iid = ctx.spec.instance_id
        info = self._observe(ctx)
        power = self._set_power(iid, info, self._wanted_power(ctx.plan), ctx.spec.shutdown_timeout)
        placed = self._ensure_on(ctx, ctx.plan.source.node)
        return " and ".join(x for x in (power, placed) if x), {}


def boundaries(steps: Iterable[str] = FORWARD_STEPS + REVERT_STEPS) -> list[tuple[str, str]]:
    """Every (step, phase) an orchestrator can die at, in order."""
    return [(s, p) for s in steps for p in PHASES]
