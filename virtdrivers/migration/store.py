"""The migration store: the only place migration state lives.

State is kept out of the driver and off the compute host so a migration survives
the death or upgrade of whatever drives it. SQLite (one file, embedded) serves a
single host; PostgreSQL serves several orchestrators sharing the work.

Every write a running migration makes is a compare-and-set on ``(owner,
lease_gen)``: an orchestrator whose lease was taken over finds its next write
matching no row and stops, so a migration is never driven by two at once. Claims
are the same kind of ``UPDATE ... WHERE`` that only one contender can win.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    event,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from virtdrivers.errors import Conflict, DriverError, NotFound

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "LeaseLost",
    "MigrationEvent",
    "MigrationRecord",
    "MigrationStore",
    "OrchestratorRecord",
    "default_url",
]

#: Statuses a migration can still move out of.
ACTIVE = ("pending", "running", "reverting")
#: Statuses nothing moves out of.
TERMINAL = ("done", "reverted", "rejected", "failed")

_meta = MetaData()

migrations = Table(
    "vd_migrations",
    _meta,
    Column("id", String(36), primary_key=True),
    Column("endpoint", String(255), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("instance_id", String(255), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("step", String(32)),
    Column("phase", String(16)),
    Column("spec", Text, nullable=False),
    Column("plan", Text),
    Column("owner", String(64)),
    Column("lease_until", Float, nullable=False),
    Column("lease_gen", Integer, nullable=False),
    Column("revert_requested", Boolean, nullable=False),
    Column("error", Text),
    Column("progress", Float, nullable=False),
    Column("message", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

events = Table(
    "vd_migration_events",
    _meta,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("migration_id", String(36), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("owner", String(64)),
    Column("step", String(32)),
    Column("phase", String(16), nullable=False),
    Column("detail", Text, nullable=False),
)

#: One row per instance with a migration in flight: the primary key refuses a second one.
locks = Table(
    "vd_migration_locks",
    _meta,
    Column("endpoint", String(255), primary_key=True),
    Column("instance_id", String(255), primary_key=True),
    Column("migration_id", String(36), nullable=False),
)

orchestrators = Table(
    "vd_orchestrators",
    _meta,
    Column("id", String(64), primary_key=True),
    Column("host_key", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("versions", Text, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_until", Float, nullable=False),
)


class LeaseLost(DriverError):
    """Another orchestrator took this migration over; the loser must stop touching it."""

    code = "lease_lost"


@dataclass(frozen=True)
class MigrationRecord:
    id: str
    endpoint: str
    kind: str
    instance_id: str
    status: str
    step: str | None
    phase: str | None
    spec: dict[str, Any]
    plan: dict[str, Any] | None
    owner: str | None
    lease_until: float
    lease_gen: int
    revert_requested: bool
    error: str | None
    progress: float
    message: str
    created_at: float
    updated_at: float

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


@dataclass(frozen=True)
class MigrationEvent:
    seq: int
    migration_id: str
    at: float
    owner: str | None
    step: str | None
    phase: str
    detail: str


@dataclass(frozen=True)
class OrchestratorRecord:
    id: str
    host_key: str
    pid: int
    versions: dict[str, str]
    started_at: float
    heartbeat_until: float


def default_url() -> str:
    """A SQLite file under ``$XDG_STATE_HOME/virtdrivers`` (``~/.local/state/virtdrivers``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    path = Path(base) / "virtdrivers"
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'migrations.db'}"


def _record(row: Any) -> MigrationRecord:
    m = row._mapping
    return MigrationRecord(
        id=m["id"],
        endpoint=m["endpoint"],
        kind=m["kind"],
        instance_id=m["instance_id"],
        status=m["status"],
        step=m["step"],
        phase=m["phase"],
        spec=json.loads(m["spec"]),
        plan=json.loads(m["plan"]) if m["plan"] else None,
        owner=m["owner"],
        lease_until=m["lease_until"],
        lease_gen=m["lease_gen"],
        revert_requested=bool(m["revert_requested"]),
        error=m["error"],
        progress=m["progress"],
        message=m["message"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


class MigrationStore:
    """Migrations, their event history, in-flight instance locks and the orchestrator registry.

    ``url`` is any SQLAlchemy URL; ``None`` means :func:`default_url`. PostgreSQL URLs
    without a driver name use psycopg 3.
    """

    def __init__(self, url: str | None = None) -> None:
        url = url or default_url()
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            # Several processes share one file: wait for the writer rather than fail at once.
            kwargs["connect_args"] = {"timeout": 60}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        self._create_schema()

    def _create_schema(self) -> None:
        try:
            _meta.create_all(self.engine)
        except (IntegrityError, OperationalError, ProgrammingError):
            # Another process created the same tables between our check and our CREATE.
            _meta.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def redacted_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # -- orchestrator registry ------------------------------------------------------------

    def register(self, orch_id: str, host_key: str, pid: int, versions: Mapping[str, str], ttl: float) -> None:
        now = time.time()
        with self._tx() as conn:
            # Forget orchestrators silent for an hour: they hold no lease anyone respects any more.
            conn.execute(delete(orchestrators).where(orchestrators.c.heartbeat_until < now - 3600))
            conn.execute(delete(orchestrators).where(orchestrators.c.id == orch_id))
            conn.execute(
                insert(orchestrators).values(
                    id=orch_id,
                    host_key=host_key,
                    pid=pid,
                    versions=json.dumps(dict(versions), sort_keys=True),
                    started_at=now,
                    heartbeat_until=now + ttl,
                )
            )

    def heartbeat(self, orch_id: str, ttl: float) -> None:
        """Keep this orchestrator registered and extend every lease it holds."""
        until = time.time() + ttl
        with self._tx() as conn:
            conn.execute(update(orchestrators).where(orchestrators.c.id == orch_id).values(heartbeat_until=until))
            conn.execute(
                update(migrations)
                .where(migrations.c.owner == orch_id, migrations.c.status.in_(ACTIVE))
                .values(lease_until=until)
            )

    def deregister(self, orch_id: str) -> None:
        with self._tx() as conn:
            conn.execute(delete(orchestrators).where(orchestrators.c.id == orch_id))

    def orchestrators(self) -> list[OrchestratorRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(orchestrators).order_by(orchestrators.c.started_at)).all()
        return [
            OrchestratorRecord(
                id=r.id,
                host_key=r.host_key,
                pid=r.pid,
                versions=json.loads(r.versions),
                started_at=r.started_at,
                heartbeat_until=r.heartbeat_until,
            )
            for r in rows
        ]

    # -- migrations -----------------------------------------------------------------------

    def create(
        self, migration_id: str, endpoint: str, kind: str, instance_id: str, spec: Mapping[str, Any]
    ) -> MigrationRecord:
        """Record a new pending migration; Conflict if the instance has one in flight already."""
        now = time.time()
        try:
            with self._tx() as conn:
                conn.execute(
                    insert(locks).values(endpoint=endpoint, instance_id=instance_id, migration_id=migration_id)
                )
                conn.execute(
                    insert(migrations).values(
                        id=migration_id,
                        endpoint=endpoint,
                        kind=kind,
                        instance_id=instance_id,
                        status="pending",
                        step=None,
                        phase=None,
                        spec=json.dumps(spec),
                        plan=None,
                        owner=None,
                        lease_until=0.0,
                        lease_gen=0,
                        revert_requested=False,
                        error=None,
                        progress=0.0,
                        message="",
                        created_at=now,
                        updated_at=now,
                    )
                )
                self._event(conn, migration_id, None, None, "created", kind)
        except IntegrityError:
            holder = self._lock_holder(endpoint, instance_id)
            raise Conflict(f"instance {instance_id!r} has migration {holder} in flight already") from None
        return self.get(migration_id)

    def _lock_holder(self, endpoint: str, instance_id: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(locks.c.migration_id).where(locks.c.endpoint == endpoint, locks.c.instance_id == instance_id)
            ).first()
        return row[0] if row else None

    def get(self, migration_id: str) -> MigrationRecord:
        with self.engine.connect() as conn:
            return self._get(conn, migration_id)

    def _get(self, conn: Connection, migration_id: str) -> MigrationRecord:
        row = conn.execute(select(migrations).where(migrations.c.id == migration_id)).first()
        if row is None:
            raise NotFound(f"migration {migration_id!r} not found")
        return _record(row)

    def find(self, prefix: str) -> MigrationRecord:
        """One migration by id or unambiguous id prefix (people type the first few characters)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(migrations).where(migrations.c.id.startswith(prefix, autoescape=True))).all()
        exact = [r for r in rows if r.id == prefix]
        if exact:
            return _record(exact[0])
        if not rows:
            raise NotFound(f"migration {prefix!r} not found")
        if len(rows) > 1:
            raise Conflict(f"migration id prefix {prefix!r} is ambiguous ({len(rows)} match)")
        return _record(rows[0])

    def list_migrations(
        self, *, endpoint: str | None = None, statuses: Sequence[str] | None = None, limit: int | None = None
    ) -> list[MigrationRecord]:
        query = select(migrations).order_by(migrations.c.created_at, migrations.c.id)
        if endpoint is not None:
            query = query.where(migrations.c.endpoint == endpoint)
        if statuses is not None:
            query = query.where(migrations.c.status.in_(list(statuses)))
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(query).all()]

    def events(self, migration_id: str) -> list[MigrationEvent]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(events).where(events.c.migration_id == migration_id).order_by(events.c.seq)
            ).all()
        return [MigrationEvent(r.seq, r.migration_id, r.at, r.owner, r.step, r.phase, r.detail) for r in rows]

    def _event(
        self, conn: Connection, migration_id: str, owner: str | None, step: str | None, phase: str, detail: str = ""
    ) -> None:
        conn.execute(
            insert(events).values(
                migration_id=migration_id, at=time.time(), owner=owner, step=step, phase=phase, detail=detail
            )
        )

    # -- leases ---------------------------------------------------------------------------

    def claim(self, migration_id: str, owner: str, ttl: float, dead_owners: Iterable[str] = ()) -> int | None:
        """Take the lease if it is free, expired or held by a known-dead orchestrator.

        Not when we hold it ourselves: a second thread of the same orchestrator must not
        drive a migration the first is driving.

        Returns the new lease generation (the fencing token every later write must
        carry), or None when another live orchestrator holds it or it is finished.
        """
        now = time.time()
        free = or_(
            migrations.c.owner.is_(None),
            migrations.c.lease_until < now,
        )
        dead = list(dead_owners)
        if dead:
            free = or_(free, migrations.c.owner.in_(dead))
        with self._tx() as conn:
            row = conn.execute(
                select(migrations.c.lease_gen, migrations.c.owner).where(migrations.c.id == migration_id)
            ).first()
            if row is None:
                raise NotFound(f"migration {migration_id!r} not found")
            gen, previous = row
            result = conn.execute(
                update(migrations)
                .where(
                    migrations.c.id == migration_id,
                    migrations.c.status.in_(ACTIVE),
                    migrations.c.lease_gen == gen,
                    free,
                )
                .values(owner=owner, lease_until=now + ttl, lease_gen=gen + 1, updated_at=now)
            )
            if result.rowcount != 1:
                return None
            detail = f"taken over from {previous}" if previous not in (None, owner) else ""
            self._event(conn, migration_id, owner, None, "claimed", detail)
            return int(gen) + 1

    def record(
        self,
        migration_id: str,
        owner: str,
        gen: int,
        ttl: float,
        *,
        step: str | None,
        phase: str,
        detail: str = "",
        values: Mapping[str, Any] | None = None,
        unlock: bool = False,
    ) -> MigrationRecord:
        """Write one step boundary (and what the step produced) if we still hold the lease.

        The event row goes in the same transaction, so the history never shows a
        boundary the migration row does not. ``unlock`` releases the instance for a
        new migration (on reaching a terminal status) in that transaction too.
        """
        now = time.time()
        vals: dict[str, Any] = {"lease_until": now + ttl, "updated_at": now}
        if phase in ("started", "done"):
            vals.update(step=step, phase=phase)
        for key, value in (values or {}).items():
            vals[key] = json.dumps(value) if key in ("plan", "spec") and value is not None else value
        with self._tx() as conn:
            result = conn.execute(
                update(migrations)
                .where(migrations.c.id == migration_id, migrations.c.owner == owner, migrations.c.lease_gen == gen)
                .values(**vals)
            )
            if result.rowcount != 1:
                raise LeaseLost(f"migration {migration_id} is no longer ours ({owner}, lease {gen})")
            self._event(conn, migration_id, owner, step, phase, detail)
            record = self._get(conn, migration_id)
            if unlock:
                conn.execute(
                    delete(locks).where(
                        and_(
                            locks.c.endpoint == record.endpoint,
                            locks.c.instance_id == record.instance_id,
                            locks.c.migration_id == migration_id,
                        )
                    )
                )
            return record

    def set_progress(self, migration_id: str, owner: str, gen: int, progress: float, message: str) -> None:
        with self._tx() as conn:
            conn.execute(
                update(migrations)
                .where(migrations.c.id == migration_id, migrations.c.owner == owner, migrations.c.lease_gen == gen)
                .values(progress=progress, message=message[:500], updated_at=time.time())
            )

    def release(self, migration_id: str, owner: str, gen: int) -> None:
        """Give the lease back so another orchestrator may continue at once."""
        with self._tx() as conn:
            conn.execute(
                update(migrations)
                .where(migrations.c.id == migration_id, migrations.c.owner == owner, migrations.c.lease_gen == gen)
                .values(owner=None, lease_until=0.0)
            )

    def request_revert(self, migration_id: str) -> MigrationRecord:
        """Ask whoever runs the migration to revert it at its next step boundary."""
        with self._tx() as conn:
            result = conn.execute(
                update(migrations)
                .where(migrations.c.id == migration_id, migrations.c.status.in_(("pending", "running")))
                .values(revert_requested=True, updated_at=time.time())
            )
            record = self._get(conn, migration_id)
            if result.rowcount != 1 and record.status != "reverting":
                raise Conflict(f"migration {migration_id} is {record.status}: nothing to revert")
            self._event(conn, migration_id, None, record.step, "revert_requested")
            return record


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite would defer it).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front: a read-then-write transaction (a claim)
    # then waits its turn instead of failing with SQLITE_BUSY when another process wrote
    # between its read and its write.
    conn.exec_driver_sql("BEGIN IMMEDIATE")
