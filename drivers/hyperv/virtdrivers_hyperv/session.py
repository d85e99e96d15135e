"""The WinRM session: the only place that holds credentials and talks to the wire.

One remote shell is opened on first use and reused for every script (Create once,
then Command, Receive until done, Signal per script), which is three round trips per
operation instead of pywinrm's five. A shell the host has dropped (idle timeout,
WinRM restart) is reopened once, transparently. pywinrm's own wait loop retries
operation timeouts forever; ours stops at a deadline and raises
:class:`~virtdrivers.errors.Timeout`.

pywinrm and its auth libraries are imported here, lazily, so listing the driver
never imports them.
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, model_validator

from virtdrivers.driver import DriverSettings
from virtdrivers.errors import (
    AuthenticationFailed,
    BackendUnavailable,
    DriverError,
    InvalidSpec,
    Timeout,
    redact,
)
from virtdrivers_hyperv import scripts

if TYPE_CHECKING:
    from winrm.protocol import Protocol

__all__ = ["HypervSession", "HypervSettings", "ScriptResult"]

log = logging.getLogger(__name__)

#: WS-Management fault when the shell named in a request does not exist (any more).
_SHELL_NOT_FOUND = 2150858843
#: Stdin bytes per WS-Management Send: base64 grows them by a third, under the 150 KiB envelope.
_STDIN_CHUNK = 65536
#: UTF-8, so error text with non-ASCII names survives the trip.
_CODEPAGE = 65001
#: Least time one request may take near or past its operation's deadline: the Signal that stops a
#: command cut off by the deadline, or a request that must still reach the host, gets this much.
_MIN_REQUEST_S = 2.0
#: Margin of the HTTP read timeout over a Receive's WS-Management OperationTimeout (the host answers
#: a Receive with nothing yet at OperationTimeout): at most pywinrm's 10 s, at least 2 s near the deadline.
_RECEIVE_MARGIN_S = (2.0, 10.0)


class HypervSettings(DriverSettings):
    """How to reach a Hyper-V host (or a cluster node) over WinRM."""

    host: str = Field(min_length=1, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)
    """Defaults to 5986 with HTTPS and 5985 without."""
    transport: Literal["ntlm", "basic"] = "ntlm"
    user: str = Field(min_length=1, max_length=256)
    password: SecretStr
    https: bool = True
    ca_file: str | None = None
    """CA bundle that signed the host's certificate; the system store when None."""
    insecure: bool = False
    """Skip certificate verification. Explicit opt-in, logged as a warning."""
    allow_basic_over_http: bool = False
    """Basic sends the password in clear text over plain HTTP: refused unless this is set."""
    storage_path: str = Field(default="C:\\ClusterStorage\\Volume1\\virtdrivers", min_length=3, max_length=200)
    """Where new VHDX files go: a path every cluster node sees (a CSV or SMB share)."""
    image_path: str = Field(default="C:\\ClusterStorage\\Volume1\\images", min_length=3, max_length=200)
    """The image library: a folder of base VHDX files, on storage every node sees. Never written by the driver."""
    operation_timeout: int = Field(default=20, ge=1, le=3600)
    """WS-Management OperationTimeout of one Receive, in seconds; long scripts span several."""
    task_timeout: float = Field(default=900.0, gt=0)
    """Longest a single operation (one script) may run before Timeout."""
    soft_reboot_timeout: float = Field(default=60.0, ge=0, le=3600)
    """Seconds a guest gets to shut down in a soft reboot before it is turned off and started again."""
    event_poll_interval: float = Field(default=2.0, ge=0.1, le=3600)
    """Seconds between bulk listings that detect changes made outside this driver (events)."""

    @model_validator(mode="after")
    def _secure_by_default(self) -> HypervSettings:
        if self.transport == "basic" and not self.https and not self.allow_basic_over_http:
            raise ValueError(
                "Basic authentication over plain HTTP sends the password in clear text; use https, "
                "ntlm (with message encryption), or set allow_basic_over_http explicitly"
            )
        return self

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.https else "http"
        port = self.port or (5986 if self.https else 5985)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{port}/wsman"


@dataclass(frozen=True)
class ScriptResult:
    stdout: bytes
    stderr: bytes
    exit_code: int


class HypervSession:
    """A serialised, self-healing WinRM shell. Thread-safe: calls take turns."""

    def __init__(self, settings: HypervSettings) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self._protocol: Protocol | None = None
        self._shell: str | None = None
        #: HTTP round trips by WS-Management action (Create, Command, Receive, Signal, Delete, Auth).
        self.round_trips: Counter[str] = Counter()
        self.scripts_run = 0
        #: Whether the credentials have worked once: later 401s then mean a lost connection.
        self._proven = False
        #: Finished commands (shell, command id) whose Signal is still to be sent.
        self._unsignalled: list[tuple[str, str]] = []

    # -- connection ----------------------------------------------------------------------------

    def _secrets(self) -> list[str]:
        return self.settings.secrets()

    def _clean(self, text: str) -> str:
        return redact(text, self._secrets())

    def connect(self, deadline: float | None = None) -> None:
        with self._lock:
            if self._protocol is None:
                self._protocol = self._new_protocol()
            if self._shell is None:
                self._shell = self._call(
                    "Create", lambda p: p.open_shell(codepage=_CODEPAGE), retryable=True, deadline=deadline
                )

    def _new_protocol(self) -> Protocol:
        from winrm.protocol import Protocol

        s = self.settings
        if s.insecure and s.https:
            log.warning("hyperv: TLS certificate verification is OFF for %s (insecure=True)", s.endpoint)
        encryption: Literal["auto", "always", "never"] = "auto"
        if s.transport == "basic":
            encryption = "never"
        elif not s.https:
            encryption = "always"  # NTLM over HTTP: every message sealed (MS-WSMV)
        protocol = Protocol(
            endpoint=s.endpoint,
            transport=s.transport,
            username=s.user,
            password=s.password.get_secret_value(),
            server_cert_validation="ignore" if s.insecure else "validate",
            ca_trust_path=s.ca_file,  # type: ignore[arg-type]
            message_encryption=encryption,
            operation_timeout_sec=s.operation_timeout,
            read_timeout_sec=s.operation_timeout + 10,
        )
        self._count_transport(protocol)
        return protocol

    def _count_transport(self, protocol: Protocol) -> None:
        """Count every HTTP request the transport sends, authentication legs included."""
        transport = protocol.transport
        original = transport._send_message_request
        counter = self.round_trips

        def counted(session: Any, prepared: Any) -> Any:
            counter["http"] += 1
            response = original(session, prepared)
            counter["http"] += len(getattr(response, "history", []) or [])
            return response

        transport._send_message_request = counted  # type: ignore[method-assign,assignment]

    def close(self) -> None:
        with self._lock:
            protocol, shell = self._protocol, self._shell
            self._protocol, self._shell, self._unsignalled = None, None, []
            if protocol is None:
                return
            try:
                if shell is not None:
                    self.round_trips["Delete"] += 1
                    protocol.close_shell(shell)
                else:
                    protocol.transport.close_session()
            except Exception as exc:  # closing must not fail the caller; the host expires the shell
                log.debug("hyperv: closing the shell failed: %s", self._clean(str(exc)))
                protocol.transport.close_session()

    # -- running scripts ----------------------------------------------------------------------------

    def run(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        signal_later: bool = False,
    ) -> ScriptResult:
        """Run fixed script ``name`` with ``args`` as data; reopen a lost shell once.

        It ends by ``deadline`` (a ``time.monotonic()`` value), else ``timeout`` seconds from
        now, else ``task_timeout``: every HTTP request it sends is bounded by the time left, so
        a host that stops answering (hung, or its packets dropped) is a Timeout by then, not
        after pywinrm's own read timeout.

        ``signal_later``: once the command has finished, the Signal that releases it on the host
        is sent before the next command (or not at all when the shell is closed first) instead
        of now, so the caller learns the outcome one round trip sooner. A create's completion
        step uses it: a caller killed between the host committing a step and hearing of it is
        what a crash leaves unaccounted for, and that window is now one round trip shorter.
        """
        stdin: bytes | None = None
        try:
            command = scripts.command_line(scripts.render(name, args))
        except scripts.ScriptTooLong:
            # Too big for the command line: the same fixed body, its arguments sent on stdin.
            script, stdin = scripts.render_stdin(name, args)
            try:
                command = scripts.command_line(script)
            except scripts.ScriptTooLong as exc:  # a body alone over the limit is our bug
                raise InvalidSpec(str(exc), field=name) from exc
        if deadline is None:
            deadline = time.monotonic() + (timeout if timeout is not None else self.settings.task_timeout)
        with self._lock:
            self.scripts_run += 1
            for attempt in (1, 2):
                try:
                    self.connect(deadline)
                    self._signal_pending(deadline)
                    return self._execute(command, deadline, stdin, signal_later)
                except _Retry as retry:
                    # Nothing ran: the shell or the authenticated connection was gone. Start afresh once.
                    self._reset()
                    if attempt == 2:
                        raise BackendUnavailable(f"Hyper-V: {retry}, twice in a row") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _signal_pending(self, deadline: float) -> None:
        """Release finished commands whose Signal was put off (see ``signal_later``); best effort."""
        pending, self._unsignalled = self._unsignalled, []
        for shell, command_id in pending:
            if self._protocol is None or self._shell != shell:
                return  # the shell is gone, and its commands with it
            try:
                self._call("Signal", lambda p, s=shell, c=command_id: p.cleanup_command(s, c), deadline=deadline)
            except DriverError as exc:
                log.debug("hyperv: signalling the end of an earlier command failed: %s", exc)

    def _execute(self, command: str, deadline: float, stdin: bytes | None, signal_later: bool) -> ScriptResult:
        from winrm.exceptions import WinRMOperationTimeoutError

        shell = self._shell
        if shell is None:
            raise BackendUnavailable("Hyper-V: the WinRM shell was lost")
        command_id: str = self._call(
            "Command", lambda p: p.run_command(shell, command), retryable=True, deadline=deadline
        )
        out: list[bytes] = []
        err: list[bytes] = []
        finished = False
        try:
            if stdin is not None:
                chunks = [stdin[i : i + _STDIN_CHUNK] for i in range(0, len(stdin), _STDIN_CHUNK)]
                for n, chunk in enumerate(chunks):
                    last = n == len(chunks) - 1
                    self._call(
                        "Send",
                        lambda p, c=chunk, e=last: p.send_command_input(shell, command_id, c, end=e),
                        deadline=deadline,
                    )
            while True:
                if time.monotonic() > deadline:
                    raise Timeout("Hyper-V: the operation did not finish in time")
                try:
                    o, e, code, done = self._call(
                        "Receive", lambda p: p.get_command_output_raw(shell, command_id), deadline=deadline
                    )
                except WinRMOperationTimeoutError:
                    continue  # nothing yet within OperationTimeout: the host is still working
                out.append(o)
                err.append(e)
                if done:
                    finished = True
                    return ScriptResult(b"".join(out), b"".join(err), code)
        finally:
            # Tell the host the command is over (or to stop it). Not when the connection was
            # just lost and reset under us: that shell is gone with it, and signalling it would
            # hide the BackendUnavailable being raised.
            if finished and signal_later:
                self._unsignalled.append((shell, command_id))
            elif self._protocol is not None and self._shell == shell:
                try:
                    self._call("Signal", lambda p: p.cleanup_command(shell, command_id), deadline=deadline)
                except DriverError as exc:
                    log.debug("hyperv: signalling the end of a command failed: %s", exc)

    def _bound(self, protocol: Protocol, action: str, deadline: float | None) -> None:
        """Fit this request's timeouts into the time its operation has left.

        pywinrm takes both from the Protocol (the Receive's OperationTimeout header and the HTTP
        read timeout): set per request, so a host that stops answering costs at most the time
        left plus a small margin, never a full ``operation_timeout + 10`` past the deadline.
        """
        op = self.settings.operation_timeout
        read = op + _RECEIVE_MARGIN_S[1]
        if deadline is not None:
            left = deadline - time.monotonic()
            if action == "Receive":
                op = max(1, min(op, math.floor(left)))
                read = op + min(max(left - op, _RECEIVE_MARGIN_S[0]), _RECEIVE_MARGIN_S[1])
            else:
                read = min(max(left, _MIN_REQUEST_S), read)
        protocol.operation_timeout_sec = op
        protocol.transport.read_timeout_sec = read  # type: ignore[assignment]  # requests takes a float

    def _call(self, action: str, func: Any, *, retryable: bool = False, deadline: float | None = None) -> Any:
        """One WS-Management request, with pywinrm's and requests' errors translated.

        ``retryable`` marks requests that start nothing on the host when they fail (Create,
        Command): losing the shell or, after a good start, the authenticated connection
        there raises :class:`_Retry` so :meth:`run` can reconnect and try once more.
        A request still unanswered when its operation's time is up (``deadline``) is a Timeout.
        """
        import requests
        from winrm.exceptions import (
            InvalidCredentialsError,
            WinRMError,
            WinRMOperationTimeoutError,
            WinRMTransportError,
            WSManFaultError,
        )

        protocol = self._protocol
        if protocol is None:  # reset by a failure earlier in this operation
            raise BackendUnavailable("Hyper-V: the connection to the WinRM service was lost")
        self.round_trips[action] += 1
        self._bound(protocol, action, deadline)
        try:
            result = func(protocol)
            self._proven = True
            return result
        except WinRMOperationTimeoutError:
            raise
        except InvalidCredentialsError as exc:
            if retryable and self._proven:
                raise _Retry("the authenticated connection was lost") from exc
            self._reset()
            raise AuthenticationFailed("Hyper-V: the host rejected the credentials") from exc
        except WSManFaultError as exc:
            if exc.wsman_fault_code == _SHELL_NOT_FOUND:
                if retryable:
                    raise _Retry("the WinRM shell was lost") from exc
                self._shell = None
            raise BackendUnavailable(self._clean(f"Hyper-V: WS-Management fault: {exc.reason}")) from exc
        except WinRMTransportError as exc:
            if retryable and self._proven:
                raise _Retry(f"HTTP {exc.code} on a connection that worked before") from exc
            self._reset()
            raise BackendUnavailable(self._clean(f"Hyper-V: HTTP {exc.code} from the WinRM service")) from exc
        except requests.exceptions.SSLError as exc:
            self._reset()
            raise BackendUnavailable(
                self._clean(f"Hyper-V: TLS verification of {self.settings.endpoint} failed: {exc}")
            ) from exc
        except requests.exceptions.Timeout as exc:
            # No answer in the time left: the connection's state is unknown, so it is dropped.
            self._reset()
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"Hyper-V: no answer from {self.settings.endpoint} before the deadline") from exc
            raise BackendUnavailable(self._clean(f"Hyper-V: {self.settings.endpoint} did not answer: {exc}")) from exc
        except requests.exceptions.RequestException as exc:
            self._reset()
            raise BackendUnavailable(self._clean(f"Hyper-V: cannot reach {self.settings.endpoint}: {exc}")) from exc
        except WinRMError as exc:
            self._reset()
            raise BackendUnavailable(self._clean(f"Hyper-V: WinRM error: {exc}")) from exc

    def _reset(self) -> None:
        """Forget the connection after a transport failure; the next call reconnects."""
        protocol, self._protocol, self._shell = self._protocol, None, None
        if protocol is not None:
            protocol.transport.close_session()


class _Retry(Exception):
    """A request failed before it started anything on the host; reconnecting may help."""


def encoded_script(command: str) -> str:
    """The PowerShell text inside a ``powershell -encodedcommand`` line (for tests and the simulator)."""
    encoded = command.split()[-1]
    return base64.b64decode(encoded).decode("utf-16-le")
