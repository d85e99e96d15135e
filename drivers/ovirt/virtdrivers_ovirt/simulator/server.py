"""The HTTPS front of the simulator: SSO, the ``/ovirt-engine/api`` tree, faults.

One :class:`Simulator` owns one :class:`~virtdrivers_ovirt.simulator.model.Engine`
and serves it on 127.0.0.1. :meth:`Simulator.restart` drops every session and
connection but keeps the inventory, as an engine restart does.
"""

from __future__ import annotations

import collections
import contextlib
import json
import secrets
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from virtdrivers.testing.tls import make_certificates
from virtdrivers_ovirt.simulator import api_workloads, render, workloads
from virtdrivers_ovirt.simulator.model import (
    GIB,
    GRACEFUL_SHUTDOWN_TIMEOUT,
    Attachment,
    Disk,
    Engine,
    EngineFault,
    Vm,
    not_found,
)
from virtdrivers_ovirt.simulator.search import SearchError, parse, run

API_PREFIX = "/ovirt-engine/api"
TOKEN_PATH = "/ovirt-engine/sso/oauth/token"
LOGOUT_PATH = "/ovirt-engine/services/sso-logout"
CONTROL_PREFIX = "/__simulator/"
VM_ACTIONS = ("start", "stop", "shutdown", "suspend", "reboot", "migrate")

_VM_FIELDS = {
    "name": lambda v: v.name,
    "status": lambda v: v.status,
    "description": lambda v: v.description,
    "comment": lambda v: v.comment,
    "id": lambda v: v.id,
}


def _bool(text: str | None) -> bool | None:
    return None if text is None else text.strip().lower() == "true"


def _int(el: ET.Element | None, path: str) -> int | None:
    if el is None:
        return None
    found = el.findtext(path)
    try:
        return None if found is None else int(found)
    except ValueError as exc:
        raise EngineFault(
            400, f"Value '{found}' of '{path}' is not a number", reason="Request syntactically incorrect."
        ) from exc


class Simulator:
    """An oVirt engine on 127.0.0.1 with a self-signed CA, for the real SDK to talk to."""

    def __init__(
        self,
        *,
        port: int = 0,
        pets: int = 0,
        hosts: int = 3,
        token_ttl: float | None = None,
        delay: float = 0.02,
        shutdown_timeout: float = GRACEFUL_SHUTDOWN_TIMEOUT,
        username: str = "admin@internal",
        password: str = "simulator",
        state_dir: Path | None = None,
        state_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = Engine(hosts=hosts, pets=pets, delay=delay, shutdown_timeout=shutdown_timeout)
        if state_file is not None:
            # The engine's database: a restarted process finds the inventory the dead one left.
            from virtdrivers_ovirt.simulator import persist

            with self.engine.lock:
                if not persist.load(self.engine, state_file):
                    persist.save(self.engine, state_file)
                self.engine.state_file = state_file
        self.username, self.password = username, password
        self.token_ttl = token_ttl
        #: The session clock; tests move it forward to expire tokens without waiting.
        self.clock = clock
        self.tokens: dict[str, float] = {}
        #: Refuse this many coming logins with ``invalid_grant``, as an SSO service that lost its
        #: sessions in a restart does; the client must start over with a new connection.
        self.refuse_logins = 0
        self.requests: collections.Counter[str] = collections.Counter()
        #: Every XML document sent, when a test sets it to a list (the XML round-trip guard reads them).
        self.recorded: list[bytes] | None = None
        self._lock = threading.Lock()
        self._own_dir = state_dir is None
        self.state_dir = Path(tempfile.mkdtemp(prefix="ovirt-sim-")) if state_dir is None else state_dir
        self.ca_file, cert, key = _certificates(self.state_dir)
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(cert, key)
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{API_PREFIX}"

    def settings(self) -> dict[str, Any]:
        """Settings for the virtdrivers oVirt driver to connect here."""
        return {"url": self.url, "username": self.username, "password": self.password, "ca_file": str(self.ca_file)}

    def start(self) -> Simulator:
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.simulator = self
        self._server = server
        self._port = self.port  # a restart comes back on the same port
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="ovirt-sim-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def restart(self) -> None:
        """Go down and come back on the same port: sessions and connections are lost, the inventory is kept."""
        self.stop()
        with self._lock:
            self.tokens.clear()
        self.start()

    def close(self) -> None:
        self.stop()
        self.engine.close()
        if self._own_dir:
            for path in self.state_dir.iterdir():
                path.unlink()
            self.state_dir.rmdir()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sessions --------------------------------------------------------------------------------

    def issue_token(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self.tokens[token] = self.clock() + self.token_ttl if self.token_ttl else float("inf")
        return token

    def token_valid(self, token: str) -> bool:
        with self._lock:
            expiry = self.tokens.get(token)
            if expiry is None:
                return False
            if expiry < self.clock():
                del self.tokens[token]
                return False
            return True

    def expire_tokens(self) -> None:
        """Invalidate every session at once, as an SSO timeout or an engine-side logout does."""
        with self._lock:
            self.tokens.clear()

    def revoke(self, token: str) -> None:
        with self._lock:
            self.tokens.pop(token, None)

    def count(self, key: str) -> None:
        with self._lock:
            self.requests[key] += 1


def _certificates(state_dir: Path) -> tuple[Path, Path, Path]:
    """The CA and server certificate in ``state_dir``: kept when present, as an engine keeps its
    PKI across restarts (clients keep trusting the CA file they were given), made otherwise."""
    paths = state_dir / "ca.pem", state_dir / "server.pem", state_dir / "server.key"
    if all(p.is_file() for p in paths):
        return paths
    return make_certificates(state_dir, "virtdrivers oVirt simulator CA")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    simulator: Simulator

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-reply (killed, timed out) is routine for an engine, not a
        traceback on stderr; anything else is still printed."""
        import sys

        if isinstance(sys.exc_info()[1], OSError):  # ssl.SSLError, BrokenPipe, ConnectionReset
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self.conn_lock:
            conns, self.connections = list(self.connections), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        sim = self.server.simulator
        raw: socket.socket = self.request
        raw.settimeout(30)
        # Wrapping takes the file descriptor over: track the TLS socket, it is the one to shut down.
        self.request = sim._ssl.wrap_socket(raw, server_side=True)
        with self.server.conn_lock:
            self.server.connections.add(self.request)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.conn_lock:
                self.server.connections.discard(self.request)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing --------------------------------------------------------------------------------

    @property
    def sim(self) -> Simulator:
        return self.server.simulator

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="RESTAPI"')
        self.end_headers()
        self.wfile.write(body)

    def _xml(self, status: int, root: ET.Element) -> None:
        body = render.to_bytes(root)
        recorded = self.sim.recorded
        if recorded is not None:
            recorded.append(body)
        self._send(status, body, "application/xml;charset=UTF-8")

    def _json(self, status: int, data: object) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        body = self._body()
        if url.path == TOKEN_PATH and method == "POST":
            return self._sso_token(body)
        if url.path == LOGOUT_PATH and method == "POST":
            form = urllib.parse.parse_qs(body.decode())
            self.sim.revoke(form.get("token", [""])[0])
            return self._json(200, {})
        if url.path.startswith(CONTROL_PREFIX) and method == "POST":
            return self._control(url.path[len(CONTROL_PREFIX) :], body)
        if not (url.path == API_PREFIX or url.path.startswith(API_PREFIX + "/")):
            return self._send(404, b"Not Found", "text/plain")
        auth = self.headers.get("Authorization", "")
        if not (auth.startswith("Bearer ") and self.sim.token_valid(auth[7:])):
            return self._send(401, b"", "text/html")
        parts = [p for p in url.path[len(API_PREFIX) :].split("/") if p]
        self.sim.count(f"{method} /{'/'.join(_shape(parts))}")
        try:
            with self.sim.engine.lock:
                status, root = _Api(self.sim.engine, method, parts, query, body).handle()
                if method != "GET":
                    self.sim.engine.changed()
        except EngineFault as fault:
            return self._xml(fault.status, render.fault(fault.reason, fault.detail))
        except SearchError as exc:
            return self._xml(400, render.fault("Operation Failed", str(exc)))
        except ET.ParseError as exc:
            return self._xml(400, render.fault("Request syntactically incorrect.", f"XML parse error: {exc}"))
        except Exception as exc:  # a simulator bug: answer like an engine's internal error, keep serving
            return self._xml(500, render.fault("Internal Server Error", f"{type(exc).__name__}: {exc}"))
        self._xml(status, root)

    def _sso_token(self, body: bytes) -> None:
        form = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode()).items()}
        if form.get("grant_type") != "password" or form.get("scope") != "ovirt-app-api":
            return self._json(400, {"error_code": "invalid_request", "error": "Unsupported grant or scope."})
        with self.sim._lock:
            refuse = self.sim.refuse_logins > 0
            self.sim.refuse_logins -= 1 if refuse else 0
        if refuse:
            return self._json(
                400, {"error_code": "invalid_grant", "error": "The provided authorization grant is invalid."}
            )
        if form.get("username") != self.sim.username or form.get("password") != self.sim.password:
            return self._json(
                400, {"error_code": "access_denied", "error": "Cannot authenticate user: wrong user name or password."}
            )
        token = self.sim.issue_token()
        expires = int(time.time() * 1000 + (self.sim.token_ttl or 36000) * 1000)
        self._json(200, {"access_token": token, "scope": "ovirt-app-api", "exp": str(expires), "token_type": "bearer"})

    def _control(self, what: str, body: bytes) -> None:
        """Test knobs for a simulator running in another process; arguments come as a JSON object."""
        try:
            args = json.loads(body) if body.strip() else {}
        except ValueError:
            return self._json(400, {"error": "the body must be a JSON object"})
        if not isinstance(args, dict):
            return self._json(400, {"error": "the body must be a JSON object"})
        engine = self.sim.engine
        try:
            with engine.lock:
                reply = self._knob(engine, what, args)
        except EngineFault as fault:
            return self._json(fault.status, {"error": fault.detail})
        except (KeyError, TypeError, ValueError) as exc:
            return self._json(400, {"error": f"bad arguments for {what}: {exc!r}"})
        if reply is not None:
            return self._json(200, reply)
        if what == "expire-tokens":
            self.sim.expire_tokens()
            return self._json(200, {"expired": True})
        if what == "stats":
            return self._json(200, dict(self.sim.requests))
        if what == "reset-stats":
            self.sim.requests.clear()
            return self._json(200, {})
        self._json(404, {"error": f"unknown control {what}"})

    @staticmethod
    def _knob(engine: Engine, what: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """Turn a fault knob of the engine (saved like any other change); None for an unknown one."""
        reply: dict[str, Any] | None = None
        if what == "fail-next-create":
            engine.fail_next_create(int(args.get("count", 1)))
            reply = {"failing_creates": engine.failing_creates}
        elif what == "ignore-acpi":
            engine.set_acpi_deaf(str(args["vm"]), bool(args.get("deaf", True)))
            reply = {"vm": args["vm"], "deaf": bool(args.get("deaf", True))}
        elif what == "carrier":
            # What the guest reads from the cloud-init drive the engine attached to its last run with
            # one, or, before its first run, the drive the engine will attach to that run.
            vm = engine.vm(str(args["vm"]))
            payload = vm.payload if vm.payload is not None or vm.initialized else vm.initialization
            reply = {
                "vm": vm.id,
                "user_data": None if payload is None else payload.get("custom_script"),
                "payload": payload,
            }
            return reply
        elif what == "fail-node":
            host = engine.set_host_down(str(args["node"]), bool(args.get("down", True)))
            reply = {"node": host.name, "status": host.status}
        if reply is not None:
            engine.changed()
        return reply


def _shape(parts: list[str]) -> list[str]:
    """A path with ids replaced by ``{id}``, for request statistics."""
    return ["{id}" if i % 2 == 1 and p not in VM_ACTIONS and p != "restore" else p for i, p in enumerate(parts)]


class _Api:
    """One API request against the engine; returns the HTTP status and the XML root."""

    def __init__(self, engine: Engine, method: str, parts: list[str], query: dict[str, str], body: bytes) -> None:
        self.e = engine
        self.method = method
        self.parts = parts
        self.query = query
        self.body = body
        self.cid = query.get("correlation_id")

    def xml(self) -> ET.Element:
        if not self.body.strip():
            raise EngineFault(400, "Request body is empty", reason="Request syntactically incorrect.")
        return ET.fromstring(self.body)

    def handle(self) -> tuple[int, ET.Element]:
        p, m = self.parts, self.method
        if not p:
            return 200, render.api(self.e)
        head = p[0]
        if head == "vms":
            return self.vms(p[1:])
        if head == "disks":
            if len(p) == 1 and m == "GET":
                disk_fields: dict[str, Callable[[Disk], str]] = {
                    "alias": lambda d: d.name,
                    "name": lambda d: d.name,
                    "description": lambda d: d.description,
                    "id": lambda d: d.id,
                    "status": lambda d: d.status,
                    # The engine counts the VMs a disk is attached to (its "Attached To" column);
                    # a disk only a snapshot still holds counts as well, so it is never "floating".
                    "number_of_vms": lambda d: str(self.e.vms_holding(d.id)),
                }
                disks = run(parse(self.query.get("search")), list(self.e.disks.values()), disk_fields, self._max())
                return 200, render.collection("disks", [render.disk(d) for d in disks])
            if len(p) == 2 and m == "GET":
                return 200, render.disk(self.e.disk(p[1]))
            if len(p) == 2 and m == "PUT":
                return 200, render.disk(self.e.update_disk(self.e.disk(p[1]), self._disk_changes(self.xml())))
            if len(p) == 2 and m == "DELETE":
                self.e.remove_disk(self.e.disk(p[1]), self.cid)
                return 200, render.action()
        if head == "hosts" and m == "GET":
            if len(p) == 1:
                hosts = run(
                    parse(self.query.get("search")),
                    list(self.e.hosts.values()),
                    {"name": lambda h: h.name, "status": lambda h: h.status},
                    self._max(),
                )
                return 200, render.collection("hosts", [render.host(h, self.e) for h in hosts])
            host = self.e.hosts.get(p[1])
            if host is None:
                raise not_found("host", p[1])
            return 200, render.host(host, self.e)
        if head == "clusters" and m == "GET":
            if len(p) == 1:
                return 200, render.collection("clusters", [render.cluster(c, self.e) for c in self.e.clusters.values()])
            cluster = self.e.clusters.get(p[1])
            if cluster is None:
                raise not_found("cluster", p[1])
            return 200, render.cluster(cluster, self.e)
        if head == "templates":
            return api_workloads.templates(self, p[1:])
        if head == "networks":
            return api_workloads.networks(self, p[1:])
        if head == "vnicprofiles":
            return api_workloads.vnic_profiles(self, p[1:])
        if head == "storagedomains" and m == "GET":
            if len(p) == 1:
                return 200, render.collection(
                    "storage_domains", [render.storage_domain(s) for s in self.e.storage_domains.values()]
                )
            sd = self.e.storage_domains.get(p[1])
            if sd is None:
                raise not_found("storage domain", p[1])
            return 200, render.storage_domain(sd)
        if head == "jobs" and m == "GET":
            if len(p) == 1:
                fields = {
                    "correlation_id": lambda j: j.correlation_id or "",
                    "status": lambda j: j.status,
                    "description": lambda j: j.description,
                }
                jobs = run(parse(self.query.get("search")), list(self.e.jobs.values()), fields, self._max())
                return 200, render.collection("jobs", [render.job(j) for j in jobs])
            job = self.e.jobs.get(p[1])
            if job is None:
                raise not_found("job", p[1])
            return 200, render.job(job)
        raise EngineFault(404, f"No such resource: {m} /{'/'.join(p)}", reason="Not Found")

    def _max(self) -> int | None:
        raw = self.query.get("max")
        return int(raw) if raw not in (None, "", "-1") else None

    # -- vms ----------------------------------------------------------------------------------

    def vms(self, p: list[str]) -> tuple[int, ET.Element]:
        m = self.method
        follow = api_workloads._follow(self)
        if not p:
            if m == "GET":
                vms = run(parse(self.query.get("search")), list(self.e.vms.values()), _VM_FIELDS, self._max())
                return 200, render.collection("vms", [render.vm(v, self.e, follow) for v in vms])
            if m == "POST":
                body = self.xml()
                vm, tpl = self._new_vm(body)
                clone = bool(_bool(self.query.get("clone")))
                overrides = api_workloads.template_disk_overrides(body)
                vm = self.e.add_vm(vm, self.cid, template=tpl, clone=clone, overrides=overrides)
                return 201, render.vm(vm, self.e)
        vm = self.e.vm(p[0])
        if len(p) == 1:
            if m == "GET":
                return 200, render.vm(vm, self.e, follow)
            if m == "PUT":
                self.e.update_vm(vm, self._vm_changes(self.xml()))
                return 200, render.vm(vm, self.e)
            if m == "DELETE":
                self.e.remove_vm(vm, self.cid, detach_only=_bool(self.query.get("detach_only")) or False)
                return 200, render.action()
        if len(p) == 2 and m == "POST" and p[1] in VM_ACTIONS:
            return self.vm_action(vm, p[1], self.xml())
        if p[1] == "diskattachments":
            return self.disk_attachments(vm, p[2:])
        if p[1] == "snapshots":
            return self.snapshots(vm, p[2:])
        if p[1] == "nics":
            return api_workloads.nics(self, vm, p[2:])
        if p[1] == "reporteddevices":
            return api_workloads.reported_devices(self, vm, p[2:])
        if p[1] == "statistics":
            return api_workloads.statistics(self, vm, p[2:])
        if p[1] == "graphicsconsoles":
            return api_workloads.graphics_consoles(self, vm, p[2:])
        raise EngineFault(404, f"No such resource: {m} /vms/{'/'.join(p)}", reason="Not Found")

    def vm_action(self, vm: Vm, name: str, body: ET.Element) -> tuple[int, ET.Element]:
        if name == "start":
            run_once = api_workloads.parse_initialization(body.find("vm/initialization"))
            self.e.start(vm, self.cid, run_once=run_once, use_cloud_init=_bool(body.findtext("use_cloud_init")))
        elif name == "stop":
            self.e.stop(vm, self.cid)
        elif name == "shutdown":
            self.e.shutdown(vm, self.cid)
        elif name == "suspend":
            self.e.suspend(vm, self.cid)
        elif name == "reboot":
            self.e.reboot(vm, self.cid)
        elif name == "migrate":
            target = body.find("host")
            host = None if target is None else self.e.host_by(target.get("id"), target.findtext("name"))
            self.e.migrate(vm, host, self.cid, force=_bool(body.findtext("force")) or False)
        job = next((j for j in reversed(list(self.e.jobs.values())) if j.correlation_id == self.cid), None)
        return 200, render.action("complete", job if self.cid else None)

    def _new_vm(self, body: ET.Element) -> tuple[Vm, workloads.Template | None]:
        name = body.findtext("name")
        if not name:
            raise EngineFault(400, "Vm [name] required for add", reason="Incomplete parameters")
        cl = body.find("cluster")
        if cl is None:
            raise EngineFault(400, "Vm [cluster.id|name] required for add", reason="Incomplete parameters")
        cluster = self.e.cluster_by(cl.get("id"), cl.findtext("name"))
        tpl = body.find("template")
        if tpl is None:
            raise EngineFault(400, "Vm [template.id|name] required for add", reason="Incomplete parameters")
        template = workloads.template_by(self.e, tpl.get("id"), tpl.findtext("name"))
        vm = Vm(str(uuid.uuid4()), name, cluster.id, memory=GIB if template is None else template.memory)
        for key, value in self._vm_changes(body).items():
            setattr(vm, key, value)
        vm.name = name
        vm.initialization = api_workloads.parse_initialization(body.find("initialization"))
        return vm, template

    def _vm_changes(self, body: ET.Element) -> dict[str, object]:
        changes: dict[str, object] = {}
        for tag in ("name", "description", "comment"):
            if body.find(tag) is not None:
                changes[tag] = body.findtext(tag) or ""
        topo = body.find("cpu/topology")
        for tag in ("sockets", "cores", "threads"):
            value = _int(topo, tag)
            if value is not None:
                if value < 1:
                    raise EngineFault(400, f"Invalid number of {tag}", reason="Operation Failed")
                changes[tag] = value
        memory = _int(body, "memory")
        if memory is not None:
            if memory < 16 * 1024**2:
                raise EngineFault(400, "[Cannot add VM. Memory size must be at least 16 MB.]")
            changes["memory"] = memory
        ha = body.find("high_availability")
        if ha is not None:
            if ha.find("enabled") is not None:
                changes["ha_enabled"] = bool(_bool(ha.findtext("enabled")))
            priority = _int(ha, "priority")
            if priority is not None:
                changes["ha_priority"] = priority
        placement = body.find("placement_policy")
        if placement is not None:
            affinity = placement.findtext("affinity")
            if affinity is not None:
                if affinity not in ("migratable", "pinned", "user_migratable"):
                    raise EngineFault(400, f"Invalid value '{affinity}' for affinity", reason="Invalid value")
                changes["affinity"] = affinity
            hosts = placement.find("hosts")
            if hosts is not None:
                changes["preferred_host_ids"] = [
                    self.e.host_by(h.get("id"), h.findtext("name")).id for h in hosts.findall("host")
                ]
        return changes

    def _disk_changes(self, body: ET.Element) -> dict[str, str]:
        """What ``PUT /disks/{id}`` may change here: the alias (``name`` is its other spelling) and description."""
        changes: dict[str, str] = {}
        alias = body.findtext("alias") if body.find("alias") is not None else body.findtext("name")
        if alias is not None:
            if not alias:
                raise EngineFault(400, "[Cannot edit Virtual Disk. The disk alias must not be empty.]")
            changes["name"] = alias
        if body.find("description") is not None:
            changes["description"] = body.findtext("description") or ""
        return changes

    # -- disk attachments -------------------------------------------------------------------------

    def disk_attachments(self, vm: Vm, p: list[str]) -> tuple[int, ET.Element]:
        m = self.method
        if not p and m == "GET":
            with_disk = "disk" in api_workloads._follow(self)
            items = [render.disk_attachment(vm, a, self.e, with_disk) for a in vm.attachments]
            return 200, render.collection("disk_attachments", items)
        if not p and m == "POST":
            body = self.xml()
            d = body.find("disk")
            if d is None:
                raise EngineFault(400, "DiskAttachment [disk] required for add", reason="Incomplete parameters")
            size = _int(d, "provisioned_size")
            if size is None or size <= 0:
                raise EngineFault(400, "Disk [provisionedSize] required for add", reason="Incomplete parameters")
            fmt = d.findtext("format") or "cow"
            if fmt not in ("cow", "raw"):
                raise EngineFault(400, f"Invalid value '{fmt}' for format", reason="Invalid value")
            sd_el = d.find("storage_domains/storage_domain")
            sd = (
                self.e.storage_domain_by(sd_el.get("id"), sd_el.findtext("name"))
                if sd_el is not None
                else next(iter(self.e.storage_domains.values()))
            )
            sparse = _bool(d.findtext("sparse"))
            name = d.findtext("name") or d.findtext("alias") or f"{vm.name}_Disk{len(vm.attachments) + 1}"
            disk = Disk(str(uuid.uuid4()), name, size, fmt, fmt == "cow" if sparse is None else sparse, sd.id)
            disk.description = d.findtext("description") or ""
            att = Attachment(
                disk.id,
                interface=body.findtext("interface") or "virtio_scsi",
                bootable=bool(_bool(body.findtext("bootable"))),
                active=_bool(body.findtext("active")) is not False,
            )
            self.e.add_disk(vm, disk, att, self.cid)
            return 201, render.disk_attachment(vm, att, self.e)
        if len(p) == 1:
            found = next((a for a in vm.attachments if a.disk_id == p[0]), None)
            if found is None:
                raise not_found("disk attachment", p[0])
            if m == "GET":
                return 200, render.disk_attachment(vm, found, self.e)
            if m == "DELETE":
                detach_only = _bool(self.query.get("detach_only"))
                self.e.detach_disk(vm, p[0], delete=detach_only is False, correlation_id=self.cid)
                return 200, render.action()
        raise EngineFault(404, "No such resource", reason="Not Found")

    # -- snapshots ----------------------------------------------------------------------------------

    def snapshots(self, vm: Vm, p: list[str]) -> tuple[int, ET.Element]:
        m = self.method
        if not p and m == "GET":
            return 200, render.collection("snapshots", [render.snapshot(vm, s, self.e) for s in vm.snapshots])
        if not p and m == "POST":
            body = self.xml()
            description = body.findtext("description")
            if not description:
                raise EngineFault(400, "Snapshot [description] required for add", reason="Incomplete parameters")
            memory = _bool(body.findtext("persist_memorystate"))
            snap = self.e.add_snapshot(vm, description, memory is not False, self.cid)
            return 201, render.snapshot(vm, snap, self.e)
        snap = self.e.snapshot(vm, p[0])
        if len(p) == 1 and m == "GET":
            return 200, render.snapshot(vm, snap, self.e)
        if len(p) == 1 and m == "DELETE":
            self.e.remove_snapshot(vm, snap, self.cid)
            return 200, render.action()
        if len(p) == 2 and p[1] == "restore" and m == "POST":
            body = self.xml()
            self.e.restore_snapshot(vm, snap, bool(_bool(body.findtext("restore_memory"))), self.cid)
            return 200, render.action()
        raise EngineFault(404, "No such resource", reason="Not Found")
