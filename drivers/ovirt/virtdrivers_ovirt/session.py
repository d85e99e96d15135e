"""Connecting to an engine, staying connected, and turning SDK errors into virtdrivers errors.

The only place that holds credentials. ``ovirtsdk4`` is imported here, lazily, so
listing drivers never loads it. The SDK already fetches a new SSO token once when
a call gets HTTP 401; this layer does the rest: when the token fetch itself fails
(``invalid_grant`` after an engine restart) or the connection breaks, it rebuilds
the connection and tries the call again, within a deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import Field, SecretStr, field_validator

from virtdrivers.driver import DriverSettings
from virtdrivers.errors import (
    AuthenticationFailed,
    BackendUnavailable,
    Conflict,
    DriverError,
    InvalidSpec,
    InvalidState,
    NotFound,
    Timeout,
    redact,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class OvirtSettings(DriverSettings):
    """How to reach an engine. TLS is verified against ``ca_file`` (or the system store)."""

    url: str = Field(min_length=8, max_length=2048)
    """The API entry point, ``https://engine.example.com/ovirt-engine/api``."""
    username: str = Field(default="admin@internal", min_length=1, max_length=256)
    password: SecretStr
    ca_file: str | None = None
    """PEM file of the engine's CA; None trusts the system store."""
    insecure: bool = False
    """Skip TLS verification. Only for throwaway labs; logged as a warning on every connect."""
    cluster: str | None = None
    """Cluster new VMs go to; None takes the first one."""
    storage_domain: str | None = None
    """Data storage domain new disks go to; None takes the first data domain."""
    operation_timeout: float = Field(default=600.0, gt=0)
    """Seconds to wait for an asynchronous engine operation (locks, power, migration)."""
    request_timeout: int = Field(default=120, ge=0)
    """Seconds one HTTP request may take (0: no limit)."""
    reconnect_timeout: float = Field(default=30.0, ge=0)
    """Seconds to keep retrying while the engine is unreachable (a restart) before giving up."""
    page_size: int = Field(default=500, ge=1, le=10_000)
    """VMs per search page when listing."""
    event_interval: float = Field(default=0.5, gt=0, le=60)
    """Seconds between two looks at VM statuses while someone is subscribed to events."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL of the engine API, such as https://engine/ovirt-engine/api")
        return value.rstrip("/")


def translate(exc: BaseException, secrets: list[str]) -> DriverError:
    """The virtdrivers error for an SDK (or transport) error; the caller chains the original."""
    import ovirtsdk4 as sdk

    text = redact(str(exc), secrets)
    if isinstance(exc, sdk.AuthError):
        return AuthenticationFailed(f"ovirt: {text}")
    if isinstance(exc, sdk.ConnectionError):
        return BackendUnavailable(f"ovirt: {text}")
    if isinstance(exc, sdk.TimeoutError):
        return Timeout(f"ovirt: {text}")
    if isinstance(exc, sdk.NotFoundError):
        return NotFound(f"ovirt: {text}")
    if isinstance(exc, sdk.Error):
        code = getattr(exc, "code", None)
        fault = getattr(exc, "fault", None)
        detail = redact(str(getattr(fault, "detail", "") or text), secrets)
        if code == 409 and "name is already in use" in detail:
            return InvalidSpec(detail, field="name")
        if code == 409 and "Low disk space" in detail:
            return Conflict(f"ovirt: {detail}")
        if code == 409:
            return InvalidState(f"ovirt: {detail}")
        if code == 400:
            return InvalidSpec(f"ovirt: {detail}")
        if code is None:
            return BackendUnavailable(f"ovirt: {text}")
        return DriverError(f"ovirt: {text}")
    return BackendUnavailable(f"ovirt: {text}")


class Session:
    """One authenticated SDK connection, rebuilt on demand."""

    def __init__(self, settings: OvirtSettings) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self._connection: Any = None
        #: Between connect() and close(): a lost connection is rebuilt, a closed session is not.
        self._open = False
        self.reconnects = 0
        #: Per thread: when this thread first found the engine unreachable and when it last did.
        #: One operation runs in one thread, so its calls (a create and its clean-up) share one
        #: ``reconnect_timeout`` of waiting instead of each waiting anew.
        self._outage = threading.local()

    @property
    def secrets(self) -> list[str]:
        return self.settings.secrets()

    def _build(self) -> Any:
        import ovirtsdk4 as sdk

        s = self.settings
        if s.insecure:
            log.warning("ovirt: TLS verification is OFF for %s (insecure=True); do not use this in production", s.url)
        connection = sdk.Connection(
            url=s.url,
            username=s.username,
            password=s.password.get_secret_value(),
            ca_file=s.ca_file,
            insecure=s.insecure,
            timeout=s.request_timeout,
        )
        try:
            connection.authenticate()
        except Exception:
            connection.close(logout=False)
            raise
        return connection

    def connect(self) -> None:
        with self._lock:
            if self._open:
                return
            try:
                self._connection = self._build()
            except Exception as exc:
                raise translate(exc, self.secrets) from exc
            self._open = True

    def close(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
            self._open = False
        if connection is not None:
            try:
                connection.close(logout=True)
            except Exception as exc:  # logging out of a dead engine must not fail a close
                log.debug("ovirt: logout failed: %s", redact(str(exc), self.secrets))

    @property
    def connected(self) -> bool:
        return self._open

    def _reconnect(self) -> None:
        with self._lock:
            old, self._connection = self._connection, None
            if old is not None:
                try:
                    old.close(logout=False)
                except Exception:
                    log.debug("ovirt: closing a broken connection failed", exc_info=False)
            self._connection = self._build()
            self.reconnects += 1

    def call(self, func: Callable[[Any], T], *, idempotent: bool = True) -> T:
        """Run ``func(system_service)``; recover from lost sessions and restarts, translate errors.

        Calls that change state are retried only when the request surely never reached
        the engine (connection refused) or the engine refused it unauthenticated.
        """
        import ovirtsdk4 as sdk

        if not self._open:
            raise BackendUnavailable("ovirt: not connected")
        delay = 0.05
        auth_retried = False
        while True:
            try:
                with self._lock:
                    connection = self._connection
                if connection is None:
                    self._reconnect()
                    with self._lock:
                        connection = self._connection
                result = func(connection.system_service())
                self._outage.since = self._outage.last = None
                return result
            except sdk.AuthError as exc:
                # The SDK's own retry already failed: the token fetch itself was refused
                # or the fresh token was rejected. Start over with a new connection once.
                if auth_retried:
                    raise translate(exc, self.secrets) from exc
                auth_retried = True
                try:
                    self._reconnect()
                except sdk.AuthError as again:
                    raise translate(again, self.secrets) from again
                except Exception:
                    with self._lock:
                        self._connection = None
            except (sdk.ConnectionError, sdk.TimeoutError) as exc:
                refused = isinstance(exc, sdk.ConnectionError)
                remaining = self._unreachable()
                if not (idempotent or refused) or remaining <= 0:
                    raise translate(exc, self.secrets) from exc
                time.sleep(min(delay, remaining))  # back off while the engine comes back, never past the deadline
                delay = min(delay * 2, 1.0)
                with self._lock:
                    self._connection = None
            except sdk.Error as exc:
                remaining = self._unreachable() if getattr(exc, "code", None) is None else 0.0
                if idempotent and remaining > 0:
                    # A transport failure (connection reset mid-response) during a restart.
                    time.sleep(min(delay, remaining))
                    delay = min(delay * 2, 1.0)
                    with self._lock:
                        self._connection = None
                    continue
                raise translate(exc, self.secrets) from exc

    def _unreachable(self) -> float:
        """Note that this thread found the engine unreachable; seconds it may still wait for it.

        The clock starts at this thread's first failure and runs until any call in the
        thread succeeds, so an operation that already waited ``reconnect_timeout`` (and
        its clean-up after it) does not wait again. A failure long after the last one
        (more than ``reconnect_timeout``) is a new outage with a budget of its own.
        """
        now = time.monotonic()
        budget = self.settings.reconnect_timeout
        since: float | None = getattr(self._outage, "since", None)
        last: float | None = getattr(self._outage, "last", None)
        if since is None or last is None or now - last > budget:
            since = now
        self._outage.since, self._outage.last = since, now
        return since + budget - now


def wait_until(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float,
    what: str,
    failed: Callable[[T], str | None] = lambda _: None,
) -> T:
    """Poll ``probe`` with growing pauses until ``done`` holds; Timeout after ``timeout`` seconds.

    The engine has no push channel for the SDK, so state is polled; the pause starts
    at 10 ms (the simulator's transitions take tens of milliseconds) and grows to 1 s.
    """
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        value = probe()
        if done(value):
            return value
        reason = failed(value)
        if reason is not None:
            raise InvalidState(f"ovirt: {what} failed: {reason}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"ovirt: {what} did not finish within {timeout:g} s")
        time.sleep(min(pause, remaining))
        pause = min(pause * 1.6, 1.0)
