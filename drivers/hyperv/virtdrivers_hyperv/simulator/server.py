"""HTTP(S) front of the simulator: ``POST /wsman`` with Basic or NTLM, and MS-WSMV encryption.

Authentication follows WinRM's defaults: Basic is served only over HTTPS unless
``allow_unencrypted`` is set (WinRM's ``AllowUnencrypted``); NTLM is a per-connection
handshake (``Negotiate`` scheme, as WinRM advertises it), after which messages over
plain HTTP must be sealed with the NTLM session key (``multipart/encrypted``,
``application/HTTP-SPNEGO-session-encrypted``). The server side of NTLM is pyspnego's,
reading the account from the ``NTLM_USER_FILE`` the simulator writes for itself.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import logging
import socket
import ssl
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from virtdrivers_hyperv.simulator.model import Model
from virtdrivers_hyperv.simulator.wsman import Fault, ShellService, fault_envelope

__all__ = ["SimulatorServer"]

log = logging.getLogger(__name__)

_BOUNDARY = b"--Encrypted Boundary"
_PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
_SOAP = "application/soap+xml;charset=UTF-8"


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        model: Model,
        user: str,
        password: str,
        ssl_context: ssl.SSLContext | None = None,
        allow_unencrypted: bool = False,
        receive_chunk: int = 65536,
    ) -> None:
        super().__init__(address, _Handler)
        self.model = model
        self.shells = ShellService(model, receive_chunk=receive_chunk)
        self.user = user
        self.password = password
        self.tls = ssl_context is not None
        self.allow_unencrypted = allow_unencrypted
        self.auth_failures = 0
        self._lock = threading.Lock()
        self._connections: set[Any] = set()
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Close every client connection, as a WinRM service restart or a load balancer would."""
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def check_basic(self, header: str) -> bool:
        try:
            decoded = base64.b64decode(header.split(" ", 1)[1], validate=True).decode("utf-8")
        except (IndexError, binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        # Local accounts: "HOST\\user", ".\\user" and "user" name the same one, case-insensitively.
        name = user.split("\\")[-1].lower()
        ok = hmac.compare_digest(name.encode(), self.user.split("\\")[-1].lower().encode()) and hmac.compare_digest(
            password.encode(), self.password.encode()
        )
        if not ok:
            with self._lock:
                self.auth_failures += 1
        return ok


#: Path prefix of the test knobs (see ``_Handler._knob``).
KNOB = "/_sim/"


class _Handler(BaseHTTPRequestHandler):
    server: SimulatorServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # without it, delayed ACKs cost ~40-200 ms per request

    def setup(self) -> None:
        super().setup()
        self.ntlm: Any = None
        self.ntlm_done = False

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    # -- plumbing -----------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _unauthorized(self, challenge: str | None = None) -> None:
        schemes = [challenge] if challenge else ["Negotiate", 'Basic realm="WSMAN"']
        self.send_response(401)
        for s in schemes:
            self.send_header("WWW-Authenticate", s)
        self.send_header("Content-Length", "0")
        self.end_headers()

    # -- requests -------------------------------------------------------------------------------

    def _knob(self) -> None:
        """Test knobs, outside WS-Management: ways to make the simulated cluster misbehave.

        - ``POST /_sim/nodes/<NODE>/fail|recover``: a node dies or comes back;
        - ``POST /_sim/faults/<Cmdlet>``: the next call of that cmdlet fails (see ``Model.arm_fault``);
        - ``POST /_sim/vms/<ID>/ignore-shutdown|obey-shutdown``: the guest ignores (or again obeys)
          a graceful shutdown, as an ACPI-deaf guest does.

        Like ``GET /_sim/state`` they need no credentials: the simulator listens on 127.0.0.1
        only and exists for tests, which must be able to reach it from any process (an
        orchestrator's evacuation, the conformance suite's hooks). An unknown target is 404.
        """
        kind, _, rest = self.path[len(KNOB) :].partition("/")
        target, _, action = rest.partition("/")
        model = self.server.model
        with model.lock:
            if kind == "nodes" and target.upper() in model.nodes and action in ("fail", "recover"):
                (model.fail_node if action == "fail" else model.recover_node)(target)
            elif kind == "faults" and target in model.FAULTABLE and not action:
                model.arm_fault(target)
            elif kind == "vms" and model.vm(target) is not None and action in ("ignore-shutdown", "obey-shutdown"):
                vm = model.vm(target)
                assert vm is not None
                vm.ignores_shutdown = action == "ignore-shutdown"
            else:
                self._send(404)
                return
        self._send(204)

    def do_GET(self) -> None:
        if self.path == "/_sim/state":
            body = json.dumps(self.server.model.snapshot_state()).encode()
            self._send(200, body, {"Content-Type": "application/json"})
            return
        parts = self.path.split("/")
        if len(parts) == 6 and self.path.startswith(KNOB + "vms/") and parts[4] == "carrier":
            self._carrier(parts[3], parts[5])
            return
        self._send(404)

    def _carrier(self, vm_id: str, label: str) -> None:
        """``GET /_sim/vms/<ID>/carrier/<LABEL>``: the files a guest of that VM finds on the attached volume
        labelled ``LABEL`` (``cidata``), base64 by name; 404 when the VM has no such volume."""
        model = self.server.model
        with model.lock:
            vm = model.vm(vm_id)
            files = model.wl.carrier(vm, label) if vm is not None else None
        if files is None:
            self._send(404)
            return
        body = json.dumps({name: base64.b64encode(data).decode("ascii") for name, data in files.items()}).encode()
        self._send(200, body, {"Content-Type": "application/json"})

    def do_POST(self) -> None:
        body = self._body()
        if self.path.startswith(KNOB):
            self._knob()
            return
        if self.path.rstrip("/").lower() != "/wsman":
            self._send(404)
            return
        auth = self.headers.get("Authorization", "")
        scheme = auth.split(" ", 1)[0].lower()
        if scheme == "basic":
            if not self.server.tls and not self.server.allow_unencrypted:
                # WinRM with AllowUnencrypted=false refuses clear-text Basic outright.
                self._unauthorized()
                return
            if not self.server.check_basic(auth):
                self._unauthorized()
                return
            self._serve(body, encrypted=False)
            return
        if scheme in ("negotiate", "ntlm"):
            self._ntlm_step(auth, body)
            return
        if self.ntlm_done:
            self._serve(body, encrypted=self._is_encrypted())
            return
        self._unauthorized()

    def _is_encrypted(self) -> bool:
        return "multipart/encrypted" in (self.headers.get("Content-Type") or "")

    def _ntlm_step(self, auth: str, body: bytes) -> None:
        import spnego
        from spnego.exceptions import SpnegoError

        scheme, _, token = auth.partition(" ")
        try:
            raw = base64.b64decode(token.strip(), validate=True)
        except binascii.Error:
            self._unauthorized()
            return
        if raw[8:12] == b"\x01\x00\x00\x00":  # NTLM NEGOTIATE_MESSAGE: start over on this connection
            self.ntlm = spnego.server(protocol="ntlm")
            self.ntlm_done = False
        if self.ntlm is None:
            self._unauthorized()
            return
        try:
            out = self.ntlm.step(raw)
        except SpnegoError:
            self.ntlm, self.ntlm_done = None, False
            with self.server._lock:
                self.server.auth_failures += 1
            self._unauthorized()
            return
        if not self.ntlm.complete:
            self._unauthorized(f"{scheme} {base64.b64encode(out or b'').decode()}")
            return
        self.ntlm_done = True
        self._serve(body, encrypted=self._is_encrypted())

    def _serve(self, body: bytes, *, encrypted: bool) -> None:
        if not body:
            # pywinrm's empty POST that sets up the security context.
            self._send(200)
            return
        if encrypted:
            try:
                body = self._unseal(body)
            except Exception:
                self._send(400)
                return
        elif not self.server.tls and not self.server.allow_unencrypted:
            # Unencrypted SOAP over HTTP: WinRM (AllowUnencrypted=false) rejects it.
            self._unauthorized()
            return
        try:
            reply, code = self.server.shells.handle(body), 200
        except Fault as fault:
            reply, code = fault_envelope(fault, getattr(fault, "relates_to", "")), 500
        if encrypted:
            sealed = self._seal(reply)
            ctype = f'multipart/encrypted;protocol="{_PROTOCOL}";boundary="Encrypted Boundary"'
            self._send(code, sealed, {"Content-Type": ctype})
        else:
            self._send(code, reply, {"Content-Type": _SOAP})

    def _unseal(self, body: bytes) -> bytes:
        parts = [p for p in body.split(_BOUNDARY + b"\r\n") if p]
        header, payload = parts[0], parts[1]
        expected = int(header.split(b"Length=")[1].split(b"\r\n")[0])
        if payload.endswith(_BOUNDARY + b"--\r\n"):
            payload = payload[: -len(_BOUNDARY + b"--\r\n")]
        data = payload.replace(b"\tContent-Type: application/octet-stream\r\n", b"", 1)
        sig_len = struct.unpack("<i", data[:4])[0]
        signature, sealed = data[4 : 4 + sig_len], data[4 + sig_len :]
        message = bytes(self.ntlm.unwrap(signature + sealed).data)
        if len(message) != expected:
            raise ValueError("length mismatch")
        return message

    def _seal(self, message: bytes) -> bytes:
        wrapped = bytes(self.ntlm.wrap(message, encrypt=True).data)
        signature, sealed = wrapped[:16], wrapped[16:]
        return (
            _BOUNDARY + b"\r\n"
            b"\tContent-Type: " + _PROTOCOL.encode() + b"\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
            + str(len(message)).encode()
            + b"\r\n"
            + _BOUNDARY
            + b"\r\n"
            b"\tContent-Type: application/octet-stream\r\n"
            + struct.pack("<i", len(signature))
            + signature
            + sealed
            + _BOUNDARY
            + b"--\r\n"
        )
