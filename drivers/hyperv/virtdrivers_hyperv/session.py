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
    operation_timeout: int = Field(default=20, ge=1, le=3600)
    """WS-Management OperationTimeout of one Receive, in seconds; long scripts span several."""
    task_timeout: float = Field(default=900.0, gt=0)
    """Longest a single operation (one script) may run before Timeout."""
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

    # -- connection ----------------------------------------------------------------------------

    def _secrets(self) -> list[str]:
        return self.settings.secrets()

    def _clean(self, text: str) -> str:
        return redact(text, self._secrets())

    def connect(self) -> None:
        with self._lock:
            if self._protocol is None:
                self._protocol = self._new_protocol()
            if self._shell is None:
                self._shell = self._call("Create", lambda p: p.open_shell(codepage=_CODEPAGE), retryable=True)

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
            self._protocol, self._shell = None, None
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

    def run(self, name: str, args: dict[str, Any] | None = None, *, timeout: float | None = None) -> ScriptResult:
        """Run fixed script ``name`` with ``args`` as data; reopen a lost shell once."""
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
        deadline = time.monotonic() + (timeout if timeout is not None else self.settings.task_timeout)
        with self._lock:
            self.scripts_run += 1
            for attempt in (1, 2):
                try:
                    self.connect()
                    return self._execute(command, deadline, stdin)
                except _Retry as retry:
                    # Nothing ran: the shell or the authenticated connection was gone. Start afresh once.
                    self._reset()
                    if attempt == 2:
                        raise BackendUnavailable(f"Hyper-V: {retry}, twice in a row") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _execute(self, command: str, deadline: float, stdin: bytes | None) -> ScriptResult:
        from winrm.exceptions import WinRMOperationTimeoutError

        shell = self._shell
        if shell is None:
            raise BackendUnavailable("Hyper-V: the WinRM shell was lost")
        command_id: str = self._call("Command", lambda p: p.run_command(shell, command), retryable=True)
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            if stdin is not None:
                chunks = [stdin[i : i + _STDIN_CHUNK] for i in range(0, len(stdin), _STDIN_CHUNK)]
                for n, chunk in enumerate(chunks):
                    last = n == len(chunks) - 1
                    self._call("Send", lambda p, c=chunk, e=last: p.send_command_input(shell, command_id, c, end=e))
            while True:
                if time.monotonic() > deadline:
                    raise Timeout("Hyper-V: the operation did not finish in time")
                try:
                    o, e, code, done = self._call("Receive", lambda p: p.get_command_output_raw(shell, command_id))
                except WinRMOperationTimeoutError:
                    continue  # nothing yet within OperationTimeout: the host is still working
                out.append(o)
                err.append(e)
                if done:
                    return ScriptResult(b"".join(out), b"".join(err), code)
        finally:
            # Tell the host the command is over (or to stop it). Not when the connection was
            # just lost and reset under us: that shell is gone with it, and signalling it would
            # hide the BackendUnavailable being raised.
            if self._protocol is not None and self._shell == shell:
                try:
                    self._call("Signal", lambda p: p.cleanup_command(shell, command_id))
                except DriverError as exc:
                    log.debug("hyperv: signalling the end of a command failed: %s", exc)

    def _call(self, action: str, func: Any, *, retryable: bool = False) -> Any:
        """One WS-Management request, with pywinrm's and requests' errors translated.

        ``retryable`` marks requests that start nothing on the host when they fail (Create,
        Command): losing the shell or, after a good start, the authenticated connection
        there raises :class:`_Retry` so :meth:`run` can reconnect and try once more.
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
